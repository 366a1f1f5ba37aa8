#!/usr/bin/env python3
"""Thread-scaling benchmark: what each thread of a process adds to umig's
grab and resume.

    .venv/bin/python bench/threads.py [--threads 1,8,64,256] [--repeat 3]
        [--dir /dev/shm] [--json [FILE]]

For every thread count N it starts a fresh victim per run (threads_victim.c
beside this file: N threads blocked in a futex wait or nanosleep, plus
main), waits until every task sleeps, measures the limits on that victim
(PTRACE_SEIZE + PTRACE_INTERRUPT + PTRACE_GETREGS of every task, from this
process, best of 3 passes; the victim reports what pthread_create of its N
threads cost), then grabs it and resumes the image with the workers that
grab_resume.py uses (harness.py), counts the tasks of the resumed process
(N + 1 expected) and lets it check itself.
Per-thread cost is (t_N - t_1) / (N - 1) over the medians of --repeat runs,
against the target "per-thread cost under 1 ms".  See bench/README.md.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402  (processes, the grab/resume workers, medians, tables)

PER_THREAD_MAX_S = 0.001          # the target: per-thread cost under 1 ms
STOP_PASSES = 3                   # the ptrace stop limit is the best of these

PTRACE_GETREGS = 12
PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000                 # __WALL
USER_REGS_SIZE = 27 * 8           # struct user_regs_struct, x86_64

_libc = harness.libc
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]


def _ptrace(req: int, tid: int, data=None) -> None:
    if _libc.ptrace(req, tid, None, data) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"ptrace({req:#x}) of {tid}: {os.strerror(e)}")


# ------------------------------------------------------------------ the victim

def tids_of(pid: int) -> list[int]:
    """The process's tasks, leader first."""
    return sorted((int(t) for t in os.listdir(f"/proc/{pid}/task")),
                  key=lambda t: (t != pid, t))


def wait_blocked(pid: int, ntasks: int, timeout: float = 30) -> list[int]:
    """Wait until the process has ntasks tasks, all sleeping (state S)."""
    deadline = time.monotonic() + timeout
    while True:
        tids = tids_of(pid)
        states = [harness.proc_state(pid, t) for t in tids]
        if len(tids) == ntasks and all(s == "S" for s in states):
            return tids
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid}: {len(tids)} tasks (want {ntasks}), states "
                               f"{''.join(sorted(set(states)))} after {timeout:.0f} s")
        time.sleep(0.005)


def measure_stop(pid: int) -> float:
    """The limit for the freeze: seconds to PTRACE_SEIZE and PTRACE_INTERRUPT
    every task, wait for each interrupt stop and read its registers
    (PTRACE_GETREGS).  Detaching afterwards is not timed.  On error the
    victim is killed and its traced tasks are reaped here."""
    tids = tids_of(pid)
    regs = ctypes.create_string_buffer(USER_REGS_SIZE)
    seized: list[int] = []
    ok = False
    try:
        t0 = time.perf_counter()
        for tid in tids:
            _ptrace(PTRACE_SEIZE, tid)
            seized.append(tid)
            _ptrace(PTRACE_INTERRUPT, tid)
        for tid in tids:
            _, status = os.waitpid(tid, WALL)
            if not os.WIFSTOPPED(status) or status >> 16 != 0x80:   # PTRACE_EVENT_STOP
                raise RuntimeError(f"task {tid} of {pid}: status {status:#x}, not an "
                                   f"interrupt stop")
            _ptrace(PTRACE_GETREGS, tid, regs)
        took = time.perf_counter() - t0
        ok = True
    finally:
        if ok:
            for tid in seized:
                _ptrace(PTRACE_DETACH, tid)
        elif seized:
            os.kill(pid, signal.SIGKILL)
            for tid in seized[1:] + seized[:1]:       # the leader is reported last
                try:
                    os.waitpid(tid, WALL)
                except ChildProcessError:
                    pass
    return took


# ------------------------------------------------------------------ one run

