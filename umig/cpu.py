"""This CPU's user-visible features: XCR0 (which XSAVE state exists), the
XSAVE area size, and the /proc/cpuinfo flags libraries dispatch on."""

from __future__ import annotations

from functools import cache

from .native import ffi, lib

XFEATURES = {0: "x87", 1: "SSE", 2: "AVX", 3: "MPX bounds", 4: "MPX csr",
             5: "AVX-512 opmask", 6: "AVX-512 ZMM_Hi256", 7: "AVX-512 Hi16_ZMM",
             9: "PKRU", 11: "CET user", 17: "AMX tile config", 18: "AMX tile data",
             19: "APX"}

# flags whose absence on the resuming host can break a process that chose
# code paths by them when it started (glibc ifuncs, JITs, math libraries)
DISPATCH_FLAGS = {
    "sse3", "pni", "ssse3", "sse4_1", "sse4_2", "popcnt", "avx", "avx2", "fma", "f16c",
    "bmi1", "bmi2", "lzcnt", "abm", "movbe", "adx", "aes", "pclmulqdq", "sha_ni",
    "vaes", "vpclmulqdq", "rdrand", "rdseed", "erms", "fsrm", "xsave", "xsavec",
    "xsaveopt", "fsgsbase", "rdpid", "clflushopt", "clwb", "gfni", "avx_vnni",
    "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512ifma",
    "avx512vbmi", "avx512_vbmi2", "avx512_vnni", "avx512_bitalg", "avx512_vpopcntdq",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
}


@cache
def xcr0() -> int:
    return lib.umig_xgetbv(0)


@cache
def xsave_size() -> int:
    out = ffi.new("uint32_t[4]")
    lib.umig_cpuid(0xD, 0, out)
    return out[1]


@cache
def flags() -> frozenset[str]:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def feature_names(mask: int) -> list[str]:
    return [XFEATURES.get(b, f"xfeature {b}") for b in range(64) if mask >> b & 1]


def missing(image_xcr0: int, image_flags: set[str]) -> list[str]:
    """What the image's CPU had that this one lacks, by name."""
    out = feature_names(image_xcr0 & ~xcr0())
    out += sorted((image_flags & DISPATCH_FLAGS) - flags())
    return out
