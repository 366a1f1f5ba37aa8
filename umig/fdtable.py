"""File descriptors: one class per kind, describe() at grab and recreate()
at resume side by side (STYLE.md §4).  A kind not in KINDS makes grab
refuse, naming the fd and what it is.

describe() runs with the process frozen and returns the FD record's values;
recreate() runs in `umig resume` and returns an fd of the resuming process
that the restorer dups to the original number.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import re
import socket
import stat
import struct
import time
from dataclasses import dataclass

from . import procfs
from .errors import EnvironmentProblem, Refused, UmigError, from_oserror

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
    raw_bytes: bytes = b""     # /proc/PID/fdinfo/N
    max_contents: int = 0      # bytes of a deleted file's or memfd's contents to carry
    diag: dict | None = None   # a unix socket's sock_diag answer
    tcp: object = None         # tcprepair.Taken with --tcp-established, else None
    owner: int = 0             # the pid whose fd it is
    probe: object = None       # a socket's or pipe's struct umig_fdprobe, if the scan read it

    @functools.cached_property
    def fdinfo(self) -> dict:
        """fdinfo, first value of each key (parsed when a kind asks)."""
        return procfs.parse_fdinfo(self.raw_bytes)

    @functools.cached_property
    def raw(self) -> str:
        """fdinfo as text (epoll lists one line per watch, locks one per lock)."""
        return self.raw_bytes.decode("utf-8", "replace")


NR_pidfd_getfd = 438


LOCK_KINDS = {"FLOCK": 1, "POSIX": 2, "OFDLCK": 3}
LOCK_FLOCK, LOCK_POSIX, LOCK_OFD = 1, 2, 3
TO_EOF = (1 << 64) - 1
F_OFD_SETLK = 37


def _locks(fdinfo: str) -> list[dict]:
    """The locks fdinfo lists for an fd ("lock: N: FLOCK ADVISORY WRITE pid
    dev:ino start end"): flock and OFD locks of its description, POSIX locks
    the process took through it."""
    out = []
    if "lock:" not in fdinfo:
        return out
    for line in fdinfo.splitlines():
        if not line.startswith("lock:"):
            continue
        f = line.split()
        if len(f) < 9 or f[2] not in LOCK_KINDS or f[3] != "ADVISORY":
            raise UmigError(f"a lock umig does not know: {line.strip()}")
        out.append({"kind": LOCK_KINDS[f[2]], "write": 1 if f[4] == "WRITE" else 0,
                    "start": int(f[7]), "end": TO_EOF if f[8] == "EOF" else int(f[8])})
    return out


def take_locks(fd: int, rec: dict) -> list[dict]:
    """Take again, on our new fd, the flock and OFD locks rec's description
    held (the description goes to the process); return the POSIX record
    locks, which only the process itself can take (the restorer does)."""
    posix = []
    for lk in rec.get("locks", []):
        what = (f"fd {rec['fd']} ({rec['path']}): its "
                f"{'write' if lk['write'] else 'read'} lock")
        try:
            if lk["kind"] == LOCK_FLOCK:
                fcntl.flock(fd, (fcntl.LOCK_EX if lk["write"] else fcntl.LOCK_SH)
                            | fcntl.LOCK_NB)
            elif lk["kind"] == LOCK_OFD:
                length = 0 if lk["end"] == TO_EOF else lk["end"] - lk["start"] + 1
                fcntl.fcntl(fd, F_OFD_SETLK, struct.pack(
                    "hhqqi", fcntl.F_WRLCK if lk["write"] else fcntl.F_RDLCK, 0,
                    lk["start"], length, 0))
            else:
                posix.append(lk)
        except OSError as e:
            raise EnvironmentProblem(f"{what} cannot be taken here: {e.strerror} (another "
                                     f"process holds it)", fd=rec["fd"],
                                     hint="stop the process holding it") from None
    return posix


def queued_bytes(fd: int) -> int:
    """FIONREAD of fd: the bytes waiting to be read (a pipe, a stream
    socket, a tty) or the next datagram's size."""
    return struct.unpack("i", fcntl.ioctl(fd, FIONREAD, bytes(4)))[0]


def take_fd(pid: int, fd: int) -> int:
    """A duplicate, in umig, of pid's fd (pidfd_getfd): the same open file
    description, to look at without changing the process.  The pidfd is
    kept while a grab describes the process (pidfds(), closed after)."""
    from .native import syscall
    with _pidfd(pid) as pidfd:
        return syscall(NR_pidfd_getfd, pidfd, fd, 0)


def _kept_pidfd(pid: int) -> int | None:
    """The pidfd of pid that pidfds() keeps (opened now if need be), or
    None outside pidfds()."""
    if _pidfds is None:
        return None
    if pid not in _pidfds:
        _pidfds[pid] = os.pidfd_open(pid)
    return _pidfds[pid]


@contextlib.contextmanager
def _pidfd(pid: int):
    """A pidfd of pid: the one pidfds() keeps, or one for this use only."""
    kept = _kept_pidfd(pid)
    if kept is not None:
        yield kept
        return
    pidfd = os.pidfd_open(pid)
    try:
        yield pidfd
    finally:
        os.close(pidfd)


def probe(pid: int, info: FdInfo):
    """The struct umig_fdprobe of info's socket: the one the scan read, or
    read now (the same native call); raises what stopped it."""
    from .native import ffi, lib
    p = info.probe
    if p is None:
        p = ffi.new("struct umig_fdprobe *")
        with _pidfd(pid) as pidfd:
            lib.umig_fd_probe(pidfd, info.fd, 1, p)
        info.probe = p
    if p.err:
        raise from_oserror(OSError(p.err, os.strerror(p.err)),
                           f"looking at process {pid} fd {info.fd} ({info.target})",
                           pid=pid, fd=info.fd)
    return p


_pidfds: dict[int, int] | None = None


@contextlib.contextmanager
def pidfds():
    """While it lasts, take_fd keeps one pidfd per process (a grab takes
    thousands of fds from frozen processes, whose pids cannot be reused)."""
    global _pidfds
    _pidfds = {}
    try:
        yield
    finally:
        for pidfd in _pidfds.values():
            os.close(pidfd)
        _pidfds = None


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
                "rdev": st.st_rdev, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "desc": 0,
                "state": b"", "locks": _locks(info.raw) if b"lock:" in info.raw_bytes else []}

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        raise NotImplementedError


def _reopen(ours: int, flags: int) -> int:
    """A new open file description of umig's own fd `ours` (through
    /proc/self/fd, a symlink) with a recorded fd's flags: without those
    that only mean something when a file is made or a path followed
    (O_NOFOLLOW would refuse the /proc link; O_TMPFILE, kept in the flags
    of a file made with it, holds O_DIRECTORY)."""
    return os.open(f"/proc/self/fd/{ours}",
                   (flags & ~(_OPEN_ONLY | os.O_TMPFILE | os.O_NOFOLLOW)) | O_CLOEXEC)


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
            raise Refused(f"process {pid} fd {info.fd}: {info.target} was removed from its "
                          f"directory but is still linked elsewhere; umig cannot find it by "
                          f"path", pid=pid, fd=info.fd)
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


PROC_PID = re.compile(r"^/proc/(\d+)(/.*)?$")


class ProcPidFile(FdKind):
    """A file under /proc/PID/ of the process itself or one of its threads:
    /proc/PID/status, /proc/self/stat, ...
    Reopened by the resumed process itself, under its new pid, once it
    exists (injected openat at the end of the resume: ResumeFds.late),
    with its flags and offset.  Other /proc and /sys files are regular
    files reopened by path."""
    name = "procpid"

    @classmethod
    def matches(cls, info: FdInfo) -> bool:
        m = PROC_PID.match(info.target)
        if m is None or info.st.st_dev != _proc_dev():
            return False
        n = int(m.group(1))     # its own, or one of its threads' (others: by path)
        return n == info.owner or os.path.exists(f"/proc/{info.owner}/task/{n}")

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        # a stand-in until the process reopens it (restore/run.py)
        return os.open("/dev/null", os.O_RDONLY | O_CLOEXEC)

    @staticmethod
    def new_path(path: str, pids: dict[int, int]) -> str:
        """The path under the resumed pids (pids: image pid/tid -> new)."""
        m = PROC_PID.match(path)
        return f"/proc/{pids.get(int(m.group(1)), int(m.group(1)))}{m.group(2) or ''}"


@functools.cache
def _proc_dev() -> int:
    return os.stat("/proc/self").st_dev


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


PTMX = (5, 2)


def _is_tty(st: os.stat_result) -> bool:
    # pty slaves (136-143), consoles, /dev/tty and virtual terminals (4, 5);
    # not a pty master (/dev/ptmx, 5:2): its slave's programs would be lost
    return stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in (4, 5, *range(136, 144)) \
        and (os.major(st.st_rdev), os.minor(st.st_rdev)) != PTMX


TCGETS, TCSETSW, TIOCGWINSZ, TIOCSWINSZ = 0x5401, 0x5403, 0x5413, 0x5414
TERMIOS_SIZE, WINSIZE_SIZE = 36, 8      # struct termios (kernel's), struct winsize


def terminal_state(pid: int, fd: int) -> bytes:
    """The terminal's settings (struct termios) and window size (struct
    winsize) as the process's fd sees them, for the terminal of `umig
    resume` to take on."""
    ours = take_fd(pid, fd)
    try:
        return (fcntl.ioctl(ours, TCGETS, bytes(TERMIOS_SIZE))
                + fcntl.ioctl(ours, TIOCGWINSZ, bytes(WINSIZE_SIZE)))
    except OSError:
        return b""       # hung up (its ssh session gone): nothing to carry
    finally:
        os.close(ours)


class Stdio(FdKind):
    """fds 0-2 on a terminal, pipe or socket: as in a shell job, the
    resumed process gets the stdin/stdout/stderr of `umig resume`.  On a
    terminal, state = its termios and window size, which the terminal of
    `umig resume` takes on while the process runs (ResumeFds.terminal_go)."""
    name = "stdio"

    @classmethod
    def matches(cls, info: FdInfo) -> bool:
        st = info.st
        return info.fd <= 2 and (_is_tty(st) or stat.S_ISFIFO(st.st_mode)
                                 or stat.S_ISSOCK(st.st_mode))

    @classmethod
    def describe(cls, pid: int, info: FdInfo) -> dict:
        rec = super().describe(pid, info)
        if _is_tty(info.st):
            rec["state"] = terminal_state(pid, info.fd)
        return rec

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        cls._note_terminal(rec, ctx)
        return ctx.own_stdio(rec["fd"])

    @staticmethod
    def _note_terminal(rec: dict, ctx: "ResumeFds") -> None:
        """The first terminal's settings are the ones umig's terminal takes on."""
        if rec["state"] and not ctx.terminal_modes:
            ctx.terminal_modes = rec["state"]


class Terminal(Stdio):
    """A terminal at another fd (bash keeps one at 255): the terminal of
    `umig resume` takes its place (state as for Stdio)."""
    name = "tty"

    @classmethod
    def matches(cls, info: FdInfo) -> bool:
        return _is_tty(info.st)

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        cls._note_terminal(rec, ctx)
        return ctx.own_terminal(rec["fd"])


TIOCGPTN, TIOCGPTPEER, TIOCGPKT, TIOCPKT = 0x80045430, 0x5441, 0x80045438, 0x5420
TIOCSCTTY, TIOCSPGRP, TIOCSPTLCK, TIOCGPTLCK = 0x540E, 0x5410, 0x40045431, 0x80045439


def pts_index(rdev: int) -> int | None:
    """The pty number of /dev/pts/N's device number, or None."""
    major, minor = os.major(rdev), os.minor(rdev)
    return (major - 136) * 256 + minor if 136 <= major < 144 else None


