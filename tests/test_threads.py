"""Multi-threaded processes: every thread frozen, written and rebuilt with
its own tid, registers, TLS, signal state and the call it was blocked in."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path


import pytest

from conftest import (ns_init, read_lines, run_umig, start_with_pid, wait_for,
                      wait_lines)
from umig.errors import Exit


def tids_of(pid: int) -> set[int]:
    return {int(t) for t in os.listdir(f"/proc/{pid}/task")}


def grab(pid: int, img: Path, *extra: str) -> None:
    r = run_umig("grab", "-o", str(img), *extra, str(pid))
    assert r.returncode == 0, r.stderr.decode()


def resume(img: Path, procs, *extra: str) -> int:
    r = run_umig("resume", "--detach", *extra, str(img))
    assert r.returncode == 0, r.stderr.decode()
    return procs.adopt(int(r.stdout.split()[-1]))


def result_line(out: Path, timeout: float = 20.0) -> str:
    return wait_for(lambda: next((x for x in read_lines(out) if x.startswith(("PASS", "FAIL"))),
                                 None), timeout, f"PASS or FAIL in {out}")


def test_eight_threads_keep_counting_and_verify_themselves(victim, procs, tmp_path):
    """GIVEN 8 threads counting in TLS and in a mutex-guarded shared counter,
    one waiting on a condition variable, one holding a robust mutex
    WHEN grabbed and resumed
    THEN every tid is kept, the shared counter goes on from where it was,
    and after SIGUSR1 the program wakes the waiter, reaches each thread
    with pthread_kill (its handler sees the thread's original tid), joins
    them all, finds the TLS counts summing to the shared one, the robust
    mutex EOWNERDEAD and the error-checking mutex still checking: PASS."""
    out = tmp_path / "out"
    src = procs.start([victim("threads", "-pthread")], stdout=out.open("w"))
    wait_lines(out, 10)
    pid = src.pid
    tids = tids_of(pid)
    assert len(tids) == 9
    grab(pid, tmp_path / "img")
    assert src.wait(timeout=5) == -signal.SIGKILL
    before = [int(x) for x in read_lines(out)[1:]]

    rpid = resume(tmp_path / "img", procs)
    assert rpid == pid
    assert tids_of(rpid) == tids
    wait_lines(out, len(before) + 1 + 10)
    os.kill(rpid, signal.SIGUSR1)
    assert result_line(out).startswith("PASS"), read_lines(out)[-3:]
    counts = [int(x) for x in read_lines(out)[1:] if x.isdigit()]
    assert counts == sorted(counts), "the shared counter went back"
    assert counts[len(before)] >= before[-1] and counts[-1] > before[-1]


def test_64_threads_blocked_in_syscalls_complete_their_calls(victim, procs, tmp_path):
    """GIVEN 64 threads each blocked in a call (futex waits of several
    kinds, nanosleep, absolute clock_nanosleep, poll, select, ppoll, pause,
    sigsuspend, sigtimedwait, sigwaitinfo, raw futex, read from an empty
    pipe, write into a full pipe)
    WHEN grabbed and resumed
    THEN each call completes as it would have: timed sleeps last their
    full time, waits return when released, sigwaits get their signal, the
    full pipe gives back its 64 KiB and then every blocked write, in order:
    the program says PASS."""
    out = tmp_path / "out"
    src = procs.start([victim("blockers", "-pthread"), "2500"], stdout=out.open("w"))
    wait_lines(out, 1)
    pid = src.pid
    in_calls = {Path(f"/proc/{pid}/task/{t}/syscall").read_text().split()[0]
                for t in tids_of(pid) if t != pid}
    assert len(in_calls) >= 10, in_calls        # really blocked, in that many syscalls
    grab(pid, tmp_path / "img")
    src.wait(timeout=5)
    rpid = resume(tmp_path / "img", procs)
    assert len(tids_of(rpid)) == 65
    os.kill(rpid, signal.SIGUSR1)
    assert result_line(out) == "PASS 64 threads", read_lines(out)


def test_stop_does_not_break_sigtimedwait_when_left_running(victim, procs, tmp_path):
    """GIVEN the same 64 blocked threads (sigtimedwait, sigwaitinfo and
    others that fail with EINTR after a mere stop)
    WHEN grabbed with --leave-running
    THEN the thawed original completes every call the same way: PASS."""
    out = tmp_path / "out"
    src = procs.start([victim("blockers", "-pthread"), "1500"], stdout=out.open("w"))
    wait_lines(out, 1)
    grab(src.pid, tmp_path / "img", "--leave-running")
    os.kill(src.pid, signal.SIGUSR1)
    assert result_line(out) == "PASS 64 threads", read_lines(out)
    assert src.wait(timeout=10) == 0


POOL = """
import concurrent.futures, hashlib, sys, time
def work(i):
    time.sleep(0.04)
    return hashlib.sha256(str(i).encode()).hexdigest()[:12]
print("ready", flush=True)
with concurrent.futures.ThreadPoolExecutor(4) as ex:
    futs = [ex.submit(work, i) for i in range(80)]
    for i, f in enumerate(futs):
        print(i, f.result(), flush=True)
print("done", flush=True)
"""


def test_python_thread_pool_finishes_its_queued_work(procs, tmp_path):
    """GIVEN python3 with a ThreadPoolExecutor of 4 workers and 80 queued jobs
    WHEN grabbed mid-way and resumed
    THEN every job's result is printed once, in order, correct, then done."""
    out = tmp_path / "out"
    src = procs.start([sys.executable, "-c", POOL], stdout=out.open("w"))
    wait_lines(out, 10)
    grab(src.pid, tmp_path / "img")
    src.wait(timeout=5)
    at_grab = len(read_lines(out))
    assert at_grab < 80, "the pool finished before the grab: make the jobs longer"
    resume(tmp_path / "img", procs)
    lines = wait_for(lambda: (lambda ls: ls if ls and ls[-1] == "done" else None)(
        read_lines(out)), 20, "done")
    assert lines[1:-1] == [f"{i} {hashlib.sha256(str(i).encode()).hexdigest()[:12]}"
                           for i in range(80)]


def test_threads_created_while_grabbing_are_not_lost(victim, procs, tmp_path):
    """GIVEN a process whose leader starts a thread every half millisecond
    and joins each one some rounds later (a lost thread would never be
    joined), while a relay of threads each starts its successor and exits
    WHEN grabbed (the set of threads changes while umig seizes them)
    THEN the image has every thread the process had, and the resumed
    process goes on: both its round and its relay counters keep growing."""
    out = tmp_path / "out"
    src = procs.start([victim("spawner", "-pthread")], stdout=out.open("w"))
    wait_lines(out, 3)
    grab(src.pid, tmp_path / "img")
    src.wait(timeout=5)
    r = run_umig("info", "--json", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr.decode()
    info = json.loads(r.stdout)
    threads = [rec for rec in info["records"] if rec["name"] == "THREAD"]
    process = next(rec for rec in info["records"] if rec["name"] == "PROCESS")
    assert len(threads) == process["values"]["nthreads"] > 1
    rounds, relays = map(int, read_lines(out)[-1].split())
    rpid = resume(tmp_path / "img", procs)

    def going() -> bool:
        r, s = map(int, read_lines(out)[-1].split())
        return r > rounds + 200 and s > relays + 200
    wait_for(going, 10, "rounds and relays after resume")
    assert os.path.exists(f"/proc/{rpid}")


def test_resume_refuses_when_a_thread_id_is_taken(victim, procs, tmp_path):
    """GIVEN an image of a multi-threaded process and one of its thread ids
    now used by another process
    WHEN resumed THEN refused before anything starts, naming the tid, who
    has it and the way out; resumed with --pidns as it says, every thread
    has its own tid inside the new namespace and the program checks itself
    (pthread_kill reaches the right threads): PASS."""
    out = tmp_path / "out"
    src = procs.start([victim("threads", "-pthread")], stdout=out.open("w"))
    wait_lines(out, 3)
    pid = src.pid
    tid = max(tids_of(pid))
    grab(pid, tmp_path / "img")
    src.wait(timeout=5)
    holder = start_with_pid(procs, tid)
    if holder is None:
        pytest.fail(f"could not start a process with pid {tid} (needs clone3 set_tid as root)")
    r = run_umig("resume", "--detach", str(tmp_path / "img"))
    assert r.returncode == Exit.ENVIRONMENT, r.stderr.decode()
    assert f"cannot keep thread id {tid}: it is taken by process {tid} (sleep)" \
        in r.stderr.decode()
    assert "--pidns" in r.stderr.decode()
    assert not os.path.exists(f"/proc/{pid}")

    tids = set(_image_tids(tmp_path / "img"))
    r = run_umig("resume", "--detach", "--pidns", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr.decode()
    outer = procs.adopt(int(r.stdout.split()[-1]))
    procs.adopt(ns_init(outer))
    inner = {int(line.split()[-1]) for t in tids_of(outer)
             for line in Path(f"/proc/{outer}/task/{t}/status").read_text().splitlines()
             if line.startswith("NSpid:")}
    assert inner == tids
    os.kill(outer, signal.SIGUSR1)
    assert result_line(out).startswith("PASS"), read_lines(out)[-3:]


def _image_tids(img: Path) -> list[int]:
    r = run_umig("info", "--json", str(img))
    return [rec["values"]["tid"] for rec in json.loads(r.stdout)["records"]
            if rec["name"] == "THREAD"]


DROPPED = """
import ctypes, threading, time
libc = ctypes.CDLL(None, use_errno=True)
def worker():
    libc.syscall(117, 65534, 65534, 65534)      # setresuid in this thread only
    print("ready", flush=True)
    time.sleep(100)
threading.Thread(target=worker, daemon=True).start()
time.sleep(100)
"""


def test_thread_with_its_own_credentials_is_refused_and_left_running(procs, tmp_path):
    """GIVEN python3 as root with a thread that dropped to uid 65534 with a
    raw setresuid (credentials are per thread)
    WHEN grabbed THEN refused naming the thread and what differs (resume
    would give it the leader's root), and the process runs on untraced."""
    p = procs.start([sys.executable, "-c", DROPPED], stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    tid = max(tids_of(p.pid))
    r = run_umig("grab", "-o", str(tmp_path / "img"), str(p.pid))
    assert r.returncode == Exit.REFUSED, r.stderr.decode()
    assert f"thread {tid} of process {p.pid} has its own Uid (65534" in r.stderr.decode()
    assert not (tmp_path / "img").exists()
    status = Path(f"/proc/{p.pid}/status").read_text()
    assert "TracerPid:\t0" in status and "State:\tS" in status
