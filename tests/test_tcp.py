"""Established TCP connections (issue 4, `grab --tcp-established`): moved
with TCP_REPAIR while peers outside keep talking; they see a delay, never
a reset, and no byte is lost or doubled."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_umig, wait_for, wait_lines

VICTIMS = Path(__file__).parent / "victims"


def _locks() -> set[str]:
    r = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return {line.split()[-1] for line in r.stdout.splitlines() if "umig_lock_" in line}


@pytest.fixture
def nft_locks():
    """The umig lock tables made during the test (removed at the end, so a
    failed test leaves no packets dropped)."""
    if os.geteuid() != 0:
        pytest.skip("TCP_REPAIR and nft need root (CAP_NET_ADMIN); this run is not root")
    before = _locks()
    made: set[str] = set()
    yield lambda: _locks() - before
    for table in _locks() - before:
        made.add(table)
        subprocess.run(["nft", "delete", "table", "inet", table])


def _clients(procs, tmp_path, port: int, n: int) -> list:
    out = []
    for i in range(n):
        path = tmp_path / f"client{i}"
        p = procs.start([sys.executable, str(VICTIMS / "echo_client.py"), str(port), "300"],
                        stdout=path.open("w"))
        out.append((p, path))
    for _p, path in out:
        wait_lines(path, 1)
    return out


def _results(clients) -> list[str]:
    for p, _ in clients:
        p.send_signal(signal.SIGUSR1)
    def said(path: Path) -> str | None:
        whole = path.read_text().split("\n")[:-1]      # lines still being written: not yet
        return next((x for x in whole if x.startswith(("PASS", "FAIL"))), None)
    return [wait_for(lambda: said(path), 40, f"client {p.pid} to finish")
            for p, path in clients]


@pytest.mark.parametrize("finish", ["kill", "leave-running"])
def test_epoll_echo_server_keeps_its_clients(procs, tmp_path, nft_locks, finish):
    """GIVEN an epoll TCP echo server (python3) with two clients outside it,
    each sending a numbered byte stream every 5 ms and checking every echo
    WHEN the server is grabbed with --tcp-established while they send, killed
    and resumed (or left running)
    THEN no lock is left, a new client gets its echo, and both clients get
    every byte back once, in order, with no reset: they print PASS."""
    out = tmp_path / "out"
    src = procs.start([sys.executable, str(VICTIMS / "echo_server.py")], stdout=out.open("w"))
    port = int(wait_lines(out, 1)[0].split()[1])
    clients = _clients(procs, tmp_path, port, 2)
    time.sleep(0.3)
    args = ["grab", "--tcp-established", "-o", str(tmp_path / "img"), str(src.pid)]
    if finish == "leave-running":
        args.insert(1, "--leave-running")
    r = run_umig(*args)
    assert r.returncode == 0, r.stderr.decode()
    if finish == "kill":
        assert "2 TCP connection(s) are held back" in r.stderr.decode()
        src.wait(timeout=5)
        assert len(nft_locks()) == 1, "the clients' packets are not held back"
        time.sleep(0.5)              # the clients go on sending into the lock
        r = run_umig("resume", "--detach", str(tmp_path / "img"))
        assert r.returncode == 0, r.stderr.decode()
        assert procs.adopt(int(r.stdout.split()[-1])) == src.pid
    else:
        assert src.poll() is None
    assert not nft_locks(), "the lock outlived the grab or resume"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"hello")
        assert s.recv(100) == b"hello"
    time.sleep(0.3)
    results = _results(clients)
    assert all(x.startswith("PASS") for x in results), results
    sent = [int(x.split()[-1]) for x in results]
    assert min(sent) > 300 * 20, f"too little traffic to tell anything: {sent}"


def test_resume_without_the_address_fails_and_keeps_the_lock(procs, tmp_path, nft_locks):
    """GIVEN an image of the echo server with one connection
    WHEN resumed in a network namespace without 127.0.0.1 up
    THEN resume fails naming the connection and its fd, starts nothing, and
    the lock stays; a resume where the address is then works."""
    out = tmp_path / "out"
    src = procs.start([sys.executable, str(VICTIMS / "echo_server.py")], stdout=out.open("w"))
    port = int(wait_lines(out, 1)[0].split()[1])
    clients = _clients(procs, tmp_path, port, 1)
    r = run_umig("grab", "--tcp-established", "-o", str(tmp_path / "img"), str(src.pid))
    assert r.returncode == 0, r.stderr.decode()
    src.wait(timeout=5)
    r = subprocess.run(["unshare", "--net", "--"] + _umig("resume", "--detach",
                                                          str(tmp_path / "img")),
                       capture_output=True, timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 72, err
    assert "cannot" in err and f"127.0.0.1:{port} -> 127.0.0.1:" in err, err
    assert len(nft_locks()) == 1
    r = run_umig("resume", "--detach", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr.decode()
    procs.adopt(int(r.stdout.split()[-1]))
    assert not nft_locks()
    results = _results(clients)
    assert all(x.startswith("PASS") for x in results), results


def _umig(*args: str) -> list[str]:
    from conftest import umig_cmd
    return umig_cmd(*args)


BULK = """
import socket, sys
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 0))
s.listen(1)
print("ready", s.getsockname()[1], flush=True)
c, _ = s.accept()
data = bytes((i * 7 + i // 251) % 256 for i in range(1 << 16)) * 64
c.sendall(data)
print("sent", len(data), flush=True)
c.shutdown(socket.SHUT_WR)
import time
time.sleep(60)
"""


def test_dual_stack_connection_with_megabytes_queued(procs, tmp_path, nft_locks):
    """GIVEN python3 on a dual-stack IPv6 socket (::, V6ONLY off) blocked
    sending 4 MiB to an IPv4 client (this test) that reads nothing yet, so
    megabytes wait in its send queue, part of it never sent
    WHEN grabbed with --tcp-established while the client is idle, and
    resumed
    THEN the client reads all 4 MiB, in order, then end of file, and the
    server finishes its sendall (the lock matched the IPv4 packets: no
    reset; the queues fit again: nothing was dropped)."""
    out = tmp_path / "out"
    src = procs.start([sys.executable, "-c", BULK], stdout=out.open("w"))
    port = int(wait_lines(out, 1)[0].split()[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as c:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        time.sleep(0.5)               # the server fills its queues and blocks
        r = run_umig("grab", "--tcp-established", "-o", str(tmp_path / "img"), str(src.pid))
        assert r.returncode == 0, r.stderr.decode()
        src.wait(timeout=5)
        c.send(b"are you there?")     # into the lock: dropped, retransmitted later
        time.sleep(0.5)
        r = run_umig("resume", "--detach", str(tmp_path / "img"))
        assert r.returncode == 0, r.stderr.decode()
        assert "could not be queued" not in r.stderr.decode(), r.stderr.decode()
        procs.adopt(int(r.stdout.split()[-1]))
        want = bytes((i * 7 + i // 251) % 256 for i in range(1 << 16)) * 64
        got = bytearray()
        while True:
            chunk = c.recv(1 << 20)
            if not chunk:
                break
            got += chunk
        assert len(got) == len(want) and got == want, f"{len(got)} of {len(want)} bytes"
    assert wait_lines(out, 2)[1] == f"sent {len(want)}"
