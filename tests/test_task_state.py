"""Task state seen from outside (STYLE.md §11): what /proc and ptrace show of
the process before the grab is what they show of the resumed one."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from conftest import readline, run_umig, umig_cmd
from umig import native, tracing

TASK = r"""
import os, resource, signal, sys, time
os.umask(0o027)
os.chdir(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (513, 1024))
resource.setrlimit(resource.RLIMIT_CORE, (0, 12345 * 4096))
signal.signal(signal.SIGALRM, lambda *a: print("alarm", flush=True))
signal.setitimer(signal.ITIMER_REAL, float(sys.argv[2]))
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def status(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def outside_view(pid: int) -> dict:
    """What can be seen of a process without its help."""
    st = status(pid)
    seen = {k: st[k] for k in ("Umask", "SigBlk", "SigIgn", "SigCgt", "Uid", "Gid",
                               "CapEff", "NoNewPrivs")}
    seen["limits"] = Path(f"/proc/{pid}/limits").read_text()
    seen["cwd"] = os.readlink(f"/proc/{pid}/cwd")
    seen["exe"] = os.readlink(f"/proc/{pid}/exe")
    seen["comm"] = Path(f"/proc/{pid}/comm").read_text()
    seen["cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes()
    seen["environ"] = Path(f"/proc/{pid}/environ").read_bytes()
    seen["personality"] = Path(f"/proc/{pid}/personality").read_text()
    seen["auxv"] = Path(f"/proc/{pid}/auxv").read_bytes()
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # start_code end_code start_stack, start_data end_data start_brk arg/env bounds
    seen["mm"] = stat[23:26] + stat[42:49]
    tracing.seize(pid)
    try:
        tracing.interrupt(pid)
        assert tracing.wait(pid).kind == "event-stop"
        seen["rseq"] = tracing.rseq_config(pid)
        robust = native.ffi.new("uint64_t[2]")
        native.syscall(274, pid, int(native.ffi.cast("uint64_t", robust)),
                       int(native.ffi.cast("uint64_t", robust + 1)))
        seen["robust"] = (robust[0], robust[1])
        regs = tracing.getregs(pid)
        seen["fs_base"] = regs.fs_base
    finally:
        tracing.detach(pid)
    return seen


def test_task_state_seen_from_outside_is_unchanged(procs, tmp_path):
    """GIVEN python3 with its own umask, cwd, rlimits, signal handlers and
    ignores, an armed ITIMER_REAL, and glibc's rseq and robust-list
    registrations
    WHEN it is grabbed and resumed
    THEN /proc and ptrace show the same values for all of them, and the
    alarm still fires after resume."""
    work = tmp_path / "cwd"
    work.mkdir()
    src = procs.start(["python3", "-c", TASK, str(work), "1.5"], stdout=subprocess.PIPE)
    assert readline(src.stdout) == "ready\n"
    before = outside_view(src.pid)
    assert before["rseq"][0] != 0 and before["robust"][0] != 0   # glibc set them
    img = tmp_path / "img"
    r = run_umig("grab", "-o", str(img), str(src.pid))
    assert r.returncode == 0, r.stderr
    src.wait(timeout=5)
    # --detach prints the pid once the process runs untraced, on the same
    # stdout the resumed process writes to
    res = procs.start(umig_cmd("resume", "--detach", str(img)), stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE)
    assert readline(res.stdout, timeout=30) == f"{src.pid}\n"
    procs.adopt(src.pid)
    after = outside_view(src.pid)
    for key in before:
        assert after[key] == before[key], key
    assert readline(res.stdout, timeout=5) == "alarm\n"


def test_sleep_finishes_its_sleep(procs, tmp_path):
    """GIVEN `sleep 1.5` grabbed after 0.5 s
    WHEN resumed in the foreground
    THEN it sleeps about the remaining second (not the whole 1.5 s again)
    and umig exits 0 with it."""
    src = procs.start(["sleep", "1.5"])
    time.sleep(0.5)
    img = tmp_path / "img"
    r = run_umig("grab", "-o", str(img), str(src.pid))
    assert r.returncode == 0, r.stderr
    src.wait(timeout=5)
    t0 = time.monotonic()
    r = run_umig("resume", str(img))
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert 0.8 < took < 1.4, took
