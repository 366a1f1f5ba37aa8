"""grab: freeze a process, read everything it is, write the image, finish.

The process is frozen with PTRACE_SEIZE + PTRACE_INTERRUPT (no SIGSTOP
reaches it or its parent).  Until the image's trailer is written (and, for
a regular file, synced) any failure thaws it exactly as it was; only then is
it killed (or left running/stopped, if asked).
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import os
import platform
import signal
import socket
import stat
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import lz4.block

from . import __version__, cpu, fdtable, files, precopy, procfs, tcprepair, tracing
from .errors import (AccessDenied, Interrupted, NoProcess, Refused, UmigError,
                     from_oserror)
from .critical import critical
from .image import schema
from .image.stream import ImageWriter, NoRoom, PageChunk, page_chunk_frame
from .inject import Injector, find_gadget
from .native import PAGE, ffi, lib

CHUNK_PAGES = 1024                 # 4 MiB of pages per PAGES record
PF_KTHREAD = 0x00200000
SS_ONSTACK = 1

# syscall numbers used by injection (x86_64)
NR_rt_sigaction, NR_sigaltstack, NR_prctl, NR_brk, NR_getitimer = 13, 131, 157, 12, 36
NR_get_robust_list = 274
PR_GET_PDEATHSIG, PR_GET_SECUREBITS, PR_GET_TID_ADDRESS = 2, 27, 40

# PAGEMAP_SCAN categories (KERNEL-NOTES.md)
CAT_FILE, CAT_PRESENT, CAT_SWAPPED, CAT_PFNZERO = 4, 8, 16, 32

VMFLAG_MADV = {"dc": lib.UMIG_MADV_DONTFORK, "dd": lib.UMIG_MADV_DONTDUMP,
               "wf": lib.UMIG_MADV_WIPEONFORK, "hg": lib.UMIG_MADV_HUGEPAGE,
               "nh": lib.UMIG_MADV_NOHUGEPAGE, "mg": lib.UMIG_MADV_MERGEABLE}


@dataclass
class GrabStats:
    pid: int
    frozen_s: float = 0.0
    wall_s: float = 0.0
    image_bytes: int = 0
    pages: int = 0
    data_pages: int = 0
    vmas: int = 0
    fds: int = 0
    finish: str = ""
    precopy: str = ""              # what pre-reading did, for -v
    processes: int = 1
    threads: int = 1
    tcp: int = 0                   # established TCP connections taken
    tcp_locks: list = field(default_factory=list)    # their nft lock tables
    warnings: list = field(default_factory=list)
    held: object = None            # finish="hold": the Held process


@dataclass
class Progress:
    """How far a grab is, for a progress display (cli.py): handed to
    grab's progress() at each phase and after every chunk of pages."""
    phase: str = "starting"        # "pre-reading" (it runs), "frozen", "written"
    pages_done: int = 0            # of the phase: read ahead, or written
    pages_total: int = 0
    image_bytes: int = 0           # written so far
    frozen_at: float = 0.0         # time.perf_counter() of the freeze; 0 before


@dataclass
class Target:
    """Everything read from /proc about the process before and while it is
    frozen."""
    pid: int
    status: dict = field(default_factory=dict)
    stat: list = field(default_factory=list)
    memfd: int = -1
    pagemapfd: int = -1
    tracking: bool = False      # our userfaultfd write-protects its memory (precopy.py)
    pin_ok: bool = True         # read with process_vm_readv (False: /proc/PID/mem only,
    #                             which keeps copy-on-write sharing with other members)


def _refuse_early(pid: int, tree: bool = False) -> Target:
    """The checks that need no tracing: refuse with the reason."""
    if pid == os.getpid():
        raise Refused(f"process {pid} is this umig; umig cannot grab itself", pid=pid)
    if pid <= 0:
        raise NoProcess(f"no process {pid}", pid=pid)
    t = Target(pid)
    t.stat = procfs.parse_stat(procfs.read(pid, "stat"))
    t.status = procfs.parse_status(procfs.read(pid, "status"))
    state = t.stat[2]
    if int(t.stat[8]) & PF_KTHREAD:
        raise Refused(f"process {pid} ({t.stat[1]}) is a kernel thread", pid=pid)
    if state in ("Z", "X") and int(t.status.get("Threads", "1")) > 1:
        raise Refused(f"process {pid} ({t.stat[1]}): its main thread has exited "
                      f"(pthread_exit) while other threads run; umig cannot move such a "
                      f"process yet", pid=pid)
    if state in ("Z", "X"):
        raise Refused(f"process {pid} ({t.stat[1]}) is a zombie: it has exited and "
                      f"waits for its parent to reap it", pid=pid)
    tracer = int(t.status.get("TracerPid", "0"))
    if tracer and tracer != os.getpid():      # us: a member of a tree we froze
        raise AccessDenied(f"process {pid} is already traced by process {tracer} "
                           f"({_comm(tracer)})", pid=pid, hint="detach the debugger first")
    children = _children(pid)
    if children and not tree:
        names = ", ".join(f"{c} ({_comm(c)})" for c in children[:5])
        raise Refused(f"process {pid} has child processes ({names}); they would be left "
                      f"behind", pid=pid, hint=f"grab them with it: umig grab --tree {pid}")
    seccomp = t.status.get("Seccomp", "0")
    if seccomp != "0":
        raise Refused(f"process {pid} runs under seccomp (mode {seccomp}), which umig "
                      f"cannot restore yet", pid=pid)
    return t


