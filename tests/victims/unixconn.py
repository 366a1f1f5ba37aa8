"""Unix connections through named listeners inside a tree: python3 listens
on DIR/sock (stream) and on an abstract name (seqpacket); its child
connects to both, queues "hello-from-child" and two messages, and then
answers each line on the stream with "echo:LINE peer:NAME".  The parent
accepts both and prints "ready CHILD"; on SIGUSR1 it checks the queued
bytes and messages, the names of both ends, an echo, and that the
listener still accepts: PASS or FAIL why."""
import os
import socket
import sys
import time

import usr1

path = os.path.join(sys.argv[1], "sock")
abstract = f"\0umig-test-{os.getpid()}"
lst = socket.socket(socket.AF_UNIX)
lst.bind(path)
lst.listen(4)
lst2 = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
lst2.bind(abstract)
lst2.listen(4)
child = os.fork()
if child == 0:
    lst.close()
    lst2.close()
    c = socket.socket(socket.AF_UNIX)
    c.connect(path)
    q = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    q.connect(abstract)
    c.sendall(b"hello-from-child")
    q.send(b"m1")
    q.send(b"second message")
    while True:
        data = c.recv(100)
        if not data:
            os._exit(0)
        c.sendall(b"echo:" + data + b" peer:" + c.getpeername().encode())
conn, _ = lst.accept()
conn2, _ = lst2.accept()
time.sleep(0.2)          # the child has queued its bytes
wait = usr1.arm()
print("ready", child, flush=True)
wait()
bad = []
conn.settimeout(10)
conn2.settimeout(10)
if conn.recv(100) != b"hello-from-child":
    bad.append("stream bytes")
if [conn2.recv(100), conn2.recv(100)] != [b"m1", b"second message"]:
    bad.append("seqpacket messages")
if conn.getsockname() != path or conn2.getsockname() != abstract.encode():
    bad.append(f"names {conn.getsockname()!r} {conn2.getsockname()!r}")
conn.sendall(b"ping")
if conn.recv(200) != f"echo:ping peer:{path}".encode():
    bad.append("echo")
with socket.socket(socket.AF_UNIX) as new:
    new.connect(path)
    extra, _ = lst.accept()
    extra.close()
print("FAIL " + ", ".join(bad) if bad else "PASS", flush=True)
