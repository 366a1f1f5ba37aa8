"""Grab a real process, kill it, resume it from the image, and check what
the resumed process observably does."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (assert_counting, pid_gone, read_lines, readline, run_umig, umig_cmd,
                      wait_for, wait_lines)
from umig import cpu


def grab(pid: int, img: Path, *extra: str) -> subprocess.CompletedProcess:
    r = run_umig("grab", "-o", str(img), *extra, str(pid))
    assert r.returncode == 0, r.stderr.decode()
    return r


def resume_detached(img: Path, procs, *extra: str) -> int:
    r = run_umig("resume", "--detach", *extra, str(img))
    assert r.returncode == 0, r.stderr.decode()
    return procs.adopt(int(r.stdout.split()[-1]))


def maps_of(pid: int) -> list[tuple]:
    """/proc/PID/maps as (start, end, perms, offset, path), with neighbours the
    kernel may merge (same perms and file, contiguous offsets) merged: the
    restorer maps them in one go, the original may have been split by an
    mprotect whose difference is gone."""
    out: list[list] = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(None, 5)
        start, end = (int(x, 16) for x in parts[0].split("-"))
        perms, off, path = parts[1], int(parts[2], 16), parts[5] if len(parts) > 5 else ""
        if out and out[-1][1] == start and out[-1][2] == perms and out[-1][4] == path and (
                not path or path.startswith("[") or out[-1][3] + (out[-1][1] - out[-1][0]) == off):
            out[-1][1] = end
            continue
        out.append([start, end, perms, off, path])
    return [tuple(x) for x in out]


def test_counter_continues_where_it_stopped(victim, procs, tmp_path):
    """GIVEN a C counter writing to a file
    WHEN it is grabbed (and so killed) and resumed from the image
    THEN it keeps its pid, its memory map, exe and cmdline, and the numbers
    in the file go on with no gap and no repeat."""
    out = tmp_path / "out"
    src = procs.start([victim("counter"), "20000"], stdout=out.open("w"))
    wait_lines(out, 5)
    pid = src.pid
    maps_before = maps_of(pid)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    exe = os.readlink(f"/proc/{pid}/exe")
    grab(pid, tmp_path / "img")
    assert src.wait(timeout=5) == -signal.SIGKILL      # killed only after the image was written
    at_grab = len(read_lines(out))

    rpid = resume_detached(tmp_path / "img", procs)
    assert rpid == pid
    wait_lines(out, at_grab + 20)
    assert maps_of(rpid) == maps_before
    assert Path(f"/proc/{rpid}/cmdline").read_bytes() == cmdline
    assert os.readlink(f"/proc/{rpid}/exe") == exe
    os.kill(rpid, signal.SIGKILL)
    wait_for(lambda: pid_gone(rpid) or _reaped(rpid), what="resumed counter to die")
    assert_counting(read_lines(out))


def _reaped(pid: int) -> bool:
    try:
        got, _ = os.waitpid(pid, os.WNOHANG)
        return got == pid
    except ChildProcessError:
        return True


def test_memory_checksum_of_64_mib(victim, procs, tmp_path):
    """GIVEN 64 MiB of untouched, zeroed, random and patterned pages plus
    changed .data, .bss, heap and stack
    WHEN the process is grabbed and resumed
    THEN it recomputes the same checksum and says PASS, and zero pages did
    not travel as data."""
    out = tmp_path / "out"
    src = procs.start([victim("memcheck")], stdout=out.open("w"))
    ready = wait_lines(out, 1, timeout=20)[0]
    assert ready.startswith("ready")
    img = tmp_path / "img"
    grab(src.pid, img)
    src.wait(timeout=5)
    # 1/4 of the pages are random (16 MiB): the image is about that, not 64 MiB
    assert 16 << 20 < img.stat().st_size < 20 << 20
    rpid = resume_detached(img, procs)
    os.kill(rpid, signal.SIGUSR1)
    lines = wait_lines(out, 2, timeout=20)
    assert lines[1] == "PASS " + ready.split()[1], lines


@pytest.mark.parametrize("mode", ["nanosleep", "nanosleep-norem"])
def test_stopped_in_nanosleep_completes_the_sleep(victim, procs, tmp_path, mode):
    """GIVEN a process in a 1.5 s nanosleep (with and without rmtp)
    WHEN it is grabbed in the middle and resumed
    THEN nanosleep returns 0 (not EINTR) after sleeping at least its time."""
    out = tmp_path / "out"
    src = procs.start([victim("blockcall"), mode, "1.5"], stdout=out.open("w"))
    wait_lines(out, 1)
    time.sleep(0.5)
    grab(src.pid, tmp_path / "img")
    src.wait(timeout=5)
    resume_detached(tmp_path / "img", procs)
    line = wait_lines(out, 2, timeout=10)[1]
    m = re.match(r"returned (-?\d+) errno=(\d+) elapsed=([\d.]+)", line)
    assert m, line
    assert (m.group(1), m.group(2)) == ("0", "0")
    assert float(m.group(3)) >= 1.5


def test_stopped_in_read_gets_the_data(victim, procs, tmp_path):
    """GIVEN a process blocked in read() on its stdin pipe
    WHEN it is resumed by `umig resume` in the foreground
    THEN the read continues on umig's stdin and returns what we write there,
    and umig exits with the process's status."""
    out = tmp_path / "out"
    rfd, wfd = os.pipe()
    src = procs.start([victim("blockcall"), "read"], stdin=rfd, stdout=out.open("w"))
    wait_lines(out, 1)
    time.sleep(0.1)
    grab(src.pid, tmp_path / "img")
    src.wait(timeout=5)
    os.close(rfd)
    os.close(wfd)
    res = procs.start(umig_cmd("resume", str(tmp_path / "img")), stdin=subprocess.PIPE,
                      stderr=subprocess.PIPE)
    time.sleep(0.5)
    res.stdin.write(b"hello")
    res.stdin.flush()
    assert res.wait(timeout=10) == 0, res.stderr.read().decode()
    assert read_lines(out)[1] == "returned 5 errno=0 data=hello"


