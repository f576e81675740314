"""Instruction-set facts that change quantized integer arithmetic, read from the host.

On x86, onnxruntime's U8S8 kernels add pairs of u8 x s8 products into a saturating int16
(vpmaddubsw) unless the CPU has a dot-product instruction with int32 accumulation (AVX512-VNNI,
AVX-VNNI, AMX-INT8). On ARM, the dot-product (asimddp) and i8mm features decide which int8
kernels run. A result validated on one kind of CPU says nothing about the other kind unless the
artifact's arithmetic cannot saturate (see edgepack.quantization.saturation).
"""

from __future__ import annotations

import functools
import platform
from dataclasses import asdict, dataclass

# /proc/cpuinfo flag -> the name we report. Order: how they are printed.
X86_FEATURES = {"avx2": "AVX2", "avx512f": "AVX-512F", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI",
                "amx_int8": "AMX-INT8"}
ARM_FEATURES = {"asimddp": "DOTPROD", "i8mm": "I8MM", "sve": "SVE", "sve2": "SVE2"}
# Any of these gives u8 x s8 dot products accumulated in int32: no int16 pair saturation.
INT32_DOT_PRODUCT = frozenset({"AVX512-VNNI", "AVX-VNNI", "AMX-INT8"})


@dataclass(frozen=True)
class HostIsa:
    """The CPU and the instruction-set features that decide which integer kernels run on it."""

    cpu: str
    machine: str
    features: tuple[str, ...]

    @property
    def has_int32_dot_product(self) -> bool:
        """True on x86 hosts whose u8 x s8 kernels accumulate in int32 (VNNI or AMX)."""
        return bool(INT32_DOT_PRODUCT.intersection(self.features))

    @property
    def is_x86(self) -> bool:
        """True on x86-64 hosts."""
        return self.machine.lower() in ("x86_64", "amd64", "i686", "x86")

    def u8s8_arithmetic(self) -> str:
        """How this host's onnxruntime U8S8 kernels accumulate."""
        if not self.is_x86:
            return "not an x86 host"
        if self.has_int32_dot_product:
            return "int32 dot products (VNNI/AMX): exact"
        return "u8 x s8 pairs summed in saturating int16 (vpmaddubsw): may saturate with 8-bit weights"

    def line(self) -> str:
        """One line for terminals and CI logs."""
        features = " ".join(self.features) or "none of the tracked features"
        return f"host: {self.cpu} ({self.machine}), ISA: {features}; U8S8 integer kernels: {self.u8s8_arithmetic()}"

    def to_dict(self) -> dict:
        """JSON-ready form for the manifest."""
        return asdict(self) | {"int32_dot_product": self.has_int32_dot_product}


def parse_cpuinfo(text: str, machine: str) -> HostIsa:
    """HostIsa from the text of /proc/cpuinfo (x86 'flags' or ARM 'Features' lines)."""
    cpu, flags = "", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not cpu:
            cpu = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    table = ARM_FEATURES if machine.lower() in ("aarch64", "arm64") else X86_FEATURES
    features = tuple(name for flag, name in table.items() if flag in flags)
    return HostIsa(cpu=cpu or platform.processor() or "unknown CPU", machine=machine, features=features)


@functools.lru_cache(maxsize=1)
def host_isa() -> HostIsa:
    """This host's ISA facts, read once per process."""
    try:
        with open("/proc/cpuinfo") as handle:
            text = handle.read()
    except OSError:
        text = ""
    return parse_cpuinfo(text, platform.machine())


def main() -> None:
    """Print the host's ISA line (used by .ci/run so a red run names its machine)."""
    print(host_isa().line())


if __name__ == "__main__":
    main()
