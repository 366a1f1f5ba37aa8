"""Unix socketpairs across a grab: a stream pair with bytes queued both
ways, an empty datagram pair, a stream pair whose other end was closed
(EOF after its queued bytes), one shut down for writing.  Prints "ready";
on SIGUSR1 checks them all and prints PASS or FAIL."""
import signal
import socket
import sys

a, b = socket.socketpair()
a.sendall(b"queued-1 ")
a.sendall(b"queued-2")
b.sendall(b"back")
c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
e, f = socket.socketpair()
f.sendall(b"last words")
f.close()
g, h = socket.socketpair()
g.shutdown(socket.SHUT_WR)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", flush=True)
signal.sigwait([signal.SIGUSR1])


def check(what, got, want):
    if got != want:
        print(f"FAIL {what}: {got!r} != {want!r}", flush=True)
        sys.exit(1)


check("a to b", b.recv(100), b"queued-1 queued-2")
check("b to a", a.recv(100), b"back")
a.sendall(b"ping")
check("after resume", b.recv(100), b"ping")
c.send(b"dgram")
check("datagram", d.recv(100), b"dgram")
check("before the end", e.recv(100), b"last words")
check("the end", e.recv(100), b"")
check("shut down for writing", h.recv(100), b"")
try:
    g.send(b"x")
    check("writing after SHUT_WR", "sent", "EPIPE")
except BrokenPipeError:
    pass
print("PASS", flush=True)