def test_stopped_in_pause_is_woken_by_a_signal(victim, procs, tmp_path):
    """GIVEN a process in pause() with a SIGUSR1 handler
    WHEN it is resumed and sent SIGUSR1
    THEN the handler runs and pause returns -1/EINTR."""
    out = tmp_path / "out"
    src = procs.start([victim("blockcall"), "pause"], stdout=out.open("w"))
    wait_lines(out, 1)
    time.sleep(0.1)
    grab(src.pid, tmp_path / "img")
    src.wait(timeout=5)
    rpid = resume_detached(tmp_path / "img", procs)
    time.sleep(0.2)
    assert len(read_lines(out)) == 1          # still in pause
    os.kill(rpid, signal.SIGUSR1)
    assert wait_lines(out, 2)[1] == "returned -1 errno=4"


def test_signal_state_survives(victim, procs, tmp_path):
    """GIVEN a SIGUSR1 handler on a sigaltstack, SIGUSR2 blocked and pending,
    SIGHUP ignored
    WHEN the process is resumed and sent SIGUSR1
    THEN the handler runs on the altstack, SIGUSR2 is still blocked and
    pending and is delivered once when unblocked, and SIGHUP is ignored."""
    out = tmp_path / "out"
    src = procs.start([victim("signals")], stdout=out.open("w"))
    wait_lines(out, 1)
    grab(src.pid, tmp_path / "img")
    src.wait(timeout=5)
    rpid = resume_detached(tmp_path / "img", procs)
    os.kill(rpid, signal.SIGUSR1)
    assert wait_lines(out, 2)[1] == "PASS"


def test_ymm_registers_and_mxcsr_keep_their_values(victim, procs, tmp_path):
    """GIVEN ymm0-15 loaded with known values and a non-default MXCSR in a
    spinning loop
    WHEN the process is grabbed mid-loop and resumed
    THEN every register and MXCSR hold the same values (PASS)."""
    out = tmp_path / "out"
    src = procs.start([victim("vector")], stdout=out.open("w"))
    wait_lines(out, 1)
    time.sleep(0.1)
    grab(src.pid, tmp_path / "img")
    src.wait(timeout=5)
    rpid = resume_detached(tmp_path / "img", procs)
    time.sleep(0.1)
    os.kill(rpid, signal.SIGUSR1)
    assert wait_lines(out, 2)[1] == "PASS"