def _children(pid: int) -> list[int]:
    """The children of every thread of pid (each thread has its own list)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            out += [int(x) for x in procfs.read(pid, f"task/{tid}/children").split()]
        except (OSError, UmigError):
            pass
    return sorted(set(out))


def _state(pid: int) -> str:
    try:
        return procfs.parse_stat(procfs.read(pid, "stat"))[2]
    except (OSError, UmigError):
        return "X"


def descendants(pid: int) -> tuple[list[int], list[int]]:
    """(live, zombies): every process below pid, parents before children."""
    live: list[int] = []
    zombies: list[int] = []
    todo = [pid]
    while todo:
        nxt = []
        for p in todo:
            for c in _children(p):
                if _state(c) in ("Z", "X"):
                    zombies.append(c)
                else:
                    live.append(c)
                    nxt.append(c)
        todo = nxt
    return live, zombies


def _comm(pid: int) -> str:
    try:
        return procfs.read(pid, "comm").decode(errors="replace").strip()
    except (OSError, UmigError):
        return "?"


def _why_not_traceable(pid: int, t: Target) -> AccessDenied:
    """EPERM from PTRACE_SEIZE: find out why and say what to do."""
    me = os.geteuid()
    uids = [int(x) for x in t.status.get("Uid", "0 0 0 0").split()]
    caps = int(procfs.parse_status(procfs.read(os.getpid(), "status")).get("CapEff", "0"), 16)
    has_ptrace_cap = bool(caps >> 19 & 1)
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = int(f.read())
    except OSError:
        scope = 0
    if scope == 3:
        return AccessDenied(f"cannot trace process {pid}: Yama ptrace_scope is 3 (no "
                            f"tracing at all until reboot)", pid=pid)
    if not has_ptrace_cap and any(u != me for u in uids):
        return AccessDenied(f"cannot trace process {pid}: it belongs to uid {uids[0]}"
                            f"{' (set-uid to ' + str(uids[1]) + ')' if uids[1] != uids[0] else ''}"
                            f" and you are uid {me}", pid=pid,
                            hint="run umig as that user, or as root")
    if scope == 2 and not has_ptrace_cap:
        return AccessDenied(f"cannot trace process {pid}: Yama ptrace_scope is 2 (only "
                            f"CAP_SYS_PTRACE may trace)", pid=pid, hint="run umig as root")
    if scope == 1 and not has_ptrace_cap:
        return AccessDenied(f"cannot trace process {pid}: Yama ptrace_scope is 1 (only a "
                            f"parent may trace its descendants)", pid=pid,
                            hint="run umig as root, or set kernel.yama.ptrace_scope=0")
    if me == 0 and not has_ptrace_cap:
        return AccessDenied(f"cannot trace process {pid}: umig runs without CAP_SYS_PTRACE "
                            f"(a container?)", pid=pid,
                            hint="grant CAP_SYS_PTRACE (docker run --cap-add SYS_PTRACE)")
    return AccessDenied(f"cannot trace process {pid}: permission denied (it may be "
                        f"non-dumpable, e.g. a set-uid program)", pid=pid)


def _tids(pid: int) -> list[int]:
    """The process's threads, leader first."""
    try:
        tids = sorted(int(x) for x in os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        raise NoProcess(f"process {pid} went away", pid=pid) from None
    return sorted(tids, key=lambda t: t != pid)


def _tracer(tid: int) -> int:
    try:
        return int(procfs.parse_status(procfs.read(tid, "status")).get("TracerPid", "0"))
    except (OSError, UmigError, ValueError):
        return 0


SEIZE_ROUNDS = 20
FREEZE_TIMEOUT = 10.0
EINTR, ERESTARTNOHAND = 4, 514
# Calls that fail with EINTR, not a restart code, when their thread is
# merely stopped (signal(7): "interruption of system calls by stop
# signals"); umig's own freeze would break them.  x86_64 numbers:
# semop, rt_sigtimedwait, io_getevents, semtimedop, epoll_wait,
# epoll_pwait, io_pgetevents, epoll_pwait2.
EINTR_ON_STOP = {65, 128, 208, 220, 232, 281, 333, 441}


class Freezer:
    """Seizes and interrupts every thread of the process; thaw() or kill()
    ends it.

    Threads are seized with PTRACE_O_TRACECLONE, so one cloned by a seized
    thread is traced from its first instruction; one cloned by a thread not
    yet seized shows up when /proc/PID/task is listed again.  The freeze is
    done when every listed thread is in a ptrace stop and the list no longer
    changes."""

    def __init__(self, t: Target, tree: bool = False):
        self.t = t
        self.pid = t.pid
        self.tree = tree
        self.frozen_at = 0.0
        self.killed_at = 0.0
        self.tids: list[int] = []        # seized, leader first
        self.members: list[int] = [t.pid]   # the processes, parents first (tree)
        self.zombies: list[int] = []
        self._stopped: set[int] = set()
        self._options = tracing.PTRACE_O_TRACECLONE | (
            tracing.PTRACE_O_TRACEFORK | tracing.PTRACE_O_TRACEVFORK if tree else 0)

    def _tasks(self) -> list[int]:
        """Every thread of every process to freeze, as /proc shows them now."""
        if self.tree:
            live, self.zombies = descendants(self.pid)
            self.members = [self.pid] + live
        out: list[int] = []
        for p in self.members:
            try:
                out += _tids(p)
            except NoProcess:
                if p == self.pid:
                    raise
        return out

    @property
    def attached(self) -> bool:
        return bool(self.tids)

    @attached.setter
    def attached(self, value: bool) -> None:
        if not value:
            self.tids = []
            self._stopped = set()

    def freeze(self) -> None:
        pid = self.pid
        try:
            self._seize(pid)
        except OSError as e:
            if e.errno == 3:
                raise NoProcess(f"process {pid} went away", pid=pid) from None
            if e.errno == 1:
                raise _why_not_traceable(pid, self.t) from None
            raise from_oserror(e, f"seizing process {pid}", pid=pid) from e
        try:
            for _ in range(SEIZE_ROUNDS):
                for tid in self._tasks():
                    if tid not in self.tids:
                        try:
                            self._seize(tid)
                        except OSError as e:
                            if e.errno == 1 and _tracer(tid) == os.getpid():
                                # cloned by a seized thread whose clone event we
                                # have not read yet: traced already, and its
                                # first stop comes by itself
                                self.tids.append(tid)
                            elif e.errno == 1 and tid != pid and _state(tid) in ("Z", "X"):
                                pass    # exiting meanwhile: a zombie of the tree, or gone
                            elif e.errno != 3:     # ESRCH: it exited meanwhile
                                raise
                self._wait_all_stopped()
                if set(self._tasks()) == set(self.tids):
                    break
            else:
                raise Refused(f"process {pid} kept creating threads or processes while umig "
                              f"froze it ({len(self.tids)} so far); try again", pid=pid)
        except BaseException:
            self.thaw()
            raise
        self.frozen_at = time.perf_counter()

    def _seize(self, tid: int) -> None:
        tracing.seize(tid, self._options)
        self.tids.append(tid)
        tracing.interrupt(tid)

    def _wait_all_stopped(self, timeout: float = FREEZE_TIMEOUT) -> None:
        """Wait until every seized task sits in its interrupt stop (or has
        exited).  All of them are polled, leaders last: a leader's exit is
        reported only once its other threads were reaped, so blocking on one
        task could wait forever."""
        deadline = time.monotonic() + timeout
        leaders = set(self.members)
        while waiting := [t for t in self.tids if t not in self._stopped]:
            waiting.sort(key=lambda t: t in leaders)
            moved = False
            for tid in waiting:
                st = tracing.wait(tid, nohang=True)
                if st is not None:
                    moved = True
                    self._stopped_how(tid, st)
            if moved:
                continue
            if time.monotonic() > deadline:
                who = ", ".join(f"{t} ({_state(t)})" for t in waiting[:5])
                raise Refused(f"process {self.pid}: {len(waiting)} of its tasks did not stop "
                              f"within {timeout:.0f} s ({who}); a task in vfork or in "
                              f"uninterruptible sleep cannot stop", pid=self.pid,
                              hint="try again")
            time.sleep(0.0002)

    def _stopped_how(self, tid: int, st: "tracing.Stop") -> None:
        """One wait status of a task being frozen."""
        pid = self.pid
        if st.kind == "event-stop":
            self._stopped.add(tid)
            self._undo_stop_eintr(tid)
        elif st.kind in ("exited", "killed"):
            self.tids.remove(tid)
            if tid == pid:
                self.tids = []
                raise NoProcess(f"process {pid} {st} while umig froze it", pid=pid)
        elif st.kind == "event" and st.value in (tracing.PTRACE_EVENT_CLONE,
                                                 tracing.PTRACE_EVENT_FORK,
                                                 tracing.PTRACE_EVENT_VFORK):
            # a thread (or, --tree, a process) made while seizing: it is traced
            # already (its first stop is an event stop)
            new = tracing.eventmsg(tid)
            if new not in self.tids:
                self.tids.append(new)
            # any stop uses up a pending PTRACE_INTERRUPT: ask again
            tracing.interrupt(tid)
            tracing.cont(tid)
        else:
            # a signal arrived first: let it through and interrupt again (this
            # stop used up the pending interrupt)
            tracing.interrupt(tid)
            tracing.cont(tid, st.value if st.kind == "signal" else 0)

    def _undo_stop_eintr(self, tid: int) -> None:
        """A call that our stop made fail with EINTR is set to run again,
        as if nothing had stopped it (the image and a thawed process both
        see the restart).  rax = -EINTR with orig_rax still the call means
        it returned just now: after a handler's rt_sigreturn orig_rax is -1."""
        regs = tracing.getregs(tid)
        if regs.orig_rax not in EINTR_ON_STOP or regs.rax != (1 << 64) - EINTR:
            return
        try:
            with open(f"/proc/{tid}/mem", "rb", buffering=0) as mem:
                mem.seek(regs.rip - 2)
                if mem.read(2) != b"\x0f\x05":
                    return
        except (OSError, OverflowError):
            return
        # the kernel then restarts the call if no handler runs, and fails it
        # with EINTR if one does, as it would have without our stop
        regs.rax = (1 << 64) - ERESTARTNOHAND
        tracing.setregs(tid, regs)

    def thaw(self) -> None:
        """Let every task go.  PTRACE_DETACH works only on a stopped tracee:
        tasks seized but not stopped yet are waited for first (briefly)."""
        try:
            self._wait_all_stopped(timeout=2.0)
        except (UmigError, OSError):
            pass
        for tid in self.tids:
            try:
                tracing.detach(tid)
            except OSError:
                pass
        self.attached = False

    def leave_stopped(self) -> None:
        """Detach with every process stopped (SIGSTOP): the leaders first,
        and the other threads only once their group stop is in effect, so
        no thread runs after the image."""
        leaders = set(self.members)
        for p in self.members:
            try:
                os.kill(p, signal.SIGSTOP)       # pending: taken when it resumes
                tracing.detach(p, signal.SIGSTOP)
            except OSError:
                pass
        for p in self.members:
            wait_stopped = time.monotonic() + 2.0
            while time.monotonic() < wait_stopped and _state(p) not in ("T", "t", "Z", "X"):
                time.sleep(0.001)
        for tid in self.tids:
            if tid not in leaders:
                try:
                    tracing.detach(tid)
                except OSError:
                    pass
        self.attached = False

    def kill(self) -> None:
        for p in self.members:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.killed_at = time.perf_counter()      # it ends here; reaping follows
        leaders = set(self.members)
        # a leader's exit is reported once its other (traced) threads were reaped
        for tid in [t for t in self.tids if t not in leaders] + self.members:
            try:
                while True:
                    st = tracing.wait(tid)
                    if st.kind in ("exited", "killed"):
                        break
            except ChildProcessError:
                pass
        self.attached = False


# ---------------------------------------------------------------- task state

def _read_process(t: Target, inj: Injector) -> dict:
    """What the threads share (signal actions, timers, brk, ...), read
    through the leader."""
    pid = t.pid
    out: dict = {}
    actions = []
    for sig in range(1, 65):
        r = inj.syscall(NR_rt_sigaction, sig, 0, inj.scratch, 8)
        if r < 0:
            raise UmigError(f"reading the action of signal {sig} of process {pid} failed "
                            f"({-r})", pid=pid)
        h, fl, rest, mask = struct.unpack("<QQQQ", inj.read_scratch(32))
        actions.append({"handler": h, "flags": fl, "restorer": rest, "mask": mask})
    out["actions"] = actions

    r = inj.syscall(NR_prctl, PR_GET_PDEATHSIG, inj.scratch)
    out["pdeathsig"] = struct.unpack("<i", inj.read_scratch(4))[0] if r == 0 else 0
    r = inj.syscall(NR_prctl, PR_GET_SECUREBITS)
    out["securebits"] = r if r >= 0 else 0
    out["brk"] = inj.syscall(NR_brk, 0)

    timers = []
    for which in range(3):
        r = inj.syscall(NR_getitimer, which, inj.scratch)
        isec, iusec, vsec, vusec = struct.unpack("<QQQQ", inj.read_scratch(32))
        if r == 0 and (vsec or vusec):
            timers.append({"which": which, "interval_sec": isec, "interval_usec": iusec,
                           "value_sec": vsec, "value_usec": vusec})
    out["itimers"] = timers
    out["pending"] = [{"shared": 1, "sig": _siginfo_signo(i), "info": i}
                      for i in tracing.peek_siginfo(pid, True)]
    return out


def _read_thread(pid: int, tid: int, inj: Injector) -> dict:
    """One thread's own state: the THREAD record's values."""
    regs = tracing.getregs(tid)
    out: dict = {"tid": tid, "regs": tracing.regs_to_tuple(regs),
                 "xsave": tracing.get_xstate(tid),
                 "sigmask": inj.original_mask}     # the injector blocks all while it runs
    inj.syscall(NR_sigaltstack, 0, inj.scratch)
    sp, flags, size = struct.unpack("<Qi4xQ", inj.read_scratch(24))
    out.update(altstack_sp=sp, altstack_flags=flags & ~SS_ONSTACK, altstack_size=size)
    r = inj.syscall(NR_prctl, PR_GET_TID_ADDRESS, inj.scratch)
    out["clear_child_tid"] = struct.unpack("<Q", inj.read_scratch(8))[0] if r == 0 else 0
    rl = ffi.new("uint64_t[2]")
    try:
        from .native import syscall
        syscall(NR_get_robust_list, tid, int(ffi.cast("uint64_t", rl)),
                int(ffi.cast("uint64_t", rl + 1)))
        out["robust_list"], out["robust_len"] = rl[0], rl[1]
    except OSError:
        out["robust_list"], out["robust_len"] = 0, 0
    out["rseq"], out["rseq_len"], out["rseq_sig"], _ = tracing.rseq_config(tid)
    out["comm"] = procfs.read(pid, f"task/{tid}/comm").decode(
        "utf-8", "surrogateescape").rstrip("\n")
    out["pending"] = [{"sig": _siginfo_signo(i), "info": i}
                      for i in tracing.peek_siginfo(tid, False)]
    return out


def _siginfo_signo(info: bytes) -> int:
    return struct.unpack_from("<i", info)[0]


# ---------------------------------------------------------------- memory

def _vma_kind(v: procfs.Vma, pid: int, tracking: bool = False) -> tuple[int, int]:
    """(kind, content) of a VMA, or Refused for what we cannot move."""
    p = v.path
    if p == "[heap]":
        return schema.VMA_HEAP, schema.CONTENT_PAGES
    if p == "[stack]":
        return schema.VMA_STACK, schema.CONTENT_PAGES
    if p == "[vdso]":
        return schema.VMA_VDSO, schema.CONTENT_NONE
    if p == "[vvar]":
        return schema.VMA_VVAR, schema.CONTENT_NONE
    if p == "[vvar_vclock]":
        return schema.VMA_VVAR_VCLOCK, schema.CONTENT_NONE
    if p.startswith("[anon:") or (p == "" and v.inode == 0):
        return (schema.VMA_SHMEM if v.shared else schema.VMA_ANON), schema.CONTENT_PAGES
    if p.startswith("/dev/zero") or p.startswith("[anon_shmem:"):
        if v.shared:
            return schema.VMA_SHMEM, schema.CONTENT_PAGES
        return schema.VMA_ANON, schema.CONTENT_PAGES
    if p.startswith("/SYSV"):
        raise Refused(f"process {pid} maps System V shared memory at {v.start:#x} ({p}); "
                      f"not supported yet", pid=pid)
    if p.startswith("/memfd:") and v.shared:
        # shared memory as umig resume makes it for an object several VMAs
        # map (restore/run.py _shared_memory): content like any shmem; a
        # memfd the program holds as an fd is refused by fdtable
        return schema.VMA_SHMEM, schema.CONTENT_PAGES
    if p.startswith("/memfd:"):
        raise Refused(f"process {pid} maps a memfd at {v.start:#x} ({p}); not supported "
                      f"yet", pid=pid)
    if v.deleted and not p.startswith("/"):
        raise Refused(f"process {pid} maps a deleted file at {v.start:#x} ({p}); not "
                      f"supported yet", pid=pid, path=p)
    # a deleted file (path ending " (deleted)") is mapped like any other, from
    # the unlinked copy resume makes of its contents (files.deleted_maps)
    if p.startswith("["):
        raise Refused(f"process {pid} has a special mapping {p} at {v.start:#x} that umig "
                      f"cannot move", pid=pid)
    if "um" in v.vmflags or ("uw" in v.vmflags and not tracking):
        raise Refused(f"process {pid} has userfaultfd registered on {v.start:#x}-{v.end:#x}",
                      pid=pid)
    return schema.VMA_FILE, schema.CONTENT_FILE


def _vma_records(t: Target, vmas: list[procfs.Vma]) -> list[dict]:
    out = []
    for v in vmas:
        if v.path == "[vsyscall]":
            continue
        kind, content = _vma_kind(v, t.pid, t.tracking)
        vmflags = [f for f in v.vmflags if not (t.tracking and f == "uw")]
        rec = {"start": v.start, "end": v.end, "pgoff": v.offset, "prot": v.prot,
               "flags": (schema.VMA_SHARED if v.shared else 0)
               | (schema.VMA_GROWSDOWN if "gd" in v.vmflags else 0)
               | (schema.VMA_NORESERVE if "nr" in v.vmflags else 0),
               "kind": kind, "content": content,
               "madv": sum(bit for flag, bit in VMFLAG_MADV.items() if flag in v.vmflags),
               "path": v.path if kind == schema.VMA_FILE else
               (v.path if v.path.startswith("[") else ""),
               "dev": os.makedev(v.major, v.minor), "ino": v.inode, "file_size": 0,
               "mtime_ns": 0, "vmflags": " ".join(sorted(vmflags)), "discard": []}
        if kind == schema.VMA_FILE:
            st = _stat_mapped(t.pid, v)
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                raise Refused(f"process {t.pid} maps device {v.path} at {v.start:#x}; not "
                              f"supported", pid=t.pid, path=v.path)
            rec["file_size"] = st.st_size
            rec["mtime_ns"] = st.st_mtime_ns
        out.append(rec)
    return out


def _stat_mapped(pid: int, v: procfs.Vma) -> os.stat_result:
    """stat of the file behind a mapping: via map_files when we may (it is the
    very file mapped), else by path (checked against dev/inode)."""
    try:
        return os.stat(f"/proc/{pid}/map_files/{v.start:x}-{v.end:x}")
    except OSError:
        pass
    try:
        st = os.stat(v.path)
    except OSError as e:
        raise Refused(f"process {pid} maps {v.path} at {v.start:#x}, which umig cannot "
                      f"find ({e.strerror})", pid=pid, path=v.path) from None
    if st.st_ino != v.inode:
        raise Refused(f"process {pid} maps {v.path} at {v.start:#x}, but that path now "
                      f"names another file (replaced on disk?)", pid=pid, path=v.path)
    return st


def _present_ranges(t: Target, vmas: list[dict]) -> list[tuple[int, int, int]]:
    """(addr, npages, flags) of every page the image must carry."""
    ranges: list[tuple[int, int, int]] = []
    cap = 4096
    vec = ffi.new("struct umig_region[]", cap)
    walk_end = ffi.new("uint64_t *")
    use_scan = True
    scanned = False          # PAGEMAP_SCAN worked once: its errors are real
    for v in vmas:
        if v["content"] == schema.CONTENT_NONE:
            continue
        if v["flags"] & schema.VMA_SHARED:
            if v["kind"] == schema.VMA_SHMEM and not v["flags"] & schema.VMA_SHM_SEEN:
                # shared anonymous memory: pages may live in the object without
                # being mapped here; take it whole, zero pages are elided
                ranges.append((v["start"], (v["end"] - v["start"]) // PAGE,
                               lib.UMIG_RANGE_ELIDE_ZERO))
            continue      # shared file mappings: the file holds the data
        anon = v["content"] == schema.CONTENT_PAGES
        start, end = v["start"], v["end"]
        while start < end:
            if use_scan:
                n = lib.umig_scan(t.pagemapfd, start, end, CAT_PRESENT | CAT_SWAPPED,
                                  CAT_PRESENT | CAT_SWAPPED | CAT_FILE | CAT_PFNZERO,
                                  vec, cap, walk_end)
                if n < 0 and not scanned and -n in (22, 25):  # EINVAL/ENOTTY: no PAGEMAP_SCAN
                    use_scan = False
                    continue
                scanned = scanned or n >= 0
            else:
                n = lib.umig_scan_pagemap(t.pagemapfd, start, end, vec, cap, walk_end)
            if n < 0:
                raise from_oserror(OSError(-n, os.strerror(-n)),
                                   f"scanning the pages of process {t.pid}", pid=t.pid)
            for i in range(n):
                r = vec[i]
                cat = r.categories
                if cat & CAT_PFNZERO:
                    continue          # the shared zero page: reads as zeros anyway
                if not anon and cat & CAT_FILE and not cat & CAT_SWAPPED:
                    continue          # still the file's page: mapped from the file
                ranges.append((r.start, (r.end - r.start) // PAGE,
                               lib.UMIG_RANGE_ELIDE_ZERO if anon else 0))
            start = walk_end[0] if walk_end[0] > start else end
    return ranges


def _chunks(ranges: list[tuple[int, int, int]]):
    """Group ranges by aligned windows of CHUNK_PAGES pages: one chunk holds
    the pages of one window.  A chunk's bounds then do not depend on the
    pages before it, so a pre-read chunk still matches the chunk made at the
    freeze when memory elsewhere changed (precopy.py)."""
    window = CHUNK_PAGES * PAGE
    cur: list[tuple[int, int, int]] = []
    cur_window = -1
    for addr, npages, flags in ranges:
        end = addr + npages * PAGE
        while addr < end:
            w = addr // window
            if w != cur_window and cur:
                yield cur
                cur = []
            cur_window = w
            stop = min(end, (w + 1) * window)
            cur.append((addr, (stop - addr) // PAGE, flags))
            addr = stop
    if cur:
        yield cur


class _Chunk:
    """Reused buffers for one chunk in flight.  The page buffer is mmap'ed:
    page-aligned, process_vm_readv into it runs at twice the speed of an
    unaligned one (bench/README.md)."""

    def __init__(self):
        self.map = mmap.mmap(-1, CHUNK_PAGES * PAGE)
        self.buf = ffi.from_buffer("uint8_t[]", self.map)
        self.runs = ffi.new("struct umig_run[]", CHUNK_PAGES)
        self.nruns = ffi.new("uint32_t *")
        self.ranges = ffi.new("struct umig_range[]", CHUNK_PAGES)


# lz4 is tried on a sample first: random data would cost a full pass for
# nothing (lz4 is the slowest stage on incompressible data)
SAMPLE = 64 * 1024
INCOMPRESSIBLE = 0.9


def _produce(t: Target, chunk: _Chunk, ranges) -> tuple[PageChunk, int]:
    """Read a chunk's pages, elide zero pages, compress and checksum: all
    in native code or lz4, without the GIL, so two of these run at once."""
    for i, (addr, npages, flags) in enumerate(ranges):
        chunk.ranges[i].addr = addr
        chunk.ranges[i].npages = npages
        chunk.ranges[i].flags = flags
    n = lib.umig_gather(t.pid if t.pin_ok else 0, t.memfd, chunk.ranges, len(ranges), chunk.buf,
                        CHUNK_PAGES * PAGE, chunk.runs, CHUNK_PAGES, chunk.nruns)
    if n < 0:
        raise from_oserror(OSError(-n, os.strerror(-n)),
                           f"reading the memory of process {t.pid}", pid=t.pid)
    raw = memoryview(chunk.map)[:n]
    data, packed = raw, False
    if n and (n <= SAMPLE or len(lz4.block.compress(raw[:SAMPLE], store_size=False))
              < INCOMPRESSIBLE * SAMPLE):
        comp = lz4.block.compress(raw, store_size=False)
        if len(comp) < n:
            data, packed = comp, True
    npages = sum(r[1] for r in ranges)
    pc = page_chunk_frame(0, ffi.buffer(chunk.runs, 16 * chunk.nruns[0]), chunk.nruns[0],
                          data, n, packed, npages)
    return pc, n // PAGE


def _produced(t: Target, chunks: list, check: Callable[[], None]):
    """Yield (PageChunk, data pages) for each chunk, in order.  Two threads
    read, compress and checksum while the consumer writes; three buffers:
    one being written, two being filled.  The consumer must be done with a
    chunk before it asks for the next (its buffer is filled again)."""
    if not chunks:
        return
    bufs = [_Chunk() for _ in range(3)]
    pending: collections.deque = collections.deque()
    nxt = 0
    with ThreadPoolExecutor(2, thread_name_prefix="umig-read") as pool:
        try:
            while nxt < min(2, len(chunks)):
                pending.append(pool.submit(_produce, t, bufs[nxt % 3], chunks[nxt]))
                nxt += 1
            while pending:
                done = pending.popleft().result()
                if nxt < len(chunks):     # its buffer's last chunk was written already
                    pending.append(pool.submit(_produce, t, bufs[nxt % 3], chunks[nxt]))
                    nxt += 1
                yield done
                check()
        finally:
            for f in pending:
                f.cancel()
            for f in pending:
                try:
                    f.result()            # no thread may still fill a buffer
                except BaseException:
                    pass


def _write_pages(t: Target, w: ImageWriter, ranges, check: Callable[[], None],
                 cache: precopy.Cache | None = None,
                 unchanged: precopy.Unchanged | None = None,
                 done: Callable[[int], None] = lambda pages: None) -> int:
    """Write the pages of `ranges`: pre-read chunks that still hold from
    the cache, the rest read now; done(pages) after each chunk.  Returns
    the number of data pages."""
    chunks = list(_chunks(ranges))
    kept = [cache.take(c, unchanged) if cache else None for c in chunks]
    spooled = isinstance(cache, precopy.Spool)
    if spooled:
        _redo_in_place(t, cache, chunks, kept, check)
        w.adopt(cache)              # those kept are in the file already
    fresh = _produced(t, [c for c, k in zip(chunks, kept) if k is None], check)
    data_pages = 0
    try:
        for k in kept:
            if isinstance(k, precopy.SpoolEntry):
                data_pages += k.pages
                done(k.npages)
                continue
            pc, pages = k if k is not None else next(fresh)
            w.page_chunk(pc)
            data_pages += pages
            done(pc.npages)
    finally:
        fresh.close()
    return data_pages


REDO_HELD = 32 << 20      # bytes of chunks read again that did not fit, held to append


def _redo_in_place(t: Target, spool: precopy.Spool, chunks: list, kept: list,
                   check: Callable[[], None]) -> None:
    """Read again, now, the chunks whose pre-read copy in the file was
    written since, and put each where that copy is when it fits (the same
    size, or smaller by a PAD frame or more), so that the image does not
    carry both.  kept[i] becomes the spool entry (in place), or the chunk
    itself to append (held in memory, up to REDO_HELD; past that, left to
    be read again with the rest)."""
    redo = [i for i, (c, k) in enumerate(zip(chunks, kept))
            if k is None and spool.stale(c) is not None]
    if not redo:
        return
    held = 0
    fresh = _produced(t, [chunks[i] for i in redo], check)
    try:
        for i, (pc, pages) in zip(redo, fresh):
            e = spool.replace(chunks[i], pc, pages)
            if e is not None:
                kept[i] = e
            elif held < REDO_HELD:
                owned = PageChunk(pc.head, [bytes(p) for p in pc.parts], pc.crc, pc.npages)
                held += sum(len(p) for p in owned.parts)
                kept[i] = (owned, pages)
    finally:
        fresh.close()


def _state_room(t: Target, max_contents: int) -> int:
    """precopy.state_room for the process as it is now: its VMAs, fds and
    threads, with the XSAVE areas, the contents of the deleted files and
    memfds it holds (each file once, up to max_contents; a deleted file it
    only maps counts as much as it maps: a FILE record carries it), and
    the bytes in its pipes (a PIPE record carries them).  Shared anonymous
    memory, SysV segments and mapped memfds show as deleted files in
    /proc/PID/maps too; their pages are PAGES records, not counted here."""
    pid = t.pid
    nthreads = int(t.status.get("Threads", "1"))
    extra = nthreads * cpu.xsave_size()
    try:
        maps = procfs.read(pid, "maps").decode("utf-8", "surrogateescape").splitlines()
        fds = os.listdir(f"/proc/{pid}/fd")
    except (OSError, UmigError):
        return precopy.state_room(0, 0, nthreads, extra)
    held: set[tuple[int, int]] = set()           # (dev, ino) of files counted by fd
    pipes: set[str] = set()
    with fdtable.pidfds():                       # one pidfd for all the pipes
        for n in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{n}")
                if link.endswith(" (deleted)") or link.startswith("/memfd:"):
                    st = os.stat(f"/proc/{pid}/fd/{n}")
                    if (st.st_dev, st.st_ino) not in held:
                        held.add((st.st_dev, st.st_ino))
                        extra += min(st.st_size, max_contents)
                elif link.startswith("pipe:") and link not in pipes:
                    pipes.add(link)
                    extra += _pipe_bytes(pid, int(n))
            except OSError:
                continue
    mapped: dict[str, int] = {}       # "major:minor inode" of a deleted file: bytes mapped
    for line in maps:
        parts = line.split(None, 5)
        if len(parts) < 6 or not parts[5].endswith(" (deleted)") or \
                parts[5].startswith(("/dev/zero", "/SYSV", "/memfd:")):
            continue
        major, minor = (int(x, 16) for x in parts[3].split(":"))
        if (os.makedev(major, minor), int(parts[4])) in held:
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        key = f"{parts[3]} {parts[4]}"
        mapped[key] = mapped.get(key, 0) + hi - lo
    extra += sum(min(n, max_contents) for n in mapped.values())
    return precopy.state_room(len(maps), len(fds), nthreads, extra)


def _pipe_bytes(pid: int, fd: int) -> int:
    """Bytes in the pipe at pid's fd now (0 if the fd changed meanwhile)."""
    ours = fdtable.take_fd(pid, fd)
    try:
        return fdtable.queued_bytes(ours) if stat.S_ISFIFO(os.fstat(ours).st_mode) else 0
    finally:
        os.close(ours)


def _preread(t: Target, check: Callable[[], None], progress: Callable[[Progress], None],
             spool: precopy.Spool | None = None):
    """Start write tracking (a short freeze to inject userfaultfd), then read
    and compress memory while the process runs: into the cache, up to its
    budget, or with a spool, all of it into the image file.  Returns the
    tracker and the cache or spool."""
    fr = Freezer(t)
    tracker = precopy.Tracker(t.pid)
    try:
        with critical():
            fr.freeze()
        smaps = procfs.parse_smaps(procfs.read(t.pid, "smaps"))
        vmas = _vma_records(t, smaps)          # refuses what grab would refuse
        vdso = _vdso_record(t, smaps)
        gadget = find_gadget(vdso["image"], vdso["vdso_start"]) if vdso else None
        with Injector(t.pid, t.memfd, gadget) as inj:
            tracker.take_fd(inj)
    except BaseException:
        tracker.close()
        raise
    finally:
        with critical():
            fr.thaw()
    cache = spool or precopy.Cache()
    try:
        ranges = _present_ranges(t, vmas)
        chunks = list(_chunks(ranges))
        tracker.protect(vmas, ranges)
        t.tracking = bool(tracker.spans)
        if not t.tracking:
            return tracker, cache
        now = Progress("pre-reading", pages_total=sum(n for c in chunks for _, n, _ in c))
        progress(now)
        fresh = _produced(t, chunks, check)
        try:
            for chunk, (pc, pages) in zip(chunks, fresh):
                cache.put(chunk, pc, pages)
                now.pages_done += pc.npages
                progress(now)
                if cache.full():
                    break
        finally:
            fresh.close()
    except Interrupted:
        tracker.close()
        raise
    except (OSError, UmigError):
        pass    # the process changed under the reading: what was read stays,
        #         checked at the freeze like the rest
    except BaseException:
        tracker.close()
        raise
    return tracker, cache


# ---------------------------------------------------------------- the rest

def _creds(status: dict) -> dict:
    uid = [int(x) for x in status["Uid"].split()]
    gid = [int(x) for x in status["Gid"].split()]
    return {"uid": uid[0], "euid": uid[1], "suid": uid[2], "fsuid": uid[3],
            "gid": gid[0], "egid": gid[1], "sgid": gid[2], "fsgid": gid[3],
            "groups": [{"gid": int(g)} for g in status.get("Groups", "").split()],
            "cap_inh": int(status["CapInh"], 16), "cap_prm": int(status["CapPrm"], 16),
            "cap_eff": int(status["CapEff"], 16), "cap_bnd": int(status["CapBnd"], 16),
            "cap_amb": int(status.get("CapAmb", "0"), 16), "securebits": 0}


def _vdso_record(t: Target, vmas: list[procfs.Vma]) -> dict | None:
    by = {v.path: v for v in vmas if v.path in ("[vvar]", "[vvar_vclock]", "[vdso]")}
    if "[vdso]" not in by:
        return None
    vd = by["[vdso]"]
    vv = by.get("[vvar]")
    vc = by.get("[vvar_vclock]")
    image = os.pread(t.memfd, vd.size, vd.start)
    return {"vvar_start": vv.start if vv else 0, "vvar_size": vv.size if vv else 0,
            "vclock_start": vc.start if vc else 0, "vclock_size": vc.size if vc else 0,
            "vdso_start": vd.start, "vdso_size": vd.size, "image": image}


def header_record(pid: int) -> dict:
    return {"arch": platform.machine(), "page_size": PAGE, "kernel": platform.release(),
            "xcr0": cpu.xcr0(), "xsave_size": cpu.xsave_size(),
            "cpu_flags": " ".join(sorted(cpu.flags())), "hostname": socket.gethostname(),
            "time_ns": time.time_ns(), "umig_version": __version__, "pid": pid,
            "uid": os.geteuid()}


def _open_proc(t: Target) -> None:
    pid = t.pid
    for attr, name, mode in (("memfd", "mem", os.O_RDWR), ("pagemapfd", "pagemap", os.O_RDONLY)):
        try:
            setattr(t, attr, os.open(f"/proc/{pid}/{name}", mode | os.O_CLOEXEC))
        except FileNotFoundError:
            raise NoProcess(f"process {pid} went away", pid=pid) from None
        except PermissionError:
            raise _why_not_traceable(pid, t) from None


def _close_proc(t: Target) -> None:
    for fd in (t.memfd, t.pagemapfd):
        if fd >= 0:
            os.close(fd)
    t.memfd = t.pagemapfd = -1


@dataclass
class Member:
    """One process of the image, read while frozen: its state records and
    the page ranges to write."""
    t: Target
    records: list = field(default_factory=list)     # (schema.Record, values), in order
    ranges: list = field(default_factory=list)
    smaps: list = field(default_factory=list)
    vmas: list = field(default_factory=list)
    fds: list = field(default_factory=list)
    cow: dict = field(default_factory=dict)    # inherited VMA start -> ranges to write


def _read_member(t: Target, tree: bool, max_contents: int, tcp=None) -> Member:
    """Everything the image holds about one frozen process but its pages."""
    pid = t.pid
    status = procfs.parse_status(procfs.read(pid, "status"))
    if not tree and _children(pid):
        raise Refused(f"process {pid} started a child process while umig froze it",
                      pid=pid, hint=f"grab them with it: umig grab --tree {pid}")
    st = procfs.parse_stat(procfs.read(pid, "stat"))
    smaps = procfs.parse_smaps(procfs.read(pid, "smaps"))
    vmas = _vma_records(t, smaps)
    fds = fdtable.describe_all(pid, max_contents, tcp)
    fdtable.check_epolls(pid, fds)
    vdso = _vdso_record(t, smaps)
    timers = procfs.read(pid, "timers").strip() if os.path.exists(
        f"/proc/{pid}/timers") else b""
    if timers:
        raise Refused(f"process {pid} has POSIX timers (timer_create); not supported yet",
                      pid=pid)
    gadget = find_gadget(vdso["image"], vdso["vdso_start"]) if vdso else None
    with Injector(pid, t.memfd, gadget) as inj:
        task = _read_process(t, inj)
    threads = []
    for tid in _tids(pid):
        if tid != pid:
            _same_creds_as_leader(pid, tid, status)
        with Injector(tid, t.memfd, gadget) as inj:
            threads.append(_read_thread(pid, tid, inj))
    creds = _creds(status)
    creds["securebits"] = task["securebits"]
    # the leader's own queue stays in PENDING (shared=0), where readers from
    # before THREAD.pending look for it
    task["pending"] += [{"shared": 0, "sig": x["sig"], "info": x["info"]}
                        for x in threads[0]["pending"]]
    threads[0]["pending"] = []
    recs: list = [
        (schema.PROCESS, {
            "pid": pid, "ppid": int(st[3]), "pgid": int(st[4]), "sid": int(st[5]),
            "nthreads": len(threads), "comm": st[1],
            "exe": _readlink(f"/proc/{pid}/exe"),
            "cmdline": procfs.read(pid, "cmdline"),
            "cwd": _readlink(f"/proc/{pid}/cwd"),
            "personality": int(procfs.read(pid, "personality"), 16),
            "umask": int(status.get("Umask", "0022"), 8),
            "pdeathsig": task["pdeathsig"],
            "no_new_privs": int(status.get("NoNewPrivs", "0")),
            "exit_signal": int(st[37]), "tty_nr": int(st[6]), "tpgid": int(st[7])}),
        (schema.CREDS, creds),
        (schema.RLIMITS, {"limits": [
            {"resource": r, "cur": c, "max": h}
            for r, c, h in procfs.parse_limits(procfs.read(pid, "limits"))]}),
        (schema.MM, {
            "start_code": int(st[25]), "end_code": int(st[26]), "start_data": int(st[44]),
            "end_data": int(st[45]), "start_brk": int(st[46]), "brk": task["brk"],
            "start_stack": int(st[27]), "arg_start": int(st[47]), "arg_end": int(st[48]),
            "env_start": int(st[49]), "env_end": int(st[50]),
            "auxv": procfs.read(pid, "auxv"), "exe": _readlink(f"/proc/{pid}/exe")})]
    if vdso:
        recs.append((schema.VDSO, vdso))
    recs += [(schema.VMA, v) for v in vmas]
    recs += [(schema.THREAD, th) for th in threads]
    recs += [(schema.SIGACTIONS, {"actions": task["actions"]}),
             (schema.PENDING, {"signals": task["pending"]}),
             (schema.ITIMERS, {"timers": task["itimers"]})]
    recs += [(schema.FD, f) for f in fds]
    return Member(t, recs, [], smaps, vmas, fds)


# what each thread holds for itself but umig restores once per process
PER_THREAD_SAME = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
                   "NoNewPrivs", "Seccomp")


def _same_creds_as_leader(pid: int, tid: int, leader: dict) -> None:
    """Credentials, no_new_privs and seccomp are per thread; umig restores
    the leader's in every thread, so a thread that differs (dropped
    privileges, its own sandbox) is refused rather than given the
    leader's."""
    st = procfs.parse_status(procfs.read(pid, f"task/{tid}/status"))
    if st.get("Seccomp", "0") != "0":
        raise Refused(f"thread {tid} of process {pid} runs under seccomp (mode "
                      f"{st['Seccomp']}), which umig cannot restore yet", pid=pid)
    for key in PER_THREAD_SAME:
        if st.get(key) != leader.get(key):
            raise Refused(f"thread {tid} of process {pid} has its own {key} ({st.get(key)}, "
                          f"the process has {leader.get(key)}); umig restores one set of "
                          f"credentials per process and will not give the thread the "
                          f"leader's", pid=pid)


def _pss_kb(pid: int) -> int:
    """Resident memory with shared pages divided among their sharers, plus
    swap: what a member adds to the image at most, in KiB."""
    total = 0
    try:
        for line in procfs.read(pid, "smaps_rollup").decode().splitlines():
            if line.startswith(("Pss:", "SwapPss:")):
                total += int(line.split()[1])
    except (OSError, UmigError, ValueError):
        pass
    return total


def _zombie_record(pid: int) -> dict:
    st = procfs.parse_stat(procfs.read(pid, "stat"))
    return {"pid": pid, "ppid": int(st[3]), "pgid": int(st[4]), "sid": int(st[5]),
            "exit_status": int(st[51]) if len(st) > 51 else 0, "comm": st[1],
            "exit_signal": int(st[37])}


COW_KEYS = ("start", "end", "prot", "flags", "kind", "content", "pgoff", "path", "ino")


def _inherit(members: list[Member]) -> None:
    """Mark the private VMAs each member shares copy-on-write with its
    parent (a member too): resume forks the member from its parent with the
    parent's memory in place, so only the pages that differ go into the
    image (m.cow: the ranges to write per VMA) and the pages only the parent
    has are dropped (VMA.discard).  Pages count as shared by frame number
    where /proc shows them (CAP_SYS_ADMIN), else by their bytes."""
    if len(members) < 2:
        return
    by_pid = {m.t.pid: m for m in members}
    cap = 4096
    vec = ffi.new("struct umig_region[]", cap)
    walk_end = ffi.new("uint64_t *")
    for m in members[1:]:
        parent = by_pid.get(int(m.records[0][1]["ppid"]))
        if parent is None:
            continue
        theirs = {(v["start"], v["end"]): v for v in parent.vmas}
        for v in m.vmas:
            pv = theirs.get((v["start"], v["end"]))
            if (pv is None or v["flags"] & schema.VMA_SHARED
                    or v["content"] == schema.CONTENT_NONE
                    or any(pv[k] != v[k] for k in COW_KEYS if k != "flags")
                    or (pv["flags"] ^ v["flags"]) & ~schema.VMA_INHERIT):
                continue      # (the parent's may be marked already: it has a parent too)
            write: list[tuple[int, int, int]] = []
            discard: list[dict] = []
            start, end = v["start"], v["end"]
            while start < end:
                n = lib.umig_cow_diff(m.t.memfd, parent.t.memfd, m.t.pagemapfd,
                                      parent.t.pagemapfd, start, end, vec, cap, walk_end)
                if n < 0:
                    raise from_oserror(OSError(-n, os.strerror(-n)),
                                       f"comparing the pages of process {m.t.pid} with its "
                                       f"parent's", pid=m.t.pid)
                for i in range(n):
                    r = vec[i]
                    npages = (r.end - r.start) // PAGE
                    if r.categories == lib.UMIG_COW_WRITE:
                        write.append((r.start, npages, 0))     # zeros too: not fresh memory
                    else:
                        discard.append({"start": r.start, "npages": npages})
                start = walk_end[0] if walk_end[0] > start else end
            v["flags"] |= schema.VMA_INHERIT
            v["discard"] = discard
            m.cow[v["start"]] = write


def _shared_once(members: list[Member]) -> None:
    """Shared anonymous memory mapped by several members (or twice in one)
    is one object: its pages go into the image once, with the first VMA
    that maps that part of it."""
    seen: set[tuple[int, int, int]] = set()
    for m in members:
        for v in m.vmas:
            if v["kind"] == schema.VMA_SHMEM and v["flags"] & schema.VMA_SHARED:
                key = (v["ino"], v["pgoff"], v["end"] - v["start"])
                if key in seen:
                    v["flags"] |= schema.VMA_SHM_SEEN
                seen.add(key)


def grab(pid: int, out_fd: int, finish: str = "kill",
         interrupted: Callable[[], bool] = lambda: False,
         on_complete: Callable[[int], None] = lambda size: None,
         prepare: Callable[[int], None] = lambda estimate: None,
         preread: str = "auto", tree: bool = False,
         max_contents: int = fdtable.MAX_CONTENTS,
         tcp_established: bool = False, ship_files: bool = False,
         external_pipes: str = "refuse",
         warn: Callable[[str], None] = lambda msg: None,
         progress: Callable[[Progress], None] = lambda now: None,
         write_ahead: bool = False) -> GrabStats:
    """Write the image of process pid (with tree, of it and all its
    descendants) to out_fd; once it is complete (and on_complete(size),
    which puts a file image in place, succeeded) kill it (finish="kill"),
    thaw it ("running") or leave it stopped ("stopped").  prepare(estimate)
    gets an upper bound of the image size before the freeze (to preallocate
    a file).  preread: "on", "off" or "auto" (on for processes of
    precopy.MIN_RSS and more): read memory before the freeze (precopy.py;
    not with tree).  max_contents: bytes of a deleted file's or memfd's
    contents the image may carry per fd.  tcp_established: take established
    TCP connections with TCP_REPAIR (tcprepair.py) instead of refusing
    them; their packets are held back from the freeze until `umig resume`
    has them (or, if the process goes on here, until the grab ends).
    ship_files: carry the files the processes have open or map (files.py).
    external_pipes: "refuse" a pipe to a process outside at fd > 2, or give
    the process "devnull" there.  warn(msg): what a failed grab could not
    undo (it is said at once: the exception follows).  progress(now): how
    far it is (a Progress), at each phase and after every chunk of pages.
    write_ahead: out_fd is a new file of the caller's, open to read and
    write, that it cuts to size or removes after: pre-read pages may be
    written ahead into it (precopy.Spool)."""
    t0 = time.perf_counter()
    stats = GrabStats(pid)
    t = _refuse_early(pid, tree)
    _open_proc(t)
    rss_kb = int(t.status.get("VmRSS", "0 kB").split()[0] or 0) + int(
        t.status.get("VmSwap", "0 kB").split()[0] or 0)
    if tree:
        # memory the members share is one: Pss counts it once over them all
        rss_kb = _pss_kb(pid)
        for c in descendants(pid)[0]:
            try:
                _refuse_early(c, True)
                rss_kb += _pss_kb(c)
            except NoProcess:
                pass
            except Refused:
                if _state(c) not in ("Z", "X"):    # ended meanwhile: a zombie of the tree
                    raise
    fr = Freezer(t, tree)
    done = False
    tracker: precopy.Tracker | None = None
    cache: precopy.Cache | None = None
    targets: dict[int, Target] = {pid: t}
    t.pin_ok = not tree
    taken = tcprepair.Taken() if tcp_established else None
    stack = contextlib.ExitStack()

    def check() -> None:
        if interrupted():
            raise Interrupted(f"interrupted: process {pid} was left running as it was",
                              pid=pid)

    try:
        spool = None
        if not tree and (preread == "on" or (preread == "auto"
                                             and rss_kb * 1024 >= precopy.MIN_RSS)):
            if write_ahead and not ship_files:
                # pre-read pages go into the image file itself, after room
                # for the state records
                spool = precopy.Spool(out_fd, _state_room(t, max_contents))
            try:
                tracker, cache = _preread(t, check, progress, spool)
            except OSError as e:
                stats.precopy = f"off ({e.strerror or e})"
        if spool is not None and (cache is not spool or not spool.entries):
            # pre-reading did not start or wrote nothing: no room to keep
            cache = None if cache is spool else cache
            spool = None
        if spool is not None:
            try:            # on a disk, the sync at the end then has little left to do
                os.fdatasync(out_fd)
            except OSError:
                pass        # said by the sync at the end, if it fails too
        if spool is None:
            # what the image will take, at most: what was pre-read as it is,
            # the rest as much as it holds (a file allocated for far more
            # costs its cutting back while the process is frozen: 24 ms for
            # 100 MiB on tmpfs).  With the pre-read pages in the file already,
            # what is left to write is too little to reserve: the cutting
            # back would cost more than it saves (10-15 ms for 64 MiB)
            rest = rss_kb * 1024 - (cache.covered if cache else 0)
            prepare(max(rest, 0) + (cache.used if cache else 0) + (4 << 20))
        with critical():
            fr.freeze()
        now = Progress("frozen", frozen_at=fr.frozen_at)
        progress(now)
        check()
        stack.enter_context(fdtable.pidfds())
        members = []
        for p in fr.members:
            if p not in targets:
                targets[p] = _refuse_early(p, True)
                targets[p].pin_ok = False
                _open_proc(targets[p])
            members.append(_read_member(targets[p], tree, max_contents, taken))
        zombies = [_zombie_record(z) for z in fr.zombies]
        pipes = fdtable.pipe_records([(m.t.pid, m.fds) for m in members], external_pipes,
                                     stats.warnings)
        fdtable.share_descriptions([(m.t.pid, m.fds) for m in members])
        fdtable.DeletedFile.once([(m.t.pid, m.fds) for m in members])
        fdtable.check_socketpairs([(m.t.pid, m.fds) for m in members])
        fdtable.Fifo.contents([(m.t.pid, m.fds) for m in members])
        fdtable.pty_pairs([(m.t.pid, m.fds) for m in members])
        shipped = files.ship([(m.t.pid, m.vmas, m.fds) for m in members],
                             max_contents) if ship_files else []
        shipped += files.deleted_maps([(m.t.pid, m.vmas, m.fds) for m in members],
                                      max_contents)
        _shared_once(members)
        _inherit(members)
        check()

        needs_v2 = len(members) > 1 or zombies or any(
            v["flags"] & (schema.VMA_SHM_SEEN | schema.VMA_INHERIT)
            for m in members for v in m.vmas)
        def state(w: ImageWriter) -> None:
            w.record(schema.HEADER, header_record(pid))
            for f in shipped:
                w.record(schema.FILE, f)
            for m in members:
                for rec, values in m.records:
                    w.record(rec, values)
            for z in zombies:
                w.record(schema.ZOMBIE, z)
            for pipe in pipes:
                w.record(schema.PIPE, pipe)

        w = ImageWriter(out_fd, version=2 if needs_v2 else 1)
        outgrew = ""
        if spool is None:
            state(w)
        else:
            try:
                w.limit = spool.start
                state(w)
                w.pad_to(spool.start)
            except NoRoom:
                # more state than the room kept (nothing past it was
                # written): the image starts again, with what an in-memory
                # cache would have kept of the pre-read pages (read back)
                outgrew = (f"; the state records outgrew the {spool.start} bytes kept "
                           f"for them, so only the first {precopy.BUDGET >> 20} MiB of "
                           f"pre-read pages were kept")
                cache = spool.to_cache()
                os.lseek(out_fd, 0, os.SEEK_SET)
                os.ftruncate(out_fd, 0)
                spool = None
                w = ImageWriter(out_fd, version=2 if needs_v2 else 1)
                state(w)
        member_ranges = [sorted(_present_ranges(m.t, [v for v in m.vmas
                                                      if not v["flags"] & schema.VMA_INHERIT])
                                + [r for rs in m.cow.values() for r in rs]) for m in members]
        now.pages_total = sum(n for rs in member_ranges for _, n, _ in rs)
        now.image_bytes = w.offset
        progress(now)

        def written(pages: int) -> None:
            now.pages_done += pages
            now.image_bytes = w.offset
            progress(now)
        for m, ranges in zip(members, member_ranges):
            if tree:
                w.record(schema.OWNER, {"pid": m.t.pid})
            unchanged = tracker.unchanged(t.pagemapfd, m.smaps) if tracker else None
            stats.data_pages += _write_pages(m.t, w, ranges, check, cache, unchanged, written)
        if cache:
            stats.precopy = (f"{cache.reused} pre-read chunks kept, {cache.reread} read "
                             f"again frozen" + (f" (written ahead into the image; "
                                                f"{cache.in_place} of those read again "
                                                f"in place)" if spool else "") + outgrew)
        w.record(schema.ROUND_END, {"round": 0, "pages": w.pages,
                                    "records": w.page_records})
        check()
        w.finish()
        now.phase, now.image_bytes = "written", w.offset
        progress(now)
        on_complete(w.offset)
        done = True
        stats.pages = w.pages
        stats.image_bytes = w.offset
        stats.vmas = sum(len(m.vmas) for m in members)
        stats.fds = sum(len(m.fds) for m in members)
        stats.processes = len(members)
        stats.threads = sum(rec[1]["nthreads"] for m in members for rec in m.records[:1])
    except (KeyboardInterrupt, Interrupted) as e:
        why = e.msg if isinstance(e, Interrupted) else "interrupted"
        raise Interrupted(f"{why}: process {pid} was left running as it was",
                          pid=pid) from None
    except (OSError, UmigError) as e:
        gone = fr.attached and _died(pid, fr.tids)
        if gone:
            fr.attached = False
            raise NoProcess(f"process {pid} {gone} while umig grabbed it; no image was "
                            f"written", pid=pid) from e
        if isinstance(e, UmigError):
            raise
        if e.errno == 3:
            raise NoProcess(f"process {pid} went away while umig grabbed it", pid=pid) from e
        raise from_oserror(e, f"grabbing process {pid}", pid=pid) from e
    finally:
        stack.close()
        if not done:
            with critical():
                try:
                    for problem in (taken.release() if taken else []):
                        warn(problem)
                finally:
                    fr.thaw()
        if tracker and not done:
            tracker.close()
        for tg in targets.values():
            _close_proc(tg)

    # the image is complete (and synced): now, and only now, finish the source
    if taken:
        stats.tcp = len(taken.socks)
        stats.tcp_locks = sorted(taken.tables.values())
    if finish == "hold":
        stats.held = Held(fr, taken, tracker, stats, t0)
        return stats
    with critical():
        if finish == "kill":
            fr.kill()
            if taken:
                taken.finish()       # closes silently: the lock holds the peers off
        else:
            if taken:
                stats.warnings += taken.release()
                stats.tcp_locks = []
            if finish == "stopped":
                fr.leave_stopped()
            else:
                fr.thaw()
    if tracker:
        tracker.close()      # ends the tracking (after the kill: not frozen time)
    stats.finish = finish
    stats.frozen_s = (fr.killed_at or time.perf_counter()) - fr.frozen_at
    stats.wall_s = time.perf_counter() - t0
    return stats


class Held:
    """A process grab left frozen after writing its image (finish="hold"),
    for `umig migrate` to kill once the target runs it, thaw if the target
    failed, or leave stopped when it cannot know."""

    def __init__(self, fr: Freezer, taken, tracker, stats: GrabStats, t0: float):
        self.fr, self.taken, self.tracker, self.stats, self.t0 = fr, taken, tracker, stats, t0

    def kill(self) -> None:
        with critical():
            self.fr.kill()
            if self.taken:
                self.taken.finish()
        self._done("kill")

    def thaw(self) -> list[str]:
        with critical():
            problems = self.taken.release() if self.taken else []
            self.fr.thaw()
        self._done("running")
        return problems

    def stop(self) -> None:
        with critical():
            self.fr.leave_stopped()      # the lock (if any) stays: it is not ours to settle
        self._done("stopped")

    def _done(self, how: str) -> None:
        if self.tracker:
            self.tracker.close()
        self.stats.finish = how
        self.stats.frozen_s = (self.fr.killed_at or time.perf_counter()) - self.fr.frozen_at
        self.stats.wall_s = time.perf_counter() - self.t0


def _died(pid: int, tids: list[int], settle: float = 0.5) -> str:
    """How the tracee ended, if it did ("" if it is still there).

    Called after an error: a tracee killed by SIGKILL loses its memory
    (reads fail with EIO) before its exit is reported to the tracer, so
    give an exit in progress `settle` seconds to show up.  The leader's
    exit is reported only once its other (traced) threads were reaped."""
    deadline = time.monotonic() + settle
    while True:
        for tid in tids:
            if tid != pid:
                try:
                    tracing.wait(tid, nohang=True)
                except ChildProcessError:
                    pass
        try:
            st = tracing.wait(pid, nohang=True)
        except ChildProcessError:
            return "went away"
        if st is not None and st.kind in ("exited", "killed"):
            return str(st)
        if time.monotonic() >= deadline:
            return ""
        time.sleep(0.01)


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""
