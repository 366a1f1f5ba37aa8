"""What the benches in this folder share: the processes they start and
clean up, the grab and resume workers and how a run drives them, medians,
target checks, and the parts of the tables that are alike.

grab_resume.py, threads.py and trees.py import it.  A bench's workers run
as `python bench/<that bench>.py --worker ...`: each bench's main hands
`--worker` to worker_main() here, so a worker process imports what its bench
imports and nothing else (its peak RSS, VmHWM, is one of the figures).
rich is imported only where tables are made, never in a worker.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30
PR_SET_CHILD_SUBREAPER = 36
WORKER_WAIT_S = 120               # for a grab worker to finish
PHASES = ("planned", "mapped", "filled", "ready", "running")   # umig's resume timings

libc = ctypes.CDLL(None, use_errno=True)


# ------------------------------------------------------------------ /proc

def _proc_kib(path: str, key: str) -> int | None:
    """The `key:  N kB` line of a /proc file, in bytes."""
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None


def vm_hwm() -> int:
    """This process's peak resident set (VmHWM), in bytes."""
    return _proc_kib("/proc/self/status", "VmHWM") or 0


def rss_bytes(pid: int) -> int:
    return _proc_kib(f"/proc/{pid}/status", "VmRSS") or 0


def pss_bytes(pid: int) -> int:
    v = _proc_kib(f"/proc/{pid}/smaps_rollup", "Pss")
    if v is None:
        raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")
    return v


def proc_state(pid: int, tid: int | None = None) -> str:
    """The state letter of a process (or of one of its tasks), "gone" if it
    is not there."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        with open(path, "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return "gone"


def kill_all(pids) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ------------------------------------------------------------------ waiting

def wait_for(what: str, cond, timeout: float, proc=None):
    """cond()'s first true value, polled every 10 ms; RuntimeError naming
    what after timeout, or as soon as proc (a victim) has exited."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"victim exited with {proc.returncode} while waiting for "
                               f"{what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} after {timeout:.0f} s")
        time.sleep(0.01)


def lines(path: Path) -> list[str]:
    """The complete lines of a victim's output file."""
    text = path.read_text()
    return text[:text.rfind("\n") + 1].splitlines()


def wait_line(path: Path, index: int, timeout: float, proc=None) -> str:
    return wait_for(f"line {index} in {path}", lambda: lines(path)[index:index + 1],
                    timeout, proc)[0]


# ------------------------------------------------------------------ workers

def worker_grab(pid: int, image: str, tree: bool = False) -> dict:
    """In a fresh child: grab pid (with tree, and its descendants) into
    image (finish=kill), as `umig grab [--tree] -o IMAGE` does (preallocated,
    renamed); report GrabStats and this process's peak RSS."""
    t0 = time.perf_counter()
    from umig import capture
    from umig.image.stream import Output
    base = vm_hwm()
    out = Output(image)
    try:
        st = capture.grab(pid, out.fd, finish="kill", on_complete=out.commit,
                          prepare=out.preallocate, tree=tree, write_ahead=out.seekable)
    except BaseException:
        out.abort()
        raise
    finally:
        out.close()
    res = {"frozen_s": st.frozen_s, "wall_s": st.wall_s, "image_bytes": st.image_bytes,
           "pages": st.pages, "data_pages": st.data_pages, "vmas": st.vmas}
    if tree:
        res["processes"] = st.processes
    else:
        res["fds"] = st.fds
    res["hwm_bytes"] = vm_hwm()
    res["hwm_after_import_bytes"] = base
    res["import_s"] = time.perf_counter() - t0 - st.wall_s
    return res


def worker_resume(image: str) -> None:
    """In a fresh child: resume image, report timings and this process's
    peak RSS, then wait for "kill" on stdin and kill and reap the resumed
    process (it is our child)."""
    from umig.restore import ResumeOptions, resume
    base = vm_hwm()
    fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    try:
        r = resume(fd, ResumeOptions())
    finally:
        os.close(fd)
    t = r.timings
    out = {"pid": r.pid, "same_pid": r.same_pid, "vdso_mode": r.vdso_mode,
           "resume_s": t["running"] - t["start"],
           "phases_s": {k: v - t["start"] for k, v in t.items() if k != "start"},
           "hwm_bytes": vm_hwm(), "hwm_after_import_bytes": base}
    print(json.dumps(out), flush=True)
    try:
        sys.stdin.readline()
    finally:
        os.kill(r.pid, signal.SIGKILL)
        os.waitpid(r.pid, 0)


