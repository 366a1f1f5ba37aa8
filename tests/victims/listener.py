"""A TCP listener (SO_REUSEADDR, TCP_NODELAY) blocked in accept(), a
bound UDP socket, both on 127.0.0.1, and a UDP socket bound and connected
to the bound one.  Prints "ready TCP_PORT UDP_PORT"; serves one TCP client
("pong " + its line) and one datagram ("upong " + it), checks its options
are still set and that the connected socket still reaches the bound one
from its own port (and gets only the bound one's datagrams): PASS or
FAIL."""
import socket
import sys

tcp = socket.socket()
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
tcp.bind(("127.0.0.1", 0))
tcp.listen(8)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 0))
conn_udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
conn_udp.bind(("127.0.0.1", 0))
conn_udp.connect(udp.getsockname())
print("ready", tcp.getsockname()[1], udp.getsockname()[1], flush=True)
conn, _ = tcp.accept()
conn.sendall(b"pong " + conn.recv(100))
data, addr = udp.recvfrom(100)
udp.sendto(b"upong " + data, addr)
if not tcp.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) or \
        not tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY):
    print("FAIL options lost", flush=True)
    sys.exit(1)
conn_udp.send(b"to the server")
data, addr = udp.recvfrom(100)
if (data, addr) != (b"to the server", conn_udp.getsockname()):
    print(f"FAIL the connected UDP socket sent {data!r} from {addr}", flush=True)
    sys.exit(1)
udp.sendto(b"back", addr)
conn_udp.settimeout(5)
if conn_udp.recv(100) != b"back":
    print("FAIL the connected UDP socket got no answer", flush=True)
    sys.exit(1)
print("PASS", flush=True)
