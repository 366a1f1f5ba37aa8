"""Putting the vDSO back where the process expects it.

Same kernel (the image's vDSO is byte-for-byte this host's and the block
layout matches): the restorer maps a fresh vvar/vvar_vclock/vdso block at
the old address with arch_prctl(ARCH_MAP_VDSO_64).

Otherwise glibc's cached pointers into the old vDSO must keep working: the
restorer maps this host's block somewhere near, the old vDSO comes back as
plain memory at its old address, and every function symbol in it is patched
to jump to the same symbol of this host's vDSO (pyelftools reads both symbol
tables).  A symbol this host lacks falls back to its syscall.
"""

from __future__ import annotations

import ctypes
import io
import struct
from dataclasses import dataclass
from functools import cache

from elftools.elf.elffile import ELFFile

from .. import procfs
from ..errors import Incompatible

# syscall equivalents of vDSO functions, for a symbol the new vDSO lacks
FALLBACK_SYSCALLS = {"clock_gettime": 228, "gettimeofday": 96, "time": 201, "getcpu": 309,
                     "clock_getres": 229}


@dataclass
class HostVdso:
    block_start: int     # first of the vvar/vvar_vclock/vdso mappings
    block_size: int
    vdso_offset: int     # vdso start - block start
    layout: tuple        # ((name, offset, size), ...) relative to the block
    image: bytes


@cache
def host_vdso() -> HostVdso | None:
    vmas = [v for v in procfs.parse_maps(procfs.read("self", "maps"))
            if v.path in ("[vvar]", "[vvar_vclock]", "[vdso]")]
    if not any(v.path == "[vdso]" for v in vmas):
        return None
    start = min(v.start for v in vmas)
    end = max(v.end for v in vmas)
    vd = next(v for v in vmas if v.path == "[vdso]")
    image = ctypes.string_at(vd.start, vd.size)
    layout = tuple((v.path, v.start - start, v.size) for v in sorted(vmas, key=lambda v: v.start))
    return HostVdso(start, end - start, vd.start - start, layout, image)


def image_layout(rec: dict) -> tuple:
    parts = [("[vvar]", rec["vvar_start"], rec["vvar_size"]),
             ("[vvar_vclock]", rec["vclock_start"], rec["vclock_size"]),
             ("[vdso]", rec["vdso_start"], rec["vdso_size"])]
    parts = [p for p in parts if p[2]]
    start = min(p[1] for p in parts)
    return tuple((name, s - start, size) for name, s, size in sorted(parts, key=lambda p: p[1]))


def image_block(rec: dict) -> tuple[int, int]:
    parts = [(rec["vvar_start"], rec["vvar_size"]), (rec["vclock_start"], rec["vclock_size"]),
             (rec["vdso_start"], rec["vdso_size"])]
    parts = [p for p in parts if p[1]]
    start = min(s for s, _ in parts)
    return start, max(s + n for s, n in parts) - start


def same_vdso(rec: dict) -> bool:
    host = host_vdso()
    return host is not None and rec["image"] == host.image and \
        image_layout(rec) == host.layout


def _functions(image: bytes) -> dict[str, tuple[int, int]]:
    """name -> (offset, size) of the defined function symbols of a vDSO."""
    elf = ELFFile(io.BytesIO(image))
    base = min(seg["p_vaddr"] for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD")
    out = {}
    for section in elf.iter_sections():
        if section["sh_type"] != "SHT_DYNSYM":
            continue
        for sym in section.iter_symbols():
            if sym["st_info"]["type"] == "STT_FUNC" and sym["st_shndx"] != "SHN_UNDEF":
                name = sym.name.split("@")[0]
                out[name] = (sym["st_value"] - base, sym["st_size"])
    return out


def _bare(name: str) -> str:
    return name[len("__vdso_"):] if name.startswith("__vdso_") else name


def redirect(old_image: bytes, old_base: int, new_image: bytes, new_base: int) -> bytes:
    """The old vDSO with each function's entry replaced by a jump to the
    same function in the new vDSO mapped at new_base."""
    try:
        old = _functions(old_image)
        new = _functions(new_image)
    except Exception as e:  # pyelftools raises many kinds on a damaged ELF
        raise Incompatible(f"the image's vDSO cannot be read as ELF ({e})") from None
    new_by_bare = {_bare(n): v for n, v in new.items()}
    out = bytearray(old_image)
    for name, (off, size) in old.items():
        target = new.get(name) or new_by_bare.get(_bare(name))
        src = old_base + off
        if target:
            dest = new_base + target[0]
            rel = dest - (src + 5)
            if -(1 << 31) <= rel < (1 << 31):
                code = b"\xe9" + struct.pack("<i", rel)
            else:
                code = b"\x49\xbb" + struct.pack("<Q", dest) + b"\x41\xff\xe3"  # movabs r11; jmp r11
        elif _bare(name) in FALLBACK_SYSCALLS:
            code = b"\xb8" + struct.pack("<I", FALLBACK_SYSCALLS[_bare(name)]) + b"\x0f\x05\xc3"
        else:
            raise Incompatible(f"the image's vDSO function {name} has no counterpart on this "
                               f"kernel", hint="resume on a kernel like the source's")
        if size and len(code) > size:
            raise Incompatible(f"cannot redirect vDSO function {name}: {size} bytes is too "
                               f"short for a jump")
        out[off:off + len(code)] = code
    return bytes(out)