def worker_main(argv: list[str]) -> int:
    """`--worker grab PID IMAGE [--tree]` or `--worker resume IMAGE`."""
    try:
        if argv[0] == "grab":
            print(json.dumps(worker_grab(int(argv[1]), argv[2], tree="--tree" in argv[3:])),
                  flush=True)
        elif argv[0] == "resume":
            worker_resume(argv[1])
        else:
            raise SystemExit(f"unknown worker {argv[0]}")
    except Exception as e:          # one line the parent can show
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        return 1
    return 0


# ------------------------------------------------------------------ processes

class Bench:
    """Everything started here is killed and reaped in cleanup(); close()
    also removes the build and work directories.  script is the bench that
    runs the workers (`script --worker ...`)."""

    def __init__(self, workdir: Path, build: Path, script: Path):
        self.workdir = workdir
        self.build = build
        self.script = script
        self.popens: list[subprocess.Popen] = []
        self.pids: set[int] = set()

    @classmethod
    def create(cls, directory: str, prefix: str, script: Path) -> Bench:
        """With a new build directory (for gcc's output) and a new work
        directory in directory (victims' output and images)."""
        build = Path(tempfile.mkdtemp(prefix="umig-bench-build-"))
        return cls(Path(tempfile.mkdtemp(prefix=prefix, dir=directory)), build, script)

    def start(self, argv, **kw) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        kw.setdefault("close_fds", True)
        p = subprocess.Popen([str(a) for a in argv], **kw)
        self.popens.append(p)
        return p

    def _worker(self, *args, **kw) -> subprocess.Popen:
        return self.start([sys.executable, self.script, "--worker", *args], **kw)

    def grab(self, victim: subprocess.Popen, image: Path, tree: bool = False) -> dict:
        """What worker_grab reports for victim (finish=kill), run in a fresh
        child; the killed victim is then reaped here, so its pid is free."""
        g = self._worker("grab", victim.pid, image, *(["--tree"] if tree else []),
                         stdout=subprocess.PIPE)
        line = g.stdout.readline()
        g.wait(timeout=WORKER_WAIT_S)
        grab = json.loads(line) if line else {"error": f"grab worker exited {g.returncode}"}
        if "error" in grab:
            raise RuntimeError(f"grab: {grab['error']}")
        victim.wait(timeout=20)
        return grab

    def resume(self, image: Path) -> tuple[subprocess.Popen, dict]:
        """Resume image in a fresh child: the worker and what it reports.
        The resumed process (pid) runs until end_resume(worker)."""
        r = self._worker("resume", image, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = r.stdout.readline()
        resumed = json.loads(line) if line else {"error": f"resume worker exited "
                                                          f"{r.poll()}"}
        if "error" in resumed:
            raise RuntimeError(f"resume: {resumed['error']}")
        self.pids.add(resumed["pid"])
        return r, resumed

    @staticmethod
    def end_resume(worker: subprocess.Popen) -> None:
        """The resume worker kills and reaps the resumed process and exits."""
        worker.stdin.write(b"kill\n")
        worker.stdin.close()
        worker.wait(timeout=30)

    @contextmanager
    def recording(self, res: dict, *paths: Path):
        """Around one run: an exception ends it as res["error"]; then every
        process is killed and reaped and the files are removed."""
        try:
            yield
        except Exception as e:
            res["error"] = f"{type(e).__name__}: {e}"
        finally:
            self.cleanup()
            for p in paths:
                p.unlink(missing_ok=True)

    def cleanup(self) -> None:
        for p in self.popens:
            if p.poll() is None:
                try:
                    p.kill()
                except ProcessLookupError:
                    pass
        kill_all(self.pids)
        for p in self.popens:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            for f in (p.stdin, p.stdout, p.stderr):
                if f:
                    f.close()
        self.popens.clear()
        deadline = time.monotonic() + 5
        for pid in self.pids:          # orphans come to us: we are a subreaper
            while time.monotonic() < deadline:
                try:
                    got, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if got:
                    break
                time.sleep(0.01)
        self.pids.clear()
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break

    def close(self) -> None:
        self.cleanup()
        shutil.rmtree(self.workdir, ignore_errors=True)
        shutil.rmtree(self.build, ignore_errors=True)


# ------------------------------------------------------------------ the runs

@dataclass(kw_only=True)
class Row:
    """One row of the tables: the runs of one setting and their summary.
    A bench's row adds its setting and a label."""
    runs: list = field(default_factory=list)
    med: dict = field(default_factory=dict)
    per: dict = field(default_factory=dict)        # cost per unit against the base row
    checks: list = field(default_factory=list)
    errors: list = field(default_factory=list)

    def ok_runs(self, numbered: bool = False) -> list[dict]:
        """The runs that worked (med["n"] counts them); the others' errors
        go to errors, with their run number when numbered."""
        ok = [r for r in self.runs if "error" not in r]
        self.errors = [(f"run {r['run'] + 1}: " if numbered else "") + r["error"]
                       for r in self.runs if "error" in r]
        if ok:
            self.med["n"] = len(ok)
        return ok

    def check(self, target: str, measured: float, limit: float, unit: str,
              strict: bool = False) -> None:
        """A target: met when measured <= limit (< with strict)."""
        ratio = measured / limit if limit else float("inf")
        met = measured < limit if strict else measured <= limit
        self.checks.append({"target": target, "measured": measured, "limit": limit,
                            "unit": unit, "ratio": ratio, "met": bool(met)})


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def medians(m: dict, ok: list[dict], part: str, keys, prefix: str = "") -> None:
    """m[prefix + key] = the median of run[part][key] over the runs ok."""
    for k in keys:
        m[prefix + k] = median(r[part][k] for r in ok)


def phase_medians(m: dict, ok: list[dict], phases=PHASES) -> None:
    """m["resume_<phase>_s"]: the medians of the resume worker's phases."""
    for ph in phases:
        m[f"resume_{ph}_s"] = median(r["resume"]["phases_s"].get(ph) for r in ok)


def tally(ok: list[dict], cond) -> str:
    """"k/n": in how many of the runs ok cond(run) holds."""
    return f"{sum(bool(cond(r)) for r in ok)}/{len(ok)}"


def per_count(rows: list[Row], count, keys) -> list[Row]:
    """(x_N - x_base) / (N - base) over the medians, N = count(row), into
    row.per for every row with medians above the smallest N (the base);
    returns those rows."""
    done = [r for r in rows if r.med]
    if len(done) < 2:
        return []
    base = min(done, key=count)
    above = [r for r in done if r is not base]
    for row in above:
        k = count(row) - count(base)
        row.per = {t: (row.med[t] - base.med[t]) / k for t in keys}
        row.per["base"] = count(base)
    return above


def run_rows(b: Bench, plan, repeat: int, console, *, prepare, one_run, progress,
             summarize) -> tuple[list[Row], bool]:
    """ctx = prepare(b.build), then for every row of plan (made as it is
    reached) repeat times res = one_run(ctx, row, i), a line per run
    (progress(row, res), or its error) and summarize(row).  Ctrl-C or SIGTERM
    stops it and the rows so far are summarized.  b is closed at the end.
    Returns the rows and whether it was interrupted."""
    rows: list[Row] = []
    interrupted = False
    try:
        ctx = prepare(b.build)
        for row in plan:
            rows.append(row)
            for i in range(repeat):
                res = one_run(ctx, row, i)
                row.runs.append(res)
                if "error" in res:
                    console.print(f"  {row.label} run {i + 1}: [red]{res['error']}[/red]")
                else:
                    console.print(f"  {row.label} run {i + 1}: {progress(res)}",
                                  highlight=False)
            summarize(row)
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted: showing what was measured[/yellow]")
        for row in rows:
            if not row.med:
                summarize(row)
    finally:
        b.close()
    return rows, interrupted


# ------------------------------------------------------------------ main

def entry(main) -> int:
    """A bench's command line: `--worker ...` runs a worker, anything else
    main(argv)."""
    argv = sys.argv[1:]
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1:])
    return main(argv)


