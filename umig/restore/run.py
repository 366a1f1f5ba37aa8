"""resume: check the image, start the process that becomes the grabbed
one, trace it through the restorer while feeding it its pages, and let it
go only when the image verified to its trailer.

    umig resume                         child (clone3, set_tid)
    -----------                         -----------------------
    read records up to the pages
    check machine, files, creds
    open fds and files, build plan
    map the restorer region, spawn  -->  TRACEME, SIGSTOP
    write the child's rseq to drop  <--  (stopped)
    cont                            -->  restorer: fds, unmap, map VMAs
    write pages (process_vm_writev) <--  int3 MAPPED
    verify the trailer, cont        -->  protections, mm, signals, creds
    follow its syscalls             <--  int3 READY ... rt_sigreturn
    unmap the region (injected), detach: the process runs
"""

from __future__ import annotations

import collections
import json
import os
import resource
import signal
import struct
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import lz4.block

from .. import files, tracing
from ..errors import (BadImage, EnvironmentProblem, Interrupted, RestoreFailed, UmigError)
from ..fdtable import (O_CLOEXEC, TIOCSCTTY, TIOCSPGRP, TO_EOF, Epoll, ProcPidFile, PtyMaster,
                       PtySlave, ResumeFds, pts_index, take_locks)
from ..image import schema
from ..image.stream import ImageReader, decode_pages
from ..critical import critical
from ..inject import Injector
from ..native import PAGE, ffi, lib, restorer_blob, syscall
from .. import procfs
from . import checks, plan as planmod, vdso as vdsomod
from .load import Loaded

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS = 1, 2, 0x20
MAP_GROWSDOWN, MAP_NORESERVE, MAP_FIXED_NOREPLACE = 0x100, 0x4000, 0x100000
NR_mmap, NR_mprotect, NR_munmap, NR_rt_sigreturn = 9, 10, 11, 15
SIGKILL_BIT, SIGSTOP_BIT = 1 << 8, 1 << 18

STEP_NAMES = {v: k[len("UMIG_STEP_"):].lower().replace("_", " ")
              for k, v in vars(lib).items() if k.startswith("UMIG_STEP_")}


@dataclass
class ResumeOptions:
    pid_mode: str = "auto"             # auto | keep | new
    pidns: bool = False                # rebuild in a new user + PID namespace
    image_on_stdin: bool = False
    warn: Callable[[str], None] = lambda msg: None
    interrupted: Callable[[], bool] = lambda: False
    on_running: Callable[[int], None] = lambda pid: None
    followed: bool = False             # the image stream goes on after its trailer


@dataclass
class Resumed:
    pid: int
    same_pid: bool
    vdso_mode: str
    timings: dict = field(default_factory=dict)
    ns_init: int = 0                   # --pidns: the namespace's init (pid outside)
    terminal_modes: bytes | None = None  # umig resume's terminal settings before


def _vma_plan(img, map_fds: dict, shm: dict[int, int]) -> list[dict]:
    out = []
    for v in img.vmas:
        if v["kind"] in (schema.VMA_VDSO, schema.VMA_VVAR, schema.VMA_VVAR_VCLOCK):
            continue
        shared = bool(v["flags"] & schema.VMA_SHARED)
        flags = (MAP_SHARED if shared else MAP_PRIVATE) \
            | (MAP_GROWSDOWN if v["flags"] & schema.VMA_GROWSDOWN else 0) \
            | (MAP_NORESERVE if v["flags"] & schema.VMA_NORESERVE else 0)
        fd = -1
        pgoff = 0
        if v["content"] == schema.CONTENT_FILE:
            fd = map_fds[(v["path"], shared and bool(v["prot"] & PROT_WRITE))]
            pgoff = v["pgoff"]
        init = v["prot"] if shared and fd >= 0 else PROT_READ | PROT_WRITE
        if shared and v["kind"] == schema.VMA_SHMEM and v["ino"] in shm:
            fd, pgoff, init = shm[v["ino"]], v["pgoff"], PROT_READ | PROT_WRITE
        out.append({"start": v["start"], "end": v["end"], "pgoff": pgoff, "fd": fd,
                    "map_flags": flags, "prot": v["prot"], "init_prot": init,
                    "madv": v["madv"],
                    "inherit": 1 if v["flags"] & schema.VMA_INHERIT else 0})
    return out


def _open_mapped(img, fds: ResumeFds, files_: list[dict]) -> dict:
    out = {}
    for v in img.vmas:
        if v["content"] != schema.CONTENT_FILE:
            continue
        key = (v["path"], bool(v["flags"] & schema.VMA_SHARED and v["prot"] & PROT_WRITE))
        if key in out:
            continue
        if v["path"].endswith(files.DELETED):   # the unlinked copy of a deleted file
            ident = (v["dev"], v["ino"])
            if ident not in fds.deleted:
                f = next((f for f in files_ if (f["dev"], f["ino"]) == ident), None)
                if f is None:
                    raise BadImage(f"the image maps the deleted file {v['path']} at "
                                   f"{v['start']:#x} but does not carry its contents")
                fds.deleted_file(ident, v["path"], f["mode"], files.contents(f))
            out[key] = fds.deleted[ident]
            continue
        try:
            fd = os.open(v["path"], (os.O_RDWR if key[1] else os.O_RDONLY) | os.O_CLOEXEC)
        except OSError as e:
            raise EnvironmentProblem(f"cannot open {v['path']} to map it: {e.strerror}",
                                     path=v["path"]) from None
        out[key] = fds.keep(fd)
    return out


def _rlimits(img, warn) -> list[dict]:
    out = []
    for lim in img.rlimits["limits"]:
        res, cur, mx = lim["resource"], lim["cur"], lim["max"]
        _, my_max = resource.getrlimit(res)
        my_max &= 0xFFFFFFFFFFFFFFFF
        if mx > my_max and not _have_cap(24):       # CAP_SYS_RESOURCE
            warn(f"resource limit {res} had hard limit {mx}; keeping this host's {my_max}")
            mx = my_max
            cur = min(cur, mx)
        out.append({"resource": res, "pad": 0, "cur": cur, "max": mx})
    return out


