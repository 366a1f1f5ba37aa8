"""Run syscalls inside a stopped tracee, as a transaction.

The tracee's registers, signal mask and every byte we touch (scratch memory
below its stack's red zone, and code bytes if no `syscall` instruction could
be borrowed) are put back when the `with` block ends, on every path.

How one syscall runs: registers set to the call with orig_rax = -1 (so the
kernel does not restart whatever syscall the tracee was stopped in), rip on
a `syscall` instruction, one PTRACE_SINGLESTEP.  The instruction is borrowed
from the tracee's vDSO, so no code is written.
"""

from __future__ import annotations

import os
import signal
import struct

from . import tracing
from .critical import critical
from .errors import UmigError

SCRATCH = 512          # bytes of scratch memory we may use
RED_ZONE = 128
ALL_SIGNALS = (1 << 64) - 1


class InjectionError(UmigError):
    pass


class Injector:
    def __init__(self, pid: int, memfd: int, gadget: int | None):
        self.pid = pid
        self.memfd = memfd
        self.gadget = gadget
        self._saved_regs = None
        self._saved_mask = None
        self.original_mask = 0
        self._scratch_saved: bytes | None = None
        self._code_saved: bytes | None = None
        self.scratch = 0

    def __enter__(self) -> "Injector":
        self._critical = critical()
        self._critical.__enter__()
        try:
            return self._enter()
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def _enter(self) -> "Injector":
        pid = self.pid
        self._saved_regs = tracing.getregs(pid)
        self._saved_mask = self.original_mask = tracing.get_sigmask(pid)
        # no signal may be delivered while the registers are not the tracee's
        tracing.set_sigmask(pid, ALL_SIGNALS)
        rsp = self._saved_regs.rsp
        self.scratch = (rsp - RED_ZONE - SCRATCH) & ~0xF
        self._scratch_saved = os.pread(self.memfd, SCRATCH, self.scratch)
        if self.gadget is None:
            # no vDSO: borrow the two bytes at rip (restored below)
            self.gadget = self._saved_regs.rip
            self._code_saved = os.pread(self.memfd, 2, self.gadget)
            os.pwrite(self.memfd, b"\x0f\x05", self.gadget)
        return self

    def __exit__(self, *exc) -> None:
        errors = []
        for undo in (self._restore_code, self._restore_scratch, self._restore_regs,
                     self._restore_mask):
            try:
                undo()
            except OSError as e:  # keep undoing the rest
                errors.append(e)
        self._critical.__exit__(None, None, None)
        if errors and exc[0] is None:
            raise InjectionError(f"could not restore process {self.pid} after injecting "
                                 f"syscalls: {errors[0]}", pid=self.pid)

    def _restore_code(self) -> None:
        if self._code_saved is not None:
            os.pwrite(self.memfd, self._code_saved, self.gadget)
            self._code_saved = None

    def _restore_scratch(self) -> None:
        if self._scratch_saved is not None:
            os.pwrite(self.memfd, self._scratch_saved, self.scratch)
            self._scratch_saved = None

    def _restore_regs(self) -> None:
        if self._saved_regs is not None:
            tracing.setregs(self.pid, self._saved_regs)

    def _restore_mask(self) -> None:
        if self._saved_mask is not None:
            tracing.set_sigmask(self.pid, self._saved_mask)

    def syscall(self, nr: int, *args: int) -> int:
        """Run one syscall in the tracee; returns its raw result (-errno on
        failure)."""
        regs = tracing.copy_regs(self._saved_regs)
        regs.rax = nr
        regs.orig_rax = 0xFFFFFFFFFFFFFFFF
        regs.rip = self.gadget
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
            setattr(regs, name, value & 0xFFFFFFFFFFFFFFFF)
        tracing.setregs(self.pid, regs)
        tracing.singlestep(self.pid)
        stop = tracing.wait(self.pid)
        if stop.kind != "signal" or stop.value != signal.SIGTRAP:
            raise InjectionError(
                f"process {self.pid} {stop} while running {tracing.syscall_name(nr)} in it",
                pid=self.pid)
        after = tracing.getregs(self.pid)
        if after.rip != self.gadget + 2:
            raise InjectionError(f"injected {tracing.syscall_name(nr)} in process {self.pid} "
                                 f"stopped at {after.rip:#x}, not after the syscall",
                                 pid=self.pid)
        rax = after.rax
        return rax - (1 << 64) if rax >= 1 << 63 else rax

    def read_scratch(self, size: int, offset: int = 0) -> bytes:
        return os.pread(self.memfd, size, self.scratch + offset)

    def write_scratch(self, data: bytes, offset: int = 0) -> int:
        os.pwrite(self.memfd, data, self.scratch + offset)
        return self.scratch + offset


def find_gadget(vdso: bytes, base: int) -> int | None:
    """Address of a `syscall` instruction in the tracee's vDSO image."""
    i = vdso.find(b"\x0f\x05")
    return base + i if i >= 0 else None


def unpack_u64(data: bytes) -> int:
    return struct.unpack_from("<Q", data)[0]