class PtyMaster(FdKind):
    """A pty master (/dev/ptmx) whose slave only the grabbed processes use
    (a terminal multiplexer, expect, a test harness): a new pty pair is
    made with the slave's settings, window size and packet mode; the
    processes' slave fds (PtySlave) open its slave.  Bytes in flight
    either way are refused by name (a tty cannot be read without consuming
    it).  state = JSON: index (N of /dev/pts/N), modes (hex termios +
    winsize), packet."""
    name = "ptmx"

    @classmethod
    def matches(cls, info: FdInfo) -> bool:
        st = info.st
        return stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == PTMX

    @classmethod
    def describe(cls, pid: int, info: FdInfo) -> dict:
        import json
        rec = super().describe(pid, info)
        ours = take_fd(pid, info.fd)
        try:
            index = struct.unpack("I", fcntl.ioctl(ours, TIOCGPTN, bytes(4)))[0]
            packet = struct.unpack("i", fcntl.ioctl(ours, TIOCGPKT, bytes(4)))[0]
            locked = struct.unpack("i", fcntl.ioctl(ours, TIOCGPTLCK, bytes(4)))[0]
            modes, waiting = b"", [0, 0]
            if not locked:        # a locked slave cannot be opened (nor was it)
                slave = fcntl.ioctl(ours, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | O_CLOEXEC)
                try:
                    modes = (fcntl.ioctl(slave, TCGETS, bytes(TERMIOS_SIZE))
                             + fcntl.ioctl(slave, TIOCGWINSZ, bytes(WINSIZE_SIZE)))
                    waiting = [queued_bytes(x) for x in (ours, slave)]
                finally:
                    os.close(slave)
        finally:
            os.close(ours)
        if any(waiting):
            raise Refused(f"process {pid} fd {info.fd} is the master of /dev/pts/{index} with "
                          f"{waiting[0]} bytes written by the slave side and {waiting[1]} by "
                          f"the master side not read yet, which would be lost", pid=pid,
                          fd=info.fd, hint="grab it again when the terminal is idle")
        rec["state"] = json.dumps({"index": index, "modes": modes.hex(),
                                   "packet": packet, "locked": locked}).encode()
        return rec

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        import json
        return ctx.pty(json.loads(rec["state"])["index"], rec["fd"])[0]


class PtySlave(FdKind):
    """A slave of a pty whose master the grabbed processes hold (PtyMaster):
    the new pair's slave, opened with the fd's flags (pty_pairs turns
    terminal records into these).  state = JSON: index."""
    name = "pts"

    @classmethod
    def matches(cls, info: FdInfo) -> bool:
        return False          # made from stdio/tty records by pty_pairs

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        import json
        _master, path = ctx.pty(json.loads(rec["state"])["index"], rec["fd"])
        return os.open(path, (rec["flags"] & ~_OPEN_ONLY) | os.O_NOCTTY | O_CLOEXEC)


def pty_pairs(members: list[tuple[int, list[dict]]]) -> None:
    """Terminal fds (stdio, tty) on the slave of a pty whose master a member
    holds become PtySlave records; refuses such a pty whose slave a process
    outside holds too (it would keep the old, dead pty)."""
    import json
    masters = {json.loads(r["state"])["index"]: (pid, r["fd"]) for pid, fds in members
               for r in fds if r["kind"] == PtyMaster.name}
    if not masters:
        return
    for _pid, fds in members:
        for r in fds:
            if r["kind"] in (Stdio.name, Terminal.name) and pts_index(r["rdev"]) in masters:
                r["kind"] = PtySlave.name
                r["state"] = json.dumps({"index": pts_index(r["rdev"])}).encode()
    names = {f"/dev/pts/{i}": i for i in masters}
    for opid, ofd, link in _fds_outside({pid for pid, _ in members}):
        try:
            index = names.get(os.readlink(link))
        except OSError:
            continue
        if index is not None:
            pid, fd = masters[index]
            raise Refused(f"process {pid} fd {fd} is the master of /dev/pts/{index}, whose "
                          f"slave process {opid} fd {ofd} outside the grabbed processes holds",
                          pid=pid, fd=fd, hint="grab that process with it (--tree), or close "
                                               "the terminal there")


F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032
PIPE_READ, PIPE_WRITE = 1, 2          # PIPE.ends: the ends some process still holds
FIONREAD = 0x541B
NR_tee = 276
SPLICE_F_NONBLOCK = 2


class Pipe(FdKind):
    """An end of a pipe whose other end the grabbed process(es) hold too:
    one new pipe per original (by inode), with its capacity and the bytes
    that were in it (PIPE record, read with tee: nothing is consumed)."""
    name = "pipe"

    @classmethod
    def matches(cls, info: FdInfo) -> bool:
        return stat.S_ISFIFO(info.st.st_mode) and info.target.startswith("pipe:")

    @classmethod
    def describe(cls, pid: int, info: FdInfo) -> dict:
        rec = super().describe(pid, info)
        if info.probe is not None and not info.probe.err:
            # capacity and bytes in it, for pipe_records (taken out there)
            rec["_pipe"] = (info.probe.pipe_size, info.probe.queued)
        return rec

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        ends = ctx.pipe_ends(rec["ino"], rec["fd"])
        # the end itself (ctx's): every fd of it shares its one description
        fd = ends[1] if rec["flags"] & O_ACCMODE == os.O_WRONLY else ends[0]
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, (fl & ~os.O_NONBLOCK) | (rec["flags"] & os.O_NONBLOCK))
        return fd


NR_eventfd2, NR_timerfd_create, NR_timerfd_settime, NR_signalfd4 = 290, 283, 286, 289
NR_epoll_create1 = 291
TFD_IOC_SET_TICKS = 0x40085400
TFD_TIMER_ABSTIME = 1
CLOCK_REALTIME, CLOCK_REALTIME_ALARM = 0, 8
EFD_SEMAPHORE = 1


class _AnonKind(FdKind):
    """An anon_inode fd whose state fdinfo shows and `state` carries."""
    anon = ""

    @classmethod
    def matches(cls, info: FdInfo) -> bool:
        return info.target == f"anon_inode:[{cls.anon}]"

    @classmethod
    def describe(cls, pid: int, info: FdInfo) -> dict:
        rec = super().describe(pid, info)
        rec["path"] = info.target
        rec["state"] = cls.state(pid, info)
        return rec

    @classmethod
    def state(cls, pid: int, info: FdInfo) -> bytes:
        raise NotImplementedError

    @staticmethod
    def _made(fd: int, rec: dict) -> int:
        """Our new fd with the record's O_NONBLOCK."""
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, (fl & ~os.O_NONBLOCK) | (rec["flags"] & os.O_NONBLOCK))
        return fd


class EventFd(_AnonKind):
    """eventfd: its counter and semaphore mode.  state = <Q count, I semaphore>."""
    name = anon = "eventfd"
    STATE = struct.Struct("<QI")

    @classmethod
    def state(cls, pid: int, info: FdInfo) -> bytes:
        return cls.STATE.pack(int(info.fdinfo["eventfd-count"], 16),
                              int(info.fdinfo.get("eventfd-semaphore", "0")))

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        from .native import syscall
        count, sem = cls.STATE.unpack(rec["state"])
        fd = syscall(NR_eventfd2, 0, O_CLOEXEC | (EFD_SEMAPHORE if sem else 0))
        if count:
            os.write(fd, struct.pack("<Q", count))
        return cls._made(fd, rec)