def one_run(b: harness.Bench, n: int, run: int) -> dict:
    out = b.workdir / f"out-{n}-{run}.txt"
    image = b.workdir / f"img-{n}-{run}"
    res: dict = {"threads": n, "run": run}
    with b.recording(res, out, image):
        with out.open("w") as f:
            victim = b.start([b.build / "threads_victim", n], stdout=f)
        ready = harness.wait_line(out, 0, 60, victim).split()
        if ready[:2] != ["ready", str(n)]:
            raise RuntimeError(f"victim said {' '.join(ready)!r}")
        res["create_s"] = int(ready[2]) / 1e6
        tids = wait_blocked(victim.pid, n + 1)
        res["stop_s"] = float("inf")
        for _ in range(STOP_PASSES):
            res["stop_s"] = min(res["stop_s"], measure_stop(victim.pid))
            wait_blocked(victim.pid, n + 1)      # back in their calls after the detach
        res["rss_bytes"] = harness.rss_bytes(victim.pid)

        res["grab"] = b.grab(victim, image)     # the victim is reaped: its tids are free
        worker, resumed = b.resume(image)
        res["resume"] = resumed

        after = tids_of(resumed["pid"])
        res["tasks_after"] = len(after)
        res["same_tids"] = after == tids
        os.kill(resumed["pid"], signal.SIGUSR1)
        verdict = harness.wait_line(out, 1, 60)
        res["verify"] = "PASS" if verdict == f"PASS {n}" else f"FAIL ({verdict!r})"
        b.end_resume(worker)
    return res


# ------------------------------------------------------------------ summary

@dataclass
class Row(harness.Row):
    threads: int

    @property
    def label(self) -> str:
        return f"{self.threads} thread" + ("s" if self.threads != 1 else "")


TIMES = ("grab_wall_s", "frozen_s", "resume_s", "stop_s", "create_s")


def summarize(row: Row) -> None:
    ok = row.ok_runs()
    if not ok:
        return
    med = harness.median
    m = row.med
    m["rss_bytes"] = med(r["rss_bytes"] for r in ok)
    m["grab_wall_s"] = med(r["grab"]["wall_s"] for r in ok)
    harness.medians(m, ok, "grab", ("frozen_s", "image_bytes", "vmas"))
    harness.medians(m, ok, "resume", ("resume_s",))
    harness.phase_medians(m, ok)
    m["stop_s"] = med(r["stop_s"] for r in ok)
    m["create_s"] = med(r["create_s"] for r in ok)
    m["tasks"] = harness.tally(ok, lambda r: r["tasks_after"] == row.threads + 1)
    m["same_tids"] = harness.tally(ok, lambda r: r["same_tids"])
    m["verify"] = harness.tally(ok, lambda r: r["verify"] == "PASS")
    for r in ok:
        if r["tasks_after"] != row.threads + 1:
            row.errors.append(f"run {r['run'] + 1}: the resumed process has "
                              f"{r['tasks_after']} tasks, not {row.threads + 1}")
        if r["verify"] != "PASS":
            row.errors.append(f"run {r['run'] + 1}: resumed victim: {r['verify']}")


def per_thread(rows: list[Row]) -> None:
    """(t_N - t_base) / (N - base) for every row above the smallest N that
    has medians, and the target checks on them."""
    for row in harness.per_count(rows, lambda r: r.threads, TIMES):
        for what, key in (("frozen", "frozen_s"), ("resume", "resume_s")):
            row.check(f"{what} per-thread cost < 1 ms", row.per[key], PER_THREAD_MAX_S, "s",
                      strict=True)


