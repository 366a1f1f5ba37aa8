"""Sections that a Ctrl-C or SIGTERM must not cut in half.

umig turns SIGINT/SIGTERM/SIGHUP into an exception (cli.py) so that a long
grab or resume stops at once and undoes what it did.  While the registers of
a tracee are not its own, or while the source is being finished, those
signals wait: inside `critical()` they are blocked, and the exception comes
when the section is over and everything is consistent again.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

DEFERRED = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@contextmanager
def critical():
    old = signal.pthread_sigmask(signal.SIG_BLOCK, DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
