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
threads cost), then grabs it and resumes the image with grab_resume.py's
workers, counts the tasks of the resumed process (N + 1 expected) and lets
it check itself.
Per-thread cost is (t_N - t_1) / (N - 1) over the medians of --repeat runs,
against the target "per-thread cost under 1 ms".  See bench/README.md.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import grab_resume as gr  # noqa: E402  (Bench, the grab/resume workers, helpers)

MiB = gr.MiB
PER_THREAD_MAX_S = 0.001          # the target: per-thread cost under 1 ms
STOP_PASSES = 3                   # the ptrace stop limit is the best of these

PTRACE_GETREGS = 12
PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000                 # __WALL
USER_REGS_SIZE = 27 * 8           # struct user_regs_struct, x86_64

_libc = gr._libc
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


def _state(pid: int, tid: int) -> str:
    with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0].decode()


def wait_blocked(pid: int, ntasks: int, timeout: float = 30) -> list[int]:
    """Wait until the process has ntasks tasks, all sleeping (state S)."""
    deadline = time.monotonic() + timeout
    while True:
        tids = tids_of(pid)
        states = [_state(pid, t) for t in tids]
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

def one_run(b: gr.Bench, n: int, run: int) -> dict:
    out = b.workdir / f"out-{n}-{run}.txt"
    image = b.workdir / f"img-{n}-{run}"
    res: dict = {"threads": n, "run": run}
    try:
        with out.open("w") as f:
            victim = b.start([b.build / "threads_victim", n], stdout=f)
        ready = gr._wait_line(out, 0, 60, victim).split()
        if ready[:2] != ["ready", str(n)]:
            raise RuntimeError(f"victim said {' '.join(ready)!r}")
        res["create_s"] = int(ready[2]) / 1e6
        tids = wait_blocked(victim.pid, n + 1)
        res["stop_s"] = float("inf")
        for _ in range(STOP_PASSES):
            res["stop_s"] = min(res["stop_s"], measure_stop(victim.pid))
            wait_blocked(victim.pid, n + 1)      # back in their calls after the detach
        res["rss_bytes"] = gr._rss_bytes(victim.pid)

        g = b.start(gr._worker_argv("grab", victim.pid, image), stdout=subprocess.PIPE)
        line = g.stdout.readline()
        g.wait(timeout=120)
        grab = json.loads(line) if line else {"error": f"grab worker exited {g.returncode}"}
        if "error" in grab:
            raise RuntimeError(f"grab: {grab['error']}")
        res["grab"] = grab
        victim.wait(timeout=20)         # killed by grab; reaped here so its tids are free

        r = b.start(gr._worker_argv("resume", image), stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE)
        line = r.stdout.readline()
        resumed = json.loads(line) if line else {"error": f"resume worker exited "
                                                          f"{r.poll()}"}
        if "error" in resumed:
            raise RuntimeError(f"resume: {resumed['error']}")
        b.pids.add(resumed["pid"])
        res["resume"] = resumed

        after = tids_of(resumed["pid"])
        res["tasks_after"] = len(after)
        res["same_tids"] = after == tids
        os.kill(resumed["pid"], signal.SIGUSR1)
        verdict = gr._wait_line(out, 1, 60)
        res["verify"] = "PASS" if verdict == f"PASS {n}" else f"FAIL ({verdict!r})"
        r.stdin.write(b"kill\n")
        r.stdin.close()
        r.wait(timeout=30)
    except Exception as e:
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        b.cleanup()
        for p in (out, image):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
    return res


# ------------------------------------------------------------------ summary

@dataclass
class Row:
    threads: int
    runs: list = field(default_factory=list)
    med: dict = field(default_factory=dict)
    per: dict = field(default_factory=dict)        # per-thread cost against the base row
    checks: list = field(default_factory=list)
    errors: list = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.threads} thread" + ("s" if self.threads != 1 else "")


TIMES = ("grab_wall_s", "frozen_s", "resume_s", "stop_s", "create_s")