def parser(doc: str):
    """The argument parser of a bench, described by its docstring's first
    paragraph."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0])


def counts(ap, text: str, option: str) -> list[int]:
    """The distinct counts of a comma-separated option, sorted; each 1 or
    more."""
    ns = sorted({int(s) for s in text.split(",") if s})
    if not ns or ns[0] < 1:
        ap.error(f"{option}: counts of 1 or more")
    return ns


def add_output_options(ap) -> None:
    ap.add_argument("--dir", default="/dev/shm",
                    help="where images go (a temporary directory is made in it and "
                         "removed; default /dev/shm)")
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE",
                    help="also write all runs and medians as JSON to FILE (or, without "
                         "FILE, to stdout, with the tables on stderr)")


def console_for(args):
    """The tables go to stdout, or to stderr when the JSON goes to stdout."""
    from rich.console import Console
    to_stderr = args.json == "-"
    tty = (sys.stderr if to_stderr else sys.stdout).isatty()
    return Console(stderr=to_stderr, width=None if tty else 180)


def become_reaper() -> None:
    """SIGTERM stops the bench as Ctrl-C does (and so cleans up), and the
    orphans of what it starts come to it (child subreaper)."""
    def on_term(sig, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def run_meta(repeat: int, directory: str, t_start: float, lead: dict | None = None,
             **more) -> dict:
    return {"repeat": repeat, **(lead or {}), "kernel": platform.release(),
            "cpus": os.cpu_count(), "dir": directory, "python": platform.python_version(),
            "total_s": time.monotonic() - t_start, **more}


def report(console, args, rows: list[Row], meta: dict, print_tables, head,
           per: str | None = None) -> None:
    """The tables, the total time and, with --json, meta and every row as
    JSON (to the file, or to stdout for "-"): head(row), the medians, the
    per-unit costs as per, the checks, the errors and the runs."""
    print_tables(rows, meta, console)
    console.print(f"total {meta['total_s']:.0f} s", highlight=False)
    if not args.json:
        return
    text = json.dumps({"meta": meta, "rows": [
        {**head(r), "median": r.med, **({per: r.per} if per else {}), "checks": r.checks,
         "errors": r.errors, "runs": r.runs} for r in rows]}, indent=1)
    if args.json == "-":
        print(text)
    else:
        Path(args.json).write_text(text + "\n")


# ------------------------------------------------------------------ tables

def table(title: str, cols: list[str], left=(0,)):
    """A rich table with these columns, right-aligned but for those whose
    index is in left."""
    from rich.table import Table
    t = Table(title=title)
    for i, name in enumerate(cols):
        t.add_column(name, justify="left" if i in left else "right")
    return t


def print_table(console, title: str, cols: list[str], rows: list[Row], cells,
                errors: bool = False) -> None:
    """A table with a line cells(row, row.med) for every row with medians;
    with errors, a row without medians gets a line that says error."""
    t = table(title, cols)
    for row in rows:
        if row.med:
            t.add_row(*cells(row, row.med))
        elif errors:
            t.add_row(row.label, *(["-"] * (len(cols) - 2)), "[red]error[/red]")
    console.print(t)


def ms(secs: float | None, digits: int = 0) -> str:
    return "-" if secs is None else f"{secs * 1000:.{digits}f}"


def mib(nbytes: float | None, digits: int = 1) -> str:
    return "-" if nbytes is None else f"{nbytes / MiB:.{digits}f}"


def ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    return f"{a / b:.{digits}f}" if a is not None and b is not None and b > 0 else "-"


def throughput(secs: float | None, nbytes: float) -> str:
    """"ms (GiB/s)"."""
    return f"{secs * 1000:.0f} ({nbytes / GiB / secs:.2f})" if secs else "-"


def red_unless_all(s: str) -> str:
    """A "k/n" tally, red unless k == n."""
    a, b = s.split("/")
    return s if a == b else f"[red]{s}[/red]"


def print_checks(console, rows: list[Row], first: str, fmt, fmt_limit=None) -> None:
    """The targets table (fmt(value, unit) for the measured value,
    fmt_limit for the limit, fmt by default), the count of targets met and
    missed, then every row's errors."""
    fmt_limit = fmt_limit or fmt
    c = table("targets (measured vs limit, from the medians above)",
              [first, "target", "measured", "limit", "ratio", ""], left=(0, 1, 5))
    met = missed = 0
    for row in rows:
        for ch in row.checks:
            met += ch["met"]
            missed += not ch["met"]
            c.add_row(row.label, ch["target"], fmt(ch["measured"], ch["unit"]),
                      fmt_limit(ch["limit"], ch["unit"]), f"{ch['ratio']:.2f}",
                      "[green]met[/green]" if ch["met"] else "[bold red]NOT met[/bold red]")
    console.print(c)
    console.print(f"{met} targets met, {missed} NOT met.")
    for row in rows:
        for e in row.errors:
            console.print(f"[red]{row.label}: {e}[/red]")
