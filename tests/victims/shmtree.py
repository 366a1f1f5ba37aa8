"""POSIX shared memory in /dev/shm between a parent and its child: the
child answers requests in the shared page (byte 0: 1 = request, 2 =
answered; byte 1: the answer, one more than byte 2).  Prints "ready CHILD"
after one round; on SIGUSR1 makes another round: PASS or FAIL why."""
import os
import sys
import time
from multiprocessing import shared_memory

import usr1

shm = shared_memory.SharedMemory(name=sys.argv[1], create=True, size=4096)
buf = shm.buf
child = os.fork()
if child == 0:
    while True:
        if buf[0] == 1:
            buf[1] = buf[2] + 1
            buf[0] = 2
        time.sleep(0.005)


def ask(n: int) -> bool:
    buf[2] = n
    buf[0] = 1
    deadline = time.monotonic() + 10
    while buf[0] != 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    return buf[0] == 2 and buf[1] == n + 1


if not ask(10):
    print("FAIL before", flush=True)
    sys.exit(1)
wait = usr1.arm()
print("ready", child, flush=True)
wait()
print("PASS" if ask(41) else f"FAIL after: {bytes(buf[:3])!r}", flush=True)
