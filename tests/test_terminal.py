"""Programs in a terminal (issue 4): resumed in the terminal of `umig
resume`, with their terminal settings and window size, as a job of the
shell there (Ctrl-Z stops it, fg continues it)."""

from __future__ import annotations

import fcntl
import os
import select
import shlex
import signal
import struct
import sys
import termios
import time
from pathlib import Path

from conftest import read_lines, run_umig, umig_cmd, wait_for, wait_lines

VICTIMS = Path(__file__).parent / "victims"


def _pty(rows: int, cols: int) -> tuple[int, int]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    return master, slave


def _controlling_tty() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Screen:
    """What a program in the pty wrote, read from its master."""

    def __init__(self, master: int):
        self.master = master
        self.text = b""

    def pump(self) -> None:
        while select.select([self.master], [], [], 0)[0]:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.text += data

    def wait(self, needle: bytes, timeout: float = 20) -> None:
        start = len(self.text)

        def seen():
            self.pump()
            return needle in self.text[start:] or None
        wait_for(seen, timeout, f"{needle!r} on the terminal (it shows {self.text[-300:]!r})")

    def type(self, text: bytes) -> None:
        os.write(self.master, text)


def _count(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _counting(path: Path, screen: Screen, timeout: float = 20) -> None:
    first = _count(path)

    def moved():
        screen.pump()
        return _count(path) > first + 2 or None
    wait_for(moved, timeout, f"the count in {path} to go on")


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_raw_mode_program_resumes_in_another_terminal_as_a_shell_job(procs, tmp_path):
    """GIVEN python3 in terminal A (37x111) that put it in raw mode
    WHEN grabbed, and resumed by `umig resume` typed into an interactive
    bash in terminal B (24x80, cooked)
    THEN it runs with terminal B in raw mode and 37x111 (it checks: PASS),
    and the /dev/tty it holds open writes to terminal B;
    once it sets its terminal back to cooked, Ctrl-Z stops it and bash
    reports the job stopped and takes commands, and fg makes it count on;
    when it ends, terminal B has its own window size back."""
    log, counter = tmp_path / "log", tmp_path / "count"
    master_a, slave_a = _pty(37, 111)
    try:
        src = procs.start([sys.executable, str(VICTIMS / "rawterm.py"), str(log), str(counter)],
                          stdin=slave_a, stdout=slave_a, stderr=slave_a,
                          start_new_session=True, preexec_fn=_controlling_tty)
        assert wait_lines(log, 1)[0] == "ready 37 111"
        r = run_umig("grab", "-o", str(tmp_path / "img"), str(src.pid))
        assert r.returncode == 0, r.stderr.decode()
        src.wait(timeout=5)
    finally:
        os.close(slave_a)
        os.close(master_a)

    master_b, slave_b = _pty(24, 80)
    screen = Screen(master_b)
    try:
        env = dict(os.environ, PS1="$ ", TERM="dumb", HISTFILE="/dev/null")
        shell = procs.start(["bash", "--norc", "--noprofile", "-i"], stdin=slave_b,
                            stdout=slave_b, stderr=slave_b, env=env,
                            start_new_session=True, preexec_fn=_controlling_tty)
        screen.wait(b"$ ")
        screen.type(shlex.join(umig_cmd("resume", str(tmp_path / "img"))).encode() + b"\n")
        _counting(counter, screen)
        pid = procs.adopt(src.pid)
        size = fcntl.ioctl(master_b, termios.TIOCGWINSZ, bytes(8))
        assert struct.unpack("HH", size[:4]) == (37, 111)
        os.kill(pid, signal.SIGUSR1)
        wait_for(lambda: "cooked" in read_lines(log) or None, 20, "the check")
        assert [x for x in read_lines(log) if x.startswith(("PASS", "FAIL"))] == ["PASS"], \
            read_lines(log)
        screen.wait(b"[via /dev/tty]")          # its /dev/tty fd is terminal B now

        screen.type(b"\x1a")                                # Ctrl-Z
        screen.wait(b"Stopped")
        wait_for(lambda: _state(pid) == "T" or None, 10, "the process to stop")
        still = _count(counter)
        time.sleep(0.3)
        assert _count(counter) == still, "it counts on while stopped"
        screen.type(b"echo hi-$((40+2))\n")
        screen.wait(b"hi-42")
        screen.type(b"fg\n")
        _counting(counter, screen)
        assert _state(pid) != "T"
        assert shell.poll() is None

        os.kill(pid, signal.SIGKILL)          # it ends: the terminal is B's again
        screen.wait(b"$ ")
        size = fcntl.ioctl(master_b, termios.TIOCGWINSZ, bytes(8))
        assert struct.unpack("HH", size[:4]) == (24, 80)
    finally:
        os.close(slave_b)
        os.close(master_b)