def print_tables(rows: list[Row], meta: dict, console) -> None:
    from harness import ms, red_unless_all

    def ms1(secs):
        return ms(secs, 1)

    def umig(row, m):
        return [row.label, red_unless_all(m["tasks"]), m["same_tids"], f"{m['vmas']:.0f}",
                harness.mib(m["image_bytes"]), ms1(m["grab_wall_s"]), ms1(m["frozen_s"]),
                ms1(m["resume_s"]),
                f"{ms1(m['resume_planned_s'])} / {ms1(m['resume_mapped_s'])} / "
                f"{ms1(m['resume_filled_s'])} / {ms1(m['resume_ready_s'])}",
                red_unless_all(m["verify"])]
    harness.print_table(
        console, f"umig grab/resume of N blocked threads: median of {meta['repeat']} runs "
                 f"({meta['kernel']}, {meta['cpus']} vCPUs, images in {meta['dir']})",
        ["threads", "tasks after\nresume = N+1", "same\ntids", "VMAs", "image\nMiB",
         "grab\nwall ms", "frozen\nms", "resume\nms",
         "resume: planned / mapped /\nfilled / ready ms", "self-\ncheck"], rows, umig,
        errors=True)

    def per_thread(row, m):
        if not row.per:
            return [row.label + " (base)", *(["-"] * 3), f"({ms(m['stop_s'], 2)} total)",
                    f"({ms(m['create_s'], 2)} total)", *(["-"] * 3)]
        q = row.per
        return [row.label, ms(q["grab_wall_s"], 3), ms(q["frozen_s"], 3), ms(q["resume_s"], 3),
                ms(q["stop_s"], 3), ms(q["create_s"], 3),
                harness.ratio(q["grab_wall_s"], q["stop_s"], 1),
                harness.ratio(q["frozen_s"], q["stop_s"], 1),
                harness.ratio(q["resume_s"], q["create_s"], 1)]
    harness.print_table(
        console, "per-thread cost (t_N - t_1) / (N - 1) in ms, limits measured on the same "
                 "victims in the same runs, and umig's cost over them",
        ["threads", "grab wall", "frozen", "resume", "limit: ptrace\nstop + regs",
         "limit: victim's\npthread_create", "grab wall /\nstop", "frozen /\nstop",
         "resume /\ncreate"], rows, per_thread)
    harness.print_checks(console, rows, "threads", lambda v, unit: f"{ms(v, 3)} ms",
                         lambda v, unit: f"{ms(v, 0)} ms")


# ------------------------------------------------------------------ main

def build_victim(build: Path) -> None:
    src = HERE / "threads_victim.c"
    r = subprocess.run(["gcc", "-O2", "-Wall", "-pthread", "-o", str(build / "threads_victim"),
                        str(src)], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"gcc {src}: {r.stderr.strip()}")


def progress(res: dict) -> str:
    return (f"grab wall {res['grab']['wall_s'] * 1000:.1f} ms, frozen "
            f"{res['grab']['frozen_s'] * 1000:.1f} ms, resume "
            f"{res['resume']['resume_s'] * 1000:.1f} ms, "
            f"{res['tasks_after']} tasks after resume, {res['verify']}")


def main(argv: list[str] | None = None) -> int:
    ap = harness.parser(__doc__)
    ap.add_argument("--threads", default="1,8,64,256",
                    help="thread counts N, besides main (default 1,8,64,256); the "
                         "smallest is the base of the per-thread cost")
    ap.add_argument("--repeat", type=int, default=3, help="runs per N (default 3)")
    harness.add_output_options(ap)
    args = ap.parse_args(argv)
    counts = harness.counts(ap, args.threads, "--threads")

    console = harness.console_for(args)
    if os.geteuid() != 0:
        console.print("[yellow]not root: grab/resume may be refused by ptrace rules, and "
                      "resume cannot keep the tids[/yellow]")
    harness.become_reaper()

    t_start = time.monotonic()
    b = harness.Bench.create(args.dir, "umig-bench-threads-", Path(__file__).resolve())
    rows, interrupted = harness.run_rows(
        b, (Row(n) for n in counts), args.repeat, console, prepare=build_victim,
        one_run=lambda _, row, i: one_run(b, row.threads, i), progress=progress,
        summarize=summarize)
    per_thread(rows)

    meta = harness.run_meta(
        args.repeat, args.dir, t_start,
        per_thread="(median t_N - median t_base) / (N - base), base = smallest N",
        stop="PTRACE_SEIZE + PTRACE_INTERRUPT of every task, waitpid for each "
             "interrupt stop, PTRACE_GETREGS; from the bench process, before the grab; "
             "best of 3 passes",
        create="the victim's own pthread_create of its N threads until all met at a "
               "barrier")
    harness.report(console, args, rows, meta, print_tables, lambda r: {"threads": r.threads},
                   per="per_thread")
    failed = any(r.errors for r in rows) or interrupted or any(not r.med for r in rows)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(harness.entry(main))