class TimerFd(_AnonKind):
    """timerfd: clock, flags, time left, interval and expirations not yet
    read.  state = <i clock, I flags, q left_ns, q interval_ns, Q ticks,
    q deadline_ns>; deadline (absolute, on the timer's clock) for an
    ABSTIME timer on the wall clock, which keeps its date anywhere; other
    timers restart with the time they had left."""
    name = anon = "timerfd"
    STATE = struct.Struct("<iIqqQq")

    @staticmethod
    def _ns(pair: str) -> int:
        s, ns = (int(x) for x in pair.strip("()").split(","))
        return s * 1_000_000_000 + ns

    @classmethod
    def state(cls, pid: int, info: FdInfo) -> bytes:
        f = info.fdinfo
        clock, flags = int(f["clockid"]), int(f["settime flags"], 8)
        left, interval = cls._ns(f["it_value"]), cls._ns(f["it_interval"])
        deadline = 0
        if flags & TFD_TIMER_ABSTIME and (left or interval):
            deadline = time.clock_gettime_ns(clock if clock != CLOCK_REALTIME_ALARM
                                             else CLOCK_REALTIME) + left
        return cls.STATE.pack(clock, flags, left, interval, int(f["ticks"]), deadline)

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        from .native import ffi, syscall
        clock, flags, left, interval, ticks, deadline = cls.STATE.unpack(rec["state"])
        try:
            fd = syscall(NR_timerfd_create, clock, O_CLOEXEC)
        except OSError as e:
            raise EnvironmentProblem(f"fd {rec['fd']}: cannot make a timerfd on clock {clock}: "
                                     f"{e.strerror}", fd=rec["fd"]) from None
        if left or interval:
            if deadline and clock in (CLOCK_REALTIME, CLOCK_REALTIME_ALARM):
                value, how = deadline, flags
            else:
                value, how = max(left, 1), flags & ~TFD_TIMER_ABSTIME
                if flags & TFD_TIMER_ABSTIME:
                    value += time.clock_gettime_ns(clock)
                    how = flags
            spec = struct.pack("<qqqq", interval // 10**9, interval % 10**9,
                               value // 10**9, value % 10**9)
            buf = ffi.new("char[]", spec)
            syscall(NR_timerfd_settime, fd, how, int(ffi.cast("uint64_t", buf)), 0)
        if ticks:
            fcntl.ioctl(fd, TFD_IOC_SET_TICKS, struct.pack("<Q", ticks))
        return cls._made(fd, rec)


class SignalFd(_AnonKind):
    """signalfd: the signals it reads.  state = <Q mask>."""
    name = anon = "signalfd"

    @classmethod
    def state(cls, pid: int, info: FdInfo) -> bytes:
        return struct.pack("<Q", int(info.fdinfo["sigmask"], 16))

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        from .native import ffi, syscall
        mask = ffi.new("uint64_t *", struct.unpack("<Q", rec["state"])[0])
        fd = syscall(NR_signalfd4, -1 & 0xFFFFFFFF, int(ffi.cast("uint64_t", mask)), 8,
                     O_CLOEXEC)
        return cls._made(fd, rec)


class Epoll(_AnonKind):
    """epoll: an empty instance here; its watches (state = <i tfd, I events,
    Q data, Q ino> each, as fdinfo lists them) are added by the restorer
    once every fd has its number, since epoll knows a watch by (file, fd
    number)."""
    name, anon = "epoll", "eventpoll"
    ITEM = struct.Struct("<iIQQ")

    @classmethod
    def state(cls, pid: int, info: FdInfo) -> bytes:
        out = b""
        for line in info.raw.splitlines():
            if line.startswith("tfd:"):
                f = line.split()
                tfd, events, data = int(f[1]), int(f[3], 16), int(f[5], 16)
                ino = int(f[7].split(":")[1], 16)
                out += cls.ITEM.pack(tfd, events, data, ino)
        return out

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        from .native import syscall
        return syscall(NR_epoll_create1, O_CLOEXEC)

    @classmethod
    def watches(cls, rec: dict) -> list[tuple[int, int, int, int]]:
        """(tfd, events, data, ino) of each watch."""
        return list(cls.ITEM.iter_unpack(rec["state"]))


NR_inotify_init1, NR_inotify_add_watch, NR_inotify_rm_watch = 294, 254, 255
NR_open_by_handle_at = 304
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, O_CLOEXEC


class Inotify(_AnonKind):
    """An inotify instance: state = JSON of its watches (wd, mask, path),
    the paths found from fdinfo's file handles (open_by_handle_at, which
    needs CAP_DAC_READ_SEARCH).  Resume adds them again under the same
    watch descriptors (numbers the original had freed are taken and freed
    again on a scratch file, and the IN_IGNORED events that makes are read
    away).  Events queued unread are refused by name."""
    name = "inotify"

    @classmethod
    def matches(cls, info: FdInfo) -> bool:
        return info.target == "anon_inode:inotify"

    @classmethod
    def state(cls, pid: int, info: FdInfo) -> bytes:
        import json
        ours = take_fd(pid, info.fd)
        try:
            queued = queued_bytes(ours)
        finally:
            os.close(ours)
        if queued:
            raise Refused(f"process {pid} fd {info.fd} is an inotify instance with {queued} "
                          f"bytes of events queued, which would be lost", pid=pid, fd=info.fd,
                          hint="grab it again once the program has read them")
        watches = []
        for line in info.raw.splitlines():
            if not line.startswith("inotify wd:"):
                continue
            f = dict(x.split(":", 1) for x in line.split()[1:] if ":" in x)
            sdev = int(f["sdev"], 16)
            path = _watched_path(pid, info.fd, os.makedev(sdev >> 20, sdev & 0xFFFFF),
                                 int(f["fhandle-type"]), f["f_handle"])
            watches.append({"wd": int(f["wd"]), "mask": int(f["mask"], 16), "path": path})
        return json.dumps({"watches": sorted(watches, key=lambda w: w["wd"])}).encode()

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        import json
        import tempfile
        from .native import syscall
        watches = json.loads(rec["state"])["watches"]
        fd = syscall(NR_inotify_init1, IN_CLOEXEC | IN_NONBLOCK)
        try:
            scratch = None
            next_wd = 1
            for w in watches:
                while next_wd < w["wd"]:       # take and give back a freed number
                    if scratch is None:
                        scratch = tempfile.TemporaryDirectory(prefix="umig-inotify-")
                    junk = os.path.join(scratch.name, str(next_wd))
                    open(junk, "w").close()
                    got = _add_watch(fd, junk, 1)
                    syscall(NR_inotify_rm_watch, fd, got)
                    next_wd = got + 1
                try:
                    got = _add_watch(fd, w["path"], w["mask"])
                except OSError as e:
                    raise EnvironmentProblem(
                        f"fd {rec['fd']}: cannot watch {w['path']} again (inotify watch "
                        f"{w['wd']}): {e.strerror}", fd=rec["fd"], path=w["path"],
                        hint="create it, or resume where it is") from None
                if got != w["wd"]:
                    raise EnvironmentProblem(f"fd {rec['fd']}: the inotify watch on {w['path']} "
                                             f"got number {got}, not {w['wd']}", fd=rec["fd"])
                next_wd = got + 1
            if scratch is not None:
                scratch.cleanup()
            while True:                        # the IN_IGNORED events of the scratch watches
                try:
                    os.read(fd, 65536)
                except BlockingIOError:
                    break
        except BaseException:
            os.close(fd)
            raise
        return cls._made(fd, rec)


def _add_watch(fd: int, path: str, mask: int) -> int:
    from .native import ffi, syscall
    buf = ffi.new("char[]", os.fsencode(path))       # alive until the call returns
    return syscall(NR_inotify_add_watch, fd, int(ffi.cast("uintptr_t", buf)), mask)


def _mount_of(dev: int) -> str | None:
    """A mount point of the filesystem with this device number, mounted
    from its root (a file handle resolves through any such mount)."""
    want = f"{os.major(dev)}:{os.minor(dev)}"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if parts[2] == want and parts[3] == "/":
                return parts[4].replace("\\040", " ")
    return None


def _watched_path(pid: int, fd: int, dev: int, htype: int, handle_hex: str) -> str:
    """The path of the inode an inotify watch is on, from its file handle."""
    from .native import ffi, syscall
    what = f"process {pid} fd {fd} is an inotify instance"
    mnt = _mount_of(dev)
    if mnt is None:
        raise Refused(f"{what} watching a file on device {os.major(dev)}:{os.minor(dev)}, "
                      f"which is not mounted here from its root", pid=pid, fd=fd)
    handle = bytes.fromhex(handle_hex)
    buf = ffi.new("char[]", struct.pack("Ii", len(handle), htype) + handle)
    mfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY | O_CLOEXEC)
    try:
        found = syscall(NR_open_by_handle_at, mfd, int(ffi.cast("uintptr_t", buf)),
                        os.O_PATH | O_CLOEXEC)
    except OSError as e:
        why = ("finding the watched paths needs CAP_DAC_READ_SEARCH (root)"
               if e.errno == errno.EPERM else
               "a watched file is gone" if e.errno == errno.ESTALE else e.strerror)
        raise Refused(f"{what}: {why}", pid=pid, fd=fd,
                      hint="run umig as root, or close it in the program") from None
    finally:
        os.close(mfd)
    try:
        return os.readlink(f"/proc/self/fd/{found}")
    finally:
        os.close(found)


class DeletedFile(FdKind):
    """A regular file deleted while open: its contents go into the image
    (state, up to --max-contents-mib) and resume makes an unlinked file
    with them (O_TMPFILE, in the file's directory when it is there, else in
    /tmp), opened with the original flags at the original offset."""
    name = "deleted"

    @classmethod
    def matches(cls, info: FdInfo) -> bool:
        return stat.S_ISREG(info.st.st_mode) and info.target.endswith(" (deleted)") \
            and info.target.startswith("/") and info.st.st_nlink == 0

    @classmethod
    def describe(cls, pid: int, info: FdInfo) -> dict:
        rec = super().describe(pid, info)
        size = info.st.st_size
        if size > info.max_contents:
            raise _too_big(pid, info)
        rec["state"] = _contents(pid, info.fd, size)
        return rec

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        tmp = ctx.deleted_file((rec["dev"], rec["ino"]), rec["path"], rec["mode"],
                               rec["state"])
        # the original's access mode and flags (tempfile.TemporaryFile's
        # O_TMPFILE and O_NOFOLLOW too): open it again through /proc
        fd = _reopen(tmp, rec["flags"])
        if not rec["flags"] & O_APPEND:
            os.lseek(fd, rec["pos"], os.SEEK_SET)
        return fd

    @staticmethod
    def once(members: list[tuple[int, list[dict]]]) -> None:
        """A deleted file open at several fds carries its bytes once, with
        the first (resume makes the file for it and opens it for the rest)."""
        seen: set[tuple[int, int]] = set()
        for _pid, fds in members:
            for rec in fds:
                if rec["kind"] == DeletedFile.name:
                    key = (rec["dev"], rec["ino"])
                    if key in seen:
                        rec["state"] = b""
                    seen.add(key)


def _too_big(pid: int, info: FdInfo) -> Refused:
    size = info.st.st_size
    return Refused(f"process {pid} fd {info.fd} is {info.target}, {size} bytes, more than the "
                   f"{info.max_contents >> 20} MiB of contents umig carries for deleted files "
                   f"and memfds (they are held in memory while grabbing)", pid=pid, fd=info.fd,
                   hint=f"raise it: umig grab --max-contents-mib {(size >> 20) + 1}")


def _contents(pid: int, fd: int, size: int) -> bytes:
    """The bytes of pid's fd (its file, from the start), taken with pidfd_getfd."""
    ours = take_fd(pid, fd)
    try:
        data = bytearray()
        while len(data) < size:
            chunk = os.pread(ours, min(size - len(data), 1 << 20), len(data))
            if not chunk:
                break
            data += chunk
        return bytes(data)
    except OSError as e:
        raise UmigError(f"process {pid} fd {fd}: reading it failed: {e.strerror}", pid=pid,
                        fd=fd) from e
    finally:
        os.close(ours)


# sock_diag (NETLINK_SOCK_DIAG) for AF_UNIX
NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY = 4, 20
UDIAG_SHOW_NAME, UDIAG_SHOW_PEER, UDIAG_SHOW_RQLEN = 1, 4, 16
UNIX_DIAG_NAME, UNIX_DIAG_PEER, UNIX_DIAG_RQLEN, UNIX_DIAG_SHUTDOWN = 0, 2, 4, 6
TCP_ESTABLISHED = 1
SOCK_TYPES = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram",
              socket.SOCK_SEQPACKET: "seqpacket"}


_diag_socket: socket.socket | None = None     # one netlink socket for all queries


def _diag_sock() -> socket.socket:
    global _diag_socket
    if _diag_socket is None:
        _diag_socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                     NETLINK_SOCK_DIAG)
    return _diag_socket


def _diag_request(ino: int, flags: int) -> bytes:
    req = struct.pack("=BBHIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, ino,
                      UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN) \
        + struct.pack("=II", 0xFFFFFFFF, 0xFFFFFFFF)
    return struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, flags, 1, 0) + req


def _diag_message(data: bytes, at: int, length: int) -> tuple[int, dict]:
    """(inode, what it says) from one unix_diag_msg at data[at:at+length]."""
    _fam, stype, state, _pad, ino = struct.unpack_from("=BBBBI", data, at + 16)
    out = {"type": stype, "state": state, "peer": 0, "rqueue": 0, "shutdown": 0,
           "name": b""}
    off = at + 16 + 16
    while off + 4 <= at + length:
        alen, atype = struct.unpack_from("=HH", data, off)
        val = data[off + 4:off + alen]
        if atype == UNIX_DIAG_PEER:
            out["peer"] = struct.unpack_from("=I", val)[0]
        elif atype == UNIX_DIAG_RQLEN:
            out["rqueue"] = struct.unpack_from("=I", val)[0]
        elif atype == UNIX_DIAG_SHUTDOWN:
            out["shutdown"] = val[0]
        elif atype == UNIX_DIAG_NAME:
            out["name"] = bytes(val)
        off += (alen + 3) & ~3
    return ino, out


def unix_diag(ino: int) -> dict | None:
    """What the kernel says of the unix socket with this inode (type,
    state, peer inode, bytes queued to read, shutdown bits, bound name), or
    None if it is not a unix socket.  From the table unix_diag_all() made,
    while there is one (one query by inode walks all unix sockets)."""
    if _diag_table is not None:
        return _diag_table.get(ino)
    nl = _diag_sock()
    nl.send(_diag_request(ino, NLM_F_REQUEST))
    data = nl.recv(65536)
    length, kind = struct.unpack_from("=IH", data)
    if kind != SOCK_DIAG_BY_FAMILY:
        return None                              # NLMSG_ERROR: no such unix socket
    got, out = _diag_message(data, 0, length)
    return out if got == ino else None


def unix_diag_all() -> dict[int, dict]:
    """unix_diag of every unix socket (of umig's network namespace), by
    inode, in one dump."""
    nl = _diag_sock()
    nl.send(_diag_request(0, NLM_F_REQUEST | NLM_F_DUMP))
    table: dict[int, dict] = {}
    while True:
        data = nl.recv(1 << 20)
        at = 0
        while at + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, at)
            if kind == NLMSG_DONE:
                return table
            if kind == NLMSG_ERROR:
                raise UmigError("listing unix sockets (sock_diag) failed")
            ino, out = _diag_message(data, at, length)
            table[ino] = out
            at += (length + 3) & ~3


NLM_F_REQUEST, NLM_F_DUMP, NLMSG_ERROR, NLMSG_DONE = 1, 0x300, 2, 3
_diag_table: dict[int, dict] | None = None


