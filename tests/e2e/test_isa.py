"""ISA-portable x86 INT8, the `vnni` option and its refusal by `verify`, and CUDA INT8 checked as TensorRT
computes it. Every assertion holds on an AVX2-only host and on a VNNI/AMX host alike."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from edgepack.bundle.manifest import ArtifactEntry
from edgepack.cli.main import main
from edgepack.errors import EXIT_OK
from edgepack.isa import HostIsa, host_isa
from edgepack.quantization.saturation import integer_layers, weight_bound
from edgepack.targets.cuda.target import TENSORRT_EMULATION
from edgepack.targets.x86.portable import SCHEMES
from edgepack.targets.x86.target import REQUIRES_KEY, VNNI_EMULATION, required_isa
from tests.e2e.conftest import pack_example

pytestmark = pytest.mark.e2e
AVX2_ONLY = HostIsa(cpu="AMD EPYC", machine="x86_64", features=("AVX2",))


@pytest.fixture(scope="module")
def vnni_bundle(trained_example, tmp_path_factory):
    return pack_example(trained_example, tmp_path_factory.mktemp("isa") / "vnni", targets=["x86", "cuda"],
                        target_options={"x86": {"isa": "vnni"}})


def _artifact(result, target: str, index: int = 0) -> ArtifactEntry:
    return result.manifest.targets[target].artifacts[index]


def test_portable_artifact_is_proven_exact_without_vnni(packed):
    artifact = _artifact(packed, "x86")
    isa = artifact.isa
    assert isa.option == "portable" and isa.requires_isa == []
    assert isa.weights in SCHEMES and {c["scheme"] for c in isa.candidates} == set(SCHEMES)
    assert all(c["relative_l2"] > 0 and c["median_ms_batch_64"] > 0 for c in isa.candidates)
    assert isa.weights in isa.reason
    assert isa.saturation.layers_that_can_saturate_without_vnni == []
    model = onnx.load(str(packed.bundle / artifact.path))
    layers = integer_layers(model)
    assert len(layers) == isa.saturation.integer_layers >= 4
    assert not any(bound.can_saturate for bound in weight_bound(layers))
    if isa.weights == "int8-7bit":  # every pair-summed weight really fits in 7 bits
        assert all(layer.weight.min() >= -64 and layer.weight.max() <= 64 for layer in layers
                   if not layer.exact_on_every_isa)
    else:
        assert {layer.weight_dtype for layer in layers} == {"uint8"}
    assert required_isa(packed.bundle / artifact.path) == []


def test_every_artifact_records_where_and_how_it_was_validated(packed):
    where = _artifact(packed, "x86").validated_on
    assert where.cpu == host_isa().cpu and where.isa == list(host_isa().features)
    assert where.runtime == "onnxruntime" and where.execution_provider == "CPUExecutionProvider"
    assert "every x86 CPU computes the same" in where.arithmetic
    report = (packed.bundle / "report.md").read_text()
    assert "Where and how each artifact was validated" in report and host_isa().cpu in report
    assert "isa portable" in report and "Where and how" in (packed.bundle / "report.html").read_text()


def test_vnni_artifact_records_its_requirement(vnni_bundle):
    artifact = _artifact(vnni_bundle, "x86")
    isa = artifact.isa
    assert isa.option == "vnni" and isa.weights == "int8"
    assert set(isa.requires_isa) == {"AVX512-VNNI", "AVX-VNNI", "AMX-INT8"}
    assert required_isa(vnni_bundle.bundle / artifact.path) == sorted(isa.requires_isa)
    model = onnx.load(str(vnni_bundle.bundle / artifact.path))
    assert any(prop.key == REQUIRES_KEY for prop in model.metadata_props)
    weights = [numpy_helper.to_array(init) for init in model.graph.initializer
               if init.data_type == onnx.TensorProto.INT8]
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in weights) > 64  # full 8-bit weights
    assert isa.saturation.data_check is not None
    expected = "int32 dot products" if host_isa().has_int32_dot_product else VNNI_EMULATION
    assert expected in artifact.validated_on.arithmetic


def test_cuda_int8_is_checked_as_tensorrt_computes_it(vnni_bundle):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("a GPU is present: the CUDA EP's integer path is used")
    int8 = _artifact(vnni_bundle, "cuda", 1)
    assert int8.path.endswith("int8.qdq.onnx")
    assert int8.validated_on.arithmetic == TENSORRT_EMULATION
    assert "fp16" in _artifact(vnni_bundle, "cuda", 0).validated_on.arithmetic
    assert int8.passed and int8.metrics["top1_agreement"] >= 0.98


def test_verify_refuses_a_vnni_artifact_on_a_host_without_vnni(vnni_bundle, trained_example, monkeypatch):
    monkeypatch.setattr("edgepack.bundle.check.host_isa", lambda: AVX2_ONLY)
    result = CliRunner().invoke(main, ["verify", str(vnni_bundle.bundle), "--data", str(trained_example / "eval.npz")])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "x86/model.int8.onnx" in lines[0] and "AVX512-VNNI" in lines[0]
    assert "isa: portable" in lines[0]


def test_verify_accepts_the_portable_bundle_on_a_host_without_vnni(packed, trained_example, monkeypatch):
    monkeypatch.setattr("edgepack.bundle.check.host_isa", lambda: AVX2_ONLY)
    result = CliRunner().invoke(main, ["verify", str(packed.bundle), "--data", str(trained_example / "eval.npz")])
    assert result.exit_code == EXIT_OK, result.output
