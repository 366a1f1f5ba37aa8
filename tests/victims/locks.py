"""File locks across a grab: flock (exclusive) on one fd of DIR/locked, a
POSIX write lock on bytes 10-19 through a second fd, an OFD read lock from
byte 100 to the end through a third.  Prints "ready"; then sleeps (the test
checks the locks from outside)."""
import fcntl
import os
import struct
import sys
import time

path = os.path.join(sys.argv[1], "locked")
a = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
b = os.open(path, os.O_RDWR)
c = os.open(path, os.O_RDWR)
fcntl.flock(a, fcntl.LOCK_EX)
fcntl.lockf(b, fcntl.LOCK_EX, 10, 10)
fcntl.fcntl(c, 37, struct.pack("hhqqi", fcntl.F_RDLCK, 0, 100, 0, 0))     # F_OFD_SETLK
print("ready", flush=True)
time.sleep(120)