class UnixPair(FdKind):
    """An end of a connected, unnamed unix socket pair (socketpair) whose
    other end the grabbed processes hold too, or that nobody holds any
    more.  state = <I type, I shutdown, Q peer ino> + what is queued for it
    to read, peeked, nothing consumed: the bytes (stream), or each message
    as <I length> + bytes (datagram, seqpacket).  Resume makes one
    socketpair per pair and queues them again through the peer."""
    name = "unix"
    HEAD = struct.Struct("<IIQ")

    @classmethod
    def matches(cls, info: FdInfo) -> bool:
        if not (stat.S_ISSOCK(info.st.st_mode) and info.target.startswith("socket:[")):
            return False
        info.diag = unix_diag(info.st.st_ino)
        return info.diag is not None and not UnixBound.wanted(info.diag)

    @classmethod
    def describe(cls, pid: int, info: FdInfo) -> dict:
        d, fd = info.diag, info.fd
        kind = f"unix {SOCK_TYPES.get(d['type'], d['type'])}"
        if d["state"] != TCP_ESTABLISHED or d["type"] not in SOCK_TYPES:
            raise Refused(f"process {pid} fd {fd} is a socket ({kind}, unconnected, unnamed, "
                          f"{info.target}): umig cannot move this kind of socket yet",
                          pid=pid, fd=fd)
        peer = unix_diag(d["peer"]) if d["peer"] else None
        if d["type"] == socket.SOCK_DGRAM and peer and peer["name"] and not d["name"]:
            return UnixDgramClient.describe_client(pid, info, d, peer)
        if d["name"] or (peer and peer["name"]):
            if d["name"] and peer and peer["name"]:
                raise Refused(f"process {pid} fd {fd} is a socket ({kind}, {info.target}) "
                              f"connected from a socket bound to a name of its own; umig "
                              f"cannot move that yet", pid=pid, fd=fd)
            return UnixConnection.describe_connection(pid, info, d, peer)
        rec = super().describe(pid, info)
        rec["state"] = cls.HEAD.pack(d["type"], d["shutdown"], d["peer"]) + _queued(pid, info)
        return rec

    @classmethod
    def queued(cls, rec: dict) -> list[bytes]:
        """What rec's end had queued to read: one piece of bytes (stream),
        or its messages (datagram, seqpacket), in order."""
        stype = cls.HEAD.unpack_from(rec["state"])[0]
        data = memoryview(rec["state"])[cls.HEAD.size:]
        if stype == socket.SOCK_STREAM:
            return [bytes(data)] if data else []
        out, at = [], 0
        while at < len(data):
            n = MSG_LEN.unpack_from(data, at)[0]
            out.append(bytes(data[at + 4:at + 4 + n]))
            at += 4 + n
        return out

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        stype, shut, peer = cls.HEAD.unpack_from(rec["state"])
        fd = ctx.unix_end(rec["ino"], peer, stype, rec["fd"])      # ctx's own, not a copy
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, (fl & ~os.O_NONBLOCK) | (rec["flags"] & os.O_NONBLOCK))
        return fd


def _socket_name(raw: bytes) -> bytes:
    """A unix socket's name as bind takes it (a path without the NUL some
    binders count; an abstract name as it is)."""
    return raw if raw[:1] == b"\0" else raw.split(b"\0", 1)[0]


def _shown(name: bytes) -> str:
    return "@" + name[1:].decode(errors="replace") if name[:1] == b"\0" else name.decode(
        errors="replace")


class UnixConnection(UnixPair):
    """An end of a unix stream or seqpacket connection made through a
    listener bound to a name (the accepted end carries that name), whose
    other end the grabbed processes hold too: made again by connecting to
    a listener at that name (the tree's own, made again, or one of umig's
    for the moment) and accepting, so both ends have their names.
    state = UnixPair's head, then <B 1 if this is the accepted end,
    H name length> + the listener's name, then what is queued to read."""
    name = "unix-conn"
    NAME = struct.Struct("<BH")

    @classmethod
    def matches(cls, info: FdInfo) -> bool:
        return False          # reached through UnixPair.describe

    @classmethod
    def describe_connection(cls, pid: int, info: FdInfo, d: dict, peer: dict | None) -> dict:
        accepted = bool(d["name"])
        name = _socket_name(d["name"] if accepted else peer["name"])
        rec = super(UnixPair, cls).describe(pid, info)
        data = _queued(pid, info)
        rec["path"] = f"{info.target} ({'accepted on' if accepted else 'connected to'} " \
                      f"{_shown(name)})"
        rec["state"] = (cls.HEAD.pack(d["type"], d["shutdown"], d["peer"])
                        + cls.NAME.pack(1 if accepted else 0, len(name)) + name + data)
        return rec

    @classmethod
    def listener_name(cls, rec: dict) -> tuple[bool, bytes]:
        accepted, n = cls.NAME.unpack_from(rec["state"], cls.HEAD.size)
        at = cls.HEAD.size + cls.NAME.size
        return bool(accepted), rec["state"][at:at + n]

    @classmethod
    def queued(cls, rec: dict) -> list[bytes]:
        _accepted, name = cls.listener_name(rec)
        skip = cls.NAME.size + len(name)
        return UnixPair.queued({**rec, "state": rec["state"][:cls.HEAD.size]
                                + rec["state"][cls.HEAD.size + skip:]})

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        fd = ctx.unix_connection(rec)
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, (fl & ~os.O_NONBLOCK) | (rec["flags"] & os.O_NONBLOCK))
        return fd


class UnixDgramClient(FdKind):
    """An unbound unix datagram socket connected to a named one (a syslog
    client on /dev/log, ...), wherever that one is: connected again by
    name once every fd is made (ResumeFds.unix_fill).  Replies queued for
    it are refused by name (they could not be queued again from their
    sender).  state = JSON {name: hex of the peer's name}."""
    name = "unix-dgram"

    @classmethod
    def matches(cls, info: FdInfo) -> bool:
        return False          # reached through UnixPair.describe

    @classmethod
    def describe_client(cls, pid: int, info: FdInfo, d: dict, peer: dict) -> dict:
        import json
        name = _socket_name(peer["name"])
        if _peek_messages(pid, info.fd, info.target):
            raise Refused(f"process {pid} fd {info.fd} is a unix datagram socket connected to "
                          f"{_shown(name)} with datagrams queued for it, which would be lost",
                          pid=pid, fd=info.fd, hint="let the program read them first")
        rec = super().describe(pid, info)
        rec["path"] = f"{info.target} (connected to {_shown(name)})"
        rec["state"] = json.dumps({"name": name.hex()}).encode()
        return rec

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        fd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC).detach()
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, (fl & ~os.O_NONBLOCK) | (rec["flags"] & os.O_NONBLOCK))
        return fd


UNIX_ENDS = ("unix", "unix-conn")


TCP_CLOSE, TCP_LISTEN = 7, 10


class UnixBound(FdKind):
    """A unix socket bound to a name, by path or in the abstract namespace,
    that listens (stream, seqpacket) or waits unconnected for datagrams:
    bound and listening again under the same name.  A stale socket file
    left at the path (nobody accepts on it) is replaced.  Connections
    waiting to be accepted and queued datagrams are refused by name.
    state = JSON {type, name (hex; abstract names start with 00), listening,
    mode (of the socket file)}."""
    name = "unix-bound"

    @staticmethod
    def wanted(d: dict) -> bool:
        if not d["name"]:      # an unbound, unconnected datagram socket (sendto only)
            return d["state"] == TCP_CLOSE and d["type"] == socket.SOCK_DGRAM
        return d["state"] in (TCP_LISTEN, TCP_CLOSE) and d["type"] in SOCK_TYPES

    @classmethod
    def matches(cls, info: FdInfo) -> bool:
        return info.diag is not None and cls.wanted(info.diag)

    @classmethod
    def describe(cls, pid: int, info: FdInfo) -> dict:
        import json
        d, fd = info.diag, info.fd
        name = d["name"]
        if name[:1] != b"\0":
            name = name.split(b"\0", 1)[0]     # a path (binders may count its NUL)
        shown = ("@" + name[1:].decode(errors="replace") if name[:1] == b"\0" else
                 name.decode(errors="replace")) if name else "(unnamed)"
        listening = d["state"] == TCP_LISTEN
        if d["rqueue"]:
            what = (f"{d['rqueue']} connection(s) waiting to be accepted" if listening
                    else "datagrams queued")
            raise Refused(f"process {pid} fd {fd} is a socket (unix, bound to {shown}) with "
                          f"{what}, which would be lost", pid=pid, fd=fd,
                          hint="grab it again once the program has taken them")
        mode = 0
        if name and name[:1] != b"\0":
            try:
                mode = stat.S_IMODE(os.stat(name).st_mode)
            except OSError:
                pass
        rec = super().describe(pid, info)
        rec["path"] = shown
        rec["state"] = json.dumps({"type": d["type"], "name": name.hex(),
                                   "listening": listening, "mode": mode}).encode()
        return rec

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        import json
        st = json.loads(rec["state"])
        name = bytes.fromhex(st["name"])
        s = socket.socket(socket.AF_UNIX, st["type"] | socket.SOCK_CLOEXEC)
        try:
            if name and name[:1] != b"\0" and os.path.exists(name) and stat.S_ISSOCK(
                    os.lstat(name).st_mode):
                _unlink_stale(name, st["type"], rec["path"], rec["fd"])
            if name:
                s.bind(name)
            if st["mode"]:
                os.chmod(name, st["mode"])
            if st["listening"]:
                s.listen(socket.SOMAXCONN)
        except OSError as e:
            s.close()
            raise EnvironmentProblem(f"fd {rec['fd']}: cannot bind its unix socket to "
                                     f"{rec['path']} again: {e.strerror}", fd=rec["fd"],
                                     hint="free that name here") from None
        fd = s.detach()
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, (fl & ~os.O_NONBLOCK) | (rec["flags"] & os.O_NONBLOCK))
        return fd


def _unlink_stale(path: bytes, stype: int, shown: str, fd: int) -> None:
    """Remove a socket file nobody listens on any more (the grabbed
    process's, left behind); refuse one that is alive."""
    with socket.socket(socket.AF_UNIX, stype) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)
            return
    raise EnvironmentProblem(f"fd {fd}: {shown} is a socket another process accepts on here",
                             fd=fd, hint="stop that process")


MSG_LEN = struct.Struct("<I")
SO_PEEK_OFF = 42


def _queued(pid: int, info: FdInfo) -> bytes:
    """What a connected unix end has queued to read, as its state carries
    it: the bytes (stream), or each message as <I length> + bytes."""
    d = info.diag
    if d["type"] != socket.SOCK_STREAM:
        # rqueue is only the first message's length here (0 for an empty
        # one): always look
        return b"".join(MSG_LEN.pack(len(m)) + m
                        for m in _peek_messages(pid, info.fd, info.target))
    return _peek(pid, info.fd, d["rqueue"], info.target) if d["rqueue"] else b""


def _peek_messages(pid: int, fd: int, target: str) -> list[bytes]:
    """The messages queued on pid's unix datagram or seqpacket socket fd,
    in order, peeked one after the other with a peek offset (SO_PEEK_OFF,
    put back as it was: nothing is consumed); refuses fds or credentials
    in flight."""
    ours = take_fd(pid, fd)
    s = socket.socket(fileno=ours)
    out = []
    try:
        before = s.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
        s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        try:
            while True:
                try:
                    data, anc, _flags, _addr = s.recvmsg(
                        1 << 20, socket.CMSG_SPACE(253 * 4), socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                _no_ancillary(anc, pid, fd, target)
                out.append(data)
                if len(out) > MAX_MESSAGES:
                    raise UmigError(f"process {pid} fd {fd}: more than {MAX_MESSAGES} messages "
                                    f"peeked on {target}", pid=pid, fd=fd)
        finally:
            s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, before)
    finally:
        s.close()
    return out


