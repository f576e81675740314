"""arm-tflite `sequence_lengths`: a text model as one artifact of a .tflite per fixed length, each held-out
row verified on the shortest model that holds its tokens; bad lengths are one error naming the option."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from edgepack.bundle.buckets import route, routed_counts
from edgepack.bundle.check import verify_bundle
from edgepack.bundle.files import Bundle, unlisted_files
from edgepack.calibration.dataset import SampleSet
from edgepack.cli.main import main
from edgepack.errors import EXIT_OK, ConfigError, VerificationError
from edgepack.recipe.load import parse_recipe
from edgepack.recipe.schema import InputSpec
from edgepack.registry import get_target
from edgepack.targets.arm_tflite.buckets import OPTION, bucket_lengths, calibration_for_length
from edgepack.text.tokenize import load_tokenizer, read_text_table
from tests.helpers import base_recipe, read_tflite
from tests.text.conftest import text_recipe

LENGTHS = [8, 16]  # the tiny recipe's max_length is 24


def _mask(tokens: list[int], width: int = 24) -> np.ndarray:
    return (np.arange(width)[None, :] < np.asarray(tokens)[:, None]).astype(np.int64)


def test_rows_go_to_the_shortest_length_that_holds_their_tokens():
    mask = _mask([1, 8, 9, 16, 17, 24])
    assert route(mask, [8, 16, 24]).tolist() == [8, 8, 16, 16, 24, 24]
    assert routed_counts(mask, [24, 8, 16]) == {8: 2, 16: 2, 24: 2}
    holed = mask[[1]].copy()
    holed[0, 3], holed[0, 12] = 0, 1  # a hole and a kept token past it: the slice must keep position 12
    assert route(holed, [8, 16, 24]).tolist() == [16]


def test_each_length_calibrates_on_the_rows_that_fit_it_or_on_every_row_cut():
    mask = _mask([4, 6, 12, 20] * 8)  # 8 rows of each length
    calibration = SampleSet(role="calibration", source="rows", arrays={"input_ids": mask * 7, "attention_mask": mask},
                            labels=None, batch_size=8, sha256="0" * 64)
    fitting, note = calibration_for_length(calibration, [8, 16, 24], 16)
    assert note == "24 rows that fit" and fitting.arrays["attention_mask"].shape == (24, 16)
    assert fitting.arrays["attention_mask"].sum(axis=1).max() == 12, "rows of 20 tokens left out"
    long_rows = _mask([12] * 4 + [20] * 8)
    few = SampleSet(role="calibration", source="rows", arrays={"input_ids": long_rows * 7, "attention_mask": long_rows},
                    labels=None, batch_size=8, sha256="0" * 64)
    cut, note = calibration_for_length(few, [8, 16, 24], 16)
    assert note == "all 12 rows cut to 16 tokens (only 4 fit, fewer than 8)"
    assert cut.arrays["input_ids"].shape == (12, 16)


@pytest.mark.parametrize(("lengths", "problem"), [([8, 30], r"30 not in 1\.\.24 \(text\.max_length\)"),
                                                  ([0, 8], r"0 not in 1\.\.24 \(text\.max_length\)"),
                                                  ([-4, 30], r"-4, 30 not in 1\.\.24 \(text\.max_length\)"),
                                                  ([8, 16, 8], "8 given more than once")])
def test_bad_lengths_are_one_error_naming_the_option(tiny_text, lengths, problem):
    recipe = parse_recipe(text_recipe(tiny_text, tiny_text / "out", ["arm-tflite"],
                                      target_options={"arm-tflite": {"sequence_lengths": lengths}}),
                          source="recipe.yaml", base_dir=tiny_text)
    with pytest.raises(ConfigError, match=rf"^target_options\.arm-tflite\.sequence_lengths: {problem}$"):
        get_target("arm-tflite").check_recipe(recipe)


def test_the_option_on_a_model_without_text_is_refused(tmp_path):
    recipe = parse_recipe({**base_recipe(tmp_path, tmp_path / "out"), "targets": ["arm-tflite"],
                           "target_options": {"arm-tflite": {"sequence_lengths": [8]}}},
                          source="recipe.yaml", base_dir=tmp_path)
    with pytest.raises(ConfigError, match=rf"^{OPTION}: only for text models"):
        get_target("arm-tflite").check_recipe(recipe)
    image = [InputSpec.model_validate({"name": "image", "dtype": "float32", "shape": ["batch", 1, 28, 28]})]
    with pytest.raises(ConfigError, match="only for text models"):
        bucket_lengths((8,), image)
    assert bucket_lengths((), image) == ()


@pytest.fixture(scope="module")
def bucketed(tiny_text, tmp_path_factory):
    """`edgepack pack` through the CLI for arm-tflite at lengths 8, 16 and 24."""
    pytest.importorskip("litert_torch")
    out = tmp_path_factory.mktemp("bucketed") / "bundle"
    recipe = tiny_text / "recipe_buckets.yaml"
    recipe.write_text(yaml.safe_dump(text_recipe(tiny_text, out, ["arm-tflite"],
                                                 target_options={"arm-tflite": {"sequence_lengths": LENGTHS}})))
    result = CliRunner().invoke(main, ["pack", str(recipe), "--no-bench"])
    assert result.exit_code == EXIT_OK, result.output
    return Bundle.open(out)


def _eval_feeds(tiny_text, bundle) -> dict[str, np.ndarray]:
    texts, _, _ = read_text_table(tiny_text / "eval.csv", "review", [])
    return load_tokenizer(tiny_text / "model", bundle.recipe.text).encode(texts, origin="eval.csv")


@pytest.mark.e2e
def test_one_artifact_carries_an_int8_tflite_per_length(bucketed):
    from ai_edge_litert import schema_py_generated as fb

    (artifact,) = bucketed.manifest.targets["arm-tflite"].artifacts
    buckets = artifact.sequence_buckets
    assert buckets is not None and buckets.lengths == [8, 16, 24] and buckets.option == OPTION
    files = {bucket.length: bucketed.folder / "arm-tflite" / bucket.file for bucket in buckets.buckets}
    assert files[24].name == "model.int8.tflite" and files[8].name == "model.int8.len8.tflite"
    for length, path in files.items():
        _, model = read_tflite(path)
        graph = model.subgraphs[0]
        assert [list(graph.tensors[index].shape) for index in graph.inputs] == [[1, length]] * 2
        int8 = sum(int(np.prod(tensor.shape)) for tensor in graph.tensors if tensor.type == fb.TensorType.INT8)
        assert int8 > 10_000, (length, "int8 weights and token embeddings")
    listed = {entry.path for entry in bucketed.manifest.files()}
    assert {f"arm-tflite/{path.name}" for path in files.values()} <= listed
    assert unlisted_files(bucketed.folder, bucketed.manifest.files()) == []
    assert verify_bundle(bucketed.folder, None).samples == 0  # checksums of every file, companions included
    original = files[8].read_bytes()
    files[8].write_bytes(b"changed")
    try:
        with pytest.raises(VerificationError, match="model.int8.len8.tflite: checksum mismatch"):
            verify_bundle(bucketed.folder, None)
    finally:
        files[8].write_bytes(original)


@pytest.mark.e2e
def test_verification_routes_every_held_out_row_and_records_the_counts(bucketed, tiny_text):
    (artifact,) = bucketed.manifest.targets["arm-tflite"].artifacts
    feeds = _eval_feeds(tiny_text, bucketed)
    expected = routed_counts(feeds["attention_mask"], [8, 16, 24])
    assert all(expected.values()), f"the tiny data should reach every length: {expected}"
    recorded = {bucket.length: bucket.evaluation_rows for bucket in artifact.sequence_buckets.buckets}
    assert recorded == expected and sum(expected.values()) == bucketed.manifest.evaluation.samples == 200
    check = verify_bundle(bucketed.folder, tiny_text / "eval.csv")  # re-measured through the same routing
    assert check.same_data and check.exit_code == EXIT_OK
    runner = get_target("arm-tflite").runner(bucketed.folder / artifact.path, threads=2)
    outputs = runner(feeds)[0]
    assert dict(runner.routed_rows) == expected and outputs.shape == (200, 2)
    assert "sequence buckets 8/16/24" in artifact.validated_on.execution_provider
    drift = {check.metric: check for check in artifact.drift}
    assert drift["top1_agreement"].passed and drift["accuracy_drop"].passed
    summary = dict(get_target("arm-tflite").summarize(artifact))
    assert "8: model.int8.len8.tflite" in summary["sequence lengths"]
    assert f"{expected[8]} held-out rows" in summary["sequence lengths"]


@pytest.mark.e2e
def test_a_short_row_gives_the_same_output_on_the_short_and_the_full_model(bucketed, tiny_text):
    from edgepack.targets.arm_tflite.runner import TfliteRunner

    feeds = _eval_feeds(tiny_text, bucketed)
    short = np.flatnonzero(route(feeds["attention_mask"], [8, 16, 24]) == 8)
    rows = {name: array[short] for name, array in feeds.items()}
    folder = bucketed.folder / "arm-tflite"
    full = TfliteRunner(folder / "model.int8.tflite", threads=2)(rows)[0]
    cut = TfliteRunner(folder / "model.int8.len8.tflite", threads=2)({name: array[:, :8]
                                                                       for name, array in rows.items()})[0]
    spread = float(np.abs(full).max())
    # measured: identical (XNNPACK quantizes dynamic activations per token; masked pads change nothing)
    assert np.abs(full - cut).max() <= 0.01 * spread, "within dynamic-range INT8 rounding of the same tokens"
    assert (full.argmax(axis=1) == cut.argmax(axis=1)).mean() >= 0.95
