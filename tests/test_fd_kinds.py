"""File descriptor kinds beyond files (issue 4): each is grabbed with its
state and the resumed process uses it."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from conftest import read_lines, run_umig, wait_for, wait_lines
from umig.errors import Exit


def grab_and_resume(procs, tmp_path, src) -> int:
    """Grab src (it is killed) into tmp_path/img and resume it detached;
    returns the resumed pid (tracked by procs)."""
    r = run_umig("grab", "-o", str(tmp_path / "img"), str(src.pid))
    assert r.returncode == 0, r.stderr.decode()
    src.wait(timeout=5)
    r = run_umig("resume", "--detach", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr.decode()
    return procs.adopt(int(r.stdout.split()[-1]))


def moved(procs, tmp_path, argv, *before_go: int) -> int:
    """Start argv (output in tmp_path/out), wait for its "ready", grab it,
    resume it; send it the signals in before_go, then SIGUSR1; returns the
    line it ends with (PASS or FAIL ...)."""
    out = tmp_path / "out"
    src = procs.start(argv, stdout=out.open("w"))
    wait_lines(out, 1, timeout=30)
    pid = grab_and_resume(procs, tmp_path, src)
    for sig in before_go:
        os.kill(pid, sig)
        time.sleep(0.05)
    os.kill(pid, signal.SIGUSR1)
    return wait_for(lambda: next((x for x in read_lines(out) if x.startswith(("PASS", "FAIL"))),
                                 None), 20, "PASS or FAIL")


def test_event_fds_keep_their_state_and_epoll_its_watches(victim, procs, tmp_path):
    """GIVEN eventfds (a counter at 8, a semaphore at 3), timerfds (ticking
    every 100 ms, one fired and unread, one on the wall clock at an absolute
    time), a signalfd for SIGUSR2, epolls watching them (edge-triggered,
    nested) and a thread blocked in epoll_wait
    WHEN grabbed and resumed (then SIGUSR2, to be read through the signalfd)
    THEN the counter reads 8, the semaphore three times 1, the fired timer
    one expiration, the ticking timer ticks, the wall timer fires at its
    date and not before, every epoll reports its fds with their data, the
    signalfd gives SIGUSR2 and the blocked thread wakes with its event:
    the program says PASS."""
    out = tmp_path / "out"
    src = procs.start([victim("eventfds", "-pthread")], stdout=out.open("w"))
    wait_lines(out, 1)
    deadline_ns = int(read_lines(out)[0].split()[1])
    r = run_umig("grab", "-o", str(tmp_path / "img"), str(src.pid))
    assert r.returncode == 0, r.stderr.decode()
    src.wait(timeout=5)
    assert time.time_ns() < deadline_ns, "the wall timer fired before the resume: too slow"
    r = run_umig("resume", "--detach", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr.decode()
    pid = procs.adopt(int(r.stdout.split()[-1]))
    os.kill(pid, signal.SIGUSR2)
    time.sleep(0.05)
    os.kill(pid, signal.SIGUSR1)
    result = wait_for(lambda: next((x for x in read_lines(out) if x.startswith(("PASS", "FAIL"))),
                                   None), 20, "PASS or FAIL")
    assert result == "PASS", read_lines(out)


def test_memfd_keeps_contents_seals_and_its_shared_mapping(victim, procs, tmp_path):
    """GIVEN a memfd with contents, an offset, SHRINK|GROW seals, also mapped
    shared (bytes written through the mapping)
    WHEN grabbed and resumed
    THEN it has its name, offset, contents and seals, growing it fails, and
    the mapping and the fd are still one object (a write through either is
    seen through the other): PASS."""
    assert moved(procs, tmp_path, [victim("memfd")]) == "PASS", read_lines(tmp_path / "out")


def test_file_deleted_while_open_comes_back_unlinked_with_its_bytes(victim, procs, tmp_path):
    """GIVEN a 200 KiB file deleted while open read-write (offset 1000) and
    read-only
    WHEN grabbed and resumed
    THEN both fds are one unlinked file again with every byte, the offset,
    writes through one seen through the other, the read-only one still
    read-only: PASS."""
    assert moved(procs, tmp_path, [victim("deleted"), tmp_path, "204800"]) == "PASS", \
        read_lines(tmp_path / "out")
    assert not (tmp_path / "scratch").exists()


def test_deleted_file_over_the_limit_is_refused_naming_the_option(victim, procs, tmp_path):
    """GIVEN a 2 MiB file deleted while open WHEN grabbed with
    --max-contents-mib 1 THEN refused naming the fd, its size and the option
    that raises the limit; the process runs on."""
    out = tmp_path / "out"
    src = procs.start([victim("deleted"), tmp_path, str(2 << 20)], stdout=out.open("w"))
    wait_lines(out, 1, timeout=30)
    r = run_umig("grab", "--max-contents-mib", "1", "-o", str(tmp_path / "img"), str(src.pid))
    assert r.returncode == Exit.REFUSED, r.stderr.decode()
    msg = r.stderr.decode()
    assert f"process {src.pid} fd 3 is {tmp_path}/scratch (deleted), {2 << 20} bytes" in msg
    assert "umig grab --max-contents-mib 3" in msg
    assert src.poll() is None and not (tmp_path / "img").exists()


def test_socketpairs_keep_queued_bytes_shutdowns_and_ends(procs, tmp_path):
    """GIVEN python3 holding unix socketpairs: a stream pair with bytes
    queued both ways, an empty datagram pair, one whose other end was
    closed after sending, one shut down for writing
    WHEN grabbed and resumed
    THEN each end reads what was queued for it, in order, and the pairs go
    on working; the closed one gives its last bytes then EOF; the shut down
    one still reads EOF and refuses writes: PASS."""
    script = Path(__file__).parent / "victims" / "socketpairs.py"
    assert moved(procs, tmp_path, [sys.executable, script]) == "PASS", \
        read_lines(tmp_path / "out")


def test_tcp_listener_and_udp_socket_keep_address_port_and_options(procs, tmp_path):
    """GIVEN python3 blocked in accept() on a TCP listener (SO_REUSEADDR,
    TCP_NODELAY) and holding a bound UDP socket and a UDP socket connected
    to it
    WHEN grabbed and resumed
    THEN a client connecting to the same port is accepted and served, a
    datagram to the same UDP port is answered, the options are set, and the
    connected socket reaches the bound one from its own port and gets its
    answer: PASS."""
    import socket
    out = tmp_path / "out"
    script = Path(__file__).parent / "victims" / "listener.py"
    src = procs.start([sys.executable, script], stdout=out.open("w"))
    _, tcp_port, udp_port = wait_lines(out, 1)[0].split()
    grab_and_resume(procs, tmp_path, src)
    with socket.create_connection(("127.0.0.1", int(tcp_port)), timeout=10) as c:
        c.sendall(b"ping")
        assert c.recv(100) == b"pong ping"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(10)
        u.sendto(b"hi", ("127.0.0.1", int(udp_port)))
        assert u.recvfrom(100)[0] == b"upong hi"
    assert wait_for(lambda: next((x for x in read_lines(out) if x.startswith(("PASS", "FAIL"))),
                                 None), 20, "PASS or FAIL") == "PASS", read_lines(out)


def test_established_tcp_connection_is_refused_by_name(procs, tmp_path):
    """GIVEN python3 holding an established TCP connection WHEN grabbed THEN
    refused naming the fd and both ends; it runs on."""
    import socket
    with socket.socket() as lsn:
        lsn.bind(("127.0.0.1", 0))
        lsn.listen(1)
        port = lsn.getsockname()[1]
        code = (f"import socket, time\nc = socket.create_connection(('127.0.0.1', {port}))\n"
                f"print('ready', c.fileno(), flush=True)\ntime.sleep(60)")
        out = tmp_path / "out"
        src = procs.start([sys.executable, "-c", code], stdout=out.open("w"))
        fd = int(wait_lines(out, 1)[0].split()[1])
        peer, _ = lsn.accept()
        with peer:
            r = run_umig("grab", "-o", str(tmp_path / "img"), str(src.pid))
            assert r.returncode == Exit.REFUSED, r.stderr.decode()
            msg = r.stderr.decode()
            assert f"process {src.pid} fd {fd} is an established TCP connection 127.0.0.1:" \
                in msg
            assert f"-> 127.0.0.1:{port}" in msg
            assert "--tcp-established" in msg
            assert src.poll() is None


def test_fifos_are_reopened_by_path_with_their_bytes_once(procs, tmp_path):
    """GIVEN python3 holding both ends of FIFO `own` (bytes in it; the read
    end opened O_NOFOLLOW, which stays in its flags) and of
    FIFO `shared`, which this test also holds open for writing (bytes in it)
    WHEN grabbed and resumed
    THEN `own` gives back its bytes (written back: nobody else held it),
    `shared` gives its bytes exactly once (they stayed in the pipe the test
    kept alive) and then what the test writes after the resume: PASS."""
    out = tmp_path / "out"
    script = Path(__file__).parent / "victims" / "fifos.py"
    src = procs.start([sys.executable, script, tmp_path], stdout=out.open("w"))
    wait_lines(out, 1)
    outside = os.open(tmp_path / "shared", os.O_WRONLY | os.O_NONBLOCK)
    try:
        pid = grab_and_resume(procs, tmp_path, src)
        os.kill(pid, signal.SIGUSR1)
        os.write(outside, b"outside")
        assert wait_for(lambda: next((x for x in read_lines(out)
                                      if x.startswith(("PASS", "FAIL"))), None),
                        20, "PASS or FAIL") == "PASS", read_lines(out)
    finally:
        os.close(outside)


def _conflicts(path: Path, start: int, length: int) -> int | None:
    """The pid holding a POSIX lock that a write lock on [start, +length)
    of path would conflict with (F_GETLK), or None."""
    import fcntl
    import struct
    fd = os.open(path, os.O_RDWR)
    try:
        got = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, start,
                                                         length, 0))
        ltype, _, _, _, pid = struct.unpack("hhqqi", got)
        return None if ltype == fcntl.F_UNLCK else pid
    finally:
        os.close(fd)


def _flock_held(path: Path) -> bool:
    import fcntl
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_file_locks_are_taken_again(procs, tmp_path):
    """GIVEN python3 holding an exclusive flock, a POSIX write lock on bytes
    10-19 and an OFD read lock from byte 100 on one file
    WHEN grabbed and resumed
    THEN seen from another process the flock is held again, the POSIX lock
    is held by the resumed process on exactly those bytes, and a write lock
    past byte 100 conflicts (the OFD lock)."""
    import fcntl
    import struct
    out = tmp_path / "out"
    script = Path(__file__).parent / "victims" / "locks.py"
    src = procs.start([sys.executable, script, tmp_path], stdout=out.open("w"))
    wait_lines(out, 1)
    locked = tmp_path / "locked"
    assert _flock_held(locked) and _conflicts(locked, 10, 10) == src.pid
    r = run_umig("grab", "-o", str(tmp_path / "img"), str(src.pid))
    assert r.returncode == 0, r.stderr.decode()
    src.wait(timeout=5)
    assert not _flock_held(locked) and _conflicts(locked, 10, 10) is None
    r = run_umig("resume", "--detach", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr.decode()
    pid = procs.adopt(int(r.stdout.split()[-1]))
    assert _flock_held(locked)
    assert _conflicts(locked, 10, 10) == pid
    assert _conflicts(locked, 0, 10) is None and _conflicts(locked, 20, 10) is None
    fd = os.open(locked, os.O_RDWR)
    try:
        try:
            fcntl.fcntl(fd, 37, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 200, 1, 0))
            raise AssertionError("a write lock past byte 100 did not conflict")
        except BlockingIOError:
            pass
    finally:
        os.close(fd)


def test_file_status_flags_and_close_on_exec_are_kept(procs, tmp_path):
    """GIVEN python3 with a file open O_RDWR|O_APPEND|O_NONBLOCK|O_DIRECT
    (close-on-exec) and one O_RDONLY (inheritable) at an offset
    WHEN grabbed and resumed
    THEN fdinfo shows the same flags and offsets for both fds."""
    data = tmp_path / "data"
    data.write_bytes(b"x" * 8192)
    code = (f"import os, time\n"
            f"a = os.open({str(data)!r}, os.O_RDWR | os.O_APPEND | os.O_NONBLOCK | os.O_DIRECT)\n"
            f"b = os.open({str(data)!r}, os.O_RDONLY)\nos.set_inheritable(b, True)\n"
            f"os.lseek(b, 4096, 0)\nprint('ready', a, b, flush=True)\ntime.sleep(60)")
    out = tmp_path / "out"
    src = procs.start([sys.executable, "-c", code], stdout=out.open("w"))
    _, a, b = wait_lines(out, 1)[0].split()

    def fdinfo(pid: int) -> list[tuple[str, str]]:
        return [tuple(line.split()[1] for line in Path(f"/proc/{pid}/fdinfo/{fd}")
                      .read_text().splitlines() if line.startswith(("pos:", "flags:")))
                for fd in (a, b)]
    before = fdinfo(src.pid)
    pid = grab_and_resume(procs, tmp_path, src)
    assert fdinfo(pid) == before


def test_unix_listeners_and_bound_datagram_socket_keep_their_names(procs, tmp_path):
    """GIVEN python3 blocked in accept() on a unix listener at a path (made
    under umask 007), holding one in the abstract namespace and a datagram socket bound
    to a path
    WHEN grabbed and resumed (the socket files are left behind by the kill)
    THEN clients connecting to the same path and abstract name are served,
    a datagram to the path is answered, the socket file keeps its mode:
    PASS."""
    import socket
    import stat as stat_
    out = tmp_path / "out"
    script = Path(__file__).parent / "victims" / "unixlisten.py"
    src = procs.start([sys.executable, script, tmp_path], stdout=out.open("w"))
    abstract = "\0" + wait_lines(out, 1)[0].split()[1]
    mode = stat_.S_IMODE((tmp_path / "sock").stat().st_mode)
    assert mode == 0o770
    r = run_umig("grab", "-o", str(tmp_path / "img"), str(src.pid))
    assert r.returncode == 0, r.stderr.decode()
    src.wait(timeout=5)
    assert (tmp_path / "sock").exists()            # stale, replaced by resume
    r = run_umig("resume", "--detach", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr.decode()
    procs.adopt(int(r.stdout.split()[-1]))
    assert stat_.S_IMODE((tmp_path / "sock").stat().st_mode) == mode
    for name in (str(tmp_path / "sock"), abstract):
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(10)
            c.connect(name)
            c.sendall(b"ping")
            assert c.recv(100) == b"pong ping"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as u:
        u.settimeout(10)
        u.bind(str(tmp_path / "client"))
        u.sendto(b"hi", str(tmp_path / "dgram"))
        assert u.recvfrom(100)[0] == b"dpong hi"
    assert wait_for(lambda: next((x for x in read_lines(out) if x.startswith(("PASS", "FAIL"))),
                                 None), 20, "PASS or FAIL") == "PASS", read_lines(out)


def test_inotify_watches_come_back_with_their_numbers(procs, tmp_path):
    """GIVEN python3 with an inotify instance watching a directory for
    IN_CREATE and a file for IN_MODIFY, with a freed watch number between
    them
    WHEN grabbed and resumed, and then a file is created in the directory
    and the file is written
    THEN both events arrive with the original watch numbers (and the
    created name), nothing else: PASS."""
    watched, target = tmp_path / "watched", tmp_path / "target"
    watched.mkdir()
    target.write_text("a")
    out = tmp_path / "out"
    src = procs.start([sys.executable, str(Path(__file__).parent / "victims" / "inotify.py"),
                       str(watched), str(target)], stdout=out.open("w"))
    assert wait_lines(out, 1)[0] == "ready 1 3"
    pid = grab_and_resume(procs, tmp_path, src)
    os.kill(pid, signal.SIGUSR1)
    wait_lines(out, 2)
    (watched / "new").write_text("x")
    with target.open("a") as f:
        f.write("b")
    assert wait_for(lambda: next((x for x in read_lines(out) if x.startswith(("PASS", "FAIL"))),
                                 None), 20, "PASS or FAIL") == "PASS", read_lines(out)


def test_proc_and_sys_files_are_reopened_for_the_resumed_process(procs, tmp_path):
    """GIVEN python3 holding /proc/self/status (10 bytes read), /proc/PID/stat,
    /proc/meminfo and a /sys file
    WHEN grabbed and resumed (the /proc/PID directory is gone meanwhile)
    THEN the /proc/PID files are the resumed process's own, at their offsets,
    and the others read as before: PASS."""
    script = Path(__file__).parent / "victims" / "procfiles.py"
    assert moved(procs, tmp_path, [sys.executable, str(script)]) == "PASS", \
        read_lines(tmp_path / "out")


def test_datagram_and_seqpacket_pairs_keep_their_queued_messages(procs, tmp_path):
    """GIVEN python3 with a SOCK_DGRAM and a SOCK_SEQPACKET socketpair, each
    with four messages queued one way (of 5, 0 or 1, 5000 and 4 bytes) and
    two the other
    WHEN grabbed and resumed
    THEN every message comes back whole, in order, none lost, doubled or
    merged, and the pairs still carry new ones: PASS."""
    script = Path(__file__).parent / "victims" / "dgrampairs.py"
    assert moved(procs, tmp_path, [sys.executable, str(script)]) == "PASS", \
        read_lines(tmp_path / "out")


def test_deleted_files_that_are_mapped_come_back(victim, procs, tmp_path):
    """GIVEN a program mapping deleted file A twice shared and once
    privately (one private page written) and deleted file B shared while
    also holding it open
    WHEN grabbed and resumed
    THEN the contents are there, A's shared mappings are one object again,
    the private page is kept, and B's fd and mapping are one file: PASS."""
    files = tmp_path / "files"
    files.mkdir()
    assert moved(procs, tmp_path, [victim("deletedmap"), str(files)]) == "PASS", \
        read_lines(tmp_path / "out")