def _have_cap(cap: int) -> bool:
    return bool(checks.own_caps() >> cap & 1)


def _choose_ids(loaded: Loaded, mode: str, pidns: bool) -> tuple[bool, bool]:
    """(keep the ids, in a new PID namespace).  A new user + PID namespace
    is used when asked, or when ids must be kept and this user may not
    choose them here: in a fresh namespace every id is free."""
    must = len(loaded.images) > 1 or bool(loaded.zombies) or \
        sum(len(i.threads) for i in loaded.images) > 1
    if pidns or (must and mode != "new" and not checks.can_checkpoint_restore()
                 and checks.userns_possible()):
        if mode == "new":
            raise EnvironmentProblem("--pid new and --pidns contradict each other: in a new "
                                     "PID namespace umig keeps the ids")
        return True, True
    return _choose_pids(loaded, mode), False


def _choose_pids(loaded: Loaded, mode: str) -> bool:
    """Whether the processes keep their pids and tids (else they get any).
    A multi-threaded process must keep its tids, since glibc holds each
    thread's tid in its thread descriptor (pthread_kill, mutex owners); a
    tree must keep its pids, which its members know of each other."""
    img = loaded.image
    want = img.process["pid"]
    ids = [(t["tid"], i.process["pid"]) for i in loaded.images for t in i.threads] + [
        (z["pid"], z["pid"]) for z in loaded.zombies]
    nthreads = sum(len(i.threads) for i in loaded.images)
    tree = len(loaded.images) > 1 or bool(loaded.zombies)
    must = tree or nthreads > 1
    why = (f"the image holds a tree of {len(loaded.images) + len(loaded.zombies)} processes "
           f"that know each other's pids" if tree else
           f"process {want} has {nthreads} threads, and a thread with a new tid would break "
           f"its pthread_kill and mutexes")
    if mode == "new":
        if must:
            raise EnvironmentProblem(f"cannot give new ids: {why}", pid=want,
                                     hint="resume without --pid new")
        return False
    if not checks.can_checkpoint_restore():
        if mode == "keep" or must:
            what = f"{why}; keeping its ids" if must else f"cannot keep pid {want}: that"
            raise EnvironmentProblem(f"{what} needs CAP_CHECKPOINT_RESTORE (or root)",
                                     pid=want, hint="resume as root" + (
                                         "" if must else ", or without --pid keep"))
        return False
    deadline = time.monotonic() + 3.0
    for tid, owner in ids:
        while True:
            state = checks.pid_state(tid)
            if state is None:
                break
            if state not in ("Z", "X") or time.monotonic() > deadline:
                if mode == "keep" or must:
                    what = "pid" if tid == owner else "thread id"
                    raise EnvironmentProblem(
                        f"cannot keep {what} {tid}: it is taken by {_owner(tid)}", pid=tid,
                        hint="stop that process, or resume with --pidns (in a new PID "
                             "namespace every id is free)" + ("" if must else
                                                               ", or without --pid keep"))
                return False
            time.sleep(0.02)     # the source was just killed; wait for its reaping
    return True


def _owner(tid: int) -> str:
    """'process P (comm)' or 'thread T of process P (comm)'."""
    try:
        tgid = int(procfs.parse_status(procfs.read(tid, "status")).get("Tgid", tid))
    except (UmigError, OSError, ValueError):
        tgid = tid
    who = f"process {tgid} ({_comm(tgid)})"
    return who if tgid == tid else f"thread {tid} of {who}"


def _comm(pid: int) -> str:
    try:
        return procfs.read(pid, "comm").decode(errors="replace").strip()
    except (UmigError, OSError):
        return "?"


def _own_maps() -> list[tuple[int, int]]:
    return [(v.start, v.end) for v in procfs.parse_maps(procfs.read("self", "maps"))]


# statuses of tracees that a wait for another one reaped first
_kept: dict[int, list] = {}


def _wait(pid: int) -> "tracing.Stop":
    """pid's next status: one kept for it, or its own."""
    if _kept.get(pid):
        return _kept[pid].pop(0)
    return tracing.wait(pid)


def _wait_any(pid: int) -> "tracing.Stop":
    """pid's next status, reaping any child's (tracees' statuses come to us
    as a child's) and keeping the others' for _wait.  umig resume has no
    children but the processes it makes."""
    if _kept.get(pid):
        return _kept[pid].pop(0)
    while True:
        try:
            got, status = os.waitpid(-1, tracing.WALL)
        except InterruptedError:
            continue
        st = tracing.decode_status(status)
        if got == pid:
            return st
        _kept.setdefault(got, []).append(st)


