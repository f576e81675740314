"""The bundle's `tokenizer/` folder: the tokenizer files, spec.json and golden tokenized examples
(texts with their exact input_ids and attention_mask), so an app reproduces the inputs exactly."""

from __future__ import annotations

import json
import shutil
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from edgepack.bundle.entries import FileEntry
from edgepack.bundle.files import sha256_file
from edgepack.errors import DataError
from edgepack.text.spec import TextConfig, TextSection
from edgepack.text.tokenize import TextTokenizer, load_tokenizer, read_text_table, text_reader

if TYPE_CHECKING:
    from edgepack.recipe.schema import Recipe

FOLDER = "tokenizer"
SPEC_FILE = "spec.json"
GOLDEN_FILE = "golden_tokens.json"
# What Hugging Face tokenizer libraries (Python, Rust, Swift, Kotlin ports) read; copied when present.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "added_tokens.json", "merges.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model")


def tokenizer_folder(recipe: "Recipe") -> Path:
    """text.tokenizer (relative to the recipe) or, by default, the model's Hugging Face folder."""
    assert recipe.text is not None, "only recipes with a text section have a tokenizer"
    if recipe.text.tokenizer is not None:
        path = Path(recipe.text.tokenizer).expanduser()
        return (path if path.is_absolute() else recipe.base_dir / path).resolve()
    assert recipe.model.huggingface is not None, "the schema requires text.tokenizer without model.huggingface"
    return Path(recipe.model.huggingface)


@lru_cache(maxsize=4)
def _tokenizer(folder: Path, config: TextConfig) -> TextTokenizer:
    return load_tokenizer(folder, config)


def recipe_tokenizer(recipe: "Recipe") -> Optional[TextTokenizer]:
    """The recipe's tokenizer with its settings resolved, or None for a recipe without `text`."""
    if recipe.text is None:
        return None
    return _tokenizer(tokenizer_folder(recipe), recipe.text)


def recipe_reader(recipe: "Recipe"):
    """A data reader tokenizing the recipe's text column, or None (then data files are read as arrays)."""
    tokenizer = recipe_tokenizer(recipe)
    return None if tokenizer is None or recipe.text is None else text_reader(tokenizer, recipe.text)


def golden_examples(tokenizer: TextTokenizer, config: TextConfig, evaluation_path: Path) -> list[dict[str, Any]]:
    """The first `golden_examples` evaluation texts with their exact token ids and mask."""
    texts, _, _ = read_text_table(evaluation_path, config.column, [])
    texts = texts[:config.golden_examples]
    encoded = tokenizer.encode(texts, origin=str(evaluation_path))
    return [{"text": text, **{name: array[row].tolist() for name, array in encoded.items()}}
            for row, text in enumerate(texts)]


def write_text_bundle(stage: Path, recipe: "Recipe") -> TextSection:
    """Copy the tokenizer files into `stage/tokenizer/`, write the spec and the golden examples."""
    tokenizer = recipe_tokenizer(recipe)
    assert tokenizer is not None and recipe.text is not None, "only recipes with a text section write one"
    if recipe.evaluation.path is None:
        raise DataError("golden tokenized examples need evaluation.path (a table with the text column)")
    folder = stage / FOLDER
    folder.mkdir()
    written = []
    for name in TOKENIZER_FILES:
        if (tokenizer.folder / name).is_file():
            shutil.copyfile(tokenizer.folder / name, folder / name)
            written.append(folder / name)
    spec = tokenizer.spec
    (folder / SPEC_FILE).write_text(json.dumps(spec.model_dump(), indent=2) + "\n")
    examples = golden_examples(tokenizer, recipe.text, Path(recipe.evaluation.path))
    (folder / GOLDEN_FILE).write_text(json.dumps({"spec": spec.model_dump(), "examples": examples}, indent=1,
                                                 ensure_ascii=False) + "\n")
    written += [folder / SPEC_FILE, folder / GOLDEN_FILE]
    files = [FileEntry(path=str(path.relative_to(stage)), sha256=sha256_file(path), size_bytes=path.stat().st_size)
             for path in written]
    return TextSection(spec=spec, column=recipe.text.column, golden_examples=len(examples), files=files)


def check_golden_tokens(bundle: Path) -> tuple[int, list[str]]:
    """Re-tokenize the bundle's golden texts with the bundle's own tokenizer files and spec; (examples checked,
    one line per mismatch)."""
    payload = json.loads((bundle / FOLDER / GOLDEN_FILE).read_text())
    spec = payload["spec"]
    config = TextConfig.model_validate({"max_length": spec["max_length"], "truncation": spec["truncation"],
                                        "lower_case": True if spec["lower_case_before_tokenizer"] else None})
    tokenizer = load_tokenizer(bundle / FOLDER, config)
    examples = payload["examples"]
    encoded = tokenizer.encode([example["text"] for example in examples], origin=f"{bundle}/{FOLDER}/{GOLDEN_FILE}")
    problems = [f"golden example {row + 1}: {name} differ from the recorded ones"
                for row, example in enumerate(examples) for name, array in encoded.items()
                if not np.array_equal(array[row], np.asarray(example[name]))]
    return len(examples), problems


def bundle_reader(bundle: Path, recipe: "Recipe"):
    """For `edgepack verify --data`: a reader tokenizing text with the bundle's own tokenizer files, or None."""
    if recipe.text is None:
        return None
    return text_reader(load_tokenizer(bundle / FOLDER, recipe.text), recipe.text)


def verify_bundle_tokens(bundle: Path) -> int:
    """Raise VerificationError when the bundle's tokenizer does not reproduce its golden token ids; return
    how many examples were checked."""
    from edgepack.errors import VerificationError

    checked, problems = check_golden_tokens(bundle)
    if problems:
        raise VerificationError(f"{bundle}/{FOLDER}/{GOLDEN_FILE}: " + "; ".join(problems[:3]))
    return checked