def test_timerfd_armed_for_two_seconds_fires_after_two_seconds_of_running(victim, procs,
                                                                         tmp_path):
    """GIVEN a program blocked reading a timerfd armed for 2 s (monotonic,
    one shot), grabbed soon after arming
    WHEN it is resumed after 1.5 s of being gone
    THEN the timer fires once, when the time the program ran before the grab
    and after the resume adds up to about 2 s (not at once, as if the
    downtime had counted, nor 2 s after the resume)."""
    out = tmp_path / "out"
    src = procs.start([victim("timer2s")], stdout=out.open("w"))
    armed = int(wait_lines(out, 1)[0].split()[1]) / 1e9
    time.sleep(0.3)
    grabbing = time.monotonic()
    r = run_umig("grab", "-o", str(tmp_path / "img"), str(src.pid))
    assert r.returncode == 0, r.stderr.decode()
    src.wait(timeout=5)
    time.sleep(1.5)
    resuming = time.monotonic()
    r = run_umig("resume", "--detach", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr.decode()
    procs.adopt(int(r.stdout.split()[-1]))
    line = wait_lines(out, 2, timeout=10)[1].split()
    assert line[0] == "fired" and line[1] == "1", line
    ran = (grabbing - armed) + (int(line[2]) / 1e9 - resuming)
    assert 1.6 < ran < 2.4, f"it fired after {ran:.2f} s of running, not about 2 s"


def test_external_pipes_become_devnull_when_asked(procs, tmp_path):
    """GIVEN python3 holding at fd 5 the read end of a pipe this test writes
    and at fd 6 the write end of a pipe this test reads
    WHEN grabbed with --external-pipes=devnull and resumed
    THEN grab says which fds become /dev/null; in the resumed process fd 5
    reads end of file and fd 6 takes writes, both /dev/null: PASS."""
    r5, w5 = os.pipe()
    r6, w6 = os.pipe()
    code = ("import os, signal, stat, time\n"
            f"for a, b in (({r5}, 5), ({w6}, 6)):\n"
            "    if a != b:\n"             # (pytest -s leaves other fds free)
            "        os.dup2(a, b); os.close(a)\n"
            "go = []\nsignal.signal(signal.SIGUSR1, lambda *_: go.append(1))\n"
            "print('ready', flush=True)\n"
            "while not go: time.sleep(0.01)\n"
            "st5, st6 = os.fstat(5), os.fstat(6)\n"
            "null = os.stat('/dev/null').st_rdev\n"
            "ok = os.read(5, 10) == b'' and os.write(6, b'x') == 1 and "
            "st5.st_rdev == null == st6.st_rdev\n"
            "print('PASS' if ok else 'FAIL', flush=True)\n")
    out = tmp_path / "out"
    try:
        src = procs.start([sys.executable, "-c", code], stdout=out.open("w"),
                          pass_fds=(r5, w6))
        os.close(r5)
        os.close(w6)
        wait_lines(out, 1)
        r = run_umig("grab", "--external-pipes=devnull", "-o", str(tmp_path / "img"),
                     str(src.pid))
        err = r.stderr.decode()
        assert r.returncode == 0, err
        assert f"process {src.pid} fd 5 (pipe:[" in err and f"process {src.pid} fd 6 (pipe:[" \
            in err and "will be /dev/null" in err, err
        src.wait(timeout=5)
        r = run_umig("resume", "--detach", str(tmp_path / "img"))
        assert r.returncode == 0, r.stderr.decode()
        os.kill(procs.adopt(int(r.stdout.split()[-1])), signal.SIGUSR1)
        assert wait_for(lambda: next((x for x in read_lines(out)
                                      if x.startswith(("PASS", "FAIL"))), None),
                        20, "PASS or FAIL") == "PASS", read_lines(out)
    finally:
        os.close(w5)
        os.close(r6)


def test_proc_and_sys_files_with_ship_files_and_a_new_pid(procs, tmp_path):
    """GIVEN the /proc and /sys files of the test before, grabbed with
    --ship-files (they are the host's: not shipped, not compared by size)
    WHEN resumed with a new pid (--pid new)
    THEN /proc/PID/status and stat are those of the new pid, at their
    offsets: PASS."""
    script = Path(__file__).parent / "victims" / "procfiles.py"
    out = tmp_path / "out"
    src = procs.start([sys.executable, str(script)], stdout=out.open("w"))
    wait_lines(out, 1)
    r = run_umig("grab", "--ship-files", "--leave-running", "-o", str(tmp_path / "img"),
                 str(src.pid))
    assert r.returncode == 0, r.stderr.decode()
    r = run_umig("resume", "--detach", "--pid", "new", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr.decode()
    pid = procs.adopt(int(r.stdout.split()[-1]))
    assert pid != src.pid
    os.kill(pid, signal.SIGUSR1)
    assert wait_for(lambda: next((x for x in read_lines(out) if x.startswith(("PASS", "FAIL"))),
                                 None), 20, "PASS or FAIL") == "PASS", read_lines(out)


def test_unix_datagram_clients_reconnect_by_name(procs, tmp_path):
    """GIVEN python3 with a datagram socket connected to a named one this
    test owns (like a syslog client on /dev/log), an unbound one it sends
    with sendto, and a bound one of its own
    WHEN grabbed and resumed
    THEN its connected socket reaches the test's socket again by name, and
    sendto through the unbound one reaches its own bound socket: the test
    receives "hello after" and the program says PASS."""
    import socket
    log = tmp_path / "log.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(log))
        server.settimeout(20)
        code = ("import os, signal, socket, sys, time\n"
                "c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
                f"c.connect({str(log)!r})\nc.send(b'hello before')\n"
                "u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
                "b = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
                f"b.bind({str(tmp_path / 'own.sock')!r})\n"
                "go = []\nsignal.signal(signal.SIGUSR1, lambda *_: go.append(1))\n"
                "print('ready', flush=True)\n"
                "while not go: time.sleep(0.01)\n"
                "c.send(b'hello after')\n"
                f"u.sendto(b'to myself', {str(tmp_path / 'own.sock')!r})\n"
                "b.settimeout(10)\n"
                "print('PASS' if b.recv(100) == b'to myself' else 'FAIL', flush=True)\n")
        out = tmp_path / "out"
        src = procs.start([sys.executable, "-c", code], stdout=out.open("w"))
        wait_lines(out, 1)
        assert server.recv(100) == b"hello before"
        pid = grab_and_resume(procs, tmp_path, src)
        os.kill(pid, signal.SIGUSR1)
        assert server.recv(100) == b"hello after"
        assert wait_for(lambda: next((x for x in read_lines(out)
                                      if x.startswith(("PASS", "FAIL"))), None),
                        20, "PASS or FAIL") == "PASS", read_lines(out)
