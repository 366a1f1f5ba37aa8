"""Pure parsers for /proc text (STYLE.md §8): bytes in, values out.

Reading is the caller's business (`read(pid, name)`), so tests can feed
captured text as well as live readings.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from .errors import NoProcess, UmigError, from_oserror


def read(pid: int, name: str) -> bytes:
    path = f"/proc/{pid}/{name}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            parts = [os.read(fd, 65536)]
            while parts[-1]:
                parts.append(os.read(fd, 65536))
        finally:
            os.close(fd)
        return b"".join(parts)
    except FileNotFoundError:
        if not os.path.exists(f"/proc/{pid}"):
            raise NoProcess(f"no process {pid}", pid=pid) from None
        raise
    except ProcessLookupError:
        raise NoProcess(f"process {pid} went away", pid=pid) from None
    except OSError as e:
        raise from_oserror(e, f"reading {path}", pid=pid, path=path) from e


@dataclass
class Vma:
    start: int
    end: int
    perms: str               # e.g. "r-xp"
    offset: int
    major: int
    minor: int
    inode: int
    path: str                # "" for anonymous; "[heap]" etc. for special ones
    vmflags: set[str] = field(default_factory=set)

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    @property
    def prot(self) -> int:
        """PROT_READ | PROT_WRITE | PROT_EXEC bits."""
        return ((1 if self.perms[0] == "r" else 0) | (2 if self.perms[1] == "w" else 0)
                | (4 if self.perms[2] == "x" else 0))

    @property
    def deleted(self) -> bool:
        return self.path.endswith(" (deleted)")

    @property
    def is_file(self) -> bool:
        return self.inode != 0 and not self.path.startswith("[")


def _parse_maps_line(line: bytes) -> Vma:
    parts = line.split(None, 5)
    start, end = (int(x, 16) for x in parts[0].split(b"-"))
    major, minor = (int(x, 16) for x in parts[3].split(b":"))
    path = parts[5].decode("utf-8", "surrogateescape").rstrip("\n") if len(parts) > 5 else ""
    return Vma(start, end, parts[1].decode(), int(parts[2], 16), major, minor, int(parts[4]),
               path)


def parse_maps(data: bytes) -> list[Vma]:
    return [_parse_maps_line(line) for line in data.splitlines() if line.strip()]


_MAPS_LINE = re.compile(rb"^[0-9a-f]+-[0-9a-f]+ ")


def parse_smaps(data: bytes) -> list[Vma]:
    """/proc/PID/smaps: the maps lines, each with its VmFlags."""
    vmas: list[Vma] = []
    for line in data.splitlines():
        if not line:
            continue
        if _MAPS_LINE.match(line):
            vmas.append(_parse_maps_line(line))
        elif line.startswith(b"VmFlags:") and vmas:
            vmas[-1].vmflags = set(line[8:].decode().split())
    return vmas


def parse_status(data: bytes) -> dict[str, str]:
    out = {}
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def parse_stat(data: bytes) -> list[str]:
    """/proc/PID/stat as a list indexed like proc(5) minus one (field 1 at 0).
    The comm field may hold spaces and parentheses: split around the last ')'."""
    text = data.decode("utf-8", "surrogateescape")
    lpar = text.index("(")
    rpar = text.rindex(")")
    return [text[:lpar].strip(), text[lpar + 1:rpar]] + text[rpar + 2:].split()


RLIMIT_NAMES = {
    "Max cpu time": 0, "Max file size": 1, "Max data size": 2, "Max stack size": 3,
    "Max core file size": 4, "Max resident set": 5, "Max processes": 6,
    "Max open files": 7, "Max locked memory": 8, "Max address space": 9,
    "Max file locks": 10, "Max pending signals": 11, "Max msgqueue size": 12,
    "Max nice priority": 13, "Max realtime priority": 14, "Max realtime timeout": 15,
}
RLIM_INFINITY = 0xFFFFFFFFFFFFFFFF


def parse_limits(data: bytes) -> list[tuple[int, int, int]]:
    """/proc/PID/limits -> [(resource, soft, hard)] in resource order."""
    out = []
    for line in data.decode().splitlines()[1:]:
        name = line[:26].strip()
        if name not in RLIMIT_NAMES:
            raise UmigError(f"unexpected line in /proc/PID/limits: {line!r}")
        soft, hard = line[26:].split()[:2]

        def val(s: str) -> int:
            return RLIM_INFINITY if s == "unlimited" else int(s)
        out.append((RLIMIT_NAMES[name], val(soft), val(hard)))
    return sorted(out)


def parse_fdinfo(data: bytes) -> dict[str, str]:
    out = {}
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip(), value.strip())
    return out


def parse_sigmask(hexmask: str) -> int:
    return int(hexmask, 16)