def summarize(row: Row) -> None:
    ok = [r for r in row.runs if "error" not in r]
    row.errors = [r["error"] for r in row.runs if "error" in r]
    if not ok:
        return
    m = row.med
    m["n"] = len(ok)
    m["rss_bytes"] = gr._median(r["rss_bytes"] for r in ok)
    m["grab_wall_s"] = gr._median(r["grab"]["wall_s"] for r in ok)
    m["frozen_s"] = gr._median(r["grab"]["frozen_s"] for r in ok)
    m["image_bytes"] = gr._median(r["grab"]["image_bytes"] for r in ok)
    m["vmas"] = gr._median(r["grab"]["vmas"] for r in ok)
    m["resume_s"] = gr._median(r["resume"]["resume_s"] for r in ok)
    for ph in ("planned", "mapped", "filled", "ready", "running"):
        m[f"resume_{ph}_s"] = gr._median(r["resume"]["phases_s"].get(ph) for r in ok)
    m["stop_s"] = gr._median(r["stop_s"] for r in ok)
    m["create_s"] = gr._median(r["create_s"] for r in ok)
    m["tasks"] = f"{sum(r['tasks_after'] == row.threads + 1 for r in ok)}/{len(ok)}"
    m["same_tids"] = f"{sum(r['same_tids'] for r in ok)}/{len(ok)}"
    m["verify"] = f"{sum(r['verify'] == 'PASS' for r in ok)}/{len(ok)}"
    for r in ok:
        if r["tasks_after"] != row.threads + 1:
            row.errors.append(f"run {r['run'] + 1}: the resumed process has "
                              f"{r['tasks_after']} tasks, not {row.threads + 1}")
        if r["verify"] != "PASS":
            row.errors.append(f"run {r['run'] + 1}: resumed victim: {r['verify']}")


def per_thread(rows: list[Row]) -> None:
    """(t_N - t_base) / (N - base) for every row above the smallest N that
    has medians, and the target checks on them."""
    done = [r for r in rows if r.med]
    if len(done) < 2:
        return
    base = min(done, key=lambda r: r.threads)
    for row in done:
        if row is base:
            continue
        k = row.threads - base.threads
        row.per = {t: (row.med[t] - base.med[t]) / k for t in TIMES}
        row.per["base"] = base.threads
        for what, key in (("frozen", "frozen_s"), ("resume", "resume_s")):
            v = row.per[key]
            row.checks.append({"target": f"{what} per-thread cost < 1 ms", "measured": v,
                               "limit": PER_THREAD_MAX_S, "unit": "s",
                               "ratio": v / PER_THREAD_MAX_S, "met": v < PER_THREAD_MAX_S})


def _ms(secs: float | None, digits: int = 1) -> str:
    return "-" if secs is None else f"{secs * 1000:.{digits}f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}" if b > 0 else "-"


def print_tables(rows: list[Row], meta: dict, console) -> None:
    from rich.table import Table
    t = Table(title=f"umig grab/resume of N blocked threads: median of {meta['repeat']} runs "
                    f"({meta['kernel']}, {meta['cpus']} vCPUs, images in {meta['dir']})")
    cols = ["threads", "tasks after\nresume = N+1", "same\ntids", "VMAs", "image\nMiB",
            "grab\nwall ms", "frozen\nms", "resume\nms",
            "resume: planned / mapped /\nfilled / ready ms", "self-\ncheck"]
    for i, name in enumerate(cols):
        t.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        m = row.med
        if not m:
            t.add_row(row.label, *(["-"] * (len(cols) - 2)), "[red]error[/red]")
            continue

        def red_unless_all(s: str) -> str:
            a, b = s.split("/")
            return s if a == b else f"[red]{s}[/red]"
        t.add_row(row.label, red_unless_all(m["tasks"]), m["same_tids"], f"{m['vmas']:.0f}",
                  f"{m['image_bytes'] / MiB:.1f}", _ms(m["grab_wall_s"]), _ms(m["frozen_s"]),
                  _ms(m["resume_s"]),
                  f"{_ms(m['resume_planned_s'])} / {_ms(m['resume_mapped_s'])} / "
                  f"{_ms(m['resume_filled_s'])} / "
                  f"{_ms(m['resume_ready_s'])}",
                  red_unless_all(m["verify"]))
    console.print(t)

    p = Table(title="per-thread cost (t_N - t_1) / (N - 1) in ms, limits measured on the same "
                    "victims in the same runs, and umig's cost over them")
    cols = ["threads", "grab wall", "frozen", "resume", "limit: ptrace\nstop + regs",
            "limit: victim's\npthread_create", "grab wall /\nstop", "frozen /\nstop",
            "resume /\ncreate"]
    for i, name in enumerate(cols):
        p.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        m = row.med
        if not m:
            continue
        if not row.per:
            p.add_row(row.label + " (base)", *(["-"] * 3),
                      f"({_ms(m['stop_s'], 2)} total)", f"({_ms(m['create_s'], 2)} total)",
                      *(["-"] * 3))
            continue
        q = row.per
        p.add_row(row.label, _ms(q["grab_wall_s"], 3), _ms(q["frozen_s"], 3),
                  _ms(q["resume_s"], 3), _ms(q["stop_s"], 3), _ms(q["create_s"], 3),
                  _ratio(q["grab_wall_s"], q["stop_s"]), _ratio(q["frozen_s"], q["stop_s"]),
                  _ratio(q["resume_s"], q["create_s"]))
    console.print(p)

    c = Table(title="targets (measured vs limit, from the medians above)")
    for name, justify in (("threads", "left"), ("target", "left"), ("measured", "right"),
                          ("limit", "right"), ("ratio", "right"), ("", "left")):
        c.add_column(name, justify=justify)
    met = missed = 0
    for row in rows:
        for ch in row.checks:
            met += ch["met"]
            missed += not ch["met"]
            c.add_row(row.label, ch["target"], f"{_ms(ch['measured'], 3)} ms",
                      f"{_ms(ch['limit'], 0)} ms", f"{ch['ratio']:.2f}",
                      "[green]met[/green]" if ch["met"] else "[bold red]NOT met[/bold red]")
    console.print(c)
    console.print(f"{met} targets met, {missed} NOT met.")
    for row in rows:
        for e in row.errors:
            console.print(f"[red]{row.label}: {e}[/red]")