class Child:
    """The traced child that becomes the process, and the threads the
    restorer makes in it (traced from their start: PTRACE_O_TRACECLONE)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.memfd = -1
        self.alive = True
        self.threads: list[int] = []      # tids of the threads, in creation order

    def stop(self, expect: int | None, what: str, plan_addr: int,
             processes: bool = False) -> list[int]:
        """Continue the leader to the restorer's next int3 stop and check it
        is `expect`.  Threads it makes on the way are noted; processes it
        forks (processes=True: the restorer forks before it maps) are
        returned, in order."""
        forks: list[int] = []
        tracing.cont(self.pid)
        while True:
            st = self._wait_leader()
            if not (st.kind == "event" and st.value in (tracing.PTRACE_EVENT_CLONE,
                                                        tracing.PTRACE_EVENT_FORK)):
                break
            new = tracing.eventmsg(self.pid)
            (forks if processes else self.threads).append(new)
            tracing.cont(self.pid)
        self.check_trap(self.pid, st, expect, what, plan_addr)
        return forks

    def _wait_leader(self) -> "tracing.Stop":
        """The leader's next status, waited for among all our tracees: should
        the process be killed, the leader's exit is reported only after its
        threads' were reaped, so waiting on the leader alone could block
        for ever.  Others' statuses are kept for their own waits."""
        return _wait_any(self.pid)

    def wait(self, tid: int) -> "tracing.Stop":
        """A thread's next status (one an earlier wait kept, if any)."""
        return _wait(tid)

    def thread_ready(self, tid: int, plan_addr: int) -> None:
        """Run a new thread from its first stop (SIGSTOP, suppressed) to its
        READY stop."""
        st = self.wait(tid)
        if st.kind == "signal" and st.value == signal.SIGSTOP:
            tracing.cont(tid)
            st = self.wait(tid)
        self.check_trap(tid, st, lib.UMIG_STOP_READY, f"in thread {tid}", plan_addr)

    def check_trap(self, tid: int, st: "tracing.Stop", expect: int | None, what: str,
                   plan_addr: int) -> None:
        if st.kind == "signal" and st.value == signal.SIGTRAP:
            regs = tracing.getregs(tid)
            if regs.rax == lib.UMIG_STOP_FAIL:
                step, err = regs.rdi, regs.rsi - (1 << 64) if regs.rsi >= 1 << 63 else regs.rsi
                raise RestoreFailed(
                    f"the restorer failed at step '{STEP_NAMES.get(step, step)}'"
                    f"{'' if tid == self.pid else f' in thread {tid}'}: "
                    f"{os.strerror(-err) if err < 0 else err}; nothing was started")
            if regs.rax == expect:
                return
            raise RestoreFailed(f"the restorer stopped unexpectedly ({regs.rax}) {what}")
        if st.kind in ("exited", "killed") and tid == self.pid:
            self.alive = False
        step = self._step(plan_addr)
        raise RestoreFailed(f"the restorer {st} at step '{STEP_NAMES.get(step, step)}' "
                            f"{what}; nothing was started")

    def _step(self, plan_addr: int) -> int:
        try:
            raw = os.pread(self.memfd, 4, plan_addr + ffi.offsetof("struct umig_plan", "step"))
        except OSError:
            return 0
        return struct.unpack("<I", raw)[0] if len(raw) == 4 else 0

    def detach(self) -> None:
        """Let every thread go (each sits at the exit of its rt_sigreturn)."""
        for tid in self.threads + [self.pid]:
            tracing.detach(tid)

    def kill(self) -> None:
        if self.alive:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass
            for tid in self.threads + [self.pid]:    # the leader is reported last
                try:
                    while True:
                        st = _wait(tid)
                        if st.kind in ("exited", "killed"):
                            break
                except (OSError, ChildProcessError):
                    pass
            self.alive = False
        if self.memfd >= 0:
            os.close(self.memfd)
            self.memfd = -1


def _place(child: Child, frame, round_: int, flags: int, raw_len: int, runs, data) -> None:
    """Decompress one PAGES record and write it into the child (no GIL held
    in either: this runs beside the reading of the next record)."""
    if flags & schema.PAGES_FLAG_LZ4:
        try:
            data = lz4.block.decompress(data, uncompressed_size=raw_len)
        except lz4.block.LZ4BlockError as e:
            raise BadImage(f"record {frame.index} (PAGES) at byte {frame.offset} does not "
                           f"decompress: {e}", record=frame.index, offset=frame.offset)
    if len(data) != raw_len:
        raise BadImage(f"record {frame.index} (PAGES) at byte {frame.offset} holds "
                       f"{len(data)} bytes, not {raw_len}", record=frame.index)
    r = lib.umig_scatter(child.pid, child.memfd, ffi.from_buffer("struct umig_run[]", runs),
                         len(runs) // 16, ffi.from_buffer("uint8_t[]", data), raw_len,
                         1 if round_ else 0)
    if r < 0:
        if r == -14:    # EFAULT: the image's pages lie outside its VMAs
            raise BadImage(f"record {frame.index} (PAGES) at byte {frame.offset} has pages "
                           f"outside the image's memory map", record=frame.index)
        raise RestoreFailed(f"writing pages into process {child.pid} failed: "
                            f"{os.strerror(-r)}")