MAX_MESSAGES = 100000


def _no_ancillary(anc, pid: int, fd: int, target: str) -> None:
    for level, typ, cdata in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            for k in range(0, len(cdata) - len(cdata) % 4, 4):
                os.close(struct.unpack_from("i", cdata, k)[0])   # peeking installed them
        raise Refused(f"process {pid} fd {fd} is a socket ({target}) with file "
                      f"descriptors or credentials in flight; umig cannot carry those yet",
                      pid=pid, fd=fd, hint="let the program read them first")


def _peek(pid: int, fd: int, size: int, target: str) -> bytes:
    """The bytes queued on pid's unix stream socket fd, peeked (not
    consumed); refuses fds or credentials in flight."""
    ours = take_fd(pid, fd)
    try:
        s = socket.socket(fileno=ours)
        try:
            data, anc, _flags, _addr = s.recvmsg(size, socket.CMSG_SPACE(253 * 4),
                                                 socket.MSG_PEEK | socket.MSG_DONTWAIT)
        finally:
            s.detach()
        _no_ancillary(anc, pid, fd, target)
        if len(data) != size:
            raise UmigError(f"process {pid} fd {fd}: peeked {len(data)} of the {size} bytes "
                            f"queued on {target}", pid=pid, fd=fd)
        return data
    finally:
        os.close(ours)


def check_socketpairs(members: list[tuple[int, list[dict]]]) -> None:
    """Refuse a socketpair end whose peer a process outside holds."""
    ends = {rec["ino"]: (pid, rec) for pid, fds in members for rec in fds
            if rec["kind"] in UNIX_ENDS}
    lonely = {UnixPair.HEAD.unpack_from(rec["state"])[2]: (pid, rec)
              for pid, rec in ends.values()
              if UnixPair.HEAD.unpack_from(rec["state"])[2] not in ends}
    lonely.pop(0, None)
    if not lonely:
        return
    outside = _holders(set(lonely), {pid for pid, _ in members}, "socket")
    for peer, (opid, ofd) in outside.items():
        pid, rec = lonely[peer]
        raise Refused(f"process {pid} fd {rec['fd']} is a socket ({rec['path']}) connected to "
                      f"socket:[{peer}], which is held outside the grabbed process"
                      f"{'es' if len(members) > 1 else ''} (by process {opid} fd {ofd})",
                      pid=pid, fd=rec["fd"], hint="grab the process at the other end with it "
                                                  "(--tree), or close the socket")


SOL_TCP, TCP_NODELAY = 6, 1
INET_OPTIONS = (("reuseaddr", socket.SOL_SOCKET, socket.SO_REUSEADDR),
                ("reuseport", socket.SOL_SOCKET, socket.SO_REUSEPORT),
                ("keepalive", socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                ("broadcast", socket.SOL_SOCKET, socket.SO_BROADCAST))


def _tcp_queue(ino: int) -> int | None:
    """rx_queue of the TCP socket with this inode in /proc/net/tcp{,6}:
    for a listener, the connections waiting to be accepted."""
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/net/{name}") as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if int(parts[9]) == ino:
                        return int(parts[4].split(":")[1], 16)
        except (OSError, ValueError, IndexError):
            continue
    return None


def _inet_address(raw: bytes) -> list | None:
    """[host, port] of a struct sockaddr_in or sockaddr_in6, as Python's
    getsockname gives the first two."""
    if len(raw) < 8:
        return None
    family, port = struct.unpack_from("<H", raw)[0], struct.unpack_from(">H", raw, 2)[0]
    if family == socket.AF_INET:
        return [socket.inet_ntop(socket.AF_INET, raw[4:8]), port]
    if family == socket.AF_INET6 and len(raw) >= 28:
        host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        scope = struct.unpack_from("<I", raw, 24)[0]
        if scope:                 # a link-local address: as getsockname names it
            try:
                host += "%" + socket.if_indextoname(scope)
            except OSError:
                host += f"%{scope}"
        return [host, port]
    return None


class InetSocket(FdKind):
    """A TCP listening socket, or a UDP socket (bound, connected), of IPv4
    or IPv6: made again with the same address and port and the options
    the program set (SO_REUSEADDR, SO_REUSEPORT, SO_KEEPALIVE,
    SO_BROADCAST, TCP_NODELAY, IPV6_V6ONLY).  state = JSON of those.
    Established TCP connections, connections waiting to be accepted and
    queued datagrams are refused by name."""
    name = "inet"

    @classmethod
    def matches(cls, info: FdInfo) -> bool:
        return stat.S_ISSOCK(info.st.st_mode) and info.target.startswith("socket:[") \
            and info.diag is None

    @classmethod
    def describe(cls, pid: int, info: FdInfo) -> dict:
        import json
        fd = info.fd
        p = probe(pid, info)
        family, stype = p.family, p.type
        what = f"a socket ({info.target})"
        if family not in (socket.AF_INET, socket.AF_INET6) or stype not in (
                socket.SOCK_STREAM, socket.SOCK_DGRAM):
            named = SOCKET_FAMILIES.get(family, f"of family {family}")
            raise Refused(f"process {pid} fd {fd} is {what}: {named} (type {stype}); "
                          f"umig cannot move this kind of fd yet", pid=pid, fd=fd,
                          hint="close it in the program, or wait for a umig that supports it")
        st = {"family": family, "type": stype, "proto": p.proto,
              "listening": bool(p.listening), "bound": None, "peer": None}
        for key, _, _ in INET_OPTIONS:
            st[key] = getattr(p, key)
        if stype == socket.SOCK_STREAM:
            st["nodelay"] = p.nodelay
        if family == socket.AF_INET6:
            st["v6only"] = p.v6only
        name = _inet_address(bytes(p.name[0:p.name_len]))
        if name and name[1]:
            st["bound"] = name
        if p.peer_len:
            st["peer"] = _inet_address(bytes(p.peer[0:p.peer_len]))
        kind = "TCP" if stype == socket.SOCK_STREAM else "UDP"
        if stype == socket.SOCK_STREAM and st["peer"]:
            s = socket.socket(fileno=take_fd(pid, fd))
            try:
                return TcpConnection.describe_connection(pid, info, s, st)
            finally:
                s.close()
        if st["listening"]:
            waiting = _tcp_queue(info.st.st_ino)
            if waiting:
                raise Refused(f"process {pid} fd {fd} is {what}: a TCP listener on "
                              f"{name[0]}:{name[1]} with {waiting} connection(s) waiting "
                              f"to be accepted, which would be lost", pid=pid, fd=fd,
                              hint="grab it again once they are accepted")
        if stype == socket.SOCK_DGRAM and p.queued:      # -1: it cannot tell either
            raise Refused(f"process {pid} fd {fd} is {what}: a {kind} socket with "
                          f"datagrams queued, which would be lost", pid=pid, fd=fd,
                          hint="let the program read them first")
        rec = super().describe(pid, info)
        rec["state"] = json.dumps(st).encode()
        return rec

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        import json
        st = json.loads(rec["state"])
        s = socket.socket(st["family"], st["type"] | socket.SOCK_CLOEXEC, st["proto"])
        try:
            for key, level, opt in INET_OPTIONS:
                if st.get(key):
                    s.setsockopt(level, opt, st[key])
            if st.get("nodelay"):
                s.setsockopt(SOL_TCP, TCP_NODELAY, st["nodelay"])
            if "v6only" in st:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, st["v6only"])
            where = f"{st['bound'][0]}:{st['bound'][1]}" if st["bound"] else ""
            if st["bound"]:
                s.bind(tuple(st["bound"]))
            if st["listening"]:
                s.listen(socket.SOMAXCONN)
            if st["peer"]:
                s.connect(tuple(st["peer"]))
        except OSError as e:
            s.close()
            raise EnvironmentProblem(f"fd {rec['fd']}: cannot make its socket on {where} "
                                     f"again: {e.strerror}", fd=rec["fd"],
                                     hint="free that address and port here") from None
        fd = s.detach()
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, (fl & ~os.O_NONBLOCK) | (rec["flags"] & os.O_NONBLOCK))
        return fd


class TcpConnection(InetSocket):
    """An established TCP connection, moved with TCP_REPAIR behind a
    network lock (umig/tcprepair.py) when grab has --tcp-established, and
    refused by name otherwise.  state = JSON of InetSocket's with "tcp":
    sequence numbers, queues, window and options.  InetSocket.describe
    finds out a socket is one and hands it over."""
    name = "tcp"

    @classmethod
    def matches(cls, info: FdInfo) -> bool:
        return False        # reached through InetSocket.describe

    @classmethod
    def describe_connection(cls, pid: int, info: FdInfo, s: socket.socket, st: dict) -> dict:
        import json
        from . import tcprepair
        fd = info.fd
        if info.tcp is None:
            raise Refused(f"process {pid} fd {fd} is an established TCP connection "
                          f"{tcprepair.connection_name(st)}; moving it needs grab "
                          f"--tcp-established (root, and the same address where it is "
                          f"resumed)", pid=pid, fd=fd,
                          hint="add --tcp-established, or close the connection in the program")
        ours = socket.socket(fileno=os.dup(s.fileno()))
        st["tcp"] = info.tcp.take(pid, fd, ours, st)
        rec = super(InetSocket, cls).describe(pid, info)
        rec["state"] = json.dumps(st).encode()
        return rec

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        import json
        from . import tcprepair
        st = json.loads(rec["state"])
        s, unsent = tcprepair.restore(st, rec["fd"])
        ctx.tcp.append((s, unsent))
        ctx.tcp_locks.add(st["tcp"]["lock"])
        if st.get("nodelay"):
            s.setsockopt(SOL_TCP, TCP_NODELAY, st["nodelay"])
        fd = os.dup(s.fileno())
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, (fl & ~os.O_NONBLOCK) | (rec["flags"] & os.O_NONBLOCK))
        return fd


class Fifo(FdKind):
    """A named pipe, reopened by its path.  While a process outside the
    grabbed ones holds it open, its buffer lives on in the kernel and
    the resumed process finds it there; when the grabbed processes were
    its only holders, the bytes in it (state) are written back."""
    name = "fifo"

    @classmethod
    def matches(cls, info: FdInfo) -> bool:
        return stat.S_ISFIFO(info.st.st_mode) and info.target.startswith("/")

    @classmethod
    def describe(cls, pid: int, info: FdInfo) -> dict:
        rec = super().describe(pid, info)
        if info.target.endswith(" (deleted)"):
            raise Refused(f"process {pid} fd {info.fd}: FIFO {info.target} was removed while "
                          f"open; umig reopens FIFOs by path", pid=pid, fd=info.fd)
        return rec

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        key = (rec["dev"], rec["ino"])
        both = ctx.fifos.get(key)
        if both is None:
            # read-write: opens without waiting for the other side, and keeps
            # the pipe (and the bytes written back) alive until the process has it
            both = ctx.fifos[key] = ctx.keep(_open(rec["path"], {**rec, "flags": os.O_RDWR}))
            write_all(both, rec["state"])
        fd = _reopen(both, rec["flags"] | os.O_NONBLOCK)
        if not rec["flags"] & os.O_NONBLOCK:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return fd

    @staticmethod
    def contents(members: list[tuple[int, list[dict]]]) -> None:
        """The bytes of each FIFO only the grabbed processes hold, with its
        first read end (tee: nothing consumed)."""
        pids = {pid for pid, _ in members}
        firsts: dict[tuple[int, int], tuple[int, dict]] = {}
        readers: dict[tuple[int, int], tuple[int, int]] = {}
        for pid, fds in members:
            for rec in fds:
                if rec["kind"] == Fifo.name:
                    key = (rec["dev"], rec["ino"])
                    firsts.setdefault(key, (pid, rec))
                    if rec["flags"] & O_ACCMODE != os.O_WRONLY:
                        readers.setdefault(key, (pid, rec["fd"]))
        for key, (pid, rec) in firsts.items():
            if key in readers and not _fifo_held_outside(key, pids):
                rec["state"] = _pipe_contents(*readers[key], key[1])["data"]


