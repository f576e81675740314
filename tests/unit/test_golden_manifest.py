"""The typed manifest against manifests of real bundles: it reads them back unchanged, opens them as a
Bundle, and the terminal, report.md and report.html render their content (task columns, absolute
metrics, each target's own compression facts)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from edgepack.bundle.files import MANIFEST, Bundle
from edgepack.bundle.manifest import SCHEMA_VERSION, Manifest
from edgepack.bundle.report_html import render_html
from edgepack.bundle.report_md import render_markdown, summarize
from edgepack.cli import terminal
from edgepack.errors import VerificationError
from edgepack.pipeline import PackResult
from edgepack.recipe.schema import Recipe
from tests.unit.manifests import NAMES, fixture_manifest, raw_manifest


@pytest.mark.parametrize("name", NAMES)
def test_a_manifest_reads_back_unchanged(name):
    raw = raw_manifest(name)
    manifest = Manifest.model_validate(raw)
    assert manifest.to_json_dict() == raw
    assert Manifest.model_validate(manifest.to_json_dict()) == manifest


def test_a_schema_2_bundle_opens_with_its_recipe_parsed_once(tmp_path):
    raw = raw_manifest("recommender")
    assert raw["schema_version"] == 2 and SCHEMA_VERSION == 3  # schema 3 only added optional fields
    (tmp_path / MANIFEST).write_text(json.dumps(raw))
    bundle = Bundle.open(tmp_path)
    assert bundle.folder == tmp_path and bundle.manifest == Manifest.model_validate(raw)
    assert isinstance(bundle.recipe, Recipe)
    assert bundle.recipe.task == "ctr" and bundle.recipe.evaluation.group_by == "user_id"
    assert bundle.recipe.input_names[0] == "user_id" and bundle.recipe.base_dir == Path(raw["recipe_dir"])


def test_a_malformed_shared_fact_is_refused_naming_the_field(tmp_path):
    raw = raw_manifest("recommender")
    del raw["targets"]["x86"]["artifacts"][0]["structure"]["embedding_tables"][0]["bits"]
    (tmp_path / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(VerificationError, match=r"malformed manifest: targets\.x86\.artifacts\.0\.structure"):
        Bundle.open(tmp_path)


def test_a_stored_recipe_that_does_not_validate_is_refused(tmp_path):
    raw = raw_manifest("image")
    raw["recipe"]["calibration"]["method"] = {"name": "kmeans"}
    (tmp_path / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(VerificationError, match="malformed stored recipe: .*calibration.method"):
        Bundle.open(tmp_path)


def _rows_of(text: str, artifact: str) -> list[str]:
    """The compression rows (Markdown) of one artifact: its first row and the unnamed rows after it."""
    section = text[text.index("## Compression"):]
    lines = section.splitlines()
    start = next(index for index, line in enumerate(lines) if f"| {artifact} |" in line)
    rows = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith("|  |  |"):
            break
        rows.append(line)
    return rows


def test_report_md_of_a_classifier():
    text = render_markdown(fixture_manifest("image"))
    for heading in ("# edgepack bundle: image_classifier", "## Float model", "## Artifacts",
                    "## Where and how each artifact was validated", "## Compression", "## Benchmark",
                    "## How this was measured"):
        assert heading in text
    assert "**PASSED** — task `classification`" in text
    assert "- quality on held-out data: accuracy 0.9810 (1000 samples)" in text
    assert "| target | artifact | size | vs fp32 ONNX | accuracy | drop pts | top-1 agree | KL | latency | verdict |" \
        in text
    assert re.search(r"\| arm-tflite \| `arm-tflite/model\.int8\.tflite` \| 0\.\d{3} MB \| 0\.\d\dx \| 0\.9810 \| "
                     r"\+0\.00 \| 1\.0000 \| 2\.5e-05 \|", text)
    assert "Note: validated on CPU (CPUExecutionProvider)" in text
    assert "x86/model.int8.onnx: isa portable, int8 weights in [-64, 64]" in text


def test_each_target_summarizes_its_own_artifact():
    text = render_markdown(fixture_manifest("image"))
    x86 = "\n".join(_rows_of(text, "x86/model.int8.onnx"))
    assert "| x86 | x86/model.int8.onnx | format | onnx, int8-qdq |" in x86
    assert re.search(r"QuantizeLinear / DequantizeLinear \| \d+ / \d+", x86) and "weights by dtype | " in x86
    assert "| weight scheme | int8-7bit |" in x86 and "nodes kept float" in x86
    tflite = "\n".join(_rows_of(text, "arm-tflite/model.int8.tflite"))
    assert "| I/O dtypes | int8 |" in tflite
    assert re.search(r"QUANTIZE / DEQUANTIZE ops \| \d+ / \d+", tflite)
    assert re.search(r"float tensors besides I/O \| \d+, [\d.]+ kB", tflite)
    assert "fixed batch 1" in tflite
    pte = "\n".join(_rows_of(text, "arm-xnnpack/model.int8.pte"))
    assert re.search(r"delegated to XNNPACK \| \d+ ops in \d+ subgraph\(s\)", pte) and "not delegated" in pte
    for rows in (tflite, pte):  # nothing ONNX-shaped, no empty cells
        assert "QuantizeLinear" not in rows and "weights by dtype" not in rows and "|  |  |  |" not in rows
        assert not re.search(r"\| (0|—)? \|$", rows)


def test_an_unknown_target_is_summarized_from_the_common_fields():
    _, item = fixture_manifest("image").artifacts()[0]
    assert summarize("not-installed-here", item) == [("format", "onnx, int8-qdq"), ("I/O dtypes", "float32")]


def test_report_md_of_a_recommender():
    text = render_markdown(fixture_manifest("recommender"))
    assert "**PASSED** — task `ctr`" in text
    assert "| AUC | AUC drop | logloss | NDCG@10 | NDCG rel. drop | Spearman | top-10 overlap | latency |" in text
    assert "- quality on held-out data: auc 0.7910, logloss 0.5771" in text
    assert "## Embedding tables" in text and "| x86/model.int8.onnx | user.weight | 944 x 128 | 8-bit |" in text
    assert "| arm-xnnpack/model.int8.pte | user.weight | 944 x 128 | 8-bit | per row | 1 |" in text
    assert "embedding lookup | hybrid EMBEDDING_LOOKUP" in "\n".join(_rows_of(text, "arm-tflite/model.int8.tflite"))
    assert "x86/model.int8.onnx is SLOWER than the fp32 ONNX at batch 1, 256" in text


def test_report_md_of_a_pruned_model():
    text = render_markdown(fixture_manifest("pruned"))
    assert "## Pruning and distillation" in text and "| parameters | 283,258 | 124,122 |" in text
    assert "Layer widths: `0.0` 16→8" in text and "- distillation: 8 epochs, best 5, early stop" in text
    assert "## Compression" not in text  # no artifacts


def _html_table_after(html: str, heading: str) -> str:
    section = html[html.index(heading):]
    return section[:section.index("</table>")]


def test_report_html():
    html = render_html(fixture_manifest("image"))
    assert html.startswith("<!doctype html>") and "PASSED</span> task <code>classification</code>" in html
    assert html.count("data:image/png;base64,") == 2
    artifacts = _html_table_after(html, "<h2>Artifacts</h2>")
    assert "<th>accuracy</th><th>drop pts</th><th>top-1 agree</th><th>KL</th>" in artifacts
    assert "<td>0.9810</td>" in artifacts
    compression = _html_table_after(html, "<h2>Compression</h2>")
    assert "<th class=\"l\">fact</th><th class=\"l\">value</th>" in compression
    tflite = compression[compression.index("arm-tflite/model.int8.tflite"):compression.index("arm-xnnpack")]
    assert "QUANTIZE / DEQUANTIZE ops" in tflite and "float tensors" in tflite and "QuantizeLinear" not in tflite
    assert "<h2>Benchmark (each entry in a fresh process)</h2>" in html
    assert "Calibration: name=percentile, percentile=99.999; 480 samples" in html


def _terminal(manifest: Manifest) -> str:
    out, err = io.StringIO(), io.StringIO()
    terminal.bind(out, err)
    try:
        terminal.render_pack(PackResult(bundle=Path("dist/bundle"), manifest=manifest, targets=()))
    finally:
        terminal.bind(None, None)
    return out.getvalue() + err.getvalue()


def test_terminal_of_a_recommender():
    text = _terminal(fixture_manifest("recommender"))
    for header in ("AUC drop", "logloss", "NDCG@10", "Spearman"):
        assert header in text
    assert "0.7910" in text and "arm-tflite/model.int8.tflite" in text
    assert "latency (each entry in a fresh process)" in text
    assert "x86 isa: x86/model.int8.onnx: isa portable" in text
    assert "all targets passed; bundle: dist/bundle" in text


def test_terminal_without_bench_shows_the_in_process_figures():
    manifest = fixture_manifest("image")
    manifest.bench = None
    text = _terminal(manifest)
    assert "latency (in the pack process)" in text and "float (ONNX Runtime fp32)" in text
    assert "drop pts" in text and "top-1 agree" in text


def test_terminal_of_a_pruned_model():
    text = _terminal(fixture_manifest("pruned"))
    assert "pruning" in text and "283,258" in text and "124,122" in text
    assert "self-check: 6 of 6 layer groups verified exact" in text
    assert "pruned model written; bundle: dist/bundle" in text
