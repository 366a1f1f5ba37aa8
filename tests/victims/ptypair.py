"""A pty pair inside a tree: python3 holds the master of a new pty (30x90)
whose slave is the controlling terminal of its child, sh, reading lines
and answering "got:LINE" and `stty size`.  Prints "ready CHILD" once sh
answers; on SIGUSR1 sends "ping" (expects "got:ping" and "30 90"), then
Ctrl-C, which must kill sh (the pty is its controlling terminal, its group
in the foreground): PASS or FAIL why."""
import fcntl
import os
import select
import signal
import struct
import sys
import termios
import time

import usr1

master, slave = os.openpty()
fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 90, 0, 0))
child = os.fork()
if child == 0:
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for n in (0, 1, 2):
        os.dup2(slave, n)
    os.close(master)
    os.close(slave)
    # a shell started in the background (the test suite, say, from a
    # script's `&`) ignores SIGINT, and sh would keep that: Ctrl-C is the test
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execvp("sh", ["sh", "-c", 'while read l; do echo "got:$l"; stty size; done'])
os.close(slave)
seen = b""


def expect(*wants: bytes, timeout: float = 10) -> bool:
    global seen
    deadline = time.monotonic() + timeout
    while not all(w in seen for w in wants):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([master], [], [], left)[0]:
            return False
        seen += os.read(master, 4096)
    seen = b""
    return True


os.write(master, b"hi\n")
if not expect(b"got:hi", b"30 90"):
    print("FAIL no answer before", flush=True)
    sys.exit(1)
wait = usr1.arm()
print("ready", child, flush=True)
wait()
os.write(master, b"ping\n")
if not expect(b"got:ping", b"30 90"):
    print(f"FAIL no answer after the resume: {seen!r}", flush=True)
    sys.exit(1)
os.write(master, b"\x03")
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    pid, status = os.waitpid(child, os.WNOHANG)
    if pid:
        ok = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGINT
        print("PASS" if ok else f"FAIL sh ended with status {status:#x}", flush=True)
        break
    time.sleep(0.02)
else:
    try:                       # what sh and its terminal look like, for the report
        stat = open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()
        sigs = {k: v.strip() for k, v in (line.split(":", 1) for line in
                open(f"/proc/{child}/status")) if k in ("SigBlk", "SigIgn", "SigCgt",
                                                        "SigPnd", "ShdPnd")}
        fg = struct.unpack("i", fcntl.ioctl(master, termios.TIOCGPGRP, b"\0" * 4))[0]
        why = (f"state {stat[0]} pgrp {stat[2]} sid {stat[3]} tty_nr {stat[4]} tpgid "
               f"{stat[5]}, the terminal's foreground group {fg}, {sigs}")
    except OSError as e:
        why = str(e)
    print(f"FAIL Ctrl-C did not reach sh: {why}", flush=True)