def _fifo_held_outside(key: tuple[int, int], members: set[int]) -> bool:
    for _pid, _fd, link in _fds_outside(members):
        try:
            st = os.stat(link)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == key:
            return True
    return False


def _fds_outside(members: set[int]):
    """(pid, fd, /proc/PID/fd/N) of every fd of every process outside
    `members` that /proc lets us see (a plain user sees only their own)."""
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in members:
            continue
        try:
            fds = os.listdir(f"/proc/{name}/fd")
        except OSError:
            continue
        for fd in fds:
            yield int(name), int(fd), f"/proc/{name}/fd/{fd}"


F_ADD_SEALS, F_GET_SEALS = 1033, 1034
MFD_CLOEXEC, MFD_ALLOW_SEALING = 1, 2
MAX_CONTENTS = 16 << 20       # default bytes of a deleted file or memfd an image carries


class MemFd(FdKind):
    """A memfd: its name, contents (up to --max-contents-mib) and seals, remade with
    memfd_create.  state = <I seals> + the contents.  Where the process also
    maps it shared, resume maps the new memfd there (one object again)."""
    name = "memfd"

    @classmethod
    def matches(cls, info: FdInfo) -> bool:
        return stat.S_ISREG(info.st.st_mode) and info.target.startswith("/memfd:")

    @classmethod
    def describe(cls, pid: int, info: FdInfo) -> dict:
        rec = super().describe(pid, info)
        size = info.st.st_size
        if size > info.max_contents:
            raise _too_big(pid, info)
        fd = take_fd(pid, info.fd)
        try:
            seals = fcntl.fcntl(fd, F_GET_SEALS)
        finally:
            os.close(fd)
        rec["state"] = struct.pack("<I", seals) + _contents(pid, info.fd, size)
        return rec

    @classmethod
    def recreate(cls, rec: dict, ctx: "ResumeFds") -> int:
        name = rec["path"][len("/memfd:"):]
        if name.endswith(" (deleted)"):
            name = name[:-len(" (deleted)")]
        seals = struct.unpack_from("<I", rec["state"])[0]
        data = memoryview(rec["state"])[4:]
        fd = os.memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)
        view = data
        while view:
            view = view[os.pwrite(fd, view, len(data) - len(view)):]
        if seals:
            fcntl.fcntl(fd, F_ADD_SEALS, seals)
        os.lseek(fd, rec["pos"], os.SEEK_SET)
        return fd


KINDS: dict[str, type[FdKind]] = {k.name: k for k in (
    Stdio, MemFd, DeletedFile, ProcPidFile, RegularFile, Directory, SimpleDevice, Terminal,
    PtyMaster, PtySlave, Pipe, EventFd, TimerFd, SignalFd, Epoll, UnixPair, UnixConnection,
    UnixDgramClient, UnixBound, InetSocket, TcpConnection, Fifo, Inotify)}
# the kinds whose matches() can say yes, by file type (st_mode & S_IFMT;
# anon inodes have none), in KINDS order: 10,000 fds are not each offered
# to every kind
_BY_TYPE: dict[int, list[type[FdKind]]] = {
    fmt: [k for k in KINDS.values() if k in kinds] for fmt, kinds in (
        (stat.S_IFSOCK, {Stdio, UnixPair, UnixBound, InetSocket}),
        (stat.S_IFIFO, {Stdio, Pipe, Fifo}),
        (stat.S_IFREG, {MemFd, DeletedFile, ProcPidFile, RegularFile}),
        (stat.S_IFDIR, {Directory}),
        (stat.S_IFCHR, {Stdio, SimpleDevice, Terminal, PtyMaster}),
        (0, {EventFd, TimerFd, SignalFd, Epoll, Inotify}))}



def check_epolls(pid: int, fds: list[dict]) -> None:
    """Every fd an epoll watches must still be that fd of the process (a
    watch outlives the closing of its fd number while a dup keeps the file
    open; umig could not re-add it under that number)."""
    by_fd = {rec["fd"]: rec for rec in fds}
    for rec in fds:
        if rec["kind"] != Epoll.name:
            continue
        for tfd, _events, _data, ino in Epoll.watches(rec):
            target = by_fd.get(tfd)
            if target is None or target["ino"] != ino:
                raise Refused(f"process {pid} fd {rec['fd']} is an epoll watching fd {tfd}, "
                              f"which the process no longer has open as that number", pid=pid,
                              fd=rec["fd"], hint="close the epoll or re-add the fd in the "
                                                 "program")


NR_kcmp, KCMP_FILE = 312, 0


def share_descriptions(members: list[tuple[int, list[dict]]]) -> None:
    """Give FD records that are one open file description (dup'ed, or
    inherited across fork) the same `desc`, found with kcmp(KCMP_FILE)
    among fds of the same file.  Pipes and stdio are shared by how resume
    makes them; this is for files, directories and devices."""
    groups: dict[tuple[int, int], list[tuple[int, dict]]] = {}
    for pid, fds in members:
        for rec in fds:
            rec.setdefault("desc", 0)
            if rec["kind"] in (RegularFile.name, Directory.name, SimpleDevice.name,
                               EventFd.name, TimerFd.name, SignalFd.name, Epoll.name,
                               MemFd.name, DeletedFile.name, UnixPair.name,
                               UnixConnection.name, Inotify.name,
                               PtyMaster.name, PtySlave.name):
                # not split by offset or flags: a process outside the
                # frozen ones may share a description and move its offset
                # between the reading of two fds
                groups.setdefault((rec["dev"], rec["ino"]), []).append((pid, rec))
    next_id = 1
    for group in groups.values():
        if len(group) < 2:
            continue
        for rec, shared in _by_description(group):
            if shared:
                if not last["desc"]:
                    last["desc"] = next_id
                    next_id += 1
                rec["desc"] = last["desc"]
            last = rec


def _by_description(group: list[tuple[int, dict]]):
    """The records of group (pid, FD record) in kcmp's order of their open
    file descriptions, each with whether it shares the one before's: sorted
    in C (10,000 fds of 100 files: n log n kcmp calls, none from Python)."""
    from .native import ffi, lib
    n = len(group)
    order, same = ffi.new("uint32_t[]", n), ffi.new("uint8_t[]", n)
    r = lib.umig_kcmp_sort(ffi.new("int32_t[]", [pid for pid, _ in group]),
                           ffi.new("int32_t[]", [rec["fd"] for _, rec in group]), n, order, same)
    if r < 0:          # kcmp refused (another user's process): nothing is known to be shared
        return [(rec, False) for _, rec in group]
    return [(group[order[k]][1], bool(same[k])) for k in range(n)]


def pipe_records(members: list[tuple[int, list[dict]]], external: str = "refuse",
                 notes: list[str] | None = None) -> list[dict]:
    """PIPE records for the pipes among the fds of the grabbed processes
    [(pid, FD records)] (all frozen).  A pipe whose other end a process
    outside holds is refused (what is at the far end would be left
    behind), or with external="devnull" its ends here become /dev/null
    (said in notes)."""
    ends: dict[int, dict[str, list[tuple[int, int]]]] = {}
    stdio: dict[int, list[dict]] = {}
    probed: dict[int, tuple[int, int]] = {}     # ino: (capacity, bytes in it), as scanned
    for pid, fds in members:
        for rec in fds:
            if "_pipe" in rec:       # (capacity, bytes in it or -1: unknown)
                probed[rec["ino"]] = rec.pop("_pipe")
            if rec["kind"] in (Pipe.name, Stdio.name) and rec["path"].startswith("pipe:"):
                side = "w" if rec["flags"] & O_ACCMODE == os.O_WRONLY else "r"
                ends.setdefault(rec["ino"], {"r": [], "w": []})[side].append((pid, rec["fd"]))
                if rec["kind"] == Stdio.name:
                    stdio.setdefault(rec["ino"], []).append(rec)
    for ino, recs in stdio.items():
        if ends[ino]["r"] and ends[ino]["w"]:
            for rec in recs:          # between members (a shell pipeline): a pipe
                rec["kind"] = Pipe.name
        else:
            del ends[ino]             # to the outside at fds 0-2: umig resume's stdio
    out = []
    many = len(members) > 1
    half = {ino for ino, sides in ends.items() if not sides["r"] or not sides["w"]}
    outside = _holders(half, {pid for pid, _ in members}) if half else {}
    for ino, sides in ends.items():
        if ino in outside and external == "devnull":
            _to_devnull(members, ino, outside[ino], notes)
            continue
        if ino in outside:
            pid, fd = (sides["r"] or sides["w"])[0]
            have = "read" if sides["r"] else "write"
            opid, ofd = outside[ino]
            raise Refused(f"process {pid} fd {fd} is the {have} end of pipe:[{ino}], whose "
                          f"other end is held outside the grabbed process"
                          f"{'es' if many else ''} (by process {opid} fd {ofd})", pid=pid,
                          fd=fd, hint="grab the process at the other end with it (--tree), "
                                      "close the pipe in the program, or give the process "
                                      "/dev/null there with --external-pipes=devnull")
        # an end no process holds any more stays closed
        have_ends = (PIPE_READ if sides["r"] else 0) | (PIPE_WRITE if sides["w"] else 0)
        size, queued = probed.get(ino, (0, -1))
        if sides["r"] and queued:
            rec = _pipe_contents(*sides["r"][0], ino)
        else:
            rec = {"ino": ino, "size": size or _pipe_size(*(sides["r"] or sides["w"])[0]),
                   "data": b""}
        rec["ends"] = have_ends
        out.append(rec)
    return out


def _to_devnull(members, ino: int, holder: tuple[int, int], notes: list[str] | None) -> None:
    """The grabbed ends of pipe:[ino] become /dev/null (same access mode and
    flags): reading gives end of file, writing is thrown away."""
    for pid, fds in members:
        for rec in fds:
            if rec["kind"] in (Pipe.name, Stdio.name) and rec["path"] == f"pipe:[{ino}]":
                for ep in fds:
                    if ep["kind"] == Epoll.name and any(
                            w[0] == rec["fd"] and w[3] == ino for w in Epoll.watches(ep)):
                        raise Refused(f"process {pid} fd {rec['fd']} (pipe:[{ino}], whose "
                                      f"other end process {holder[0]} fd {holder[1]} holds) "
                                      f"is watched by epoll fd {ep['fd']}, and /dev/null "
                                      f"cannot be watched", pid=pid, fd=rec["fd"],
                                      hint="grab the process at the other end with it "
                                           "(--tree)")
                rec.update(kind=SimpleDevice.name, path="/dev/null", mode=stat.S_IFCHR | 0o666,
                           rdev=os.makedev(1, 3), dev=0, ino=0, size=0, mtime_ns=0, pos=0,
                           state=b"", desc=0)
                if notes is not None:
                    notes.append(f"process {pid} fd {rec['fd']} (pipe:[{ino}], whose other end "
                                 f"process {holder[0]} fd {holder[1]} holds) will be /dev/null")


