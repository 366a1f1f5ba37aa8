"""Unix sockets bound to names: a stream listener at DIR/sock (umask 007)
blocked in accept(), a listener in the abstract namespace, and an
unconnected datagram socket at DIR/dgram.  Prints "ready ABSTRACT_NAME";
serves one client on each listener ("pong " + its line) and answers one
datagram, then prints PASS."""
import os
import socket
import sys

d = sys.argv[1]
abstract = f"\0umig-test-{os.getpid()}"
os.umask(0o007)
path_l = socket.socket(socket.AF_UNIX)
path_l.bind(os.path.join(d, "sock"))
path_l.listen(4)
abs_l = socket.socket(socket.AF_UNIX)
abs_l.bind(abstract)
abs_l.listen(4)
dg = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
dg.bind(os.path.join(d, "dgram"))
print("ready", abstract[1:], flush=True)
for lsn in (path_l, abs_l):
    conn, _ = lsn.accept()
    conn.sendall(b"pong " + conn.recv(100))
    conn.close()
data, addr = dg.recvfrom(100)
dg.sendto(b"dpong " + data, addr)
print("PASS", flush=True)
