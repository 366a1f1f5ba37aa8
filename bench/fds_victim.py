"""The victim of bench/fds.py: holds N fds, a mix like a busy server's —
40% regular files (opened on 100 files), 30% pipe ends (both ends of each
pipe), 20% unix socketpair ends, 10% UDP sockets — prints "ready N", and on
SIGUSR1 uses a sample of each kind (reads the files at their offsets, sends
through pipes and socketpairs, sends a datagram to itself) and prints PASS
or FAIL."""
import os
import resource
import signal
import socket
import sys
import time

n, where = int(sys.argv[1]), sys.argv[2]
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 100, n + 100))
paths = [os.path.join(where, f"f{i}") for i in range(100)]
for i, p in enumerate(paths):
    with open(p, "wb") as f:
        f.write(bytes([i]) * 4096)
files = [os.open(paths[i % 100], os.O_RDONLY) for i in range(n * 4 // 10)]
for i, fd in enumerate(files):
    os.lseek(fd, i % 4096, 0)
pipes = [os.pipe() for _ in range(n * 3 // 20)]
pairs = [socket.socketpair() for _ in range(n // 10)]
udp = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n // 10)]
udp[0].bind(("127.0.0.1", 0))
go = False


def on_usr1(*_):
    global go
    go = True


signal.signal(signal.SIGUSR1, on_usr1)
print("ready", len(os.listdir("/proc/self/fd")), flush=True)
while not go:
    time.sleep(0.01)
bad = []
for i in range(0, len(files), 97):
    want = bytes([i % 100]) * min(8, 4096 - i % 4096)
    if os.read(files[i], 8) != want:
        bad.append(f"file fd {files[i]}")
for r, w in pipes[::50]:
    os.write(w, b"ping")
    if os.read(r, 4) != b"ping":
        bad.append(f"pipe fd {r}")
for a, b in pairs[::50]:
    a.send(b"pong")
    if b.recv(4) != b"pong":
        bad.append(f"socketpair fd {a.fileno()}")
udp[0].sendto(b"dgram", udp[0].getsockname())
if udp[0].recv(10) != b"dgram":
    bad.append("udp")
print("FAIL " + ", ".join(bad[:5]) if bad else "PASS", flush=True)
time.sleep(3600)
