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

import fcntl
import os
import resource
import signal
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import lz4.block

from .. import tracing
from ..errors import (BadImage, EnvironmentProblem, Interrupted, RestoreFailed, UmigError)
from ..fdtable import ResumeFds
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
    image_on_stdin: bool = False
    warn: Callable[[str], None] = lambda msg: None
    interrupted: Callable[[], bool] = lambda: False
    on_running: Callable[[int], None] = lambda pid: None


@dataclass
class Resumed:
    pid: int
    same_pid: bool
    vdso_mode: str
    timings: dict = field(default_factory=dict)


def _vma_plan(img, map_fds: dict) -> list[dict]:
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
        out.append({"start": v["start"], "end": v["end"], "pgoff": pgoff, "fd": fd,
                    "map_flags": flags, "prot": v["prot"], "init_prot": init,
                    "madv": v["madv"], "pad": 0})
    return out


def _open_mapped(img, fds: ResumeFds) -> dict:
    out = {}
    for v in img.vmas:
        if v["content"] != schema.CONTENT_FILE:
            continue
        key = (v["path"], bool(v["flags"] & schema.VMA_SHARED and v["prot"] & PROT_WRITE))
        if key in out:
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


def _choose_pid(img, mode: str, warn) -> int:
    """The pid to give the process (0: any).  The threads keep their tids
    whenever the pid is kept; a multi-threaded process must keep them, since
    glibc holds each thread's tid in its thread descriptor (pthread_kill,
    mutex owners)."""
    want = img.process["pid"]
    tids = [t["tid"] for t in img.threads]
    multi = len(tids) > 1
    why_multi = (f"process {want} has {len(tids)} threads, and a thread with a new tid "
                 f"would break its pthread_kill and mutexes")
    if mode == "new":
        if multi:
            raise EnvironmentProblem(f"cannot give new ids: {why_multi}", pid=want,
                                     hint="resume without --pid new")
        return 0
    if not checks.can_checkpoint_restore():
        if mode == "keep" or multi:
            what = (f"{why_multi}; keeping its thread ids" if multi
                    else f"cannot keep pid {want}: that")
            raise EnvironmentProblem(f"{what} needs CAP_CHECKPOINT_RESTORE (or root)", pid=want,
                                     hint="resume as root" + ("" if multi else
                                                              ", or without --pid keep"))
        return 0
    deadline = time.monotonic() + 3.0
    for tid in tids:
        while True:
            state = checks.pid_state(tid)
            if state is None:
                break
            if state not in ("Z", "X") or time.monotonic() > deadline:
                if mode == "keep" or multi:
                    what = "pid" if tid == want else "thread id"
                    raise EnvironmentProblem(
                        f"cannot keep {what} {tid}: it is taken by {_owner(tid)}", pid=tid,
                        hint="stop that process" + ("" if multi else
                                                    ", or resume without --pid keep"))
                return 0
            time.sleep(0.02)     # the source was just killed; wait for its reaping
    return want


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


