"""Grab refuses what it cannot do, and whatever goes wrong the source keeps
running exactly as before (ARCHITECTURE.md, "Safety: nothing is lost")."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import read_lines, run_umig, umig_cmd, wait_for, wait_lines
from umig.errors import Exit


def state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def tracer(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return -1


def assert_still_counting(out: Path, pid: int) -> None:
    """The source runs on, untraced, not stopped, and keeps counting."""
    n = len(read_lines(out))
    wait_lines(out, n + 5, timeout=10)
    assert state(pid) in ("S", "R"), state(pid)
    assert tracer(pid) == 0
    nums = [int(x) for x in read_lines(out)]
    assert nums == list(range(len(nums)))


def test_no_such_pid(procs):
    """GIVEN a pid nobody has WHEN grabbed THEN one line says so, exit NO_PROCESS."""
    r = run_umig("grab", "-o", "/dev/null", "4000000")
    assert r.returncode == Exit.NO_PROCESS
    assert r.stderr.decode().strip() == "umig: no process 4000000"


def test_zombie_is_refused(procs):
    """GIVEN a child that exited and was not reaped WHEN grabbed THEN refused."""
    z = procs.start(["true"])
    wait_for(lambda: state(z.pid) == "Z", what="a zombie")
    r = run_umig("grab", "-o", "/dev/null", str(z.pid))
    assert r.returncode == Exit.REFUSED
    assert f"process {z.pid} (true) is a zombie" in r.stderr.decode()


def test_kernel_thread_is_refused():
    """GIVEN kthreadd (pid 2) WHEN grabbed THEN refused as a kernel thread."""
    r = run_umig("grab", "-o", "/dev/null", "2")
    assert r.returncode == Exit.REFUSED
    assert "is a kernel thread" in r.stderr.decode()


def test_umig_refuses_itself():
    """GIVEN umig asked to grab its own pid WHEN run THEN refused."""
    r = subprocess.run(["sh", "-c", f"exec {' '.join(umig_cmd())} grab -o /dev/null $$"],
                       capture_output=True, timeout=30)
    assert r.returncode == Exit.REFUSED
    assert "is this umig; umig cannot grab itself" in r.stderr.decode()


def test_image_to_a_terminal_is_refused(counter):
    """GIVEN stdout is a terminal WHEN grab writes the image there THEN refused
    before the process is touched."""
    p, out = counter()
    master, slave = os.openpty()
    try:
        r = subprocess.run(umig_cmd("grab", str(p.pid)), stdout=slave, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, timeout=30)
    finally:
        os.close(master)
        os.close(slave)
    assert r.returncode == Exit.TERMINAL
    assert "refusing to write an image to a terminal" in r.stderr.decode()
    assert_still_counting(out, p.pid)


def test_unsupported_fd_is_refused_by_name_and_source_runs(victim, procs, tmp_path):
    """GIVEN a counter that holds a unix socket
    WHEN grabbed THEN refused naming the fd and its kind; the counter runs on."""
    out = tmp_path / "out"
    a, b = socket.socketpair()
    fd = a.fileno()
    p = procs.start([victim("counter"), "20000"], stdout=out.open("w"), pass_fds=(fd,))
    a.close()
    try:
        wait_lines(out, 3)
        r = run_umig("grab", "-o", str(tmp_path / "img"), str(p.pid))
        assert r.returncode == Exit.REFUSED, r.stderr
        msg = r.stderr.decode()
        assert f"process {p.pid} fd {fd} is a socket" in msg, msg
        assert not (tmp_path / "img").exists()
        assert_still_counting(out, p.pid)
    finally:
        b.close()


def test_pipe_to_outside_is_refused_by_name_and_source_runs(victim, procs, tmp_path):
    """GIVEN a counter holding at fd > 2 the read end of a pipe whose write
    end only the test holds
    WHEN grabbed THEN refused naming the fd, the pipe and the way out
    (--tree, or close it); the counter runs on."""
    out = tmp_path / "out"
    r_end, w_end = os.pipe()
    os.write(w_end, b"queued")
    p = procs.start([victim("counter"), "20000"], stdout=out.open("w"), pass_fds=(r_end,))
    os.close(r_end)
    try:
        wait_lines(out, 3)
        r = run_umig("grab", "-o", str(tmp_path / "img"), str(p.pid))
        assert r.returncode == Exit.REFUSED, r.stderr
        msg = r.stderr.decode()
        ino = os.fstat(w_end).st_ino
        assert f"process {p.pid} fd {r_end} is the read end of pipe:[{ino}], whose other " \
               f"end is held outside the grabbed process" in msg, msg
        assert "--tree" in msg
        assert not (tmp_path / "img").exists()
        assert_still_counting(out, p.pid)
        assert os.read(os.open(f"/proc/{p.pid}/fd/{r_end}", os.O_RDONLY | os.O_NONBLOCK),
                       64) == b"queued"         # nothing consumed
    finally:
        os.close(w_end)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a 1 MiB tmpfs needs root")
def test_disk_full_leaves_source_running(counter, tmp_path):
    """GIVEN a 1 MiB tmpfs and a process whose image needs 8 MiB
    WHEN grabbed into it THEN ENOSPC is reported (exit IO), no partial image
    is left, and the source keeps counting."""
    p, out = counter(8)
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        r = run_umig("grab", "-o", str(mnt / "img"), str(p.pid))
        assert r.returncode == Exit.IO, r.stderr
        assert "no space left on device" in r.stderr.decode()
        assert not (mnt / "img").exists()
        assert_still_counting(out, p.pid)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_reader_going_away_leaves_source_running(counter, procs):
    """GIVEN `umig grab PID | head -c 1000`
    WHEN head exits after 1000 bytes THEN grab fails with a broken pipe
    (exit IO) and the source keeps counting."""
    p, out = counter(8)
    g = procs.start(umig_cmd("grab", str(p.pid)), stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE)
    assert len(g.stdout.read(1000)) == 1000
    g.stdout.close()
    assert g.wait(timeout=30) == Exit.IO
    assert "broken pipe" in g.stderr.read().decode()
    assert_still_counting(out, p.pid)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_umig_mid_grab_leaves_source_running(counter, procs, sig):
    """GIVEN a grab blocked writing a 64 MiB image into a pipe nobody reads
    WHEN umig gets SIGTERM (or SIGINT) THEN it stops, says so (exit
    INTERRUPTED), and the source keeps counting, untraced."""
    p, out = counter(64)
    r, w = os.pipe()
    try:
        g = procs.start(umig_cmd("grab", str(p.pid)), stdout=w, stderr=subprocess.PIPE)
        os.close(w)
        w = -1
        wait_for(lambda: tracer(p.pid) == g.pid, what="grab to seize the counter")
        time.sleep(0.3)                 # now blocked on the full pipe
        g.send_signal(sig)
        assert g.wait(timeout=30) == Exit.INTERRUPTED
        msg = g.stderr.read().decode()
        assert f"process {p.pid} was left running as it was" in msg, msg
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    assert_still_counting(out, p.pid)


def test_tracee_killed_mid_grab(counter, procs, tmp_path):
    """GIVEN a grab in progress WHEN the source is killed by someone else
    THEN grab says the process went away (exit NO_PROCESS) and leaves no
    image."""
    p, out = counter(64)
    r, w = os.pipe()
    try:
        g = procs.start(umig_cmd("grab", str(p.pid)), stdout=w, stderr=subprocess.PIPE)
        os.close(w)
        w = -1
        wait_for(lambda: tracer(p.pid) == g.pid, what="grab to seize the counter")
        time.sleep(0.2)
        p.kill()
        drain = threading.Thread(target=lambda: [None for _ in iter(lambda: os.read(r, 1 << 16), b"")])
        drain.start()
        code = g.wait(timeout=30)
        drain.join(timeout=30)
        msg = g.stderr.read().decode()
        assert code == Exit.NO_PROCESS, msg
        assert f"process {p.pid} killed by SIGKILL while umig grabbed it; no image was " \
               f"written" in msg
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


KINDS_REFUSED = {
    "netlink": ("import socket\ns = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)",
                "a netlink socket"),
    "pidfd": ("import os\ns = os.pidfd_open(os.getpid())", "a pidfd (anon_inode:[pidfd])"),
    "fanotify": ("import ctypes\ns = ctypes.CDLL(None).fanotify_init(0, 0)\nassert s == 3, s",
                 "a fanotify group (anon_inode:[fanotify])"),
    "io_uring": ("import ctypes\nparams = ctypes.create_string_buffer(120)\n"
                 "s = ctypes.CDLL(None).syscall(425, 4, params)\nassert s == 3, s",
                 "an io_uring instance (anon_inode:[io_uring])"),
    # a software counter (PERF_TYPE_SOFTWARE, cpu clock) of the process itself
    "perf": ("import ctypes, struct\n"
             "attr = ctypes.create_string_buffer(struct.pack('<IIQ', 1, 128, 0) + bytes(112))\n"
             "s = ctypes.CDLL(None).syscall(298, attr, 0, -1, -1, 0)\nassert s == 3, s",
             "a perf event (anon_inode:[perf_event])"),
    # BPF_MAP_CREATE of a one-entry array
    "bpf": ("import ctypes, struct\n"
            "attr = ctypes.create_string_buffer(struct.pack('<IIII', 2, 4, 4, 1) + bytes(112))\n"
            "s = ctypes.CDLL(None).syscall(321, 0, attr, 128)\nassert s == 3, s",
            "a BPF map (anon_inode:bpf-map)"),
    "packet": ("import socket\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)",
               "a packet socket"),
    # FIONREAD fails on it (EOPNOTSUPP): the family is still what is refused
    "vsock": ("import socket\ns = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)",
              "a vsock socket"),
    "userfaultfd": ("import ctypes, os\ns = ctypes.CDLL(None).syscall(323, os.O_CLOEXEC)\n"
                    "assert s == 3, s", "a userfaultfd (anon_inode:[userfaultfd])"),
    "device": ("import os\ns = os.open('/dev/kmsg', os.O_RDONLY)", "device /dev/kmsg (1:11)"),
}


@pytest.mark.parametrize("kind", sorted(KINDS_REFUSED))
def test_fd_kinds_umig_cannot_move_are_refused_by_name(procs, tmp_path, kind):
    """GIVEN python3 holding a netlink, packet or vsock socket, a pidfd, a fanotify
    group, an io_uring, a perf event, a BPF map, a userfaultfd or a device
    umig does not know (/dev/kmsg)
    WHEN grabbed THEN refused naming the fd and what it is; it runs on."""
    setup, name = KINDS_REFUSED[kind]
    code = f"{setup}\nimport time\nprint('ready', flush=True)\ntime.sleep(60)"
    p = procs.start([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    r = run_umig("grab", "-o", str(tmp_path / "img"), str(p.pid))
    assert r.returncode == Exit.REFUSED, r.stderr.decode()
    assert f"process {p.pid} fd 3 is " in r.stderr.decode() and name in r.stderr.decode(), \
        r.stderr.decode()
    assert p.poll() is None and tracer(p.pid) == 0


LOST_IF_MOVED = {
    "udp": ("u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "u.bind(('127.0.0.1', 0))\nu.sendto(b'unread', u.getsockname())",
            "a UDP socket with datagrams queued", "let the program read them first"),
    "listener": ("s = socket.socket(socket.AF_INET6)\ns.bind(('::1', 0))\ns.listen(4)\n"
                 "c = socket.create_connection(('::1', s.getsockname()[1]))\n"
                 "os.dup2(s.fileno(), 3)",
                 "a TCP listener on ::1:", "once they are accepted"),
}


@pytest.mark.parametrize("kind", sorted(LOST_IF_MOVED))
def test_sockets_whose_queue_would_be_lost_are_refused_by_name(procs, tmp_path, kind):
    """GIVEN python3 holding a bound UDP socket with a datagram it has not
    read, or an IPv6 TCP listener with a connection it has not accepted
    WHEN grabbed THEN refused (exit 67) naming fd 3, its address and what
    would be lost; it runs on, untraced."""
    setup, what, hint = LOST_IF_MOVED[kind]
    code = f"import os, socket, time\n{setup}\nprint('ready', flush=True)\ntime.sleep(60)"
    p = procs.start([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    r = run_umig("grab", "-o", str(tmp_path / "img"), str(p.pid))
    msg = r.stderr.decode()
    assert r.returncode == Exit.REFUSED, msg
    assert f"process {p.pid} fd 3 is a socket" in msg and what in msg and hint in msg, msg
    assert p.poll() is None and tracer(p.pid) == 0


@pytest.mark.parametrize("how", ["socketpair", "connected"])
def test_unix_socket_connected_outside_is_refused_by_name(procs, tmp_path, how):
    """GIVEN python3 holding a unix stream socket whose peer this test holds
    (one end of a socketpair it inherited, or a connection to the test's
    listener)
    WHEN grabbed THEN refused (exit 67) naming its fd, the socket and who
    holds the other end; the source is left running, untraced."""
    import socket
    with socket.socket(socket.AF_UNIX) as lsn:
        lsn.bind(str(tmp_path / "sock"))
        lsn.listen(1)
        ours = None
        if how == "socketpair":
            ours, theirs = socket.socketpair()
            code = (f"import os, time\nos.dup2({theirs.fileno()}, 5)\nos.close({theirs.fileno()})\n"
                    f"print('ready', flush=True)\ntime.sleep(60)")
            p = procs.start([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            pass_fds=(theirs.fileno(),))
            theirs.close()
        else:
            code = (f"import os, socket, time\nc = socket.socket(socket.AF_UNIX)\n"
                    f"c.connect({str(tmp_path / 'sock')!r})\nos.dup2(c.fileno(), 5)\nc.close()\n"
                    f"print('ready', flush=True)\ntime.sleep(60)")
            p = procs.start([sys.executable, "-c", code], stdout=subprocess.PIPE)
        assert p.stdout.readline() == b"ready\n"
        if how == "connected":
            ours, _ = lsn.accept()
        with ours:
            r = run_umig("grab", "-o", str(tmp_path / "img"), str(p.pid))
            msg = r.stderr.decode()
            assert r.returncode == Exit.REFUSED, msg
            assert f"process {p.pid} fd 5 is " in msg and "socket" in msg, msg
            assert f"process {os.getpid()} fd {ours.fileno()}" in msg, msg
            assert p.poll() is None and tracer(p.pid) == 0


def test_external_pipe_watched_by_epoll_is_refused_even_with_devnull(procs, tmp_path):
    """GIVEN python3 watching with epoll the read end (fd 5) of a pipe whose
    write end this test holds
    WHEN grabbed with --external-pipes=devnull
    THEN refused (exit 67): /dev/null cannot be watched by epoll, so the
    image could never be resumed; the process runs on, untraced."""
    r5, w5 = os.pipe()
    code = ("import os, select, time\n"
            f"os.dup2({r5}, 5); os.close({r5})\n"
            "ep = select.epoll(); ep.register(5, select.EPOLLIN)\n"
            "print('ready', flush=True)\ntime.sleep(60)\n")
    try:
        p = procs.start([sys.executable, "-c", code], stdout=subprocess.PIPE, pass_fds=(r5,))
        os.close(r5)
        assert p.stdout.readline() == b"ready\n"
        r = run_umig("grab", "--external-pipes=devnull", "-o", str(tmp_path / "img"),
                     str(p.pid))
        msg = r.stderr.decode()
        assert r.returncode == Exit.REFUSED, msg
        assert f"process {p.pid} fd 5 (pipe:[" in msg and "cannot be watched" in msg, msg
        assert not (tmp_path / "img").exists()
        assert p.poll() is None and tracer(p.pid) == 0
    finally:
        os.close(w5)


@pytest.mark.parametrize("kind", ["stream", "dgram"])
def test_fds_in_flight_on_a_socketpair_are_refused_by_name(procs, tmp_path, kind):
    """GIVEN python3 holding both ends of a unix socketpair, with a message
    carrying an fd (SCM_RIGHTS) sent on one end and not yet received
    WHEN grabbed THEN refused (exit 67) naming the fd that has them in flight
    and saying what to do; the message is still there (peeking did not take
    it), and the process runs on, untraced."""
    code = ("import os, signal, socket, time\n"
            f"a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_{kind.upper()})\n"
            "r, w = os.pipe()\n"
            "socket.send_fds(a, [b'x'], [w])\n"
            "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])\n"
            "print('ready', b.fileno(), flush=True)\n"
            "signal.sigwait([signal.SIGUSR1])\n"
            "msg, fds, _, _ = socket.recv_fds(b, 10, 4)\n"
            "print('got', msg.decode(), len(fds), flush=True)\n")
    p = procs.start([sys.executable, "-c", code], stdout=subprocess.PIPE)
    ready = p.stdout.readline().split()
    assert ready[0] == b"ready"
    r = run_umig("grab", "-o", str(tmp_path / "img"), str(p.pid))
    msg = r.stderr.decode()
    assert r.returncode == Exit.REFUSED, msg
    assert f"process {p.pid} fd {int(ready[1])} is a socket" in msg, msg
    assert "descriptors or credentials in flight" in msg and "read them first" in msg, msg
    assert not (tmp_path / "img").exists()
    assert p.poll() is None and tracer(p.pid) == 0
    p.send_signal(signal.SIGUSR1)
    assert p.stdout.readline() == b"got x 1\n"