class _Inline:
    """A stand-in for the one-thread pool where no thread may be started
    (after unshare(CLONE_NEWPID)): runs each job at once."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        f: Future = Future()
        try:
            f.set_result(fn(*args))
        except BaseException as e:      # noqa: BLE001 - handed on by result()
            f.set_exception(e)
        return f


PLACE_THREADS = 2      # decompress and write two records at once: on this VM, filling
#                        fresh memory costs more than reading the stream (bench/README.md)


def _feed_pages(driver: "_Driver", loaded: Loaded, check, threads: bool = True) -> int:
    """Write every PAGES record into its process: this thread reads and
    checksums the stream, PLACE_THREADS others decompress and write the
    records before it.  Records of one round cover each page once, so they
    are placed in any order; a later round (which wins) waits for the one
    before to be in, as a process waits for all its pages before it is
    continued (to fork).  The reader verifies the trailer when the pages
    end, and here its counts are held against what came."""
    pages = records = data_bytes = 0
    pending: collections.deque = collections.deque()
    with (ThreadPoolExecutor(PLACE_THREADS, thread_name_prefix="umig-place") if threads
          else _Inline()) as pool:
        try:
            current = current_round = None
            for owner, frame in loaded.page_frames():
                round_, flags, raw_len, runs, data = decode_pages(frame)
                if owner != current or round_ != current_round:
                    while pending:
                        pending.popleft().result()
                    if owner != current:
                        child = driver.pages_of(owner)
                        current = owner
                    current_round = round_
                while len(pending) >= PLACE_THREADS:
                    pending.popleft().result()
                pending.append(pool.submit(_place, child, frame, round_, flags, raw_len,
                                           runs, data))
                pages += sum(struct.unpack_from("<I", runs, i + 8)[0]
                             for i in range(0, len(runs), 16))
                records += 1
                data_bytes += len(data)
                check()
            while pending:
                pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
            for f in pending:
                try:
                    f.result()          # no thread may still write when we return
                except BaseException:   # noqa: BLE001 - the first error is being raised
                    pass
    t = loaded.reader.trailer
    if t is None or (t["page_records"], t["pages"], t["data_bytes"]) != (records, pages, data_bytes):
        raise BadImage(f"the image's trailer counts {t and t['page_records']} page records, "
                       f"{t and t['pages']} pages and {t and t['data_bytes']} data bytes; the "
                       f"image holds {records}, {pages} and {data_bytes}")
    return pages


@dataclass
class _Proc:
    """One process being resumed: what its plan is made of, then the traced
    child it became."""
    img: object
    parent: int = 0                  # its parent's pid in the image; 0: the root
    set_creds: bool = False
    vdso_addr: int = 0
    vdso_patch: bytes | None = None
    fdmap: list = field(default_factory=list)
    map_fds: dict = field(default_factory=dict)
    cwd_fd: int = -1
    exe_fd: int = -1
    vmas: list = field(default_factory=list)
    plan_addr: int = 0
    child: Child | None = None
    epitems: list = field(default_factory=list)
    locks: list = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.img.process["pid"]


def _pick_vdso(pr: _Proc, spans: list, opts: ResumeOptions) -> str:
    img = pr.img
    if not img.vdso:
        return "none"
    block_start, _ = vdsomod.image_block(img.vdso)
    if vdsomod.same_vdso(img.vdso):
        pr.vdso_addr = block_start
        return "same"
    host = vdsomod.host_vdso()
    if host is None:
        raise EnvironmentProblem("this host has no vDSO to redirect the image's to")
    pr.vdso_addr = planmod.free_gap(spans, host.block_size, near=img.vdso["vdso_start"])
    new_vdso = pr.vdso_addr + host.vdso_offset
    pr.vdso_patch = vdsomod.redirect(img.vdso["image"], img.vdso["vdso_start"], host.image,
                                     new_vdso)
    spans.append((pr.vdso_addr, pr.vdso_addr + host.block_size))
    opts.warn(f"the vDSO differs from the image's: its functions now jump to this "
              f"kernel's vDSO at {new_vdso:#x}")
    return "redirected"


def _shared_memory(loaded: Loaded, fds: ResumeFds) -> dict[int, int]:
    """The object behind each shared memory mapping several VMAs map (in one
    process or several) or an fd names (a memfd): the memfd recreated for
    that fd, else a new memfd, so it is one object again.  {ino: fd}."""
    uses: dict[int, list[dict]] = {}
    for img in loaded.images:
        for v in img.vmas:
            if v["kind"] == schema.VMA_SHMEM and v["flags"] & schema.VMA_SHARED:
                uses.setdefault(v["ino"], []).append(v)
    out = {}
    for ino, vs in uses.items():
        if ino in fds.memfds:
            out[ino] = fds.memfds[ino]
            continue
        if len(vs) < 2:
            continue
        fd = os.memfd_create("umig-shm", os.MFD_CLOEXEC)
        os.ftruncate(fd, max(v["pgoff"] + v["end"] - v["start"] for v in vs))
        out[ino] = fds.keep(fd)
    return out


def _open_fds(pr: _Proc, fds: ResumeFds, opts: ResumeOptions) -> None:
    """pr's fds, made in the resuming umig."""
    for rec in pr.img.fds:
        if rec["fd"] == 0 and opts.image_on_stdin and rec["kind"] == "stdio":
            src = fds.keep(os.open("/dev/null", os.O_RDONLY))
        else:
            src = fds.recreate(rec)
        pr.fdmap.append({"src": src, "dst": rec["fd"], "cloexec": rec["cloexec"], "pad": 0})
        for lk in take_locks(src, rec):          # flock, OFD taken here; POSIX by the process
            end = lk["end"]
            pr.locks.append({"fd": rec["fd"], "type": 1 if lk["write"] else 0,
                             "start": lk["start"],
                             "len": 0 if end == TO_EOF else end - lk["start"] + 1})
    pr.fdmap.sort(key=lambda f: f["dst"])


def _open_maps(pr: _Proc, fds: ResumeFds, shm: dict, opts: ResumeOptions,
               files_: list[dict]) -> None:
    """What else the resuming umig opens for pr: the files it maps, its cwd
    and exe; and its VMAs' plan."""
    img = pr.img
    pr.map_fds = _open_mapped(img, fds, files_)
    try:
        pr.cwd_fd = fds.keep(os.open(img.process["cwd"], os.O_RDONLY | os.O_DIRECTORY))
    except OSError as e:
        raise EnvironmentProblem(f"the working directory {img.process['cwd']} of process "
                                 f"{pr.pid} cannot be opened here: {e.strerror}",
                                 path=img.process["cwd"]) from None
    if _same_file(img.mm["exe"], "/proc/self/exe"):
        pass    # already our exe (the kernel refuses the change while it is mapped)
    elif checks.can_checkpoint_restore() and img.mm["exe"]:
        try:
            pr.exe_fd = fds.keep(os.open(img.mm["exe"], os.O_RDONLY))
        except OSError:
            opts.warn(f"{img.mm['exe']} is not here: /proc/{pr.pid}/exe will name umig's "
                      f"interpreter")
    pr.vmas = _vma_plan(img, pr.map_fds, shm)
    if pr.vdso_patch is not None:
        pr.vmas.append({"start": img.vdso["vdso_start"],
                        "end": img.vdso["vdso_start"] + img.vdso["vdso_size"], "pgoff": 0,
                        "fd": -1, "map_flags": MAP_PRIVATE, "prot": PROT_READ | PROT_EXEC,
                        "init_prot": PROT_READ | PROT_WRITE, "madv": 0, "inherit": 0})
        pr.vmas.sort(key=lambda v: v["start"])