@pytest.mark.skipif("avx512f" not in cpu.flags(),
                    reason="AVX-512 is absent on this CPU (XCR0 has no opmask/ZMM state)")
def test_zmm_and_opmask_registers_keep_their_values(victim, procs, tmp_path):
    """GIVEN zmm0-31 and k1-7 loaded with known values
    WHEN the process is grabbed mid-loop and resumed
    THEN they hold the same values (PASS)."""
    out = tmp_path / "out"
    src = procs.start([victim("vector"), "zmm"], stdout=out.open("w"))
    wait_lines(out, 1)
    time.sleep(0.1)
    grab(src.pid, tmp_path / "img")
    src.wait(timeout=5)
    rpid = resume_detached(tmp_path / "img", procs)
    os.kill(rpid, signal.SIGUSR1)
    assert wait_lines(out, 2)[1] == "PASS"


def test_open_files_keep_offset_and_append(victim, procs, tmp_path):
    """GIVEN a file open with O_APPEND and one open read-write at offset 2
    WHEN the process is resumed and writes to both
    THEN the append lands at the end and the other write at offset 2."""
    out, a, b = tmp_path / "out", tmp_path / "a", tmp_path / "b"
    src = procs.start([victim("files"), a, b], stdout=out.open("w"))
    wait_lines(out, 1)
    grab(src.pid, tmp_path / "img")
    src.wait(timeout=5)
    rpid = resume_detached(tmp_path / "img", procs)
    os.kill(rpid, signal.SIGUSR1)
    assert wait_lines(out, 2)[1] == "done"
    assert a.read_text() == "a1a2"
    assert b.read_text() == "b1XX"


PY_LOOP = """
import sys, time
state = {"squares": {}, "log": []}
i = 0
while True:
    state["squares"][i] = i * i
    state["log"].append(str(i))
    print(i, sum(state["squares"].values()), len(state["log"]), flush=True)
    i += 1
    time.sleep(0.01)
"""


def test_python_interpreter_with_dict_state(procs, tmp_path):
    """GIVEN python3 running a loop whose state lives in dicts and lists
    WHEN it is grabbed and resumed (stdout a pipe, taken over by umig resume)
    THEN its counter and the sums computed from its dicts continue exactly."""
    src = procs.start(["python3", "-c", PY_LOOP], stdout=subprocess.PIPE)
    for _ in range(10):
        readline(src.stdout)
    img = tmp_path / "img"
    grab(src.pid, img)
    src.wait(timeout=5)
    seen = src.stdout.read().decode().splitlines()       # what it printed before dying
    res = procs.start(umig_cmd("resume", str(img)), stdout=subprocess.PIPE)
    after = [readline(res.stdout) for _ in range(30)]
    last_before = int(seen[-1].split()[0]) if seen else 9
    for k, line in enumerate(after):
        i, total, n = (int(x) for x in line.split())
        assert i == last_before + 1 + k
        assert total == sum(j * j for j in range(i + 1))
        assert n == i + 1


BASH_LOOP = 'i=0; while :; do i=$((i+1)); echo "$i"; read -t 0.02 _; done'


def test_bash_loop(procs, tmp_path):
    """GIVEN bash running a counting loop built from builtins only, pacing
    itself with `read -t` on a silent stdin pipe
    WHEN it is grabbed and resumed with the same pipe as umig's stdin
    THEN the count continues without gap or repeat."""
    out = tmp_path / "out"
    rfd, wfd = os.pipe()
    try:
        src = procs.start(["bash", "-c", BASH_LOOP], stdin=rfd, stdout=out.open("w"))
        wait_lines(out, 10)
        grab(src.pid, tmp_path / "img")
        src.wait(timeout=5)
        n = len(read_lines(out))
        r = run_umig("resume", "--detach", str(tmp_path / "img"), stdin=rfd)
        assert r.returncode == 0, r.stderr.decode()
        procs.adopt(int(r.stdout.split()[-1]))
        wait_lines(out, n + 20)
        nums = [int(x) for x in read_lines(out)]
        assert nums == list(range(1, len(nums) + 1))
    finally:
        os.close(rfd)
        os.close(wfd)


