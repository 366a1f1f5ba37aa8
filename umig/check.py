"""`umig check`: probe the kernel features umig relies on, and say what will
and will not work here (STYLE.md §10).

Each probe really exercises its feature, and whatever could crash or hang
runs in a forked child that is killed and reaped before the probe returns;
no probe leaves a process, an fd or a mapping behind.  The tests decide what
to run from the same probes (`available(name)`, STYLE.md §12).  What the
probes found on our machines, and why umig builds on it, is in
docs/kernel-findings.md.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import json
import os
import random
import select
import signal
import struct
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache
from typing import Callable, Iterator

from . import cpu, procfs, tracing
from .errors import Exit
from .native import PAGE, ffi, lib, syscall

NR_MMAP, NR_MUNMAP, NR_BRK = 9, 11, 12
NR_PRCTL, NR_ARCH_PRCTL = 157, 158
NR_PROCESS_VM_READV, NR_PROCESS_VM_WRITEV = 310, 311
NR_USERFAULTFD = 323
NR_PIDFD_OPEN, NR_PIDFD_GETFD = 434, 438

PR_SET_PDEATHSIG = 1
PR_SET_MM, PR_SET_MM_MAP, PR_SET_MM_MAP_SIZE = 35, 14, 15
ARCH_MAP_VDSO_64 = 0x2003

UFFD_USER_MODE_ONLY = 1
UFFDIO_API = 0xC018AA3F          # _IOWR(0xAA, 0x3F, struct uffdio_api)
UFFD_API = 0xAA
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_WP_ASYNC = 1 << 15

# PAGEMAP_SCAN categories (Linux 6.7+ UAPI; KERNEL-NOTES.md)
CAT_PRESENT, CAT_PFNZERO = 8, 32
PM_SOFT_DIRTY = 1 << 55

CAPS = {"CAP_SYS_PTRACE": 19, "CAP_CHECKPOINT_RESTORE": 40, "CAP_SYS_ADMIN": 21,
        "CAP_SYS_RESOURCE": 24, "CAP_NET_ADMIN": 12}
CAP_USE = {
    "CAP_SYS_PTRACE": "grabbing other users' processes",
    "CAP_CHECKPOINT_RESTORE": "keeping PIDs, setting /proc/PID/exe",
    "CAP_SYS_ADMIN": "the same, where CAP_CHECKPOINT_RESTORE is missing",
    "CAP_SYS_RESOURCE": "raising hard rlimits, prlimit on other users' processes",
    "CAP_NET_ADMIN": "TCP_REPAIR for sockets, later",
}

CHILD_TIMEOUT = 2.0      # seconds a probe child may take to say it is ready


@dataclass
class Probe:
    name: str
    ok: bool
    detail: str
    needed_for: str


class ProbeFailed(Exception):
    """A probe's feature does not work; the message says how."""


_PROBES: list[tuple[str, str, Callable[[], str]]] = []


def _probe(name: str, needed_for: str):
    """Register a probe: a function that returns its detail when the feature
    works and raises ProbeFailed (or OSError) when it does not."""
    def register(fn: Callable[[], str]) -> Callable[[], str]:
        _PROBES.append((name, needed_for, fn))
        return fn
    return register


# ---- probe children ---------------------------------------------------------

class _Kid:
    """A child of ours that a probe started.  All waiting goes through it, so
    that it is never signalled after it was reaped (its pid may be reused)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.reaped = False

    def wait(self, timeout: float) -> tracing.Stop | None:
        """Its next change of state, or None after timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            stop = tracing.wait(self.pid, nohang=True)
            if stop is not None:
                self.reaped = stop.kind in ("exited", "killed")
                return stop
            if time.monotonic() > deadline:
                return None
            time.sleep(0.0005)

    def kill(self) -> None:
        """SIGKILL and reap it (a tracee too: SIGKILL needs no resume)."""
        if self.reaped:
            return
        os.kill(self.pid, signal.SIGKILL)      # not reaped: still ours, a zombie at worst
        while True:
            try:
                _, status = os.waitpid(self.pid, tracing.WALL)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                break
        self.reaped = True


