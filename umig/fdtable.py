"""File descriptors: one class per kind, describe() at grab and recreate()
at resume side by side (STYLE.md §4).  A kind not in KINDS makes grab
refuse, naming the fd and what it is.

describe() runs with the process frozen and returns the FD record's values;
recreate() runs in `umig resume` and returns an fd of the resuming process
that the restorer dups to the original number.
"""

from __future__ import annotations

import fcntl
import os
import stat
from dataclasses import dataclass

from . import procfs
from .errors import EnvironmentProblem, Refused, UmigError

O_ACCMODE = 0o3
O_APPEND = 0o2000
O_CLOEXEC = 0o2000000
# flags that only mean something while opening
_OPEN_ONLY = os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY | O_CLOEXEC

# character devices any host has, by (major, minor)
SIMPLE_DEVICES = {(1, 3): "/dev/null", (1, 5): "/dev/zero", (1, 8): "/dev/random",
                  (1, 9): "/dev/urandom"}


@dataclass
class FdInfo:
    """What /proc says about one fd of a frozen process."""
    fd: int
    target: str          # readlink of /proc/PID/fd/N
    st: os.stat_result   # stat of /proc/PID/fd/N (the open file itself)
    flags: int
    pos: int


class FdKind:
    name = ""

    @classmethod
    def matches(cls, info: FdInfo) -> bool:
        raise NotImplementedError

    @classmethod
    def describe(cls, pid: int, info: FdInfo) -> dict:
        st = info.st
        return {"fd": info.fd, "kind": cls.name, "flags": info.flags & ~O_CLOEXEC,
                "cloexec": 1 if info.flags & O_CLOEXEC else 0, "pos": info.pos,
                "path": info.target, "mode": st.st_mode, "dev": st.st_dev, "ino": st.st_ino,
                "rdev": st.st_rdev, "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        raise NotImplementedError


def _open(path: str, rec: dict) -> int:
    flags = (rec["flags"] & ~_OPEN_ONLY) | O_CLOEXEC
    try:
        return os.open(path, flags)
    except FileNotFoundError:
        raise EnvironmentProblem(f"fd {rec['fd']}: {path} does not exist on this host",
                                 fd=rec["fd"], path=path,
                                 hint="create it, or grab the process where it does") from None
    except OSError as e:
        raise EnvironmentProblem(f"fd {rec['fd']}: cannot open {path}: {e.strerror}",
                                 fd=rec["fd"], path=path) from None


class RegularFile(FdKind):
    """A regular file: reopened by path with its access mode and flags
    (O_APPEND included), at the same offset."""
    name = "file"

    @classmethod
    def matches(cls, info: FdInfo) -> bool:
        return stat.S_ISREG(info.st.st_mode)

    @classmethod
    def describe(cls, pid: int, info: FdInfo) -> dict:
        if info.target.endswith(" (deleted)"):
            raise Refused(f"process {pid} fd {info.fd}: {info.target} was deleted while open; "
                          f"deleted files are not supported yet", pid=pid, fd=info.fd)
        if not info.target.startswith("/"):
            raise Refused(f"process {pid} fd {info.fd}: {info.target} has no path umig can "
                          f"reopen", pid=pid, fd=info.fd)
        return super().describe(pid, info)

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        fd = _open(rec["path"], rec)
        if not rec["flags"] & O_APPEND:
            os.lseek(fd, rec["pos"], os.SEEK_SET)
        return fd


class Directory(FdKind):
    name = "dir"

    @classmethod
    def matches(cls, info: FdInfo) -> bool:
        return stat.S_ISDIR(info.st.st_mode)

    @classmethod
    def describe(cls, pid: int, info: FdInfo) -> dict:
        if info.target.endswith(" (deleted)"):
            raise Refused(f"process {pid} fd {info.fd}: directory {info.target} was removed "
                          f"while open", pid=pid, fd=info.fd)
        return super().describe(pid, info)

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        fd = _open(rec["path"], rec)
        if rec["pos"]:
            os.lseek(fd, rec["pos"], os.SEEK_SET)
        return fd


class SimpleDevice(FdKind):
    """/dev/null, /dev/zero, /dev/random, /dev/urandom: reopened by path."""
    name = "chr"

    @classmethod
    def matches(cls, info: FdInfo) -> bool:
        st = info.st
        return stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev),
                                             os.minor(st.st_rdev)) in SIMPLE_DEVICES

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        path = SIMPLE_DEVICES[(os.major(rec["rdev"]), os.minor(rec["rdev"]))]
        return _open(path, rec)


