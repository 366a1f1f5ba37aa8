"""An epoll-based TCP echo server on 127.0.0.1: prints "ready PORT", then
echoes every byte of every client back to it, in order, for ever.  Its
sockets are non-blocking; bytes a client is not reading yet wait in a
per-client buffer (EPOLLOUT)."""
import select
import socket

lst = socket.socket()
lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("127.0.0.1", 0))
lst.listen(16)
lst.setblocking(False)
ep = select.epoll()
ep.register(lst.fileno(), select.EPOLLIN)
clients: dict[int, tuple[socket.socket, bytearray]] = {}
print("ready", lst.getsockname()[1], flush=True)
while True:
    for fd, ev in ep.poll():
        if fd == lst.fileno():
            c, _ = lst.accept()
            c.setblocking(False)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            clients[c.fileno()] = (c, bytearray())
            ep.register(c.fileno(), select.EPOLLIN)
            continue
        c, pending = clients[fd]
        if ev & select.EPOLLIN:
            try:
                data = c.recv(65536)
            except BlockingIOError:
                data = None
            if data == b"":
                ep.unregister(fd)
                del clients[fd]
                c.close()
                continue
            if data:
                pending += data
        if pending:
            try:
                del pending[:c.send(pending)]
            except BlockingIOError:
                pass
        ep.modify(fd, select.EPOLLIN | (select.EPOLLOUT if pending else 0))