class Child:
    """The traced child that becomes the process, and the threads the
    restorer makes in it (traced from their start: PTRACE_O_TRACECLONE)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.memfd = -1
        self.alive = True
        self.threads: list[int] = []      # tids of the threads, in creation order

    def stop(self, expect: int | None, what: str, plan_addr: int) -> None:
        """Continue the leader to the restorer's next int3 stop and check it
        is `expect`; threads it makes on the way are noted."""
        tracing.cont(self.pid)
        while True:
            st = tracing.wait(self.pid)
            if not (st.kind == "event" and st.value == tracing.PTRACE_EVENT_CLONE):
                break
            self.threads.append(tracing.eventmsg(self.pid))
            tracing.cont(self.pid)
        self.check_trap(self.pid, st, expect, what, plan_addr)

    def thread_ready(self, tid: int, plan_addr: int) -> None:
        """Run a new thread from its first stop (SIGSTOP, suppressed) to its
        READY stop."""
        st = tracing.wait(tid)
        if st.kind == "signal" and st.value == signal.SIGSTOP:
            tracing.cont(tid)
            st = tracing.wait(tid)
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
        if st.kind in ("exited", "killed"):
            self.alive = False
        step = self._step(plan_addr)
        raise RestoreFailed(f"the restorer {st} at step '{STEP_NAMES.get(step, step)}' "
                            f"{what}; nothing was started")

    def _step(self, plan_addr: int) -> int:
        try:
            raw = os.pread(self.memfd, 4, plan_addr + ffi.offsetof("struct umig_plan", "step"))
            return struct.unpack("<I", raw)[0]
        except OSError:
            return 0

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
                        st = tracing.wait(tid)
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


def _feed_pages(child: Child, loaded: Loaded, check) -> int:
    """Write every PAGES record into the child: this thread reads and
    checksums the stream, a second one decompresses and writes (one record
    behind).  The reader verifies the trailer when the pages end, and here
    its counts are held against what came."""
    pages = records = data_bytes = 0
    pending: list = []
    with ThreadPoolExecutor(1, thread_name_prefix="umig-place") as pool:
        try:
            for frame in loaded.page_frames():
                round_, flags, raw_len, runs, data = decode_pages(frame)
                if pending:
                    pending.pop().result()
                pending.append(pool.submit(_place, child, frame, round_, flags, raw_len,
                                           runs, data))
                pages += sum(struct.unpack_from("<I", runs, i + 8)[0]
                             for i in range(0, len(runs), 16))
                records += 1
                data_bytes += len(data)
                check()
            if pending:
                pending.pop().result()
        finally:
            for f in pending:
                f.cancel()
    t = loaded.reader.trailer
    if t is None or (t["page_records"], t["pages"], t["data_bytes"]) != (records, pages, data_bytes):
        raise BadImage(f"the image's trailer counts {t and t['page_records']} page records, "
                       f"{t and t['pages']} pages and {t and t['data_bytes']} data bytes; the "
                       f"image holds {records}, {pages} and {data_bytes}")
    return pages


def resume(image_fd: int, opts: ResumeOptions) -> Resumed:
    """Rebuild the process from the image; returns once it runs."""
    timings = {"start": time.perf_counter()}
    loaded = Loaded(ImageReader(image_fd))
    img = loaded.image
    checks.check_machine(img.header)
    checks.check_files(img.vmas)
    set_creds = checks.check_creds(img.creds)
    for res in (resource.RLIMIT_NOFILE,):
        soft, hard = resource.getrlimit(res)
        if soft < hard:
            resource.setrlimit(res, (hard, hard))

    # ---- the vDSO
    vdso_addr, vdso_patch, vdso_mode = 0, None, "none"
    target_spans = [(v["start"], v["end"]) for v in img.vmas]
    if img.vdso:
        block_start, block_size = vdsomod.image_block(img.vdso)
        if vdsomod.same_vdso(img.vdso):
            vdso_addr, vdso_mode = block_start, "same"
        else:
            host = vdsomod.host_vdso()
            if host is None:
                raise EnvironmentProblem("this host has no vDSO to redirect the image's to")
            vdso_addr = planmod.free_gap(target_spans, host.block_size,
                                         near=img.vdso["vdso_start"])
            new_vdso = vdso_addr + host.vdso_offset
            vdso_patch = vdsomod.redirect(img.vdso["image"], img.vdso["vdso_start"],
                                          host.image, new_vdso)
            vdso_mode = "redirected"
            target_spans.append((vdso_addr, vdso_addr + host.block_size))
            opts.warn(f"the vDSO differs from the image's: its functions now jump to this "
                      f"kernel's vDSO at {new_vdso:#x}")

    # ---- fds, files to map, cwd, exe
    max_dst = max([f["fd"] for f in img.fds] + [2])
    fds = ResumeFds(base=max_dst + 1, pipes=img.pipes)
    child: Child | None = None
    region_mapped = 0
    try:
        fdmap = []
        for rec in img.fds:
            if rec["fd"] == 0 and opts.image_on_stdin and rec["kind"] == "stdio":
                src = fds.keep(os.open("/dev/null", os.O_RDONLY))
            else:
                src = fds.recreate(rec)
            fdmap.append({"src": src, "dst": rec["fd"], "cloexec": rec["cloexec"], "pad": 0})
        fdmap.sort(key=lambda f: f["dst"])
        map_fds = _open_mapped(img, fds)
        try:
            cwd_fd = fds.keep(os.open(img.process["cwd"], os.O_RDONLY | os.O_DIRECTORY))
        except OSError as e:
            raise EnvironmentProblem(f"the process's working directory {img.process['cwd']} "
                                     f"cannot be opened here: {e.strerror}",
                                     path=img.process["cwd"]) from None
        exe_fd = -1
        if _same_file(img.mm["exe"], "/proc/self/exe"):
            pass    # already our exe (the kernel refuses the change while it is mapped)
        elif checks.can_checkpoint_restore() and img.mm["exe"]:
            try:
                exe_fd = fds.keep(os.open(img.mm["exe"], os.O_RDONLY))
            except OSError:
                opts.warn(f"{img.mm['exe']} is not here: /proc/PID/exe will name umig's "
                          f"interpreter")
        vmas = _vma_plan(img, map_fds)
        if vdso_patch is not None:
            vmas.append({"start": img.vdso["vdso_start"],
                         "end": img.vdso["vdso_start"] + img.vdso["vdso_size"], "pgoff": 0,
                         "fd": -1, "map_flags": MAP_PRIVATE, "prot": PROT_READ | PROT_EXEC,
                         "init_prot": PROT_READ | PROT_WRITE, "madv": 0, "pad": 0})
            vmas.sort(key=lambda v: v["start"])

        # ---- the plan
        th = img.thread
        regs = planmod.regs_dict(th["regs"])
        p = ffi.new("struct umig_plan *")
        p.nfds = len(fdmap)
        p.cwd_fd = cwd_fd
        p.aux_lo = fds.base
        p.aux_hi = max(fds.opened)
        p.nvmas = len(vmas)
        p.set_mm = 1
        p.vdso_addr = vdso_addr
        mm = img.mm
        for k in ("start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
                  "start_stack", "arg_start", "arg_end", "env_start", "env_end"):
            setattr(p.mm, k, mm[k])
        p.mm.auxv_size = len(mm["auxv"])
        p.mm.exe_fd = exe_fd & 0xFFFFFFFF
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
        pr = img.process
        p.personality = pr["personality"]
        p.umask = pr["umask"]
        p.pdeathsig = pr["pdeathsig"]
        p.no_new_privs = pr["no_new_privs"]
        p.setpgid = 1
        comm = th["comm"].encode("utf-8", "surrogateescape")[:15]
        ffi.memmove(p.comm, comm + b"\0", len(comm) + 1)
        p.clear_child_tid = th["clear_child_tid"]
        p.robust_list, p.robust_len = th["robust_list"], th["robust_len"]
        p.rseq, p.rseq_len, p.rseq_sig = th["rseq"], th["rseq_len"], th["rseq_sig"]
        p.fs_base, p.gs_base = regs["fs_base"], regs["gs_base"]
        c = img.creds
        if set_creds:
            p.creds.set = 1
            for k in ("uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid"):
                setattr(p.creds, k, c[k])
            p.creds.ngroups = len(c["groups"])
            for k in ("cap_eff", "cap_prm", "cap_inh"):
                getattr(p.creds, k)[0:2] = [c[k] & 0xFFFFFFFF, c[k] >> 32]
            p.creds.cap_bnd, p.creds.cap_amb = c["cap_bnd"], c["cap_amb"]
            p.creds.securebits = c["securebits"]

        others = img.threads[1:]
        code_size, size = planmod.region_size(
            len(vmas), len(fdmap), len(pending) + sum(len(x.get("pending", [])) for x in others),
            max(len(x["xsave"]) for x in img.threads), len(mm["auxv"]), len(c["groups"]),
            len(img.threads))
        base = planmod.free_gap(target_spans + _own_maps(), code_size + size)
        region = planmod.Region(base, code_size, size=code_size + size)
        p.mm.auxv = region.alloc(mm["auxv"], 8)
        if set_creds and c["groups"]:
            p.creds.groups = region.alloc(struct.pack(f"<{len(c['groups'])}I",
                                                      *(g["gid"] for g in c["groups"])), 8)
        want_pid = _choose_pid(img, opts.pid_mode, opts.warn)
        plan_addr = planmod.build(
            region, p,
            {"fds": ("struct umig_fdmap", fdmap), "vmas": ("struct umig_vma", vmas),
             "pending": ("struct umig_pending", pending)},
            th, others, bool(want_pid), img.header["xcr0"])

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

        timings["planned"] = time.perf_counter()
        pid = lib.umig_spawn(base + lib.UMIG_BLOB_ENTRY_OFF, plan_addr, want_pid)
        if pid == -17 and want_pid and opts.pid_mode == "auto" and not others:
            # EEXIST: taken meanwhile
            want_pid = 0
            pid = lib.umig_spawn(base + lib.UMIG_BLOB_ENTRY_OFF, plan_addr, 0)
        if pid < 0:
            if want_pid and opts.pid_mode == "keep":
                raise EnvironmentProblem(f"cannot keep pid {want_pid}: {os.strerror(-pid)}",
                                         pid=want_pid)
            raise RestoreFailed(f"could not start the process: {os.strerror(-pid)}")
        child = Child(pid)
        syscall(NR_munmap, base, region.size)
        region_mapped = 0
        fds.close()

        st = tracing.wait(pid)
        if not (st.kind == "signal" and st.value == signal.SIGSTOP):
            child.alive = st.kind not in ("exited", "killed")
            raise RestoreFailed(f"the new process {st} before the restorer ran")
        tracing.setoptions(pid, tracing.PTRACE_O_EXITKILL | tracing.PTRACE_O_TRACESYSGOOD
                           | tracing.PTRACE_O_TRACECLONE)
        child.memfd = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        # the child's own rseq registration (inherited from this thread) goes first
        rseq, rlen, rsig, _ = tracing.rseq_config(pid)
        os.pwrite(child.memfd, struct.pack("<QII", rseq, rlen, rsig),
                  plan_addr + ffi.offsetof("struct umig_plan", "old_rseq"))

        def check() -> None:
            if opts.interrupted():
                raise Interrupted("interrupted: nothing was started")

        child.stop(lib.UMIG_STOP_MAPPED, "while mapping memory", plan_addr)
        timings["mapped"] = time.perf_counter()
        if vdso_patch is not None:
            os.pwrite(child.memfd, vdso_patch, img.vdso["vdso_start"])
        _feed_pages(child, loaded, check)        # ends after the verified trailer
        timings["filled"] = time.perf_counter()
        child.stop(lib.UMIG_STOP_READY, "while restoring the task", plan_addr)
        if len(child.threads) != len(others):
            raise RestoreFailed(f"the restorer made {len(child.threads)} threads, not "
                                f"{len(others)}; nothing was started")
        for tid in child.threads:
            child.thread_ready(tid, plan_addr)
            _follow_to_sigreturn(child, tid)
        _follow_to_sigreturn(child, pid)
        with Injector(pid, child.memfd, base + lib.UMIG_BLOB_GADGET_OFF) as inj:
            r = inj.syscall(NR_munmap, base, region.size)
            if r != 0:
                raise RestoreFailed(f"could not unmap the restorer from process {pid}: "
                                    f"{os.strerror(-r)}")
        os.close(child.memfd)
        child.memfd = -1
        timings["ready"] = time.perf_counter()
        with critical():
            opts.on_running(pid)
            child.detach()
            child.alive = False   # it runs: no longer ours to kill on error
        timings["running"] = time.perf_counter()
        return Resumed(pid, pid == img.process["pid"], vdso_mode, timings)
    except BaseException:
        if child is not None:
            child.kill()
        raise
    finally:
        if region_mapped:
            try:
                syscall(NR_munmap, region.base, region_mapped)
            except OSError:
                pass
        fds.close()


def _follow_to_sigreturn(child: Child, tid: int) -> None:
    """From the READY stop, step thread tid syscall by syscall to the exit
    of its rt_sigreturn, where the registers are the process's own."""
    entering = True
    sigreturn = False
    while True:
        tracing.syscall(tid)
        st = tracing.wait(tid)
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
