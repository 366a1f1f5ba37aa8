"""Established TCP connections (`grab --tcp-established`): taken with
TCP_REPAIR, behind a network lock, so that the peer sees a delay, never a
reset.

Grab, with the process frozen, per connection: lock (an nftables table of
ours drops the connection's packets both ways, in the process's network
namespace), repair mode on our duplicate of the socket (pidfd_getfd), then
read the sequence numbers, both queues, window, MSS, window scale, SACK and
timestamps.  A socket in repair mode still acknowledges what arrives (it
only sends nothing of its own accord), hence the lock; closing it in repair
mode sends no FIN or RST, so killing the process is silent.  The lock stays
after the kill, until `umig resume` has the connection again.  A grab that
fails, or leaves the process running, takes repair mode off and unlocks.

Resume: a new socket in repair mode gets the sequence numbers, is bound and
"connected" (nothing is sent), gets the options, its queues refilled and the
window; the process gets it still in repair mode, and only when it is let
go does umig unlock and take repair mode off.  If the resume fails, the new
socket closes in repair mode, silently, and the lock stays for another try.

Kernel behaviour this relies on: docs/kernel-findings.md, "TCP_REPAIR".
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import subprocess
import time

from .errors import EnvironmentProblem, Refused, UmigError

SOL_TCP = 6
TCP_MAXSEG, TCP_INFO, TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ = 2, 11, 19, 20, 21
TCP_REPAIR_OPTIONS, TCP_TIMESTAMP, TCP_REPAIR_WINDOW = 22, 24, 29
TCP_RECV_QUEUE, TCP_SEND_QUEUE = 1, 2
TCPOPT_MSS, TCPOPT_WINDOW, TCPOPT_SACK_PERM, TCPOPT_TIMESTAMP = 2, 3, 4, 8
TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK, TCPI_OPT_WSCALE = 1, 2, 4
SIOCINQ, SIOCOUTQ, SIOCOUTQNSD = 0x541B, 0x5411, 0x894B
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
UNSENT_WAIT_S = 10
REPAIR_WINDOW = struct.Struct("<5I")    # snd_wl1 snd_wnd max_window rcv_wnd rcv_wup
MAX_USER_MSS = 32767
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1",
              5: "FIN_WAIT2", 6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT",
              9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}
TABLE_PREFIX = "umig_lock_"


def _int(s: socket.socket, opt: int) -> int:
    return s.getsockopt(SOL_TCP, opt)


def _ioctl(s: socket.socket, req: int) -> int:
    return struct.unpack("i", fcntl.ioctl(s.fileno(), req, b"\0" * 4))[0]


def _where(addr) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connection_name(st: dict) -> str:
    return f"{_where(st['bound'])} -> {_where(st['peer'])}"


# ---- the lock: an nftables table of ours dropping the connections' packets

def _nft(script: str, netns_of: int | None = None) -> subprocess.CompletedProcess:
    nft = shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft")
                                       if os.path.exists(p)), None)
    if nft is None:
        raise EnvironmentProblem("moving established TCP connections needs nft (nftables) to "
                                 "hold their packets back meanwhile, and it is not installed",
                                 hint="install it: apt-get install nftables")
    argv = [nft, "-f", "-"]
    if netns_of is not None and os.stat(f"/proc/{netns_of}/ns/net").st_ino != \
            os.stat("/proc/self/ns/net").st_ino:
        argv = ["nsenter", f"--net=/proc/{netns_of}/ns/net"] + argv
    return subprocess.run(argv, input=script.encode(), capture_output=True)


def _rules(table: str, st: dict) -> str:
    (la, lp), (ra, rp) = st["bound"], st["peer"]
    ip = "ip6" if st["family"] == socket.AF_INET6 else "ip"
    if ip == "ip6" and la.startswith("::ffff:") and ra.startswith("::ffff:") and "." in la:
        ip, la, ra = "ip", la[7:], ra[7:]     # IPv4 on a dual-stack socket: IPv4 packets
    return (f"add rule inet {table} in {ip} saddr {ra} tcp sport {rp} {ip} daddr {la} "
            f"tcp dport {lp} drop\n"
            f"add rule inet {table} out {ip} saddr {la} tcp sport {lp} {ip} daddr {ra} "
            f"tcp dport {rp} drop\n")


def lock(table: str, st: dict, pid: int, fd: int, first: bool) -> None:
    """Drop the connection's packets both ways (in pid's network namespace)."""
    script = ""
    if first:
        script = (f"add table inet {table}\n"
                  f"add chain inet {table} in {{ type filter hook input priority -300; }}\n"
                  f"add chain inet {table} out {{ type filter hook output priority -300; }}\n")
    r = _nft(script + _rules(table, st), netns_of=pid)
    if r.returncode:
        why = r.stderr.decode(errors="replace").strip().splitlines()
        raise EnvironmentProblem(f"process {pid} fd {fd}: cannot hold back the packets of TCP "
                                 f"connection {connection_name(st)} with nft: "
                                 f"{why[0] if why else r.returncode}", pid=pid, fd=fd,
                                 hint="moving established connections needs CAP_NET_ADMIN "
                                      "(run umig as root)")


def unlock(table: str, netns_of: int | None = None) -> bool:
    """Remove our lock table; False if there was none here (the lock was
    made on another host, or already removed) or nft is missing: never
    raises, it runs on paths that must go on."""
    try:
        return _nft(f"delete table inet {table}\n", netns_of).returncode == 0
    except (UmigError, OSError):
        return False


def new_table(pid: int) -> str:
    return f"{TABLE_PREFIX}{pid}_{time.time_ns() & 0xFFFFFFFFFF:x}"


# ---- grab

class Taken:
    """The connections one grab took: our duplicates in repair mode and the
    lock table, until the grab ends (finish) or fails (release)."""

    def __init__(self):
        self.socks: list[socket.socket] = []
        self.tables: dict[int, str] = {}      # pid -> its lock table

    def take(self, pid: int, fd: int, s: socket.socket, st: dict) -> dict:
        """Lock the connection, put it in repair mode and read its state
        (with s, our duplicate of the process's socket)."""
        info = s.getsockopt(SOL_TCP, TCP_INFO, 104)
        state = info[0]
        if state != 1:
            raise Refused(f"process {pid} fd {fd} is TCP connection {connection_name(st)} in "
                          f"state {TCP_STATES.get(state, state)}; umig moves established "
                          f"connections only", pid=pid, fd=fd,
                          hint="grab it again once the connection is closed or established")
        first = pid not in self.tables
        table = self.tables.get(pid) or new_table(pid)
        lock(table, st, pid, fd, first)
        self.tables[pid] = table          # made: release() removes it
        try:
            s.setsockopt(SOL_TCP, TCP_REPAIR, 1)
        except PermissionError:
            raise Refused(f"process {pid} fd {fd}: TCP connection {connection_name(st)} cannot "
                          f"be put in repair mode (it needs CAP_NET_ADMIN)", pid=pid, fd=fd,
                          hint="run umig as root, or close the connection") from None
        self.socks.append(s)
        try:
            return self._read(s, st, table)
        except OSError as e:
            raise UmigError(f"process {pid} fd {fd}: reading TCP connection "
                            f"{connection_name(st)} in repair mode failed: {e.strerror}",
                            pid=pid, fd=fd) from None

    @staticmethod
    def _read(s: socket.socket, st: dict, table: str) -> dict:
        info = s.getsockopt(SOL_TCP, TCP_INFO, 104)
        options, wscale = info[5], info[6]
        inq, outq, unsent = _ioctl(s, SIOCINQ), _ioctl(s, SIOCOUTQ), _ioctl(s, SIOCOUTQNSD)
        s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
        rcv_nxt = _int(s, TCP_QUEUE_SEQ)
        recvq = s.recv(inq, socket.MSG_PEEK | socket.MSG_DONTWAIT) if inq else b""
        s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        write_seq = _int(s, TCP_QUEUE_SEQ)
        sendq = s.recv(outq, socket.MSG_PEEK | socket.MSG_DONTWAIT) if outq else b""
        if len(recvq) != inq or len(sendq) != outq:
            raise OSError(5, f"peeked {len(recvq)}/{inq} queued bytes to read and "
                             f"{len(sendq)}/{outq} to send")
        return {
            "lock": table,
            "sndbuf": s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
            "rcvbuf": s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            "rcv_seq": (rcv_nxt - inq) & 0xFFFFFFFF, "snd_seq": (write_seq - outq) & 0xFFFFFFFF,
            "recvq": recvq.hex(), "sendq": sendq.hex(), "unsent": unsent,
            "mss": _int(s, TCP_MAXSEG), "timestamp": _int(s, TCP_TIMESTAMP) & 0xFFFFFFFF,
            "sack": 1 if options & TCPI_OPT_SACK else 0,
            "ts": 1 if options & TCPI_OPT_TIMESTAMPS else 0,
            "wscale": [wscale & 0xF, wscale >> 4] if options & TCPI_OPT_WSCALE else None,
            "window": list(REPAIR_WINDOW.unpack(
                s.getsockopt(SOL_TCP, TCP_REPAIR_WINDOW, REPAIR_WINDOW.size)))}

    def finish(self) -> None:
        """The process was killed: our duplicates close in repair mode
        (silently); the lock stays until the resume."""
        for s in self.socks:
            s.close()
        self.socks.clear()

    def release(self) -> list[str]:
        """The process goes on here (grab failed, or --leave-running): repair
        mode off, lock removed.  Returns what could not be undone."""
        problems = []
        for s in self.socks:
            try:
                s.setsockopt(SOL_TCP, TCP_REPAIR, 0)
            except OSError as e:
                problems.append(f"repair mode stays on for a socket: {e.strerror}")
            s.close()
        self.socks.clear()
        for pid, table in self.tables.items():
            if not unlock(table, pid):
                problems.append(f"could not remove nft table inet {table}")
        self.tables.clear()
        return problems


# ---- resume

def restore(st: dict, fd: int) -> tuple[socket.socket, bytes]:
    """A socket holding the connection again, still in repair mode; returns
    it and the bytes the program had written but TCP had not sent yet (sent
    once repair mode is off)."""
    from .fdtable import INET_OPTIONS
    r = st["tcp"]
    s = socket.socket(st["family"], socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    step = "repair mode"
    try:
        for key, level, opt in INET_OPTIONS:  # first: SO_REUSEADDR would undo the
            if st.get(key):                   # forced reuse repair mode gives bind
                s.setsockopt(level, opt, st[key])
        # the buffer sizes first (as set or autotuned): the queues must fit
        # again, and the send queue is filled blocking in repair mode
        for key, opt in (("sndbuf", SO_SNDBUFFORCE), ("rcvbuf", SO_RCVBUFFORCE)):
            if r.get(key):
                s.setsockopt(socket.SOL_SOCKET, opt, r[key] // 2)   # the kernel doubles it
        s.setsockopt(SOL_TCP, TCP_REPAIR, 1)
        step = "its sequence numbers"
        s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
        s.setsockopt(SOL_TCP, TCP_QUEUE_SEQ, _u32(r["rcv_seq"]))
        s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        s.setsockopt(SOL_TCP, TCP_QUEUE_SEQ, _u32(r["snd_seq"]))
        # the MSS before connect: connect computes the segment size from it
        # (set only by TCP_REPAIR_OPTIONS, it would stay at the default 536);
        # TCP_MAXSEG takes at most 32767 (loopback's is 65495)
        s.setsockopt(SOL_TCP, TCP_MAXSEG, min(r["mss"], MAX_USER_MSS))
        step = "its addresses"
        s.bind(tuple(st["bound"]))
        s.connect(tuple(st["peer"]))
        step = "its TCP options"
        opts = [(TCPOPT_MSS, r["mss"])]
        if r["wscale"]:
            opts.append((TCPOPT_WINDOW, r["wscale"][0] | r["wscale"][1] << 16))
        if r["sack"]:
            opts.append((TCPOPT_SACK_PERM, 0))
        if r["ts"]:
            opts.append((TCPOPT_TIMESTAMP, 0))
        s.setsockopt(SOL_TCP, TCP_REPAIR_OPTIONS, b"".join(struct.pack("<II", *o)
                                                           for o in opts))
        if r["ts"]:
            s.setsockopt(SOL_TCP, TCP_TIMESTAMP, _u32(r["timestamp"]))
        step = "its queues"
        sendq = bytes.fromhex(r["sendq"])
        sent = len(sendq) - r["unsent"]
        s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
        _fill(s, bytes.fromhex(r["recvq"]))
        s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        _fill(s, sendq[:sent])
        step = "its window"
        s.setsockopt(SOL_TCP, TCP_REPAIR_WINDOW, REPAIR_WINDOW.pack(*r["window"]))
    except OSError as e:
        s.close()
        hint = ("this host needs the connection's local address"
                if step == "its addresses" else "run umig resume as root (CAP_NET_ADMIN)"
                if isinstance(e, PermissionError) else None)
        raise EnvironmentProblem(f"fd {fd}: cannot restore TCP connection "
                                 f"{connection_name(st)} ({step}): {e.strerror}", fd=fd,
                                 hint=hint) from None
    return s, sendq[sent:]


def _u32(v: int) -> bytes:
    return struct.pack("<I", v & 0xFFFFFFFF)


def _fill(s: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[s.send(view):]


def go(socks: list[tuple[socket.socket, bytes]], tables: set[str]) -> list[str]:
    """The process is let go: unlock, repair mode off, unsent bytes queued.
    Returns what went wrong (the process runs anyway)."""
    import select
    problems = []
    for table in tables:
        unlock(table)       # none here when the image comes from another host
    for s, unsent in socks:
        try:
            s.setsockopt(SOL_TCP, TCP_REPAIR, 0)
            # the description's O_NONBLOCK is the program's: poll and send
            # without blocking, until the peer has made room
            view = memoryview(unsent)
            deadline = time.monotonic() + UNSENT_WAIT_S
            while view:
                try:
                    view = view[s.send(view, socket.MSG_DONTWAIT):]
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise OSError(11, f"{len(view)} bytes the program wrote could not "
                                          f"be queued again in {UNSENT_WAIT_S} s") from None
                    select.select([], [s], [], min(left, 0.5))
        except OSError as e:
            problems.append(f"TCP connection {_where(s.getsockname())}: {e.strerror}")
        s.close()
    return problems
