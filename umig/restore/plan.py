"""The restorer's region: its code, the plan (plan.h) with everything it
points to, the rt_sigframe, and a stack, laid out at one address that is
free both in the resuming umig and in the image.

Python decides every value here; the restorer only executes it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .. import tracing
from ..errors import EnvironmentProblem
from ..native import PAGE, ffi, lib, restorer_blob

STACK_SIZE = 64 * 1024
TASK_SIZE = 0x7FFFFFFFF000
LOWEST = 0x10000000                   # keep clear of low memory and mmap_min_addr

FP_XSTATE_MAGIC1 = 0x46505853
FP_XSTATE_MAGIC2 = 0x46505845
UC_FP_XSTATE, UC_SIGCONTEXT_SS, UC_STRICT_RESTORE_SS = 1, 2, 4
USER_CS, USER_DS = 0x33, 0x2B

ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK = 512, 513, 514, 516
NR_nanosleep, NR_clock_nanosleep, NR_restart_syscall = 35, 230, 219
TIMER_ABSTIME = 1


def _align(x: int, a: int) -> int:
    return (x + a - 1) & ~(a - 1)


def align_page(x: int) -> int:
    return _align(x, PAGE)


def free_gap(occupied: list[tuple[int, int]], size: int, near: int | None = None,
             within: int = 1 << 31) -> int:
    """An address where `size` bytes (plus a guard page each side) touch
    nothing in `occupied`; nearest to `near` if given, else the highest."""
    spans = sorted((s, min(e, TASK_SIZE)) for s, e in occupied if s < TASK_SIZE and e > s)
    merged: list[list[int]] = []
    for s, e in spans:
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    gaps = []
    prev = LOWEST
    for s, e in merged + [[TASK_SIZE - PAGE, TASK_SIZE]]:
        if s - prev >= size + 2 * PAGE:
            gaps.append((prev + PAGE, s - PAGE - size))      # first and last start
        prev = max(prev, e)
    if not gaps:
        raise EnvironmentProblem(f"no room for {size} bytes in the address space")
    if near is None:
        return gaps[-1][1] & ~(PAGE - 1)
    best = None
    for lo, hi in gaps:
        cand = min(max(near, lo), hi) & ~(PAGE - 1)
        if cand < lo:
            cand += PAGE
        if cand > hi:
            continue
        if best is None or abs(cand - near) < abs(best - near):
            best = cand
    if best is None or abs(best - near) > within:
        raise EnvironmentProblem(f"no room for {size} bytes within {within >> 20} MiB of "
                                 f"{near:#x}")
    return best


SA_RESTART = 0x10000000
EINTR = 4


def handled_pending(thread: dict, signals: list[int], actions: list[dict]) -> dict | None:
    """The action of the first of `signals` (pending for this thread) that
    its mask lets through and that has a handler: what the kernel would run
    on the way back to user space, instead of restarting the call."""
    for sig in signals:
        if thread["sigmask"] >> (sig - 1) & 1 or sig > len(actions):
            continue
        if actions[sig - 1]["handler"] not in (0, 1):       # not SIG_DFL or SIG_IGN
            return actions[sig - 1]
    return None


def restart_regs(regs: dict, handler: dict | None = None) -> dict:
    """Registers that continue an interrupted syscall the way the kernel
    would have on return to user space, since rt_sigreturn itself never
    restarts anything: restart it (or restart_syscall), or, when `handler`
    (the action of a pending signal that will run first) says so, fail it
    with EINTR as handle_signal does."""
    r = dict(regs)
    orig = r["orig_rax"]
    if orig >= 1 << 63:          # not stopped in a syscall
        return r
    err = (1 << 64) - r["rax"] if r["rax"] >= 1 << 63 else 0
    if handler is not None and (err in (ERESTARTNOHAND, ERESTART_RESTARTBLOCK) or (
            err == ERESTARTSYS and not handler["flags"] & SA_RESTART)):
        r["rax"] = (1 << 64) - EINTR
        return r
    if err in (ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND):
        r["rax"] = orig
        r["rip"] -= 2
    elif err == ERESTART_RESTARTBLOCK:
        # the kernel's restart block did not travel: call the syscall again;
        # a relative sleep resumes from the remaining time the kernel wrote
        # to its rmtp argument, when it was given one
        r["rax"] = orig
        r["rip"] -= 2
        if orig == NR_nanosleep and r["rsi"]:
            r["rdi"] = r["rsi"]
        elif orig == NR_clock_nanosleep and not r["rsi"] & TIMER_ABSTIME and r["r10"]:
            r["rdx"] = r["r10"]
    return r


def sigframe(regs: dict, sigmask: int, altstack: tuple[int, int, int], fpstate_addr: int,
             ) -> bytes:
    """struct rt_sigframe up to the end of the ucontext (x86_64)."""
    sc = struct.pack(
        "<18Q4H4QQ8Q",
        regs["r8"], regs["r9"], regs["r10"], regs["r11"], regs["r12"], regs["r13"],
        regs["r14"], regs["r15"], regs["rdi"], regs["rsi"], regs["rbp"], regs["rbx"],
        regs["rdx"], regs["rax"], regs["rcx"], regs["rsp"], regs["rip"], regs["eflags"],
        USER_CS, 0, 0, USER_DS,
        0, 0, 0, 0,               # err, trapno, oldmask, cr2
        fpstate_addr, *([0] * 8))
    assert len(sc) == 256
    sp, flags, size = altstack
    uc = struct.pack("<QQQi4xQ", UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS, 0,
                     sp, flags, size) + sc + struct.pack("<Q", sigmask)
    return struct.pack("<Q", 0) + uc


def fpstate(xsave: bytes, xcr0: int) -> bytes:
    """The XSAVE area as a signal frame carries it: the software bytes at
    464 say the extended state follows, MAGIC2 after it."""
    buf = bytearray(xsave)
    sw = struct.pack("<IIQI28x", FP_XSTATE_MAGIC1, len(xsave) + 4, xcr0, len(xsave))
    buf[464:464 + 48] = sw
    return bytes(buf) + struct.pack("<I", FP_XSTATE_MAGIC2)


@dataclass
class Region:
    """The restorer region: [base, base + size)."""
    base: int
    code_size: int
    data: bytearray = field(default_factory=bytearray)
    size: int = 0

    @property
    def data_base(self) -> int:
        return self.base + self.code_size

    def alloc(self, blob: bytes, align: int = 16) -> int:
        """Place bytes in the data part; returns their address."""
        off = _align(len(self.data), align)
        self.data.extend(b"\0" * (off - len(self.data)))
        self.data.extend(blob)
        return self.data_base + off


THREAD_STACK = 16 * 1024              # a non-leader thread's restorer stack


def region_size(n_vmas: int, n_fds: int, n_pending: int, xsave_len: int,
                auxv_len: int, n_groups: int, n_threads: int = 1) -> tuple[int, int]:
    code = _align(len(restorer_blob()), PAGE)
    per_thread = xsave_len + 128 + 512            # fpstate (aligned) and sigframe
    data = (ffi.sizeof("struct umig_plan") + 64
            + n_vmas * ffi.sizeof("struct umig_vma") + n_fds * 16
            + n_pending * ffi.sizeof("struct umig_pending") + per_thread
            + auxv_len + 4 * n_groups + 16 * 8
            + (n_threads - 1) * (ffi.sizeof("struct umig_thread") + per_thread + 16
                                 + THREAD_STACK))
    return code, _align(data, PAGE) + STACK_SIZE


def _frame(region: Region, thread: dict, xsave: bytes, xcr0: int,
           signals: tuple[list[int], list[dict]]) -> int:
    """The thread's fpstate and rt_sigframe in the region; returns the frame.
    signals: (pending signal numbers it may take, the process's actions)."""
    fp_addr = region.alloc(fpstate(xsave, xcr0), 64)
    pending, actions = signals
    handler = handled_pending(thread, pending + [x["sig"] for x in thread.get("pending", [])],
                              actions)
    frame = sigframe(restart_regs(regs_dict(thread["regs"]), handler), thread["sigmask"],
                     (thread["altstack_sp"], thread["altstack_flags"], thread["altstack_size"]),
                     fp_addr)
    # rsp = frame + 8 at rt_sigreturn must be 16-byte aligned + 8, as after a call
    return region.alloc(frame, 16)


def _pending_array(pending: list[dict], shared: int) -> bytes:
    arr = ffi.new("struct umig_pending[]", len(pending))
    for i, s in enumerate(pending):
        arr[i].shared, arr[i].sig = shared, s["sig"]
        ffi.memmove(arr[i].info, s["info"], 128)
    return bytes(ffi.buffer(arr))


def _threads(region: Region, plan, threads: list[dict], keep_tids: bool, xcr0: int,
             actions: list[dict]) -> None:
    """struct umig_thread for every thread but the leader, each with its
    signals, frame and stack in the region."""
    if not threads:
        return
    arr = ffi.new("struct umig_thread[]", len(threads))
    for i, th in enumerate(threads):
        t = arr[i]
        regs = regs_dict(th["regs"])
        t.tid = th["tid"] if keep_tids else 0
        t.npending = len(th.get("pending", []))
        if t.npending:
            t.pending = region.alloc(_pending_array(th["pending"], 0), 16)
        t.sigframe = _frame(region, th, th["xsave"], xcr0, ([], actions))
        t.stack_lo = region.alloc(b"\0" * THREAD_STACK, 64)
        t.stack_size = THREAD_STACK
        t.fs_base, t.gs_base = regs["fs_base"], regs["gs_base"]
        t.clear_child_tid = th["clear_child_tid"]
        t.robust_list, t.robust_len = th["robust_list"], th["robust_len"]
        t.rseq, t.rseq_len, t.rseq_sig = th["rseq"], th["rseq_len"], th["rseq_sig"]
        comm = th["comm"].encode("utf-8", "surrogateescape")[:15]
        ffi.memmove(t.comm, comm + b"\0", len(comm) + 1)
    plan.threads = region.alloc(bytes(ffi.buffer(arr)), 16)
    plan.nthreads = len(threads)


def build(region: Region, plan, arrays: dict, leader: dict, others: list[dict],
          keep_tids: bool, xcr0: int, actions: list[dict] = (),
          shared_pending: list[int] = ()) -> int:
    """Lay out the data part: plan first, then its arrays, the leader's
    fpstate and sigframe, the other threads; the leader's stack is the top
    of the region."""
    plan_addr = region.alloc(b"\0" * ffi.sizeof("struct umig_plan"), 64)
    for name, (ctype, items) in arrays.items():
        if not items:
            continue
        arr = ffi.new(f"{ctype}[]", len(items))
        for i, item in enumerate(items):
            for k, v in item.items():
                if k == "info":
                    ffi.memmove(arr[i].info, v, 128)
                elif k == "comm":
                    b = v.encode("utf-8", "surrogateescape")[:15]
                    ffi.memmove(arr[i].comm, b + b"\0", len(b) + 1)
                else:
                    setattr(arr[i], k, v)
        setattr(plan, name, region.alloc(bytes(ffi.buffer(arr)), 16))
    # process-wide pending signals are counted against the leader
    plan.sigframe = _frame(region, leader, leader["xsave"], xcr0,
                           (list(shared_pending), list(actions)))
    _threads(region, plan, others, keep_tids, xcr0, list(actions))
    plan.blob_start = region.base
    plan.blob_end = region.base + region.size
    plan.stack_top = region.base + region.size - 64
    plan.task_size = TASK_SIZE
    plan.magic = lib.UMIG_PLAN_MAGIC
    plan.abi = lib.UMIG_PLAN_ABI
    plan.size = ffi.sizeof("struct umig_plan")
    off = plan_addr - region.data_base
    region.data[off:off + ffi.sizeof("struct umig_plan")] = bytes(ffi.buffer(plan))
    if region.code_size + len(region.data) > region.size - 16 * 1024:
        raise EnvironmentProblem("the restore plan does not fit its region (a umig bug)")
    return plan_addr


def regs_dict(values) -> dict:
    return dict(zip(tracing.REG_NAMES, values))
