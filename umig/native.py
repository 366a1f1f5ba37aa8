"""The one door to umig's native code: loads the cffi module and the
restorer blob, refuses a mismatched build, and wraps the coarse calls."""

from __future__ import annotations

import errno
import json
import os
from functools import cache
from pathlib import Path

from . import __version__
from .errors import UmigError

NATIVE_ABI = 6
PLAN_ABI = 10
PAGE = 4096

try:
    from ._umig_native import ffi, lib
except ImportError as e:  # pragma: no cover - a broken install
    raise UmigError(f"umig's native module is missing ({e})",
                    hint="reinstall umig (pip install .) or run `python build.py` in the source tree")

if lib.umig_native_abi() != NATIVE_ABI or lib.umig_plan_abi() != PLAN_ABI:
    raise UmigError(
        f"umig's native module has ABI {lib.umig_native_abi()}/{lib.umig_plan_abi()}, "
        f"this umig needs {NATIVE_ABI}/{PLAN_ABI}", hint="rebuild it: python build.py")
if ffi.string(lib.umig_native_version()).decode() != __version__:
    raise UmigError(
        f"umig's native module is from umig {ffi.string(lib.umig_native_version()).decode()}, "
        f"not {__version__}", hint="rebuild it: python build.py")

lib.umig_tune_malloc()


@cache
def restorer_blob() -> bytes:
    """restorer.bin, checked against the plan ABI it was built for."""
    here = Path(__file__).resolve().parent / "_native"
    try:
        data = (here / "restorer.bin").read_bytes()
        meta = json.loads((here / "restorer.json").read_text())
    except OSError as e:
        raise UmigError(f"the restorer blob is missing ({e})",
                        hint="reinstall umig or run `python build.py`")
    abi = int.from_bytes(data[lib.UMIG_BLOB_ABI_OFF:lib.UMIG_BLOB_ABI_OFF + 4], "little")
    if abi != PLAN_ABI or meta.get("version") != __version__:
        raise UmigError(f"the restorer blob is for plan ABI {abi} (umig {meta.get('version')}), "
                        f"this umig needs {PLAN_ABI}", hint="rebuild it: python build.py")
    return data


def check(ret: int, what: str, **obj) -> int:
    """Raise OSError for a negative errno returned by native code."""
    if ret < 0:
        raise OSError(-ret, f"{what}: {os.strerror(-ret)}")
    return ret


def ptrace(req: int, pid: int, addr: int = 0, data: int = 0) -> int:
    r = lib.umig_ptrace(req, pid, addr, data)
    if r < 0:
        raise OSError(-r, os.strerror(-r))
    return r


def syscall(nr: int, *args: int) -> int:
    a = list(args) + [0] * (6 - len(args))
    r = lib.umig_syscall6(nr, *a)
    if r < 0:
        raise OSError(-r, os.strerror(-r))
    return r


def errno_name(err: int) -> str:
    return errno.errorcode.get(abs(err), str(err))
