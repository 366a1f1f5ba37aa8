"""ptrace, the parts umig uses.  The only importer of python-ptrace.

python-ptrace gives us the register layout (user_regs_struct), request
numbers and syscall/signal names.  What it lacks (STYLE.md §7) is here:
PTRACE_SEIZE/INTERRUPT, GETREGSET with NT_X86_XSTATE, PEEKSIGINFO,
GET/SETSIGMASK and GET_RSEQ_CONFIGURATION.  Requests go through one native
call that returns -errno.
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
from dataclasses import dataclass

from ptrace.binding import func as _pt
from ptrace.binding.func import ptrace_registers_t as Regs
from ptrace.signames import signalName
from ptrace.syscall.linux.x86_64 import SYSCALL_NAMES

from .native import ffi, lib

PTRACE_TRACEME = _pt.PTRACE_TRACEME
PTRACE_CONT = _pt.PTRACE_CONT
PTRACE_SINGLESTEP = _pt.PTRACE_SINGLESTEP
PTRACE_GETREGS = _pt.PTRACE_GETREGS
PTRACE_SETREGS = _pt.PTRACE_SETREGS
PTRACE_DETACH = _pt.PTRACE_DETACH
PTRACE_SYSCALL = _pt.PTRACE_SYSCALL
PTRACE_SETOPTIONS = _pt.PTRACE_SETOPTIONS
PTRACE_GETREGSET = _pt.PTRACE_GETREGSET
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_PEEKSIGINFO = 0x4209
PTRACE_GETSIGMASK = 0x420A
PTRACE_SETSIGMASK = 0x420B
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F
PTRACE_PEEKSIGINFO_SHARED = 1
PTRACE_GETEVENTMSG = 0x4201
PTRACE_O_TRACESYSGOOD = _pt.PTRACE_O_TRACESYSGOOD
PTRACE_O_TRACEFORK = 1 << 1
PTRACE_O_TRACEVFORK = 1 << 2
PTRACE_O_TRACECLONE = 1 << 3
PTRACE_EVENT_FORK, PTRACE_EVENT_VFORK, PTRACE_EVENT_CLONE = 1, 2, 3
PTRACE_O_EXITKILL = 1 << 20
PTRACE_EVENT_STOP = 128
NT_X86_XSTATE = 0x202
WALL = 0x40000000

REG_NAMES: tuple[str, ...] = tuple(name for name, _ in Regs._fields_)


def syscall_name(nr: int) -> str:
    return SYSCALL_NAMES.get(nr, f"syscall {nr}")


def signal_name(sig: int) -> str:
    if 34 <= sig <= 64:
        return f"SIGRT{sig - 34}" if sig < 49 else f"SIGRTMAX-{64 - sig}"
    return signalName(sig)


def _req(req: int, pid: int, addr: int = 0, data: int = 0) -> int:
    r = lib.umig_ptrace(req, pid, addr, data)
    if r < 0:
        raise OSError(-r, os.strerror(-r))
    return r


def seize(pid: int, options: int = 0) -> None:
    _req(PTRACE_SEIZE, pid, 0, options)


def interrupt(pid: int) -> None:
    _req(PTRACE_INTERRUPT, pid)


def setoptions(pid: int, options: int) -> None:
    _req(PTRACE_SETOPTIONS, pid, 0, options)


def eventmsg(pid: int) -> int:
    """PTRACE_GETEVENTMSG: for a clone event stop, the new thread's tid."""
    buf = ffi.new("uint64_t *")
    _req(PTRACE_GETEVENTMSG, pid, 0, int(ffi.cast("uint64_t", buf)))
    return buf[0]


def cont(pid: int, sig: int = 0) -> None:
    _req(PTRACE_CONT, pid, 0, sig)


def syscall(pid: int, sig: int = 0) -> None:
    _req(PTRACE_SYSCALL, pid, 0, sig)


def singlestep(pid: int, sig: int = 0) -> None:
    _req(PTRACE_SINGLESTEP, pid, 0, sig)


def detach(pid: int, sig: int = 0) -> None:
    _req(PTRACE_DETACH, pid, 0, sig)


@dataclass
class Stop:
    """What waitpid said about a tracee."""
    kind: str        # exited | killed | event-stop | signal | syscall | event
    value: int = 0   # exit code, signal number, or ptrace event
    sig: int = 0

    def __str__(self) -> str:
        if self.kind == "exited":
            return f"exited with status {self.value}"
        if self.kind == "killed":
            return f"killed by {signal_name(self.value)}"
        if self.kind == "signal":
            return f"stopped by {signal_name(self.value)}"
        return f"{self.kind} stop ({self.value})"