@contextmanager
def _child(body: Callable[[], bytes] | None = None) -> Iterator[tuple[_Kid, bytes]]:
    """Fork a child that runs body(), reports its result (one line) over a
    pipe and then sleeps until it is killed; yields (child, result).  The
    child never returns into the caller's code, dies with us
    (PR_SET_PDEATHSIG), and is killed and reaped when the block ends."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            syscall(NR_PRCTL, PR_SET_PDEATHSIG, signal.SIGKILL)
            out = body() if body else b"ready"
            os.write(w, out.replace(b"\n", b" ") + b"\n")
            while True:
                signal.pause()
        except BaseException as e:   # noqa: BLE001 - report anything, then die
            try:
                os.write(w, b"!" + f"{type(e).__name__}: {e}".encode()[:400] + b"\n")
            finally:
                os._exit(1)
        finally:
            os._exit(0)
    os.close(w)
    kid = _Kid(pid)
    try:
        line = _read_line(r, kid)
        if line.startswith(b"!"):
            raise ProbeFailed(f"in the probe child: {line[1:].decode(errors='replace')}")
        yield kid, line
    finally:
        os.close(r)
        kid.kill()


def _read_line(fd: int, kid: _Kid) -> bytes:
    buf = b""
    deadline = time.monotonic() + CHILD_TIMEOUT
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise ProbeFailed(f"the probe child did not answer within {CHILD_TIMEOUT:g} s")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise ProbeFailed(f"the probe child {kid.wait(1.0) or 'died'}")
        buf += chunk
    return buf[:-1]


@contextmanager
def _stopped_child(body: Callable[[], bytes] | None = None) -> Iterator[tuple[int, bytes]]:
    """A probe child, seized (PTRACE_O_EXITKILL) and in a PTRACE_EVENT_STOP."""
    with _child(body) as (kid, line):
        _seize_and_stop(kid)
        yield kid.pid, line


def _seize_and_stop(kid: _Kid) -> None:
    tracing.seize(kid.pid, tracing.PTRACE_O_EXITKILL)
    tracing.interrupt(kid.pid)
    stop = kid.wait(CHILD_TIMEOUT)
    if stop is None:
        raise ProbeFailed(f"PTRACE_INTERRUPT did not stop the child within {CHILD_TIMEOUT:g} s")
    if stop.kind != "event-stop":
        raise ProbeFailed(f"after PTRACE_INTERRUPT the child is {stop}, not in a "
                          f"PTRACE_EVENT_STOP")


def _err(e: OSError) -> str:
    return f"{errno.errorcode.get(e.errno, e.errno)} ({e.strerror})"


def _caps() -> tuple[int, int]:
    st = procfs.parse_status(procfs.read("self", "status"))
    return int(st["CapEff"], 16), int(st["CapBnd"], 16)


def _have(cap: str) -> bool:
    return bool(_caps()[0] >> CAPS[cap] & 1)


def _kib(n: int) -> str:
    return f"{n // 1024} KiB" if n % 1024 == 0 else f"{n} B"


# ---- the probes --------------------------------------------------------------

@_probe("ptrace_seize", "grab (freezing and reading a process) and resume (driving the "
        "restorer)")
def _ptrace_seize() -> str:
    with _child() as (kid, _):
        _seize_and_stop(kid)
        tracing.getregs(kid.pid)
        tracing.detach(kid.pid)
    return "seized a child, PTRACE_INTERRUPT stopped it (PTRACE_EVENT_STOP), detached"


@_probe("process_vm_readv", "grab and resume: bulk page copy (with /proc/PID/mem as "
        "fallback and for injection)")
def _process_vm() -> str:
    keep = []

    def body() -> bytes:
        buf = ffi.new("char[]", 64)
        keep.append(buf)
        marker = f"umig-probe-{os.getpid()}".encode()
        ffi.memmove(buf, marker, len(marker))
        return b"%d %s" % (int(ffi.cast("uintptr_t", buf)), marker)

    with _child(body) as (kid, line):
        pid = kid.pid
        addr_s, marker = line.split()
        addr = int(addr_s)
        local = ffi.new("char[]", 64)
        liov = ffi.new("uint64_t[2]", [int(ffi.cast("uintptr_t", local)), len(marker)])
        riov = ffi.new("uint64_t[2]", [addr, len(marker)])
        got = syscall(NR_PROCESS_VM_READV, pid, int(ffi.cast("uintptr_t", liov)), 1,
                      int(ffi.cast("uintptr_t", riov)), 1, 0)
        if ffi.buffer(local, got)[:] != marker:
            raise ProbeFailed(f"process_vm_readv read {ffi.buffer(local, got)[:]!r}, the child "
                              f"holds {marker!r}")
        new = b"written-by-umig"[:len(marker)].ljust(len(marker), b".")
        ffi.memmove(local, new, len(new))
        syscall(NR_PROCESS_VM_WRITEV, pid, int(ffi.cast("uintptr_t", liov)), 1,
                int(ffi.cast("uintptr_t", riov)), 1, 0)
        fd = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        try:
            back = os.pread(fd, len(new), addr)
        finally:
            os.close(fd)
        if back != new:
            raise ProbeFailed(f"after process_vm_writev /proc/PID/mem reads {back!r}")
    return "read and wrote a child's memory (process_vm_readv/writev, /proc/PID/mem)"


@_probe("pidfd_getfd", "taking fds out of a process: sockets, live dirty tracking (later)")
def _pidfd_getfd() -> str:
    def body() -> bytes:
        cr, cw = os.pipe()
        os.write(cw, b"from-the-child")
        return b"%d" % cr

    with _child(body) as (kid, line):
        pidfd = syscall(NR_PIDFD_OPEN, kid.pid, 0)
        try:
            fd = syscall(NR_PIDFD_GETFD, pidfd, int(line), 0)
        finally:
            os.close(pidfd)
        try:
            got = os.read(fd, 64)
        finally:
            os.close(fd)
    if got != b"from-the-child":
        raise ProbeFailed(f"the fd taken from the child reads {got!r}")
    return "pidfd_open + pidfd_getfd took a child's pipe"


def _spawn_stopped(set_tid: int) -> int:
    """clone3 (with set_tid when > 0) through lib.umig_spawn, then kill the
    child before it goes anywhere.  Returns the child's pid or -errno.

    Why umig_spawn: a raw clone3 issued from Python would return into the
    interpreter in the child, with glibc's thread state still the parent's.
    umig_spawn's child uses raw syscalls only: it makes itself a tracee
    (PTRACE_TRACEME) and stops with SIGSTOP before it would enter its entry
    point.  We see that stop, SIGKILL it and reap it; entry is never called
    (and is 0, so a child let go by mistake would only crash itself)."""
    pid = lib.umig_spawn(0, 0, set_tid)
    if pid < 0:
        return pid
    kid = _Kid(pid)
    try:
        stop = kid.wait(CHILD_TIMEOUT)
        if stop is None or stop.kind != "signal" or stop.value != signal.SIGSTOP:
            raise ProbeFailed(f"the clone3 child {stop or 'did not stop'} instead of "
                              f"stopping itself with SIGSTOP")
    finally:
        kid.kill()
    return pid


@_probe("clone3", "resume: starting the process that becomes the resumed one")
def _clone3() -> str:
    pid = _spawn_stopped(0)
    if pid < 0:
        raise ProbeFailed(f"clone3 failed: {_err(OSError(-pid, os.strerror(-pid)))}")
    return "clone3 started a child that stopped itself as a tracee"


def _free_pid() -> int:
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    while True:
        pid = random.randrange(max(300, pid_max // 2), pid_max - 1)
        if not os.path.exists(f"/proc/{pid}"):
            return pid


@_probe("clone3_set_tid", "keeping PIDs on resume")
def _clone3_set_tid() -> str:
    cr, admin = _have("CAP_CHECKPOINT_RESTORE"), _have("CAP_SYS_ADMIN")
    for _ in range(5):
        want = _free_pid()
        got = _spawn_stopped(want)
        if got != -errno.EEXIST:      # raced with a new process: try another pid
            break
    if got == -errno.EPERM:
        raise ProbeFailed("refused (EPERM): set_tid needs CAP_CHECKPOINT_RESTORE or "
                          "CAP_SYS_ADMIN, and this process has neither")
    if got < 0:
        raise ProbeFailed(f"clone3 with set_tid={want} failed: "
                          f"{_err(OSError(-got, os.strerror(-got)))}")
    if got != want:
        raise ProbeFailed(f"asked for pid {want}, got {got}")
    by = " and ".join(n for n, have in (("CAP_CHECKPOINT_RESTORE", cr), ("CAP_SYS_ADMIN", admin))
                      if have)
    return f"a child got the pid asked for ({want}), allowed by {by or 'this user namespace'}"


@_probe("userfaultfd", "live migration dirty tracking (WP_ASYNC) and post-copy (later)")
def _userfaultfd() -> str:
    base = os.O_CLOEXEC | os.O_NONBLOCK
    works: dict[str, int | OSError] = {}
    for name, flags in (("plain", base), ("UFFD_USER_MODE_ONLY", base | UFFD_USER_MODE_ONLY)):
        try:
            fd = syscall(NR_USERFAULTFD, flags)
        except OSError as e:
            works[name] = e
            continue
        try:
            api = bytearray(struct.pack("<QQQ", UFFD_API, 0, 0))
            fcntl.ioctl(fd, UFFDIO_API, api)
            works[name] = struct.unpack("<QQQ", api)[1]
        finally:
            os.close(fd)
    good = {k: v for k, v in works.items() if not isinstance(v, OSError)}
    if not good:
        raise ProbeFailed("; ".join(f"{k}: {_err(v)}" for k, v in works.items()))
    features = next(iter(good.values()))
    wp = [n for n, bit in (("WP_ASYNC", UFFD_FEATURE_WP_ASYNC),
                           ("WP_UNPOPULATED", UFFD_FEATURE_WP_UNPOPULATED)) if features & bit]
    parts = [f"{k}: {'works' if k in good else _err(v)}" for k, v in works.items()]
    if "plain" not in good:
        try:
            with open("/proc/sys/vm/unprivileged_userfaultfd") as f:
                parts[0] += f" (vm.unprivileged_userfaultfd={f.read().strip()})"
        except OSError:
            pass
    return "; ".join(parts) + f"; {', '.join(wp) or 'no WP_ASYNC'}"


@contextmanager
def _anon(npages: int) -> Iterator[int]:
    addr = syscall(NR_MMAP, 0, npages * PAGE, 3, 0x22, -1, 0)   # RW, MAP_PRIVATE|ANON
    try:
        yield addr
    finally:
        syscall(NR_MUNMAP, addr, npages * PAGE)


@_probe("pagemap_scan", "grab: finding present pages fast (else /proc/PID/pagemap is read); "
        "dirty tracking (later)")
def _pagemap_scan() -> str:
    with _anon(8) as addr:
        mem = ffi.cast("volatile char *", addr)
        for page in (0, 2, 3):
            mem[page * PAGE] = b"x"
        _ = mem[5 * PAGE]                  # a read fault maps the zero page
        out = ffi.new("struct umig_region[]", 16)
        walk_end = ffi.new("uint64_t *")
        fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        try:
            n = lib.umig_scan(fd, addr, addr + 8 * PAGE, CAT_PRESENT, CAT_PRESENT | CAT_PFNZERO,
                              out, 16, walk_end)
        finally:
            os.close(fd)
        if n < 0:
            old = " (kernel older than 6.7)" if -n in (errno.ENOTTY, errno.EINVAL) else ""
            raise ProbeFailed(f"PAGEMAP_SCAN ioctl: {_err(OSError(-n, os.strerror(-n)))}{old}")
        got = [((out[i].start - addr) // PAGE, (out[i].end - addr) // PAGE, out[i].categories)
               for i in range(n)]
    want = [(0, 1, CAT_PRESENT), (2, 4, CAT_PRESENT), (5, 6, CAT_PRESENT | CAT_PFNZERO)]
    if got != want:
        raise ProbeFailed(f"PAGEMAP_SCAN found {got} (page ranges, categories), expected {want}")
    return "found exactly the written pages, and a read-faulted one as PFNZERO"


@_probe("soft_dirty", "nothing: umig tracks dirty pages with userfaultfd WP_ASYNC and "
        "PAGEMAP_SCAN")
def _soft_dirty() -> str:
    with _anon(1) as addr:
        ffi.cast("volatile char *", addr)[0] = b"x"
        fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        try:
            ent = int.from_bytes(os.pread(fd, 8, addr // PAGE * 8), "little")
        finally:
            os.close(fd)
    if not ent & PM_SOFT_DIRTY:
        raise ProbeFailed("absent: a freshly written page has no soft-dirty bit (55) in "
                          "pagemap (CONFIG_MEM_SOFT_DIRTY off); umig does not need it")
    return "present (a freshly written page is soft-dirty); umig does not use it"


def _vdso_vmas(maps: bytes) -> list[procfs.Vma]:
    return [v for v in procfs.parse_maps(maps) if v.path in ("[vvar]", "[vvar_vclock]", "[vdso]")]


def _layout(vmas: list[procfs.Vma]) -> str:
    vmas = sorted(vmas, key=lambda v: v.start)
    gaps = any(a.end != b.start for a, b in zip(vmas, vmas[1:]))
    return ", ".join(f"{v.path} {_kib(v.size)}" for v in vmas) + \
        (" (with gaps)" if gaps else ", contiguous")


@_probe("vdso_layout", "resume: putting the vDSO back where the process had it")
def _vdso_layout() -> str:
    vmas = _vdso_vmas(procfs.read("self", "maps"))
    if not any(v.path == "[vdso]" for v in vmas):
        raise ProbeFailed("this process has no [vdso] mapping")
    vd = next(v for v in vmas if v.path == "[vdso]")
    start = min(v.start for v in vmas)
    return f"{_layout(vmas)}; [vdso] at block+{vd.start - start:#x}"


@_probe("arch_map_vdso", "resume: a fresh vDSO block where the process expects it")
def _arch_map_vdso() -> str:
    vmas = _vdso_vmas(procfs.read("self", "maps"))
    if not vmas:
        raise ProbeFailed("this process has no vDSO to move")
    start = min(v.start for v in vmas)
    size = max(v.end for v in vmas) - start

    def body() -> bytes:
        # In the child: unmap the whole block and map a fresh one at the same
        # address.  Between the two calls nothing may use the vDSO (glibc's
        # time functions do): two direct cffi calls, the GC off, no Python
        # code in between that could read a clock.  At the same address,
        # glibc's cached pointers into the vDSO are valid again afterwards.
        gc.disable()
        u = lib.umig_syscall6
        r1 = u(NR_MUNMAP, start, size, 0, 0, 0, 0)
        r2 = u(NR_ARCH_PRCTL, ARCH_MAP_VDSO_64, start, 0, 0, 0, 0) if r1 == 0 else 0
        if r1 < 0 or r2 < 0:
            os._exit(3)          # the vDSO may be gone: say nothing more, just die
        time.clock_gettime(time.CLOCK_MONOTONIC)
        new = _vdso_vmas(procfs.read("self", "maps"))
        return json.dumps([[v.path, v.start, v.size] for v in new]).encode()

    with _child(body) as (_, line):
        new = [procfs.Vma(s, s + n, "r--p", 0, 0, 0, 0, p) for p, s, n in json.loads(line)]
    if _layout(new) != _layout(vmas) or min(v.start for v in new) != start:
        raise ProbeFailed(f"the fresh block is {_layout(new)} at {min(v.start for v in new):#x}, "
                          f"the old one was {_layout(vmas)} at {start:#x}")
    return ("in a child: unmapped the vDSO block, ARCH_MAP_VDSO_64 mapped a fresh one at "
            "the same address, clock_gettime works there")


@_probe("pr_set_mm_map", "resume: brk, argv/environ ranges and auxv of the resumed process "
        "(and /proc/PID/exe)")
def _pr_set_mm_map() -> str:
    size = ffi.new("unsigned int *")
    syscall(NR_PRCTL, PR_SET_MM, PR_SET_MM_MAP_SIZE, int(ffi.cast("uintptr_t", size)))
    if size[0] != 104:
        raise ProbeFailed(f"PR_SET_MM_MAP_SIZE says {size[0]} bytes; umig's struct has 104")

    def body() -> bytes:
        f = procfs.parse_stat(procfs.read("self", "stat"))
        vals = [int(f[i]) for i in (25, 26, 44, 45, 46)]   # code, data, start_brk
        vals.append(syscall(NR_BRK, 0))
        vals += [int(f[i]) for i in (27, 47, 48, 49, 50)]  # stack, arg, env
        out = []
        for exe_fd in (-1, os.open("/proc/self/exe", os.O_RDONLY)):
            mm = ffi.new("uint64_t[13]", vals + [0, (exe_fd & 0xFFFFFFFF) << 32])
            try:
                syscall(NR_PRCTL, PR_SET_MM, PR_SET_MM_MAP, int(ffi.cast("uintptr_t", mm)), 104)
                out.append("ok")
            except OSError as e:
                out.append(errno.errorcode.get(e.errno, str(e.errno)))
        return " ".join(out).encode()

    with _child(body) as (_, line):
        plain, exe = line.decode().split()
    if plain != "ok":
        raise ProbeFailed(f"PR_SET_MM_MAP with a process's own values: {plain}")
    # with an exe_fd: EBUSY means the capability check passed and only the old
    # executable being still mapped stopped it (as it is in the probe child)
    exe_note = {"EBUSY": "/proc/PID/exe can be set too",
                "ok": "/proc/PID/exe can be set too",
                "EPERM": "/proc/PID/exe cannot be set (needs CAP_CHECKPOINT_RESTORE)"}.get(
                    exe, f"setting /proc/PID/exe: {exe}")
    return f"struct of 104 bytes; PR_SET_MM_MAP accepted in a child; {exe_note}"


@_probe("yama_ptrace_scope", "grab: which processes may be seized")
def _yama() -> str:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = int(f.read())
    except FileNotFoundError:
        return "no Yama LSM: ptrace is limited only by uid and CAP_SYS_PTRACE"
    meaning = {0: "any process of the same uid", 1: "only descendants (or with CAP_SYS_PTRACE)",
               2: "only with CAP_SYS_PTRACE", 3: "nothing (ptrace disabled)"}
    if scope >= 1 and not (scope < 3 and _have("CAP_SYS_PTRACE")):
        raise ProbeFailed(f"ptrace_scope {scope}: {meaning.get(scope, '?')}; to grab any process "
                          f"of yours: sysctl kernel.yama.ptrace_scope=0 (or run as root)")
    return f"ptrace_scope {scope}: {meaning.get(scope, '?')}"


@_probe("capabilities", "what umig may do beyond a plain user: see the detail")
def _capabilities() -> str:
    eff, bnd = _caps()
    have = [n for n, b in CAPS.items() if eff >> b & 1]
    missing = [n for n, b in CAPS.items() if not eff >> b & 1]
    text = f"uid {os.geteuid()}; has {', '.join(have) or 'none of these'}"
    if missing:
        text += "; lacks " + "; ".join(
            f"{n} ({CAP_USE[n]})" + ("" if bnd >> CAPS[n] & 1 else ", not even in the bounding set")
            for n in missing)
        raise ProbeFailed(text)
    return text


@_probe("xsave", "grab and resume: FPU/SSE/AVX registers (XSAVE), CPU compatibility checks")
def _xsave() -> str:
    xcr0, size = cpu.xcr0(), cpu.xsave_size()
    with _stopped_child() as (pid, _):
        data = tracing.get_xstate(pid)
    if len(data) != size:
        raise ProbeFailed(f"PTRACE_GETREGSET NT_X86_XSTATE gave {len(data)} bytes, "
                          f"CPUID says {size}")
    sw = int.from_bytes(data[464:472], "little")
    if sw != xcr0:
        raise ProbeFailed(f"the xstate's sw_reserved holds {sw:#x}, XCR0 is {xcr0:#x}")
    avx512 = "with AVX-512" if xcr0 & 0xE0 == 0xE0 else "no AVX-512"
    return (f"XCR0 {xcr0:#x} ({', '.join(cpu.feature_names(xcr0))}), {avx512}; XSAVE area "
            f"{size} bytes, as NT_X86_XSTATE gives it")


@_probe("rseq", "grab and resume: the process's rseq registration")
def _rseq() -> str:
    with _stopped_child() as (pid, _):
        area, length, sig, _flags = tracing.rseq_config(pid)
    if not area:
        return "PTRACE_GET_RSEQ_CONFIGURATION works; the child has no rseq registered"
    return f"PTRACE_GET_RSEQ_CONFIGURATION: a child's area of {length} bytes, signature {sig:#x}"


# ---- running them ----------------------------------------------------------------

GRAB_NEEDS = ("ptrace_seize", "process_vm_readv", "xsave", "rseq")
RESUME_NEEDS = ("ptrace_seize", "clone3", "process_vm_readv", "vdso_layout", "arch_map_vdso",
                "pr_set_mm_map", "xsave", "rseq")


@cache
def run_probes() -> list[Probe]:
    out = []
    for name, needed_for, fn in _PROBES:
        try:
            out.append(Probe(name, True, fn(), needed_for))
        except ProbeFailed as e:
            out.append(Probe(name, False, str(e), needed_for))
        except OSError as e:
            out.append(Probe(name, False, _err(e), needed_for))
        except Exception as e:      # noqa: BLE001 - a probe's bug is a finding too
            where = traceback.extract_tb(e.__traceback__)[-1]
            out.append(Probe(name, False, f"the probe failed: {type(e).__name__}: {e} "
                             f"(check.py:{where.lineno})", needed_for))
    return out


def probe(name: str) -> Probe:
    for p in run_probes():
        if p.name == name:
            return p
    raise KeyError(f"no probe named {name!r}")


def available(name: str) -> bool:
    return probe(name).ok


def why_not(name: str) -> str:
    """A skip reason: the probe's name and what it found."""
    return f"{name} is not available here: {probe(name).detail}"


