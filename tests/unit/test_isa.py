"""ISA facts parsed from /proc/cpuinfo text of the two x86 host kinds and an ARM phone-class CPU."""

from __future__ import annotations

from edgepack.isa import host_isa, parse_cpuinfo

EPYC = "processor: 0\nmodel name : AMD EPYC\nflags : fpu sse avx avx2 fma bmi2 sha_ni\n"
XEON = ("processor: 0\nmodel name : Intel(R) Xeon(R) Platinum 8480C\n"
        "flags : avx avx2 avx512f avx512bw avx512_vnni amx_bf16 amx_tile amx_int8\n")
ALDER_LAKE = "model name : 12th Gen Intel(R) Core(TM) i7-1255U\nflags : avx2 avx_vnni fma\n"
ARM = "processor : 0\nFeatures : fp asimd evtstrm aes crc32 atomics asimddp sve i8mm\nCPU part : 0xd40\n"


def test_avx2_only_host_has_no_int32_dot_product():
    isa = parse_cpuinfo(EPYC, "x86_64")
    assert isa.features == ("AVX2",)
    assert not isa.has_int32_dot_product
    assert "saturating int16" in isa.line()
    assert isa.cpu == "AMD EPYC"


def test_vnni_and_amx_host():
    isa = parse_cpuinfo(XEON, "x86_64")
    assert isa.features == ("AVX2", "AVX-512F", "AVX512-VNNI", "AMX-INT8")
    assert isa.has_int32_dot_product
    assert "exact" in isa.u8s8_arithmetic()


def test_avx_vnni_counts_as_int32_dot_product():
    assert parse_cpuinfo(ALDER_LAKE, "x86_64").has_int32_dot_product


def test_arm_dotprod_and_i8mm():
    isa = parse_cpuinfo(ARM, "aarch64")
    assert isa.features == ("DOTPROD", "I8MM", "SVE")
    assert not isa.is_x86


def test_this_host_is_read():
    isa = host_isa()
    assert isa.machine and isa.cpu
    assert isa.line().startswith(f"host: {isa.cpu}")
    assert isa.to_dict()["int32_dot_product"] == isa.has_int32_dot_product
