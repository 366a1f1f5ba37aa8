"""Errors that carry the object they are about, and the exit codes.

Every failure umig reports is a UmigError: a message saying what failed and
what to do, the object (pid, fd, path, record, byte offset) and a distinct
exit code.  ``cli.main`` is the one place that prints them.  OSError is
translated once, here, with the race cases (a process that vanished while
we looked at it) folded in.
"""

from __future__ import annotations

import errno
import enum


class Exit(enum.IntEnum):
    """umig's own exit codes.  `umig resume` otherwise exits with the status
    of the resumed process, so these sit above the small numbers programs
    usually use."""

    OK = 0
    USAGE = 64             # bad command line
    NO_PROCESS = 65        # no such pid (or it went away)
    ACCESS = 66            # not allowed to trace / read it
    REFUSED = 67           # state umig does not support (fd kind, threads, ...)
    IO = 68                # writing or reading the image failed (ENOSPC, EPIPE, ...)
    INTERRUPTED = 69       # SIGINT/SIGTERM while grabbing; the source was thawed
    BAD_IMAGE = 70         # truncated, corrupt, not an image
    INCOMPATIBLE = 71      # other version, arch or CPU features
    ENVIRONMENT = 72       # resume host lacks a file, the pid, a privilege
    RESTORE_FAILED = 73    # the restorer failed: nothing was started
    TERMINAL = 74          # refusing to write an image to a terminal
    INTERNAL = 75          # a bug in umig: run with --debug and report it
    UNCERTAIN = 76         # migrate: the target may run it; the source was left stopped


class UmigError(Exception):
    exit_code = Exit.INTERNAL

    def __init__(self, msg: str, *, pid: int | None = None, fd: int | None = None,
                 path: str | None = None, record: int | None = None,
                 offset: int | None = None, exit_code: int | None = None,
                 hint: str | None = None):
        super().__init__(msg)
        self.msg = msg
        self.pid = pid
        self.fd = fd
        self.path = path
        self.record = record
        self.offset = offset
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def line(self) -> str:
        """The one line printed to stderr."""
        text = self.msg
        if self.hint:
            text += f"; {self.hint}"
        return text


class NoProcess(UmigError):
    exit_code = Exit.NO_PROCESS


class AccessDenied(UmigError):
    exit_code = Exit.ACCESS


class Refused(UmigError):
    exit_code = Exit.REFUSED


class ImageIOError(UmigError):
    exit_code = Exit.IO


class Interrupted(UmigError):
    exit_code = Exit.INTERRUPTED


class BadImage(UmigError):
    exit_code = Exit.BAD_IMAGE


class Incompatible(UmigError):
    exit_code = Exit.INCOMPATIBLE


class EnvironmentProblem(UmigError):
    exit_code = Exit.ENVIRONMENT


class RestoreFailed(UmigError):
    exit_code = Exit.RESTORE_FAILED


def from_oserror(e: OSError, what: str, *, pid: int | None = None,
                 path: str | None = None, fd: int | None = None) -> UmigError:
    """Translate an OSError met while doing `what` to the object it concerns."""
    code = e.errno
    if pid is not None and code == errno.ESRCH or (pid is not None and code == errno.ENOENT
                                                   and path and path.startswith("/proc/")):
        return NoProcess(f"process {pid} went away while {what}", pid=pid)
    if code in (errno.EPERM, errno.EACCES):
        return AccessDenied(f"{what}: permission denied", pid=pid, path=path, fd=fd)
    if code == errno.ENOSPC:
        return ImageIOError(f"{what}: no space left on device", path=path, fd=fd,
                            hint="free space or write the image elsewhere")
    if code == errno.EPIPE:
        return ImageIOError(f"{what}: the reader of the image went away (broken pipe)",
                            path=path, fd=fd)
    return UmigError(f"{what}: {e.strerror or e}", pid=pid, path=path, fd=fd)