def _fill_plan(pr: _Proc, p, fds: ResumeFds, opts: ResumeOptions) -> list[dict]:
    """The plan's own values (not the arrays); returns the pending signals."""
    img = pr.img
    th = img.thread
    regs = planmod.regs_dict(th["regs"])
    p.nfds = len(pr.fdmap)
    p.cwd_fd = pr.cwd_fd
    p.aux_lo = fds.base
    p.aux_hi = fds.high()
    p.nvmas = len(pr.vmas)
    p.ndiscards = len(_discards(img))
    p.nepitems = len(pr.epitems)
    p.nlocks = len(pr.locks)
    p.set_mm = 1
    p.vdso_addr = pr.vdso_addr
    mm = img.mm
    for k in ("start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
              "start_stack", "arg_start", "arg_end", "env_start", "env_end"):
        setattr(p.mm, k, mm[k])
    p.mm.auxv_size = len(mm["auxv"])
    p.mm.exe_fd = pr.exe_fd & 0xFFFFFFFF
    for i, a in enumerate(img.sigactions["actions"][:64]):
        p.act[i].handler, p.act[i].flags = a["handler"], a["flags"]
        p.act[i].restorer, p.act[i].mask = a["restorer"], a["mask"]
    p.act_set = ((1 << len(img.sigactions["actions"][:64])) - 1) & ~(SIGKILL_BIT | SIGSTOP_BIT)
    pending = img.pending["signals"] + [
        {"shared": 0, "sig": x["sig"], "info": x["info"]} for x in th.get("pending", [])]
    p.npending = len(pending)
    lims = _rlimits(img, opts.warn)
    p.nrlimits = len(lims)
    for i, lim in enumerate(lims):
        p.rlimits[i].resource, p.rlimits[i].cur, p.rlimits[i].max = \
            lim["resource"], lim["cur"], lim["max"]
    for t in img.itimers["timers"]:
        w = t["which"]
        p.itimers[w][0:4] = [t["interval_sec"], t["interval_usec"], t["value_sec"],
                             t["value_usec"]]
        p.itimer_set |= 1 << w
    pr_ = img.process
    p.personality = pr_["personality"]
    p.umask = pr_["umask"]
    p.pdeathsig = pr_["pdeathsig"]
    p.no_new_privs = pr_["no_new_privs"]
    comm = th["comm"].encode("utf-8", "surrogateescape")[:15]
    ffi.memmove(p.comm, comm + b"\0", len(comm) + 1)
    p.clear_child_tid = th["clear_child_tid"]
    p.robust_list, p.robust_len = th["robust_list"], th["robust_len"]
    p.rseq, p.rseq_len, p.rseq_sig = th["rseq"], th["rseq_len"], th["rseq_sig"]
    p.fs_base, p.gs_base = regs["fs_base"], regs["gs_base"]
    c = img.creds
    if pr.set_creds:
        p.creds.set = 1
        for k in ("uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid"):
            setattr(p.creds, k, c[k])
        p.creds.ngroups = len(c["groups"])
        for k in ("cap_eff", "cap_prm", "cap_inh"):
            getattr(p.creds, k)[0:2] = [c[k] & 0xFFFFFFFF, c[k] >> 32]
        p.creds.cap_bnd, p.creds.cap_amb = c["cap_bnd"], c["cap_amb"]
        p.creds.securebits = c["securebits"]
    return pending


def _epitems(img, done: set[int]) -> list[dict]:
    """The watches of the process's epoll fds, to add in the restorer; an
    epoll several processes share (one description, `desc`) gets its
    watches once, from the first of them."""
    out = []
    for rec in img.fds:
        if rec["kind"] != Epoll.name or (rec["desc"] and rec["desc"] in done):
            continue
        if rec["desc"]:
            done.add(rec["desc"])
        out += [{"epfd": rec["fd"], "tfd": tfd, "events": events, "pad": 0, "data": data}
                for tfd, events, data, _ino in Epoll.watches(rec)]
    return out


def _discards(img) -> list[dict]:
    """The pages a member drops from the VMAs it inherits (only its parent
    had them)."""
    return [{"start": d["start"], "len": d["npages"] * PAGE}
            for v in img.vmas if v["flags"] & schema.VMA_INHERIT for d in v.get("discard", [])]


def _sessions(procs: list[_Proc], warn) -> dict[int, tuple[int, int, int]]:
    """{pid: (setsid, setpgid, pgid)}: the root makes its own group in the
    session of `umig resume` (a shell job); a member that led its session
    leads a new one; a member joins the group it was in when that group's
    leader is a member (or was the root's group, now the root's)."""
    root = procs[0].img.process
    members = {pr.pid for pr in procs}
    out = {root["pid"]: (0, 1, 0)}
    for pr in procs[1:]:
        pid, pgid, sid = pr.pid, pr.img.process["pgid"], pr.img.process["sid"]
        if sid == pid:
            out[pid] = (1, 0, 0)
        elif pgid == pid:
            out[pid] = (0, 1, 0)
        elif pgid in members:
            out[pid] = (0, 1, pgid)
        elif pgid == root["pgid"]:
            out[pid] = (0, 1, root["pid"])
        else:
            warn(f"process {pid} was in process group {pgid}, whose leader is not in the "
                 f"image: it stays in its parent's group")
            out[pid] = (0, 0, 0)
    return out