# ------------------------------------------------------------------ main

def build_victim(build: Path) -> None:
    src = HERE / "threads_victim.c"
    r = subprocess.run(["gcc", "-O2", "-Wall", "-pthread", "-o", str(build / "threads_victim"),
                        str(src)], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"gcc {src}: {r.stderr.strip()}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,8,64,256",
                    help="thread counts N, besides main (default 1,8,64,256); the "
                         "smallest is the base of the per-thread cost")
    ap.add_argument("--repeat", type=int, default=3, help="runs per N (default 3)")
    ap.add_argument("--dir", default="/dev/shm",
                    help="where images go (a temporary directory is made in it and "
                         "removed; default /dev/shm)")
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE",
                    help="also write all runs and medians as JSON to FILE (or, without "
                         "FILE, to stdout, with the tables on stderr)")
    args = ap.parse_args(argv)
    counts = sorted({int(s) for s in args.threads.split(",") if s})
    if not counts or counts[0] < 1:
        ap.error("--threads: counts of 1 or more")

    from rich.console import Console
    to_stderr = args.json == "-"
    tty = (sys.stderr if to_stderr else sys.stdout).isatty()
    console = Console(stderr=to_stderr, width=None if tty else 180)
    if os.geteuid() != 0:
        console.print("[yellow]not root: grab/resume may be refused by ptrace rules, and "
                      "resume cannot keep the tids[/yellow]")

    def on_term(sig, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    _libc.prctl(gr.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    build = Path(tempfile.mkdtemp(prefix="umig-bench-build-"))
    workdir = Path(tempfile.mkdtemp(prefix="umig-bench-threads-", dir=args.dir))
    rows: list[Row] = []
    t_start = time.monotonic()
    b = gr.Bench(workdir, build)
    interrupted = False
    try:
        build_victim(build)
        for n in counts:
            row = Row(n)
            rows.append(row)
            for i in range(args.repeat):
                res = one_run(b, n, i)
                row.runs.append(res)
                if "error" in res:
                    console.print(f"  {row.label} run {i + 1}: [red]{res['error']}[/red]")
                else:
                    console.print(
                        f"  {row.label} run {i + 1}: grab wall "
                        f"{res['grab']['wall_s'] * 1000:.1f} ms, frozen "
                        f"{res['grab']['frozen_s'] * 1000:.1f} ms, resume "
                        f"{res['resume']['resume_s'] * 1000:.1f} ms, "
                        f"{res['tasks_after']} tasks after resume, {res['verify']}",
                        highlight=False)
            summarize(row)
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted: showing what was measured[/yellow]")
        for row in rows:
            if not row.med:
                summarize(row)
    finally:
        b.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(build, ignore_errors=True)
    per_thread(rows)

    meta = {"repeat": args.repeat, "kernel": platform.release(), "cpus": os.cpu_count(),
            "dir": args.dir, "python": platform.python_version(),
            "total_s": time.monotonic() - t_start,
            "per_thread": "(median t_N - median t_base) / (N - base), base = smallest N",
            "stop": "PTRACE_SEIZE + PTRACE_INTERRUPT of every task, waitpid for each "
                    "interrupt stop, PTRACE_GETREGS; from the bench process, before the grab; "
                    "best of 3 passes",
            "create": "the victim's own pthread_create of its N threads until all met at a "
                      "barrier"}
    print_tables(rows, meta, console)
    console.print(f"total {meta['total_s']:.0f} s", highlight=False)
    if args.json:
        doc = {"meta": meta, "rows": [{"threads": r.threads, "median": r.med,
                                       "per_thread": r.per, "checks": r.checks,
                                       "errors": r.errors, "runs": r.runs} for r in rows]}
        text = json.dumps(doc, indent=1)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    failed = any(r.errors for r in rows) or interrupted or any(not r.med for r in rows)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
