"""Runners: numpy in, numpy out. Verification works on any of them."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from edgepack.errors import MissingDependencyError
from edgepack.model.tensors import as_tensors

Feeds = dict[str, np.ndarray]


class Runner(Protocol):
    """Anything that maps a batch of named numpy inputs to a list of numpy outputs."""

    input_names: list[str]
    output_names: list[str]
    device: str  # where it runs, e.g. the execution provider
    arithmetic: str  # what computed the result: integer kernels, float, or an emulation (named)
    fixed_batch: int  # the artifact's fixed batch (smaller batches are padded), 1 when the batch is dynamic

    def __call__(self, feeds: Feeds) -> list[np.ndarray]:
        """Run one batch."""


class TorchRunner:
    """The float PyTorch model in eager mode."""

    def __init__(self, module: torch.nn.Module, input_names: list[str], threads: int):
        self.module = module.eval()
        self.input_names = list(input_names)
        self.output_names = ["output"]
        self.threads = threads
        self.device = "torch eager CPU"
        self.fixed_batch = 1
        self.arithmetic = "float32"

    def __call__(self, feeds: Feeds) -> list[np.ndarray]:
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                result = self.module(*as_tensors(feeds, self.input_names))
        finally:
            torch.set_num_threads(previous)
        outputs = result if isinstance(result, (tuple, list)) else (result,)
        return [output.detach().numpy() for output in outputs]


def ort_session(model: Path | bytes, *, threads: int, providers: tuple[str, ...] = ("CPUExecutionProvider",),
                fake_quant: bool = False, profile_prefix: str | None = None):
    """An onnxruntime session with a fixed thread count on the first available of `providers`.

    With `fake_quant`, QuantizeLinear/DequantizeLinear pairs stay unfused, so every op runs in float
    between them: the arithmetic of int32 accumulation (TensorRT, VNNI) without the host's integer
    kernels. With `profile_prefix`, onnxruntime's profiler writes its JSON there."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingDependencyError("running ONNX models", "onnxruntime", "x86") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if fake_quant:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    available = set(ort.get_available_providers())
    chosen = [provider for provider in providers if provider in available] or ["CPUExecutionProvider"]
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=chosen)


FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
FAKE_QUANT_DEVICE = " (fake-quant emulation)"  # appended to the provider name of an emulated run
X86_BUILD_OF_ARM_KERNELS = ("x86 build of the runtime's int8 kernels (int32 accumulation, as on ARM); the phone's "
                            "ARM kernels (dotprod/i8mm) were not run here")


class OrtRunner:
    """An ONNX model in onnxruntime; `device` names the execution provider actually used and
    `arithmetic` what computed the result (the provider's integer kernels, or an emulation)."""

    def __init__(self, path: Path, *, threads: int, providers: tuple[str, ...] = ("CPUExecutionProvider",),
                 emulation: str | None = None, arithmetic: str = "the execution provider's own kernels"):
        """`emulation` (a description) runs a QDQ model as fake-quant; `arithmetic` describes the native run."""
        self.session = ort_session(path, threads=threads, providers=providers, fake_quant=emulation is not None)
        self.device = self.session.get_providers()[0] + (FAKE_QUANT_DEVICE if emulation else "")
        self.arithmetic = emulation or arithmetic
        self.fixed_batch = 1
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.output_names = [node.name for node in self.session.get_outputs()]
        # an fp16-I/O artifact takes float16: the float32 data is cast to what each input declares
        self._float_inputs = {node.name: FLOAT_TYPES[node.type] for node in self.session.get_inputs()
                              if node.type in FLOAT_TYPES}

    def __call__(self, feeds: Feeds) -> list[np.ndarray]:
        inputs = {name: feeds[name].astype(self._float_inputs[name], copy=False) if name in self._float_inputs
                  else feeds[name] for name in self.input_names}
        # float16 outputs are widened (exactly) so that metrics are computed in float32 like every other artifact
        return [output.astype(np.float32) if output.dtype == np.float16 else output
                for output in self.session.run(None, inputs)]
