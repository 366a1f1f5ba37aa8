"""A client of echo_server.py that checks every byte: sends a numbered
byte stream in small pieces (argv[2] bytes every 5 ms) to 127.0.0.1:argv[1]
and compares what comes back with what it sent.  Prints "connected"; on
SIGUSR1 stops sending, waits for the rest of its echoes and prints "PASS
sent N" or "FAIL why"."""
import select
import signal
import socket
import sys
import time

port, piece = int(sys.argv[1]), int(sys.argv[2])
stop = False


def on_usr1(*_):
    global stop
    stop = True


signal.signal(signal.SIGUSR1, on_usr1)


def stream(start: int, n: int) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(start, start + n))


s = socket.create_connection(("127.0.0.1", port))
print("connected", flush=True)
sent = got = 0
deadline = None
while True:
    if not stop:
        s.sendall(stream(sent, piece))
        sent += piece
    elif deadline is None:
        deadline = time.monotonic() + 30
    if stop and got == sent:
        print("PASS sent", sent, flush=True)
        break
    if deadline and time.monotonic() > deadline:
        print(f"FAIL only {got} of {sent} bytes came back", flush=True)
        break
    r, _, _ = select.select([s], [], [], 0.005)
    if r:
        data = s.recv(65536)
        if not data:
            print(f"FAIL connection closed after {got} of {sent} bytes", flush=True)
            break
        if data != stream(got, len(data)):
            print(f"FAIL bytes {got}..{got + len(data)} came back wrong", flush=True)
            break
        got += len(data)
        if got > sent:
            print(f"FAIL {got - sent} bytes more came back than were sent", flush=True)
            break