def _is_tty(st: os.stat_result) -> bool:
    # pty slaves (136-143), consoles and virtual terminals (4, 5)
    return stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in (4, 5, *range(136, 144))


class Stdio(FdKind):
    """fds 0-2 on a terminal, pipe or socket: as in a shell job, the
    resumed process gets the stdin/stdout/stderr of `umig resume`."""
    name = "stdio"

    @classmethod
    def matches(cls, info: FdInfo) -> bool:
        st = info.st
        return info.fd <= 2 and (_is_tty(st) or stat.S_ISFIFO(st.st_mode)
                                 or stat.S_ISSOCK(st.st_mode))

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        return ctx.own_stdio(rec["fd"])


class Terminal(FdKind):
    """A terminal at another fd (bash keeps one at 255): the terminal of
    `umig resume` takes its place."""
    name = "tty"

    @classmethod
    def matches(cls, info: FdInfo) -> bool:
        return _is_tty(info.st)

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        return ctx.own_terminal(rec["fd"])


KINDS: dict[str, type[FdKind]] = {k.name: k for k in (
    Stdio, RegularFile, Directory, SimpleDevice, Terminal)}


def _what(info: FdInfo) -> str:
    """A name for an fd umig does not support, for the refusal."""
    t = info.target
    if t.startswith("socket:"):
        return f"a socket ({t})"
    if t.startswith("pipe:"):
        return f"a pipe ({t})"
    if t.startswith("anon_inode:"):
        return f"an {t[11:].strip('[]')} ({t})"
    mode = info.st.st_mode
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return f"device {t} ({os.major(info.st.st_rdev)}:{os.minor(info.st.st_rdev)})"
    if stat.S_ISFIFO(mode):
        return f"a FIFO ({t})"
    return t


def fd_info(pid: int, fd: int) -> FdInfo:
    base = f"/proc/{pid}/fd/{fd}"
    try:
        target = os.readlink(base)
        st = os.stat(base)
    except FileNotFoundError:
        raise UmigError(f"process {pid} fd {fd} closed while it was frozen", pid=pid, fd=fd)
    info = procfs.parse_fdinfo(procfs.read(pid, f"fdinfo/{fd}"))
    return FdInfo(fd, target, st, int(info.get("flags", "0"), 8), int(info.get("pos", "0")))


def describe_all(pid: int) -> list[dict]:
    """FD records for every fd of the process; refuses the first one no
    kind supports, before anything is written."""
    try:
        fds = sorted(int(n) for n in os.listdir(f"/proc/{pid}/fd"))
    except OSError as e:
        raise UmigError(f"cannot list the fds of process {pid}: {e.strerror}", pid=pid) from e
    out = []
    for fd in fds:
        info = fd_info(pid, fd)
        for kind in KINDS.values():
            if kind.matches(info):
                out.append(kind.describe(pid, info))
                break
        else:
            raise Refused(f"process {pid} fd {fd} is {_what(info)}: umig cannot move this kind "
                          f"of fd yet", pid=pid, fd=fd,
                          hint="close it in the program, or wait for a umig that supports it")
    return out


class ResumeFds:
    """The resuming side: recreates every fd in the resuming process, above
    `base` so that none collides with a target number."""

    def __init__(self, base: int):
        self.base = base
        self.opened: list[int] = []

    def keep(self, fd: int) -> int:
        """Move a freshly opened fd of ours above base; returns the new number."""
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, self.base)
        os.close(fd)
        self.opened.append(high)
        return high

    def own_stdio(self, n: int) -> int:
        return os.dup(n)

    def own_terminal(self, fd: int) -> int:
        for n in (0, 1, 2):
            if os.isatty(n):
                return os.dup(n)
        raise EnvironmentProblem(f"fd {fd} was a terminal and umig resume has none",
                                 fd=fd, hint="run umig resume in a terminal")

    def recreate(self, rec: dict) -> int:
        kind = KINDS.get(rec["kind"])
        if kind is None:
            raise EnvironmentProblem(f"fd {rec['fd']} is of kind {rec['kind']!r}, which this "
                                     f"umig cannot recreate", fd=rec["fd"])
        return self.keep(kind.recreate(rec, self))

    def close(self) -> None:
        for fd in self.opened:
            try:
                os.close(fd)
            except OSError:
                pass
        self.opened.clear()

