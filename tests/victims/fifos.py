"""Two FIFOs in DIR (argv[1]): `own` (this process holds both ends, with
"queued-1" in it; its read end opened O_NOFOLLOW) and `shared` (the test holds a write end too; this
process wrote "queued-2" into it).  Prints "ready"; on SIGUSR1 reads
`own` ("queued-1" exactly), then `shared` until "queued-2outside" (the
test writes "outside" after the resume), prints PASS or FAIL."""
import os
import select
import signal
import sys

d = sys.argv[1]
own, shared = os.path.join(d, "own"), os.path.join(d, "shared")
os.mkfifo(own)
os.mkfifo(shared)
# O_NOFOLLOW stays in an fd's flags: resume must not reopen through /proc with it
r1 = os.open(own, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
w1 = os.open(own, os.O_WRONLY)
r2 = os.open(shared, os.O_RDONLY | os.O_NONBLOCK)
w2 = os.open(shared, os.O_WRONLY)
os.write(w1, b"queued-1")
os.write(w2, b"queued-2")
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", flush=True)
signal.sigwait([signal.SIGUSR1])

got = os.read(r1, 100)
if got != b"queued-1":
    print(f"FAIL own: {got!r}", flush=True)
    sys.exit(1)
got = b""
while len(got) < len(b"queued-2outside") and select.select([r2], [], [], 10)[0]:
    got += os.read(r2, 100)
if got != b"queued-2outside":
    print(f"FAIL shared: {got!r}", flush=True)
    sys.exit(1)
print("PASS", flush=True)
