"""A program in a terminal in raw mode: puts its terminal (stdin) in raw
mode, notes the settings and window size, writes "ready ROWS COLS" to the
log argv[1] and counts into the file argv[2] every 20 ms.  On SIGUSR1 it
checks that its terminal still has those settings and that size (PASS or
FAIL why, in the log), then puts the terminal back to the settings it
started with ("cooked" in the log), so that Ctrl-Z stops it.  It also holds
/dev/tty open: at the check that fd must show the same raw settings, and
"[via /dev/tty]" written to it must reach the terminal."""
import fcntl
import os
import signal
import struct
import sys
import termios
import time
import tty

log = open(sys.argv[1], "a", buffering=1)
cooked = termios.tcgetattr(0)
tty.setraw(0)
raw = termios.tcgetattr(0)
size = fcntl.ioctl(0, termios.TIOCGWINSZ, bytes(8))
dev_tty = os.open("/dev/tty", os.O_RDWR)
check = False


def on_usr1(*_):
    global check
    check = True


signal.signal(signal.SIGUSR1, on_usr1)
rows, cols = struct.unpack("HH", size[:4])
log.write(f"ready {rows} {cols}\n")
n = 0
while True:
    if check:
        check = False
        now = termios.tcgetattr(0)
        now_size = fcntl.ioctl(0, termios.TIOCGWINSZ, bytes(8))
        if now != raw:
            log.write(f"FAIL settings {now} are not raw {raw}\n")
        elif now_size != size:
            log.write(f"FAIL window {struct.unpack('HH', now_size[:4])}, not {rows}x{cols}\n")
        elif termios.tcgetattr(dev_tty) != raw:
            log.write("FAIL /dev/tty is not the raw terminal\n")
        else:
            os.write(dev_tty, b"[via /dev/tty]")
            log.write("PASS\n")
        termios.tcsetattr(0, termios.TCSADRAIN, cooked)
        log.write("cooked\n")
    n += 1
    with open(sys.argv[2], "w") as f:
        f.write(str(n))
    time.sleep(0.02)