def resume(image_fd: int, opts: ResumeOptions) -> Resumed:
    """Rebuild the process (or tree) from the image; returns once it runs."""
    timings = {"start": time.perf_counter()}
    _kept.clear()
    loaded = Loaded(ImageReader(image_fd, followed=opts.followed))
    checks.check_machine(loaded.header)
    procs = [_Proc(img) for img in loaded.images]
    by_pid = {pr.pid: pr for pr in procs}
    for pr in procs[1:]:
        pr.parent = pr.img.process["ppid"]
        if pr.parent not in by_pid:
            raise BadImage(f"process {pr.pid}'s parent {pr.parent} is not in the image")
    for z in loaded.zombies:
        if z["ppid"] not in by_pid:
            raise BadImage(f"zombie {z['pid']}'s parent {z['ppid']} is not in the image")
    shipped = files.check_here([(pr.pid, pr.img.vmas, pr.img.fds) for pr in procs],
                               loaded.files)
    for pr in procs:
        pr.set_creds = checks.check_creds(pr.img.creds)
    max_dst = max([f["fd"] for pr in procs for f in pr.img.fds] + [2])
    # above max_dst: every fd of a tree; of one process, the ends of its
    # pipes and socket pairs (made in pairs), and what only restoring needs
    held_high = sum(len(pr.img.fds) for pr in procs) if len(procs) > 1 else sum(
        1 for rec in procs[0].img.fds if rec["kind"] in ("pipe", "unix"))
    _enough_fds(max_dst, held_high + len({v["path"] for pr in procs for v in pr.img.vmas
                                          if v["content"] == schema.CONTENT_FILE}))

    made = files.create(shipped)
    if made:
        opts.warn(f"created {len(made)} file{'s' if len(made) > 1 else ''} missing here from "
                  f"the image: {', '.join(made)}")
    target_spans = [(v["start"], v["end"]) for pr in procs for v in pr.img.vmas]
    vdso_mode = "none"
    for pr in procs:
        mode = _pick_vdso(pr, target_spans, opts)
        vdso_mode = mode if pr is procs[0] else vdso_mode

    fds = ResumeFds(base=max_dst + 1, pipes=loaded.pipes, direct=len(procs) == 1)
    region_mapped = 0
    ns_init = 0
    try:
        epolls: set[int] = set()
        fds.pty_masters = {json.loads(rec["state"])["index"]: rec for pr in procs
                           for rec in pr.img.fds if rec["kind"] == PtyMaster.name}
        for pr in procs:
            _open_fds(pr, fds, opts)
            pr.epitems = _epitems(pr.img, epolls)
        fds.unix_fill([rec for pr in procs for rec in pr.img.fds])
        shm = _shared_memory(loaded, fds)
        for pr in procs:
            _open_maps(pr, fds, shm, opts, loaded.files)
        keep, use_ns = _choose_ids(loaded, opts.pid_mode, opts.pidns)
        sessions = _sessions(procs, opts.warn)

        # ---- the plans, in one region every process inherits; children
        # before their parents, whose child arrays point to their plans
        sizes = [planmod.region_size(
            len(pr.vmas), len(pr.fdmap),
            len(pr.img.pending["signals"]) + sum(len(x.get("pending", []))
                                                 for x in pr.img.threads),
            max(len(x["xsave"]) for x in pr.img.threads), len(pr.img.mm["auxv"]),
            len(pr.img.creds["groups"]), len(pr.img.threads)) for pr in procs]
        code_size = sizes[0][0]
        size = sum(sz for _, sz in sizes) + planmod.align_page(
            (len(procs) + len(loaded.zombies)) * ffi.sizeof("struct umig_child"))
        base = planmod.free_gap(target_spans + _own_maps(), code_size + size)
        region = planmod.Region(base, code_size, size=code_size + size)
        for pr in reversed(procs):
            img = pr.img
            p = ffi.new("struct umig_plan *")
            pending = _fill_plan(pr, p, fds, opts)
            p.setsid, p.setpgid, p.pgid = sessions[pr.pid]
            kids = [{"pid": k.pid if keep else 0,
                     "exit_signal": k.img.process.get("exit_signal") or signal.SIGCHLD,
                     "zombie": 0, "status": 0, "plan": k.plan_addr, "comm": ""}
                    for k in procs if k.parent == pr.pid]
            zombies = [{"pid": z["pid"] if keep else 0,
                        "exit_signal": z.get("exit_signal") or signal.SIGCHLD,
                        "zombie": 1, "status": z["exit_status"], "plan": 0,
                        "comm": z["comm"]}
                       for z in loaded.zombies if z["ppid"] == pr.pid]
            p.nchildren = len(kids) + len(zombies)
            p.drop_sigchld = 1 if zombies else 0
            p.mm.auxv = region.alloc(img.mm["auxv"], 8)
            c = img.creds
            if pr.set_creds and c["groups"]:
                p.creds.groups = region.alloc(struct.pack(f"<{len(c['groups'])}I",
                                                          *(g["gid"] for g in c["groups"])), 8)
            pr.plan_addr = planmod.build(
                region, p,
                {"fds": ("struct umig_fdmap", pr.fdmap), "vmas": ("struct umig_vma", pr.vmas),
                 "pending": ("struct umig_pending", pending),
                 "children": ("struct umig_child", kids + zombies),
                 "discards": ("struct umig_discard", _discards(img)),
                 "epitems": ("struct umig_epitem", pr.epitems),
                 "locks": ("struct umig_lock", pr.locks)},
                img.thread, img.threads[1:], keep, loaded.header["xcr0"],
                img.sigactions["actions"], [x["sig"] for x in img.pending["signals"]])

        # ---- map the region here; the child inherits it
        blob = restorer_blob()
        addr = syscall(NR_mmap, base, region.size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1 & 0xFFFFFFFF, 0)
        if addr != base:
            raise RestoreFailed(f"could not place the restorer at {base:#x}")
        region_mapped = region.size
        ffi.memmove(ffi.cast("void *", base), blob, len(blob))
        ffi.memmove(ffi.cast("void *", region.data_base), bytes(region.data), len(region.data))
        syscall(NR_mprotect, base, code_size, PROT_READ | PROT_EXEC)

        root = procs[0]
        timings["planned"] = time.perf_counter()
        want_pid = root.pid if keep else 0
        if use_ns:
            ns_init = _enter_pidns(root.pid, fds)
        pid = lib.umig_spawn(base + lib.UMIG_BLOB_ENTRY_OFF, root.plan_addr, want_pid)
        if pid < 0:
            if want_pid:
                raise EnvironmentProblem(f"cannot keep pid {want_pid}: {os.strerror(-pid)}",
                                         pid=want_pid)
            raise RestoreFailed(f"could not start the process: {os.strerror(-pid)}")
        root.child = Child(pid)
        syscall(NR_munmap, base, region.size)
        region_mapped = 0
        fds.close()

        st = _wait(pid)
        if not (st.kind == "signal" and st.value == signal.SIGSTOP):
            root.child.alive = st.kind not in ("exited", "killed")
            raise RestoreFailed(f"the new process {st} before the restorer ran")
        tracing.setoptions(pid, tracing.PTRACE_O_EXITKILL | tracing.PTRACE_O_TRACESYSGOOD
                           | tracing.PTRACE_O_TRACECLONE | tracing.PTRACE_O_TRACEFORK)
        root.child.memfd = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        # the child's own rseq registration (inherited from this thread) goes first
        rseq, rlen, rsig, _ = tracing.rseq_config(pid)
        os.pwrite(root.child.memfd, struct.pack("<QII", rseq, rlen, rsig),
                  root.plan_addr + ffi.offsetof("struct umig_plan", "old_rseq"))

        def check() -> None:
            if opts.interrupted():
                raise Interrupted("interrupted: nothing was started")

        # ---- each process mapped and filled, then forking its children (who
        # inherit its memory), in the order the image holds their pages
        driver = _Driver(procs, loaded)
        driver.mapped(root)
        timings["mapped"] = time.perf_counter()
        _feed_pages(driver, loaded, check, threads=not use_ns)   # verifies the trailer
        driver.finish()
        timings["filled"] = time.perf_counter()
        for pr in procs:
            child = pr.child
            child.stop(lib.UMIG_STOP_READY, "while restoring the task", pr.plan_addr)
            others = pr.img.threads[1:]
            if len(child.threads) != len(others):
                raise RestoreFailed(f"the restorer made {len(child.threads)} threads in "
                                    f"process {child.pid}, not {len(others)}; nothing was "
                                    f"started")
            for tid in child.threads:
                child.thread_ready(tid, pr.plan_addr)
                _follow_to_sigreturn(child, tid)
            _follow_to_sigreturn(child, child.pid)
        pidmap = {pr.pid: pr.child.pid for pr in procs}
        for pr in procs:
            with Injector(pr.child.pid, pr.child.memfd, base + lib.UMIG_BLOB_GADGET_OFF) as inj:
                _reopen_proc_files(pr, inj, region.data_base, pidmap)
                _controlling_tty(pr, inj, region.data_base, opts.warn, fds.pty_masters)
                r = inj.syscall(NR_munmap, base, region.size)
                if r != 0:
                    raise RestoreFailed(f"could not unmap the restorer from process "
                                        f"{pr.child.pid}: {os.strerror(-r)}")
            os.close(pr.child.memfd)
            pr.child.memfd = -1
        timings["ready"] = time.perf_counter()
        with critical():
            for problem in fds.tcp_go():
                opts.warn(f"after the resume: {problem}")
            terminal_modes = fds.terminal_go()
            opts.on_running(pid)
            for pr in reversed(procs):     # children first: the root runs last
                pr.child.detach()
                pr.child.alive = False     # it runs: no longer ours to kill on error
        timings["running"] = time.perf_counter()
        return Resumed(pid, pid == root.pid or use_ns, vdso_mode, timings, ns_init,
                       terminal_modes)
    except BaseException:
        for pr in reversed(procs):
            if pr.child is not None:
                pr.child.kill()
        if ns_init:
            _end(ns_init)
        raise
    finally:
        if region_mapped:
            try:
                syscall(NR_munmap, region.base, region_mapped)
            except OSError:
                pass
        fds.close()
        fds.drop_tcp()