def verdict(probes: list[Probe]) -> tuple[bool, bool, str]:
    """(grab works, resume works, the one line that says so)."""
    ok = {p.name: p.ok for p in probes}
    by = {p.name: p for p in probes}
    grab = all(ok[n] for n in GRAB_NEEDS)
    resume = all(ok[n] for n in RESUME_NEEDS)
    if grab and resume:
        line = "umig can grab and resume here"
    elif grab:
        line = "umig can grab here but cannot resume (" + \
            ", ".join(n for n in RESUME_NEEDS if not ok[n]) + " failed)"
    elif resume:
        line = "umig can resume here but cannot grab (" + \
            ", ".join(n for n in GRAB_NEEDS if not ok[n]) + " failed)"
    else:
        line = "umig can neither grab nor resume here (" + \
            ", ".join(dict.fromkeys(n for n in GRAB_NEEDS + RESUME_NEEDS if not ok[n])) + \
            " failed)"
    if grab:
        if os.geteuid() != 0 and not _have("CAP_SYS_PTRACE"):
            line += f" (as uid {os.geteuid()}: this user's own processes"
            line += ", only descendants)" if not ok["yama_ptrace_scope"] else ")"
        elif not ok["yama_ptrace_scope"]:
            line += f" ({by['yama_ptrace_scope'].detail.split(';')[0]})"
    if resume:
        line += "; PIDs can be kept" if ok["clone3_set_tid"] else \
            "; PIDs cannot be kept (resumed processes get new PIDs: clone3 set_tid needs " \
            "CAP_CHECKPOINT_RESTORE or root)"
    return grab, resume, line


def main(as_json: bool) -> int:
    probes = run_probes()
    grab, resume, line = verdict(probes)
    if as_json:
        json.dump({"probes": [asdict(p) for p in probes], "grab": grab, "resume": resume,
                   "keep_pids": probe("clone3_set_tid").ok, "verdict": line}, sys.stdout,
                  indent=2)
        sys.stdout.write("\n")
    else:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text
        con = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
        table = Table(show_header=True, header_style="bold")
        for col in ("probe", "", "detail", "needed for"):
            table.add_column(col, overflow="fold")
        for p in probes:
            table.add_row(p.name, Text("ok", "green") if p.ok else Text("✗", "red"),
                          Text(p.detail), Text(p.needed_for))
        con.print(table)
        con.print(line, markup=False, soft_wrap=True)
    return Exit.OK if grab and resume else Exit.ENVIRONMENT
