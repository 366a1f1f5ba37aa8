"""Builders for umig's native code (umig/_native).

Two artefacts, two kinds of C (STYLE.md §2):

* ``umig._umig_native``: an ordinary cffi module (libc allowed) for bulk page
  copies, page scans and kernel calls Python lacks.  Its cdef is read from the
  real headers ``umig_native.h`` and ``plan.h``.
* ``umig/_native/restorer.bin``: the freestanding restorer, a flat
  position-independent blob with its entry at offset 0.

``python build.py`` builds both in place for development; ``setup.py`` calls
the same functions when a wheel is built.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent
NATIVE = ROOT / "umig" / "_native"


def _version() -> str:
    text = (ROOT / "umig" / "__init__.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def _cdef_text(header: Path) -> str:
    """A header as cffi's cdef accepts it: integer #defines kept, other
    preprocessor lines dropped."""
    keep = []
    for line in header.read_text().splitlines():
        if line.startswith("#"):
            if re.match(r"#define\s+\w+\s+(0x[0-9a-fA-F]+|\d+)\s*(/\*.*\*/)?\s*$", line):
                keep.append(line)
            continue
        keep.append(line)
    return "\n".join(keep)


def make_ffi() -> FFI:
    ffi = FFI()
    ffi.cdef(_cdef_text(NATIVE / "umig_native.h"))
    ffi.cdef(_cdef_text(NATIVE / "plan.h"))
    ffi.set_source(
        "umig._umig_native",
        "#include <stdint.h>\n#include \"umig_native.h\"\n#include \"plan.h\"\n",
        sources=[str((NATIVE / "umig_native.c").relative_to(ROOT))],
        include_dirs=[str(NATIVE)],
        define_macros=[("UMIG_VERSION", f'"{_version()}"')],
        extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
    )
    return ffi


ffibuilder = make_ffi()

RESTORER_CFLAGS = [
    "-O2", "-Wall", "-Werror", "-ffreestanding", "-nostdlib", "-fno-stack-protector",
    "-fpie", "-fno-plt", "-fvisibility=hidden", "-fno-jump-tables", "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables", "-fno-unwind-tables", "-mgeneral-regs-only",
    "-fno-builtin", "-fno-common",
]

# relocation types that would make the blob depend on where it is loaded
# (PC-relative calls and references are resolved by ld and are fine)
_ABSOLUTE_RELOC = re.compile(r"\bR_X86_64_(64|32|32S|GOTPCREL\w*|GOT\w*)\b")


def build_restorer(outdir: Path = NATIVE) -> Path:
    """Compile restorer.c into a flat blob; refuse anything that would need
    relocating or writable data."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "gcc")
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "restorer.o"
        elf = Path(tmp) / "restorer.elf"
        subprocess.run([cc, *RESTORER_CFLAGS, "-I", str(NATIVE), "-c",
                        str(NATIVE / "restorer.c"), "-o", str(obj)], check=True)
        relocs = subprocess.run(["readelf", "-rW", str(obj)], check=True,
                                capture_output=True, text=True).stdout
        bad = [line for line in relocs.splitlines() if _ABSOLUTE_RELOC.search(line)]
        if bad:
            raise SystemExit("restorer.c needs relocations (use no absolute addresses):\n"
                             + "\n".join(bad))
        subprocess.run(["ld", "-nostdlib", "-static", "-T", str(NATIVE / "restorer.ld"),
                        "-o", str(elf), str(obj)], check=True)
        sections = subprocess.run(["readelf", "-SW", str(elf)], check=True,
                                  capture_output=True, text=True).stdout
        for line in sections.splitlines():
            m = re.search(r"\]\s+\.data\s+\S+\s+\S+\s+\S+\s+([0-9a-f]+)", line)
            if m and int(m.group(1), 16):
                raise SystemExit("restorer.c has writable data; the blob is mapped r-x")
        blob = outdir / "restorer.bin"
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(elf), str(blob)],
                       check=True)
    data = blob.read_bytes()
    abi = int.from_bytes(data[80:84], "little")
    (outdir / "restorer.json").write_text(json.dumps(
        {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "abi": abi,
         "version": _version()}, indent=1) + "\n")
    return blob


def build_inplace() -> None:
    build_restorer(NATIVE)
    built = Path(ffibuilder.compile(tmpdir=str(ROOT), verbose=False)).resolve()
    # one module only: a stale one with another suffix (abi3 from pip, or a
    # cpython-3XX one from here) could shadow it
    for other in (ROOT / "umig").glob("_umig_native.*"):
        if other.resolve() != built and other.suffix in (".so", ".o", ".c"):
            other.unlink()


if __name__ == "__main__":
    build_inplace()
    print("built", NATIVE / "restorer.bin", "and umig/_umig_native", file=sys.stderr)