def _holders(inos: set[int], members: set[int], what: str = "pipe"
             ) -> dict[int, tuple[int, int]]:
    """{ino: (pid, fd)} of a process outside `members` holding one of these
    pipes (or sockets) (as far as /proc lets us see: a plain user sees only
    their own)."""
    want = {f"{what}:[{ino}]": ino for ino in inos}
    out: dict[int, tuple[int, int]] = {}
    for pid, fd, link in _fds_outside(members):
        try:
            target = os.readlink(link)
        except OSError:
            continue
        ino = want.get(target)
        if ino is not None and ino not in out:
            out[ino] = (pid, fd)
    return out


def _pipe_size(pid: int, fd: int) -> int:
    src = take_fd(pid, fd)
    try:
        return fcntl.fcntl(src, F_GETPIPE_SZ)
    finally:
        os.close(src)


def _pipe_contents(pid: int, fd: int, ino: int) -> dict:
    """Size and buffered bytes of the pipe whose read end is pid's fd,
    duplicated with tee into a pipe of ours as big as it (one tee call:
    tee always starts at the head of the pipe)."""
    from .native import syscall
    src = take_fd(pid, fd)
    r = w = -1
    try:
        size = fcntl.fcntl(src, F_GETPIPE_SZ)
        queued = queued_bytes(src)
        data = b""
        if queued:
            r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            fcntl.fcntl(w, F_SETPIPE_SZ, size)
            n = syscall(NR_tee, src, w, queued, SPLICE_F_NONBLOCK)
            if n != queued:
                raise UmigError(f"process {pid} fd {fd}: could copy only {n} of the {queued} "
                                f"bytes in pipe:[{ino}]", pid=pid, fd=fd)
            chunks = []
            while n:
                chunks.append(os.read(r, n))
                n -= len(chunks[-1])
            data = b"".join(chunks)
        return {"ino": ino, "size": size, "data": data}
    except OSError as e:
        raise UmigError(f"reading what is in pipe:[{ino}] (process {pid} fd {fd}) failed: "
                        f"{e.strerror}", pid=pid, fd=fd) from e
    finally:
        for x in (src, r, w):
            if x >= 0:
                os.close(x)


ANON_NAMES = {"io_uring": "an io_uring instance", "perf_event": "a perf event",
              "bpf-map": "a BPF map", "bpf-prog": "a BPF program", "bpf_link": "a BPF link",
              "bpf": "a BPF object", "pidfd": "a pidfd", "fanotify": "a fanotify group",
              "inotify": "an inotify instance", "userfaultfd": "a userfaultfd",
              "kvm": "a KVM object", "dmabuf": "a DMA buffer"}
SOCKET_FAMILIES = {socket.AF_NETLINK: "a netlink socket", socket.AF_PACKET: "a packet socket",
                   socket.AF_UNIX: "a unix socket", socket.AF_VSOCK: "a vsock socket"}


def _what(info: FdInfo) -> str:
    """A name for an fd umig does not support, for the refusal."""
    t = info.target
    if t.startswith("socket:"):
        return f"a socket ({t})"
    if t.startswith("pipe:"):
        return f"a pipe ({t})"
    if t.startswith("anon_inode:"):
        kind = t[11:].strip("[]")
        name = ANON_NAMES.get(kind) or next(
            (v for k, v in ANON_NAMES.items() if kind.startswith(k)), f"an {kind}")
        return f"{name} ({t})"
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
    raw = procfs.read(pid, f"fdinfo/{fd}")
    info = procfs.parse_fdinfo(raw)
    return FdInfo(fd, target, st, int(info.get("flags", "0"), 8), int(info.get("pos", "0")),
                  raw)


class FdStat:
    """The parts of stat(/proc/PID/fd/N) umig uses (as os.stat_result names
    them).  For sockets and pipes, size and mtime are 0 (umig_fd_scan
    stats one of each kind for the rest)."""
    __slots__ = ("st_mode", "st_nlink", "st_dev", "st_ino", "st_rdev", "st_size",
                 "st_mtime_ns")

    def __init__(self, mode, nlink, dev, ino, rdev, size, mtime_ns):
        self.st_mode, self.st_nlink, self.st_dev, self.st_ino = mode, nlink, dev, ino
        self.st_rdev, self.st_size, self.st_mtime_ns = rdev, size, mtime_ns


def fd_infos(pid: int, fds: list[int]):
    """fd_info of every fd in fds, in order, the /proc reading done by native
    calls (umig_fd_scan) rather than three Python calls per fd.  Many fds
    are read in chunks by two threads, which run only native code (no GIL),
    while this one turns the chunks already read into FdInfo and the caller
    works on them (the kernel's /proc work is most of the cost, and the
    frozen process leaves the CPUs free)."""
    kept = _kept_pidfd(pid)           # a grab: sockets and pipes are probed in the scan
    pidfd = -1 if kept is None else kept
    if len(fds) < SCAN_SPLIT:
        yield from _infos(pid, fds, *_scan(pid, pidfd, fds))
        return
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(2) as pool:
        chunks = [fds[i:i + SCAN_CHUNK] for i in range(0, len(fds), SCAN_CHUNK)]
        futures = [pool.submit(_scan, pid, pidfd, c) for c in chunks]
        try:
            for chunk, f in zip(chunks, futures):
                yield from _infos(pid, chunk, *f.result())
        finally:
            for f in futures:
                f.cancel()


SCAN_SPLIT = 1000
SCAN_CHUNK = 500


def _scan(pid: int, pidfd: int, fds: list[int]):
    """umig_fd_scan of fds: (its struct array, the text); native only.
    With a pidfd (else -1) sockets and pipes are probed too."""
    from .native import ffi, lib
    arr = ffi.new("int32_t[]", fds)
    out = ffi.new("struct umig_fdstat[]", len(fds))
    textlen = len(fds) * 512 + (1 << 20)
    text = ffi.new("uint8_t[]", textlen)
    used = lib.umig_fd_scan(pid, pidfd, arr, len(fds), out, text, textlen)
    if used < 0:
        raise from_oserror(OSError(-used, os.strerror(-used)), f"listing the fds of process "
                           f"{pid}", pid=pid)
    return out, ffi.buffer(text, used)[:]


# struct umig_fdstat as struct unpacks it (a tuple per fd is some 10 times
# quicker than reading 16 fields of a cffi struct): up to probe.err
_FDSTAT = struct.Struct("<iiIIQQQQqQIIIIIi")


@functools.cache
def _fdstat_struct() -> struct.Struct:
    """_FDSTAT padded to the C struct's size, checked against its layout."""
    from .native import ffi
    size = ffi.sizeof("struct umig_fdstat")
    if ffi.offsetof("struct umig_fdstat", "probe") != _FDSTAT.size - 4:
        raise AssertionError("struct umig_fdstat changed: update fdtable._FDSTAT")
    return struct.Struct(_FDSTAT.format + f"{size - _FDSTAT.size}x")


def _infos(pid: int, fds: list[int], out, buf: bytes):
    from .native import ffi
    each = _fdstat_struct().iter_unpack(ffi.buffer(out))
    for i, (fd, err, mode, nlink, dev, ino, rdev, size, mtime_ns, pos, flags, link_off,
            link_len, info_off, info_len, probed) in enumerate(each):
        if err == errno.ENOENT:
            raise UmigError(f"process {pid} fd {fd} closed while it was frozen", pid=pid, fd=fd)
        if err:
            yield fd_info(pid, fd)      # too long for the buffer, or odd: the slow way
            continue
        yield FdInfo(fd, buf[link_off:link_off + link_len].decode("utf-8", "surrogateescape"),
                     FdStat(mode, nlink, dev, ino, rdev, size, mtime_ns),
                     flags, pos, buf[info_off:info_off + info_len],
                     probe=None if probed == -1 else ffi.new("struct umig_fdprobe *",
                                                             out[i].probe))


def describe_all(pid: int, max_contents: int = MAX_CONTENTS, tcp=None) -> list[dict]:
    """FD records for every fd of the process; refuses the first one no
    kind supports, before anything is written.  max_contents: bytes of a
    deleted file's or memfd's contents to carry at most; tcp: a
    tcprepair.Taken to take established TCP connections into (else they
    are refused)."""
    try:
        fds = sorted(int(n) for n in os.listdir(f"/proc/{pid}/fd"))
    except OSError as e:
        raise UmigError(f"cannot list the fds of process {pid}: {e.strerror}", pid=pid) from e
    global _diag_table
    if len(fds) > DIAG_DUMP_FROM:
        _diag_table = unix_diag_all()
    try:
        # closed here, also on a refusal: the scan threads stop before the
        # process is thawed and the pidfd closed
        with contextlib.closing(fd_infos(pid, fds)) as infos:
            out = _describe_each(pid, infos, max_contents, tcp)
    finally:
        _diag_table = None
    return out


DIAG_DUMP_FROM = 256     # fds in one process: ask for all unix sockets at once


def _describe_each(pid: int, infos, max_contents: int, tcp) -> list[dict]:
    out = []
    for info in infos:
        fd = info.fd
        info.max_contents = max_contents
        info.tcp = tcp
        info.owner = pid
        for kind in _BY_TYPE.get(stat.S_IFMT(info.st.st_mode), ()):
            if kind.matches(info):
                out.append(kind.describe(pid, info))
                break
        else:
            raise Refused(f"process {pid} fd {fd} is {_what(info)}: umig cannot move this kind "
                          f"of fd yet", pid=pid, fd=fd,
                          hint="close it in the program, or wait for a umig that supports it")
    return out


