"""Datagram and seqpacket socketpairs with messages queued both ways
(an empty one too, for datagrams), message bounds and order to keep.
Prints "ready"; on SIGUSR1 reads them all and checks, then checks both
pairs still carry messages: PASS or FAIL why."""
import socket

import usr1

pairs = {t: socket.socketpair(socket.AF_UNIX, t)
         for t in (socket.SOCK_DGRAM, socket.SOCK_SEQPACKET)}
sent = {}
for t, (a, b) in pairs.items():
    there = [b"first", b"" if t == socket.SOCK_DGRAM else b"-", b"x" * 5000, b"last"]
    back = [b"one", b"two"]
    for m in there:
        a.send(m)
    for m in back:
        b.send(m)
    sent[t] = (there, back)


def drain(s: socket.socket) -> list[bytes]:
    """Every message queued on s, in order (s is left non-blocking)."""
    s.setblocking(False)
    got = []
    try:
        while True:
            got.append(s.recv(65536))
    except BlockingIOError:
        pass
    return got


wait = usr1.arm()
print("ready", flush=True)
wait()
bad = []
for t, (a, b) in pairs.items():
    there, back = sent[t]
    got = drain(b)
    if got != there:
        bad.append(f"{t.name} one way: {[len(m) for m in got]}")
    got = drain(a)
    if got != back:
        bad.append(f"{t.name} back: {[len(m) for m in got]}")
    a.send(b"again")
    if b.recv(100) != b"again":
        bad.append(f"{t.name} after")
print("FAIL " + "; ".join(bad) if bad else "PASS", flush=True)