def test_grab_piped_into_resume(victim, procs, tmp_path):
    """GIVEN a running counter
    WHEN `umig grab PID | umig resume -` moves it through a pipe
    THEN it continues counting in the same file; on the same host the pid is
    still the source's while the image streams, so it gets a new one and
    says so."""
    out = tmp_path / "out"
    src = procs.start([victim("counter"), "20000"], stdout=out.open("w"))
    wait_lines(out, 5)
    grabber = procs.start(umig_cmd("grab", str(src.pid)), stdout=subprocess.PIPE)
    resumer = procs.start(umig_cmd("resume", "--detach", "-"), stdin=grabber.stdout,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    grabber.stdout.close()
    assert grabber.wait(timeout=20) == 0
    assert resumer.wait(timeout=20) == 0, resumer.stderr.read().decode()
    src.wait(timeout=5)
    rpid = procs.adopt(int(resumer.stdout.read().split()[-1]))
    assert rpid != src.pid
    assert f"resumed as pid {rpid}" in resumer.stderr.read().decode()
    n = len(read_lines(out))
    wait_lines(out, n + 10)
    assert_counting(read_lines(out))


def test_foreground_resume_forwards_signals_and_exit_status(victim, procs, tmp_path):
    """GIVEN a process resumed in the foreground by `umig resume IMG`
    WHEN umig is sent SIGTERM
    THEN the process gets it and dies of it, and umig exits 128+15."""
    out = tmp_path / "out"
    src = procs.start([victim("counter"), "20000"], stdout=out.open("w"))
    wait_lines(out, 3)
    grab(src.pid, tmp_path / "img")
    src.wait(timeout=5)
    res = procs.start(umig_cmd("resume", str(tmp_path / "img")), stderr=subprocess.PIPE)
    n = len(read_lines(out))
    wait_lines(out, n + 5)
    res.send_signal(signal.SIGTERM)
    assert res.wait(timeout=10) == 128 + signal.SIGTERM
    assert pid_gone(src.pid) or _reaped(src.pid)


def test_leave_running_keeps_source_and_image_resumes_as_new_pid(victim, procs, tmp_path):
    """GIVEN a counter grabbed with --leave-running
    WHEN the image is resumed while the source still runs
    THEN the source keeps counting, and the copy gets a new pid (said on
    stderr) and continues from the grab point in its own output (opened
    O_APPEND, so that both may write to it)."""
    out = tmp_path / "out"
    src = procs.start([victim("counter"), "20000"], stdout=out.open("a"))
    wait_lines(out, 3)
    grab(src.pid, tmp_path / "img", "--leave-running")
    n = len(read_lines(out))
    wait_lines(out, n + 5)
    assert src.poll() is None
    r = run_umig("resume", "--detach", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr.decode()
    rpid = procs.adopt(int(r.stdout.split()[-1]))
    assert rpid != src.pid
    assert f"resumed as pid {rpid}" in r.stderr.decode()


def _pads_and_pages_sent_twice(img: Path) -> tuple[int, list[int]]:
    """PAD records in the image, and the addresses of pages that more than
    one PAGES record carries."""
    from umig.image import schema
    from umig.image.info import RUN
    from umig.image.stream import ImageReader, decode_pages
    pads, seen, twice = 0, set(), []
    fd = os.open(img, os.O_RDONLY)
    try:
        for frame in ImageReader(fd):
            if frame.tag == schema.PAD.tag:
                pads += 1
            elif frame.tag == schema.PAGES.tag:
                for addr, npages, _kind in RUN.iter_unpack(decode_pages(frame)[3]):
                    for a in range(addr, addr + npages * 4096, 4096):
                        if a in seen:
                            twice.append(a)
                        seen.add(a)
    finally:
        os.close(fd)
    return pads, twice


@pytest.mark.parametrize("preread", ["into-file", "into-file-noise", "into-pipe", "small-room",
                                     "off"])
def test_memory_written_while_it_is_pre_read_is_taken_as_frozen(victim, procs, tmp_path,
                                                                 preread):
    """GIVEN 64 MiB whose first 8 MiB a process rewrites without pause, page by
    page, each page holding its counter and a pattern of it, and a total
    WHEN it is grabbed with pre-reading (memory read while it runs) and resumed:
    into an image file (pre-read pages written ahead into it), into a pipe
    (kept in memory, 40 MiB at most), into a file whose room for the state
    records is too small (UMIG_STATE_ROOM: it starts again, keeping what
    memory would of the pages written ahead), and without pre-reading; and
    into a file with pages lz4 cannot shrink (a chunk read again has the
    size of its copy written ahead)
    THEN every page matches its pattern and the counters sum to the total (a
    page kept from before a write, or torn by one, fails); with pre-reading
    the cold chunks were kept and the hot ones read again; in the file no
    page is in two PAGES records (a chunk read again is written over its
    copy, or that copy becomes a PAD record), and with incompressible pages
    the hot part's chunks read again were written in place; with too little
    room the image has no PAD and still >= 8 pre-read chunks kept."""
    out = tmp_path / "out"
    noise = preread == "into-file-noise"
    src = procs.start([victim("churn"), *(["noise"] if noise else [])], stdout=out.open("w"))
    assert wait_lines(out, 1, timeout=20)[0] == "ready"
    img = tmp_path / "img"
    if preread == "into-pipe":
        with img.open("wb") as f:
            cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=f)
            r = run_umig("grab", "-v", "--preread", "on", str(src.pid), stdout=cat.stdin)
            cat.stdin.close()
            assert cat.wait(timeout=30) == 0 and r.returncode == 0, r.stderr.decode()
    else:
        env = dict(os.environ, UMIG_STATE_ROOM="4096") if preread == "small-room" else None
        r = run_umig("grab", "-o", str(img), "-v", "--preread",
                     "off" if preread == "off" else "on", str(src.pid), env=env)
        assert r.returncode == 0, r.stderr.decode()
    src.wait(timeout=5)
    msg = r.stderr.decode()
    m = re.search(r"(\d+) pre-read chunks kept, (\d+) read again frozen", msg)
    if preread.startswith("into-"):
        into_file = preread != "into-pipe"
        assert m, msg
        kept, again = int(m[1]), int(m[2])
        assert kept >= 8 and again >= 1, msg     # >= 8 cold windows (40 MiB budget)
        assert ("written ahead into the image" in msg) == into_file, msg
        pads, sent_twice = _pads_and_pages_sent_twice(img)
        # in the file: the room before the pages (and what a chunk found
        # written since left), and no page in the image twice
        assert (pads >= 1) == into_file and not sent_twice, (pads, sent_twice)
        summary = json.loads(run_umig("info", "--json", str(img)).stdout)["summary"]
        assert summary["pad_records"] == pads and (summary["pad_bytes"] > 0) == into_file
        if noise:      # the two 4 MiB windows of the hot part at least
            placed = re.search(r"(\d+) of those read again in place", msg)
            assert placed and int(placed[1]) >= 2, msg
    elif preread == "small-room":     # what memory would keep of them is kept
        assert m and int(m[1]) >= 8 and "state records outgrew the 4096 bytes kept" in msg, msg
        assert "written ahead" not in msg and _pads_and_pages_sent_twice(img) == (0, []), msg
    else:
        assert "pre-read" not in msg, msg
    rpid = resume_detached(img, procs)
    os.kill(rpid, signal.SIGUSR1)
    assert wait_lines(out, 2, timeout=20)[1] == "PASS"


def _grab_written_ahead(procs, tmp_path: Path, code: str) -> tuple[Path, Path, str]:
    """Start python3 -c code (it prints "ready"), grab it into a file with
    pre-reading, check the pre-read pages were written ahead: (its output
    file, the image, grab's message)."""
    out = tmp_path / "out"
    src = procs.start([sys.executable, "-c", code], stdout=out.open("w"))
    assert wait_lines(out, 1, timeout=30)[0] == "ready"
    img = tmp_path / "img"
    msg = grab(src.pid, img, "-v", "--preread", "on").stderr.decode()
    src.wait(timeout=5)
    assert "written ahead into the image" in msg, msg
    return out, img, msg


DELETED_AND_BIG = """
import fcntl, hashlib, os, signal, sys, tempfile, time
heap = bytearray(os.urandom(32 << 20))
f = tempfile.TemporaryFile()               # deleted while open
data = os.urandom(3 << 20)
f.write(data)
f.flush()
want = hashlib.sha256(data).hexdigest()
r, w = os.pipe()
fcntl.fcntl(w, 1031, 1 << 20)              # F_SETPIPE_SZ: 1 MiB, filled
queued = os.urandom(1 << 20)
os.write(w, queued)
def check(*_):
    f.seek(0)
    ok = hashlib.sha256(f.read()).hexdigest() == want and len(heap) == 32 << 20
    ok = ok and os.read(r, 2 << 20) == queued
    print("PASS" if ok else "FAIL", flush=True)
signal.signal(signal.SIGUSR1, check)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def test_deleted_file_and_pipe_contents_fit_the_room_kept_for_the_state(procs, tmp_path):
    """GIVEN python3 holding 32 MiB of random bytes, an open, deleted
    temporary file of 3 MiB (its contents go into its FD record) and a pipe
    holding 1 MiB (into its PIPE record)
    WHEN grabbed into a file with pre-reading
    THEN the room kept ahead of the pre-read pages was big enough for the
    state records (the image did not start again without them), and the
    resumed process reads the file's and the pipe's bytes back: PASS."""
    out, img, msg = _grab_written_ahead(procs, tmp_path, DELETED_AND_BIG)
    assert "outgrew" not in msg, msg
    rpid = resume_detached(img, procs)
    os.kill(rpid, signal.SIGUSR1)
    assert wait_lines(out, 2, timeout=20)[1] == "PASS"


SHARED_ANON = """
import mmap, os, time
heap = bytearray(os.urandom(24 << 20))
shared = [mmap.mmap(-1, 64 << 20) for _ in range(4)]     # "/dev/zero (deleted)" in maps
for m in shared:
    m[:5] = b"hello"
print("ready", flush=True)
time.sleep(60)
"""


def test_shared_anonymous_memory_is_not_counted_as_a_deleted_file(procs, tmp_path):
    """GIVEN python3 with 24 MiB of heap and four 64 MiB shared anonymous
    mappings (which /proc/PID/maps names "/dev/zero (deleted)")
    WHEN grabbed into a file with pre-reading
    THEN the room kept for the state (the PAD after it) stays small: those
    mappings' pages are PAGES records, no file contents are carried for
    them (counted as deleted files, they made a 64 MiB PAD)."""
    _out, img, _msg = _grab_written_ahead(procs, tmp_path, SHARED_ANON)
    summary = json.loads(run_umig("info", "--json", str(img)).stdout)["summary"]
    assert 0 < summary["pad_bytes"] < 1 << 20, summary


def test_memory_dropped_while_it_is_pre_read_reads_as_zeros_after_resume(victim, procs,
                                                                          tmp_path):
    """GIVEN the churning process of the test above, which also drops a page
    of its cold part (MADV_DONTNEED) every 2000 rewrites
    WHEN it is grabbed with pre-reading and resumed
    THEN the dropped pages read as zeros and the counters of the rest sum to
    its total: a cold chunk read before one of its pages was dropped is not
    kept (the page is no longer present, though not "written")."""
    out = tmp_path / "out"
    src = procs.start([victim("churn"), "zap"], stdout=out.open("w"))
    assert wait_lines(out, 1, timeout=20)[0] == "ready"
    img = tmp_path / "img"
    r = grab(src.pid, img, "-v", "--preread", "on")
    src.wait(timeout=5)
    assert re.search(r"(\d+) pre-read chunks kept", r.stderr.decode()), r.stderr.decode()
    rpid = resume_detached(img, procs)
    os.kill(rpid, signal.SIGUSR1)
    assert wait_lines(out, 2, timeout=20)[1] == "PASS"