def write_all(fd: int, data) -> None:
    """Write all of data to fd (a pipe or file takes it in pieces)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class ResumeFds:
    """The resuming side: recreates every fd in the resuming process, above
    `base` so that none collides with a target number."""

    def __init__(self, base: int, pipes: dict[int, dict] | None = None,
                 direct: bool = False):
        self.base = base
        # one process: an fd is made at its own number when umig has that
        # number free, so resume needs about as many fds as the process, not
        # twice (the restorer then only sets its close-on-exec bit)
        self.direct = direct
        self.opened: set[int] = set()           # ours, above base
        self.pipes = pipes or {}                 # PIPE records by ino
        self._pipe_ends: dict[int, tuple[int, int]] = {}
        self._descs: dict[int, int] = {}          # desc -> our fd
        self.memfds: dict[int, int] = {}          # ino of a memfd -> our new memfd
        self.deleted: dict[tuple, int] = {}       # (dev, ino) of a deleted file -> ours
        self.fifos: dict[tuple, int] = {}         # (dev, ino) of a FIFO -> ours, read-write
        self._unix: dict[int, int] = {}           # socket ino -> our end of a new pair
        self.listeners: dict[bytes, int] = {}     # name -> our listening unix socket
        self._fd_of: dict[int, int] = {}          # id(FD record) -> ours
        self.tcp: list = []                       # (socket in repair mode, unsent bytes)
        self.terminal_modes = b""                 # termios + winsize the process's tty had
        self.pty_masters: dict[int, dict] = {}    # old pty number -> its master's record
        self._ptys: dict[int, tuple[int, str]] = {}    # old pty number -> (our master, slave)
        self.tcp_locks: set[str] = set()          # the grab's nft lock tables

    def unix_end(self, ino: int, peer: int, stype: int, fd: int) -> int:
        """Our end standing for unix socket ino of a pair (made with its peer's
        on first use, with the bytes each had queued to read)."""
        if ino in self._unix:
            return self._unix[ino]
        a, b = socket.socketpair(socket.AF_UNIX, stype | socket.SOCK_CLOEXEC)
        self._unix[ino] = self.keep(a.detach())
        self._unix[peer or -ino] = self.keep(b.detach())
        return self._unix[ino]

    def unix_connection(self, rec: dict) -> int:
        """Our end standing for rec's end of a connection through a named
        listener: both ends made on first use by connecting to a listener
        at that name (the tree's, if made already, else one of ours for the
        moment) and accepting."""
        ino = rec["ino"]
        if ino in self._unix:
            return self._unix[ino]
        stype, _shut, peer = UnixPair.HEAD.unpack_from(rec["state"])
        accepted, name = UnixConnection.listener_name(rec)
        shown = _shown(name)
        ours = None
        try:
            if name in self.listeners:
                lst = socket.socket(fileno=os.dup(self.listeners[name]))
            else:
                lst = socket.socket(socket.AF_UNIX, stype | socket.SOCK_CLOEXEC)
                if name[:1] != b"\0" and os.path.exists(name):
                    _unlink_stale(name, stype, shown, rec["fd"])
                lst.bind(name)
                ours = name
                lst.listen(1)
            with lst:
                cli = socket.socket(socket.AF_UNIX, stype | socket.SOCK_CLOEXEC)
                cli.connect(name)
                srv, _ = lst.accept()
                srv.set_inheritable(False)
        except OSError as e:
            raise EnvironmentProblem(f"fd {rec['fd']}: cannot connect its unix socket through "
                                     f"{shown} again: {e.strerror}", fd=rec["fd"],
                                     hint="free that name here") from None
        finally:
            if ours is not None and ours[:1] != b"\0":
                try:
                    os.unlink(ours)       # ours was only for this connection
                except OSError:
                    pass
        mine, other = (srv, cli) if accepted else (cli, srv)
        self._unix[ino] = self.keep(mine.detach())
        self._unix[peer or -ino] = self.keep(other.detach())
        return self._unix[ino]

    def unix_fill(self, fds: list[dict]) -> None:
        """Once every end is made: connect datagram clients to their named
        peers, queue each end's bytes through its peer, shut down what was
        shut down, and close ends nobody holds."""
        import json
        for rec in fds:
            if rec["kind"] == UnixDgramClient.name:
                name = bytes.fromhex(json.loads(rec["state"])["name"])
                desc = rec.get("desc", 0)
                ours = self._descs.get(desc) if desc else None
                target = ours if ours is not None else self._fd_of.get(id(rec))
                try:
                    with socket.socket(fileno=os.dup(target)) as s:
                        s.connect(name)
                except OSError as e:
                    raise EnvironmentProblem(f"fd {rec['fd']}: cannot connect its unix datagram "
                                             f"socket to {_shown(name)} again: {e.strerror}",
                                             fd=rec["fd"], hint="start what listens there") \
                        from None
        held = {rec["ino"] for rec in fds if rec["kind"] in UNIX_ENDS}
        ends = {rec["ino"]: UnixPair.HEAD.unpack_from(rec["state"]) + (rec,) for rec in fds
                if rec["kind"] in UNIX_ENDS}
        for ino, (_stype, _shut, peer, rec) in ends.items():       # the bytes first ...
            other = self._unix[peer or -ino]
            queued = KINDS[rec["kind"]].queued(rec)
            if _stype == socket.SOCK_STREAM:
                for piece in queued:
                    data = memoryview(piece)
                    while data:
                        data = data[os.write(other, data):]
                continue
            with socket.socket(fileno=os.dup(other)) as s:
                for msg in queued:                  # a send per message keeps its bounds
                    try:
                        s.send(msg, socket.MSG_DONTWAIT)
                    except OSError as e:
                        raise EnvironmentProblem(
                            f"fd {rec['fd']}: cannot queue its messages again: {e.strerror} "
                            f"(is net.unix.max_dgram_qlen lower here?)", fd=rec["fd"]) from None
        for ino, (_stype, shut, peer, _rec) in ends.items():        # ... then shutdowns
            how = {1: socket.SHUT_RD, 2: socket.SHUT_WR, 3: socket.SHUT_RDWR}.get(shut)
            if how is not None:
                with socket.socket(fileno=os.dup(self._unix[ino])) as s:
                    s.shutdown(how)
            if peer not in held:          # the other end is gone: readers see the end
                other = self._unix[peer or -ino]
                self.opened.remove(other)
                os.close(other)

    def pipe_ends(self, ino: int, fd: int) -> tuple[int, int]:
        """(read, write) of the new pipe standing for pipe:[ino], made on
        first use with the original's capacity and bytes."""
        if ino in self._pipe_ends:
            return self._pipe_ends[ino]
        rec = self.pipes.get(ino)
        if rec is None:
            raise EnvironmentProblem(f"fd {fd} is an end of pipe:[{ino}], which the image "
                                     f"does not describe (no PIPE record)", fd=fd)
        r, w = os.pipe2(os.O_CLOEXEC)
        ends = (self.keep(r), self.keep(w))
        self._pipe_ends[ino] = ends
        try:
            if fcntl.fcntl(ends[1], F_GETPIPE_SZ) < rec["size"]:
                fcntl.fcntl(ends[1], F_SETPIPE_SZ, rec["size"])
        except OSError as e:
            raise EnvironmentProblem(f"fd {fd}: cannot make a pipe of {rec['size']} bytes "
                                     f"like pipe:[{ino}]: {e.strerror}", fd=fd,
                                     hint="raise /proc/sys/fs/pipe-max-size") from None
        write_all(ends[1], rec["data"])
        # an end nobody held is closed: readers see EOF after the data,
        # writers EPIPE (older images hold both ends: ends = 0 means both)
        have = rec.get("ends") or PIPE_READ | PIPE_WRITE
        for bit, end in ((PIPE_READ, ends[0]), (PIPE_WRITE, ends[1])):
            if not have & bit:
                os.close(end)
                self.opened.remove(end)
        return ends

    def deleted_file(self, key: tuple[int, int], path: str, mode: int, data: bytes) -> int:
        """Our unlinked copy of the deleted file key (dev, ino), made with
        data the first time (O_TMPFILE, in its directory when it is there,
        else in /tmp), for its fds and mappings alike."""
        tmp = self.deleted.get(key)
        if tmp is not None:
            return tmp
        where = os.path.dirname(path[:-len(" (deleted)")])
        if not os.path.isdir(where):
            where = "/tmp"
        try:
            made = os.open(where, os.O_TMPFILE | os.O_RDWR | O_CLOEXEC, mode & 0o7777)
        except OSError:
            made = os.open("/tmp", os.O_TMPFILE | os.O_RDWR | O_CLOEXEC, mode & 0o7777)
        tmp = self.deleted[key] = self.keep(made)
        write_all(tmp, data)
        return tmp

    def tcp_go(self) -> list[str]:
        """The process is let go: its TCP connections leave repair mode and
        their lock is removed; returns what went wrong."""
        from . import tcprepair
        socks, self.tcp = self.tcp, []
        return tcprepair.go(socks, self.tcp_locks) if socks else []

    def pty(self, index: int, fd: int) -> tuple[int, str]:
        """(our master, slave path) of the new pty standing for
        /dev/pts/index, made on first use with its slave's settings."""
        import json
        if index in self._ptys:
            return self._ptys[index]
        rec = self.pty_masters.get(index)
        if rec is None:
            raise EnvironmentProblem(f"fd {fd} is on /dev/pts/{index}, whose master the image "
                                     f"does not hold", fd=fd)
        st = json.loads(rec["state"])
        master = self.keep(os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | O_CLOEXEC))
        if not st.get("locked"):
            fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
            slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | O_CLOEXEC)
            try:
                modes = bytes.fromhex(st["modes"])
                fcntl.ioctl(slave, TCSETSW, modes[:TERMIOS_SIZE])
                fcntl.ioctl(slave, TIOCSWINSZ, modes[TERMIOS_SIZE:TERMIOS_SIZE + WINSIZE_SIZE])
            finally:
                os.close(slave)     # (a pty's settings outlive its slave's opens)
        if st["packet"]:
            fcntl.ioctl(master, TIOCPKT, struct.pack("i", 1))
        new = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, bytes(4)))[0]
        fl = fcntl.fcntl(master, fcntl.F_GETFL)
        fcntl.fcntl(master, fcntl.F_SETFL, (fl & ~os.O_NONBLOCK) | (rec["flags"] & os.O_NONBLOCK))
        self._ptys[index] = (master, f"/dev/pts/{new}")
        return self._ptys[index]

    def terminal_go(self) -> bytes | None:
        """The process is let go: the terminal of `umig resume` (its stdin,
        when umig is in its foreground, as `on_running` hands it over) takes
        on the settings and window size the process's terminal had.  Returns
        the terminal's own settings and size before (termios + winsize, for
        `umig resume` to put back when the process stops or ends), or None
        if it changed nothing."""
        if not self.terminal_modes or not os.isatty(0) or os.tcgetpgrp(0) != os.getpgrp():
            return None        # umig does not hand the process a terminal it owns
        modes = self.terminal_modes[:TERMIOS_SIZE]
        size = self.terminal_modes[TERMIOS_SIZE:TERMIOS_SIZE + WINSIZE_SIZE]
        try:
            before = (fcntl.ioctl(0, TCGETS, bytes(TERMIOS_SIZE))
                      + fcntl.ioctl(0, TIOCGWINSZ, bytes(WINSIZE_SIZE)))
            fcntl.ioctl(0, TCSETSW, modes)
            if len(size) == WINSIZE_SIZE and size != bytes(WINSIZE_SIZE) and \
                    before[TERMIOS_SIZE:] != size:
                fcntl.ioctl(0, TIOCSWINSZ, size)
            return before
        except OSError:
            return None

    def _place(self, fd: int, dst: int) -> int:
        """fd moved to dst if umig has nothing there (else above base)."""
        try:
            fcntl.fcntl(dst, fcntl.F_GETFD)
            return self.keep(fd)            # one of umig's own fds is there
        except OSError:
            pass
        os.dup2(fd, dst, inheritable=False)
        os.close(fd)
        self.opened.add(dst)
        return dst

    def high(self) -> int:
        """The highest of our fds above base (the restore-only range's end)."""
        return max((fd for fd in self.opened if fd >= self.base), default=self.base)

    def keep(self, fd: int) -> int:
        """Move a freshly opened fd of ours above base; returns the new number."""
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, self.base)
        os.close(fd)
        self.opened.add(high)
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
        """An fd standing for rec; records of one open file description
        (same `desc`) get the same one."""
        kind = KINDS.get(rec["kind"])
        if kind is None:
            raise EnvironmentProblem(f"fd {rec['fd']} is of kind {rec['kind']!r}, which this "
                                     f"umig cannot recreate", fd=rec["fd"])
        desc = rec.get("desc", 0)
        if desc and desc in self._descs:
            return self._descs[desc]
        if kind is MemFd and rec["ino"] in self.memfds:
            return self.memfds[rec["ino"]]       # the same memfd at another fd
        fd = kind.recreate(rec, self)
        if fd not in self.opened:       # not one of ours already (a pipe's or pair's end)
            fd = self._place(fd, rec["fd"]) if self.direct else self.keep(fd)
        self._fd_of[id(rec)] = fd
        if kind is UnixBound:
            import json
            st = json.loads(rec["state"])
            if st["listening"]:
                self.listeners[bytes.fromhex(st["name"])] = fd
        if desc:
            self._descs[desc] = fd
        if kind is MemFd:
            self.memfds[rec["ino"]] = fd
        return fd

    def drop_tcp(self) -> None:
        """The resume failed: connections not let go (tcp_go) close in
        repair mode, sending nothing, and the lock stays, for another try."""
        for s, _unsent in self.tcp:
            s.close()
        self.tcp.clear()

    def close(self) -> None:
        for fd in self.opened:
            try:
                os.close(fd)
            except OSError:
                pass
        self.opened.clear()