NR_openat, NR_dup3, NR_close, NR_lseek = 257, 292, 3, 8
AT_FDCWD = -100 & 0xFFFFFFFFFFFFFFFF


def _reopen_proc_files(pr: _Proc, inj: Injector, scratch: int, pidmap: dict[int, int]) -> None:
    """The process opens its /proc/PID files itself, under its new pid (the
    restorer gave it /dev/null in their place); scratch: memory of the
    restorer's region, free now, for the paths."""
    for rec in pr.img.fds:
        if rec["kind"] != ProcPidFile.name:
            continue
        path = ProcPidFile.new_path(rec["path"], pidmap)
        os.pwrite(pr.child.memfd, os.fsencode(path) + b"\0", scratch)
        flags = rec["flags"] & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC)
        nfd = inj.syscall(NR_openat, AT_FDCWD, scratch, flags, 0)
        if nfd < 0:
            raise EnvironmentProblem(f"process {pr.child.pid} could not open {path} again for "
                                     f"fd {rec['fd']}: {os.strerror(-nfd)}", fd=rec["fd"],
                                     path=path)
        r = inj.syscall(NR_dup3, nfd, rec["fd"], O_CLOEXEC if rec["cloexec"] else 0)
        inj.syscall(NR_close, nfd)
        if r < 0:
            raise RestoreFailed(f"process {pr.child.pid}: dup3 to fd {rec['fd']} failed: "
                                f"{os.strerror(-r)}")
        if rec["pos"] and not rec["flags"] & os.O_APPEND:
            inj.syscall(NR_lseek, rec["fd"], rec["pos"], os.SEEK_SET)


NR_ioctl = 16


def _controlling_tty(pr: _Proc, inj: Injector, scratch: int, warn, ptys) -> None:
    """A session leader whose controlling terminal was a pty of the image
    takes the new one as it (TIOCSCTTY, injected), with the terminal's
    foreground process group as it was (TIOCSPGRP)."""
    p = pr.img.process
    index = pts_index(p.get("tty_nr", 0))
    if index is None or p["sid"] != pr.pid:
        return
    fd = next((rec["fd"] for rec in pr.img.fds if rec["kind"] == PtySlave.name
               and json.loads(rec["state"])["index"] == index), None)
    if fd is None:
        if index in ptys:       # else its terminal was outside the image: umig resume's
            warn(f"process {pr.child.pid} had /dev/pts/{index} as its controlling terminal "
                 f"but holds no fd of it: it has none now")
        return
    r = inj.syscall(NR_ioctl, fd, TIOCSCTTY, 0)
    if r < 0:
        raise RestoreFailed(f"process {pr.child.pid} could not take its terminal back "
                            f"(TIOCSCTTY on fd {fd}): {os.strerror(-r)}")
    if p.get("tpgid", 0) > 0 and p["tpgid"] != p["pgid"]:
        os.pwrite(pr.child.memfd, struct.pack("i", p["tpgid"]), scratch)
        r = inj.syscall(NR_ioctl, fd, TIOCSPGRP, scratch)
        if r < 0:
            warn(f"process {pr.child.pid}: its terminal's foreground group {p['tpgid']} could "
                 f"not be set again: {os.strerror(-r)}")