def decode_status(status: int) -> Stop:
    if os.WIFEXITED(status):
        return Stop("exited", os.WEXITSTATUS(status))
    if os.WIFSIGNALED(status):
        return Stop("killed", os.WTERMSIG(status))
    sig = os.WSTOPSIG(status)
    event = status >> 16
    if event == PTRACE_EVENT_STOP:
        return Stop("event-stop", event, sig)
    if event:
        return Stop("event", event, sig)
    if sig == (signal.SIGTRAP | 0x80):
        return Stop("syscall", 0, signal.SIGTRAP)
    return Stop("signal", sig, sig)


def wait(pid: int, nohang: bool = False) -> Stop | None:
    while True:
        try:
            got, status = os.waitpid(pid, WALL | (os.WNOHANG if nohang else 0))
        except InterruptedError:
            continue
        if got == 0:
            return None
        return decode_status(status)


def getregs(pid: int) -> Regs:
    regs = Regs()
    _req(PTRACE_GETREGS, pid, 0, ctypes.addressof(regs))
    return regs


def setregs(pid: int, regs: Regs) -> None:
    _req(PTRACE_SETREGS, pid, 0, ctypes.addressof(regs))


def regs_to_tuple(regs: Regs) -> tuple[int, ...]:
    return tuple(getattr(regs, n) for n in REG_NAMES)


def regs_from_tuple(values) -> Regs:
    regs = Regs()
    for name, value in zip(REG_NAMES, values):
        setattr(regs, name, value)
    return regs


def copy_regs(regs: Regs) -> Regs:
    return regs_from_tuple(regs_to_tuple(regs))


def xstate_size() -> int:
    """Size of the XSAVE area (standard format) for the features enabled
    in XCR0 on this CPU, as ptrace reports it."""
    out = ffi.new("uint32_t[4]")
    lib.umig_cpuid(0xD, 0, out)
    return out[1]


def get_xstate(pid: int) -> bytes:
    size = xstate_size()
    buf = ffi.new("uint8_t[]", size)
    iov = ffi.new("uint64_t[2]", [int(ffi.cast("uint64_t", buf)), size])
    _req(PTRACE_GETREGSET, pid, NT_X86_XSTATE, int(ffi.cast("uint64_t", iov)))
    return bytes(ffi.buffer(buf, iov[1]))


def set_xstate(pid: int, data: bytes) -> None:
    buf = ffi.from_buffer(bytearray(data))
    iov = ffi.new("uint64_t[2]", [int(ffi.cast("uint64_t", buf)), len(data)])
    _req(PTRACE_SETREGSET, pid, NT_X86_XSTATE, int(ffi.cast("uint64_t", iov)))


def get_sigmask(pid: int) -> int:
    buf = ffi.new("uint64_t *")
    _req(PTRACE_GETSIGMASK, pid, 8, int(ffi.cast("uint64_t", buf)))
    return buf[0]


def set_sigmask(pid: int, mask: int) -> None:
    buf = ffi.new("uint64_t *", mask)
    _req(PTRACE_SETSIGMASK, pid, 8, int(ffi.cast("uint64_t", buf)))


def peek_siginfo(pid: int, shared: bool) -> list[bytes]:
    """The queued siginfos of the thread (or, shared, of the process), in
    queue order, without dequeuing them."""
    out: list[bytes] = []
    batch = 32
    buf = ffi.new("uint8_t[]", 128 * batch)
    args = ffi.new("uint64_t[2]")
    while True:
        args[0] = len(out)
        args[1] = (PTRACE_PEEKSIGINFO_SHARED if shared else 0) | (batch << 32)
        n = _req(PTRACE_PEEKSIGINFO, pid, int(ffi.cast("uint64_t", args)),
                 int(ffi.cast("uint64_t", buf)))
        data = bytes(ffi.buffer(buf, 128 * n))
        out.extend(data[i * 128:(i + 1) * 128] for i in range(n))
        if n < batch:
            return out


def rseq_config(pid: int) -> tuple[int, int, int, int]:
    """(rseq area, its registered length, signature, flags); area 0: none."""
    buf = ffi.new("uint8_t[24]")
    _req(PTRACE_GET_RSEQ_CONFIGURATION, pid, 24, int(ffi.cast("uint64_t", buf)))
    ptr, size, sig, flags = struct.unpack_from("<QIII", ffi.buffer(buf))
    return ptr, size, sig, flags