def _enough_fds(max_dst: int, opens: int) -> None:
    """umig holds every fd it makes above the process's highest fd number
    until the restorer moves them into place: raise our soft limit to the
    hard one, and refuse early if even that is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    need = max_dst + 1 + opens + 64
    if hard != resource.RLIM_INFINITY and need > hard:
        raise EnvironmentProblem(
            f"resuming needs up to {need} open files at once (the process's fds go up to "
            f"{max_dst}, and umig holds each one it makes above that until they are in "
            f"place); the limit here is {hard}",
            hint=f"raise the hard limit of open files to {need} or more (ulimit -Hn, "
                 f"LimitNOFILE) and retry")


class _Driver:
    """Brings each process through the restorer's first stops, in tree
    order: MAPPED (its memory mapped: the tracer writes its pages), then,
    if it has children, FORKED (the children, forked from its filled
    memory, wait at their first stop; zombies have ended)."""

    def __init__(self, procs: list[_Proc], loaded: Loaded):
        self.procs = procs
        self.by_pid = {pr.pid: pr for pr in procs}
        self.loaded = loaded
        self.state = {pr.pid: "new" for pr in procs}

    def mapped(self, pr: _Proc) -> None:
        if self.state[pr.pid] != "new":
            return
        if pr.parent:
            self.forked(self.by_pid[pr.parent])
        pr.child.stop(lib.UMIG_STOP_MAPPED, "while mapping memory", pr.plan_addr)
        if pr.vdso_patch is not None:
            os.pwrite(pr.child.memfd, pr.vdso_patch, pr.img.vdso["vdso_start"])
        self.state[pr.pid] = "mapped"

    def forked(self, pr: _Proc) -> None:
        self.mapped(pr)
        if self.state[pr.pid] != "mapped":
            return
        self.state[pr.pid] = "forked"
        kids = [k for k in self.procs if k.parent == pr.pid] + [
            z for z in self.loaded.zombies if z["ppid"] == pr.pid]
        if not kids:
            return
        child = pr.child
        forks = child.stop(lib.UMIG_STOP_FORKED, "while forking its children", pr.plan_addr,
                           processes=True)
        if len(forks) != len(kids):
            raise RestoreFailed(f"process {child.pid} made {len(forks)} children, not "
                                f"{len(kids)}; nothing was started")
        for new, k in zip(forks, kids):
            if isinstance(k, dict):
                _make_zombie(child, new, k)
                continue
            k.child = Child(new)
            st = _wait(new)
            if not (st.kind == "signal" and st.value == signal.SIGSTOP):
                k.child.alive = st.kind not in ("exited", "killed")
                raise RestoreFailed(f"process {new} {st} before its restorer ran")
            k.child.memfd = os.open(f"/proc/{new}/mem", os.O_RDWR | os.O_CLOEXEC)

    def pages_of(self, pid: int) -> Child:
        """The child whose pages come next: mapped and waiting for them."""
        pr = self.by_pid[pid]
        self.mapped(pr)
        if self.state[pid] != "mapped":
            raise BadImage(f"the image's pages of process {pid} come after those of its "
                           f"children")
        return pr.child

    def finish(self) -> None:
        for pr in self.procs:
            self.forked(pr)


NR_unshare, NR_close_range = 272, 436
CLONE_NEWUSER, CLONE_NEWPID = 0x10000000, 0x20000000


def _enter_pidns(root: int, fds: ResumeFds) -> int:
    """Make a new PID namespace take the processes we start from now on (for
    a plain user, inside a new user namespace that maps our own ids to
    themselves, where we may choose pids), and start its init
    (pid 1 there), which reaps orphans and ends, ending the namespace, once
    the resumed root has gone.  Returns the init's pid (outside)."""
    uid, gid = os.geteuid(), os.getegid()
    if checks.can_checkpoint_restore():
        # privileged: a PID namespace is enough (and keeps every uid usable;
        # a process inside a new user namespace could map only its own)
        flags = CLONE_NEWPID
    else:
        flags = CLONE_NEWUSER | CLONE_NEWPID
    try:
        syscall(NR_unshare, flags)
    except OSError as e:
        raise EnvironmentProblem(f"cannot make a {'user and ' if flags & CLONE_NEWUSER else ''}"
                                 f"PID namespace to keep the ids in: {e.strerror}",
                                 hint="allow user namespaces (sysctl "
                                      "kernel.unprivileged_userns_clone=1), or resume as root"
                                 ) from None
    if flags & CLONE_NEWUSER:
        try:
            for name, line in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                               ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(line)
        except OSError as e:
            raise EnvironmentProblem(f"cannot map ids into the new user namespace: "
                                     f"{e.strerror}") from None
    init = os.fork()
    if init == 0:
        _ns_init(root)
    return init


def _ns_init(root: int) -> None:
    """Pid 1 of the namespace: reap whatever is orphaned to us; end once the
    root (pid `root` here) has been there and is gone."""
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)          # not umig's stdio: a pipe must see its end
        syscall(NR_close_range, 3, 0xFFFFFFFF, 0)      # umig's image and pipe ends
        seen = False
        while True:
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                pass
            try:
                os.kill(root, 0)
                seen = True
            except ProcessLookupError:
                if seen:
                    break
            except PermissionError:
                seen = True
            time.sleep(0.05)
    finally:
        os._exit(0)


def _end(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (OSError, ChildProcessError):
        pass


def _make_zombie(parent: Child, pid: int, z: dict) -> None:
    """Let a zombie-to-be end (passing on the signal it kills itself with);
    once its tracer (we) has seen the end, its parent can reap it."""
    while True:
        st = _wait(pid)
        if st.kind in ("exited", "killed"):
            return
        tracing.cont(pid, st.value if st.kind == "signal" and st.value != signal.SIGSTOP
                     else 0)


def _follow_to_sigreturn(child: Child, tid: int) -> None:
    """From the READY stop, step thread tid syscall by syscall to the exit
    of its rt_sigreturn, where the registers are the process's own."""
    entering = True
    sigreturn = False
    while True:
        tracing.syscall(tid)
        st = child.wait(tid)
        if st.kind != "syscall":
            where = "" if tid == child.pid else f" in thread {tid}"
            if st.kind == "signal" and st.value == signal.SIGTRAP:
                regs = tracing.getregs(tid)
                if regs.rax == lib.UMIG_STOP_FAIL:
                    raise RestoreFailed(f"the restorer failed at step "
                                        f"'{STEP_NAMES.get(regs.rdi, regs.rdi)}'{where}: "
                                        f"{os.strerror((1 << 64) - regs.rsi)}; nothing was started")
            if st.kind in ("exited", "killed"):
                child.alive = False
            raise RestoreFailed(f"the restorer {st} before its final jump{where}; nothing "
                                f"was started")
        if sigreturn:
            return          # the exit of rt_sigreturn: its orig_rax reads -1
        if entering and tracing.getregs(tid).orig_rax == NR_rt_sigreturn:
            sigreturn = True
        entering = not entering


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
