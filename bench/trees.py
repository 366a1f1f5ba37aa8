#!/usr/bin/env python3
"""Tree benchmark: grab --tree and resume of N processes that share MIB MiB
copy-on-write after fork, and what each process adds.

    .venv/bin/python bench/trees.py [--procs 1,8,32] [--mib 256] [--repeat 3]
        [--dir /dev/shm] [--json [FILE]]

For every process count N and every run it first measures the limits as
grab_resume.py does (process_vm_readv, lz4, process_vm_writev into fresh
memory) on a single process holding the same MIB MiB, and ends it.  Then it
starts a fresh victim tree (tests/victims/cowtree.c: a parent fills MIB MiB
with random bytes and forks N - 1 children; child 1 rewrites its first MiB,
child 2 drops it, the parent rewrites its last MiB; each prints "PID SUM"),
reads the members' Pss, grabs the whole tree (capture.grab(tree=True), in
a child process), reaps the killed members, resumes the image with
grab_resume.py's resume worker, reads the resumed members' Pss and lets
every member sum its memory again (SIGUSR2): the sums must be the ones
printed before the grab.
Medians of --repeat runs; per-process cost is (t_N - t_1) / (N - 1) over the
medians, against the single-process grab of the same MIB MiB (N = 1) and
the raw limits of the same run.  See bench/README.md.
"""

from __future__ import annotations

import argparse
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
import grab_resume as gr  # noqa: E402  (Bench, the resume worker, the limits, helpers)

MiB = gr.MiB
VICTIM_SRC = HERE.parent / "tests" / "victims" / "cowtree.c"
# the target: 32 processes sharing 256 MiB make an image under 300 MiB
# (shared pages written once).  Checked for every N > 1 with --mib 256; other
# sizes have no target (the victim's 1 MiB changes do not scale with them)
TARGET_MIB = 256
IMAGE_TARGET_BYTES = 300 * MiB
WAIT_S = 120                      # for the victims' lines and the members to go


# ------------------------------------------------------------------ worker

def worker_grab(pid: int, image: str) -> dict:
    """In a fresh child: grab pid and its descendants into image
    (finish=kill), as `umig grab --tree -o IMAGE` does; report GrabStats and
    this process's peak RSS."""
    t0 = time.perf_counter()
    from umig import capture
    from umig.image.stream import Output
    base = gr._vm_hwm()
    out = Output(image)
    try:
        st = capture.grab(pid, out.fd, finish="kill", on_complete=out.commit,
                          prepare=out.preallocate, tree=True)
    except BaseException:
        out.abort()
        raise
    finally:
        out.close()
    return {"frozen_s": st.frozen_s, "wall_s": st.wall_s, "image_bytes": st.image_bytes,
            "pages": st.pages, "data_pages": st.data_pages, "vmas": st.vmas,
            "processes": st.processes, "hwm_bytes": gr._vm_hwm(),
            "hwm_after_import_bytes": base, "import_s": time.perf_counter() - t0 - st.wall_s}


def worker_main(argv: list[str]) -> int:
    try:
        if argv[0] != "grab":
            raise SystemExit(f"unknown worker {argv[0]}")
        print(json.dumps(worker_grab(int(argv[1]), argv[2])), flush=True)
    except Exception as e:          # one line the parent can show
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        return 1
    return 0


def _grab_argv(pid: int, image: Path) -> list:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", "grab", pid, image]


# ------------------------------------------------------------------ processes

def descendants(pid: int) -> list[int]:
    """Every process below pid (children of all its threads), as /proc shows
    them now, breadth-first."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop(0)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return "gone"


def pss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def wait_for(what: str, cond, timeout: float = WAIT_S, proc=None):
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


def wait_gone(pids, timeout: float = WAIT_S) -> None:
    """Reap the given pids as they come to us (we are a child subreaper: a
    killed tree's children are reparented here) until none is left in /proc.
    Only these pids are waited for, so no Popen loses its status."""
    def gone():
        for p in pids:
            try:
                os.waitpid(p, os.WNOHANG)
            except ChildProcessError:
                pass
        return not any(os.path.exists(f"/proc/{p}") for p in pids)
    wait_for(f"processes {sorted(pids)} to be gone", gone, timeout)


def _lines(path: Path) -> list[str]:
    text = path.read_text()
    return text[:text.rfind("\n") + 1].splitlines()


class TreeBench(gr.Bench):
    """grab_resume.Bench, and at cleanup every descendant of this process is
    killed and reaped too: the members of a victim or resumed tree whose root
    died were reparented to us (a subreaper), whoever started them."""

    def cleanup(self) -> None:
        _kill_all(descendants(os.getpid()))
        super().cleanup()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            left = descendants(os.getpid())
            if not left:
                break
            _kill_all(left)
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                pass
            time.sleep(0.01)


def _kill_all(pids) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ------------------------------------------------------------------ one run

def measure_limits(b: TreeBench, helper, mib: int, run: int) -> dict:
    """grab_resume.measure_limits on a single process holding the same MIB
    MiB (cowtree MIB 0: the same bytes as a tree's root), started, measured,
    killed and reaped before the tree starts.  Not on the tree itself:
    process_vm_readv pins the pages it reads (FOLL_PIN), and pinning a page
    that is shared copy-on-write unshares it, so reading the root's memory
    would give the root a private copy of all of it and leave nothing shared
    with its children."""
    out = b.workdir / f"limits-{run}.txt"
    with out.open("w") as f:
        single = b.start([b.build / "cowtree", mib, 0], stdout=f)
    try:
        wait_for("the limit victim's 'PID SUM' line", lambda: _lines(out), proc=single)
        wait_for("the limit victim asleep", lambda: _state(single.pid) == "S")
        return gr.measure_limits(single.pid, helper)
    finally:
        single.kill()
        single.wait(timeout=20)
        out.unlink()


def one_run(b: TreeBench, helper, n: int, mib: int, run: int) -> dict:
    out = b.workdir / f"out-{n}-{run}.txt"
    image = b.workdir / f"img-{n}-{run}"
    res: dict = {"procs": n, "mib": mib, "run": run}
    try:
        res["limits"] = measure_limits(b, helper, mib, run)
        with out.open("w") as f:
            t0 = time.perf_counter()
            victim = b.start([b.build / "cowtree", mib, n - 1], stdout=f)
        lines = wait_for(f"{n} 'PID SUM' lines", lambda: (lambda x: x if len(x) >= n else None)(
            _lines(out)), proc=victim)
        res["victim_setup_s"] = time.perf_counter() - t0
        before = dict(x.split() for x in lines)
        members = [victim.pid] + descendants(victim.pid)
        if sorted(map(str, members)) != sorted(before):
            raise RuntimeError(f"tree {members} but sums from {sorted(before)}")
        wait_for("every member asleep", lambda: all(_state(p) == "S" for p in members))
        res["members"] = members
        res["pss_before_bytes"] = sum(pss_bytes(p) for p in members)
        res["rss_root_bytes"] = gr._rss_bytes(victim.pid)

        g = b.start(_grab_argv(victim.pid, image), stdout=subprocess.PIPE)
        line = g.stdout.readline()
        g.wait(timeout=WAIT_S)
        grab = json.loads(line) if line else {"error": f"grab worker exited {g.returncode}"}
        if "error" in grab:
            raise RuntimeError(f"grab: {grab['error']}")
        res["grab"] = grab
        res["grab"]["image_file_bytes"] = image.stat().st_size
        victim.wait(timeout=20)         # killed by grab; reaped here
        wait_gone(members)              # and its children, reparented here: the pids are free

        r = b.start(gr._worker_argv("resume", image), stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE)
        line = r.stdout.readline()
        resumed = json.loads(line) if line else {"error": f"resume worker exited "
                                                          f"{r.poll()}"}
        if "error" in resumed:
            raise RuntimeError(f"resume: {resumed['error']}")
        res["resume"] = resumed
        after = [resumed["pid"]] + descendants(resumed["pid"])
        res["same_pids"] = sorted(after) == sorted(members)
        res["procs_after"] = len(after)
        res["pss_after_bytes"] = sum(pss_bytes(p) for p in after)

        # every member sums its memory again
        for p in after:
            os.kill(p, signal.SIGUSR2)

        def sums_again():
            got = {x.split()[0]: x.split()[1] for x in _lines(out) if x.endswith(" again")}
            return got if len(got) >= len(after) else None
        again = wait_for(f"{len(after)} 'PID SUM again' lines", sums_again)
        bad = sorted(p for p in before if again.get(p) != before[p])
        res["sums_ok"] = len(before) - len(bad)
        res["verify"] = "PASS" if not bad and len(again) == len(before) else \
            f"FAIL (sums differ for pids {bad[:5]}{'...' if len(bad) > 5 else ''})"

        _kill_all(after[1:])            # the children first: the root's exit would orphan them
        r.stdin.write(b"kill\n")        # the worker kills and reaps the root
        r.stdin.close()
        r.wait(timeout=30)
        wait_gone(after)
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
    procs: int
    mib: int
    runs: list = field(default_factory=list)
    med: dict = field(default_factory=dict)
    per: dict = field(default_factory=dict)        # per-process cost against the base row
    checks: list = field(default_factory=list)
    errors: list = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.procs} process" + ("es" if self.procs != 1 else "")


PER = ("grab_wall_s", "frozen_s", "resume_s", "image_bytes", "pss_after_bytes",
       "pss_before_bytes")


def summarize(row: Row) -> None:
    ok = [r for r in row.runs if "error" not in r]
    row.errors = [f"run {r['run'] + 1}: {r['error']}" for r in row.runs if "error" in r]
    if not ok:
        return
    med = gr._median
    m = row.med
    m["n"] = len(ok)
    m["grab_wall_s"] = med(r["grab"]["wall_s"] for r in ok)
    m["frozen_s"] = med(r["grab"]["frozen_s"] for r in ok)
    m["image_bytes"] = med(r["grab"]["image_bytes"] for r in ok)
    m["image_file_bytes"] = med(r["grab"]["image_file_bytes"] for r in ok)
    m["grab_hwm_bytes"] = med(r["grab"]["hwm_bytes"] for r in ok)
    m["resume_s"] = med(r["resume"]["resume_s"] for r in ok)
    for ph in ("planned", "mapped", "filled", "ready"):
        m[f"resume_{ph}_s"] = med(r["resume"]["phases_s"].get(ph) for r in ok)
    m["resume_hwm_bytes"] = med(r["resume"]["hwm_bytes"] for r in ok)
    m["pss_before_bytes"] = med(r["pss_before_bytes"] for r in ok)
    m["pss_after_bytes"] = med(r["pss_after_bytes"] for r in ok)
    m["rss_root_bytes"] = med(r["rss_root_bytes"] for r in ok)
    for k in ("bytes", "nonzero_bytes", "readv_s", "lz4_compress_s", "lz4_decompress_s",
              "lz4_bytes", "writev_fresh_s"):
        m[k] = med(r["limits"][k] for r in ok)
    m["same_pids"] = f"{sum(r['same_pids'] for r in ok)}/{len(ok)}"
    m["verify"] = f"{sum(r['verify'] == 'PASS' for r in ok)}/{len(ok)}"
    for r in ok:
        if r["procs_after"] != row.procs:
            row.errors.append(f"run {r['run'] + 1}: {r['procs_after']} processes after "
                              f"resume, not {row.procs}")
        if r["verify"] != "PASS":
            row.errors.append(f"run {r['run'] + 1}: {r['verify']}")
    if row.procs > 1 and row.mib == TARGET_MIB:
        limit = IMAGE_TARGET_BYTES
        v = m["image_bytes"]
        row.checks.append({"target": f"image < {limit / MiB:.0f} MiB ({row.procs} processes "
                                     f"sharing {row.mib} MiB: shared pages written once)",
                           "measured": v, "limit": limit, "unit": "B", "ratio": v / limit,
                           "met": v < limit})


def per_process(rows: list[Row]) -> None:
    """(x_N - x_base) / (N - base) for every row above the smallest N that
    has medians."""
    done = [r for r in rows if r.med]
    if len(done) < 2:
        return
    base = min(done, key=lambda r: r.procs)
    for row in done:
        if row is not base:
            k = row.procs - base.procs
            row.per = {t: (row.med[t] - base.med[t]) / k for t in PER}
            row.per["base"] = base.procs


def _ms(secs: float | None, digits: int = 0) -> str:
    return "-" if secs is None else f"{secs * 1000:.{digits}f}"


def _mib(nbytes: float | None, digits: int = 1) -> str:
    return "-" if nbytes is None else f"{nbytes / MiB:.{digits}f}"


def _ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    return f"{a / b:.{digits}f}" if a is not None and b else "-"


def print_tables(rows: list[Row], meta: dict, console) -> None:
    from rich.table import Table

    def red_unless_all(s: str) -> str:
        a, b = s.split("/")
        return s if a == b else f"[red]{s}[/red]"

    t = Table(title=f"umig grab --tree / resume of N processes sharing {meta['mib']} MiB "
                    f"copy-on-write: median of {meta['repeat']} runs ({meta['kernel']}, "
                    f"{meta['cpus']} vCPUs, images in {meta['dir']})")
    cols = ["processes", "grab\nwall ms", "frozen\nms", "resume\nms",
            "resume: planned / mapped /\nfilled / ready ms", "image\nMiB",
            "Pss before\nMiB", "Pss after\nMiB", "Pss\nafter/before", "same\npids",
            "sums\nagain"]
    for i, name in enumerate(cols):
        t.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        m = row.med
        if not m:
            t.add_row(row.label, *(["-"] * (len(cols) - 2)), "[red]error[/red]")
            continue
        t.add_row(row.label, _ms(m["grab_wall_s"]), _ms(m["frozen_s"]), _ms(m["resume_s"]),
                  f"{_ms(m['resume_planned_s'])} / {_ms(m['resume_mapped_s'])} / "
                  f"{_ms(m['resume_filled_s'])} / {_ms(m['resume_ready_s'])}",
                  _mib(m["image_bytes"]), _mib(m["pss_before_bytes"]),
                  _mib(m["pss_after_bytes"]),
                  _ratio(m["pss_after_bytes"], m["pss_before_bytes"]),
                  red_unless_all(m["same_pids"]), red_unless_all(m["verify"]))
    console.print(t)

    lim = Table(title="limits on a single process of the same bytes in the same runs, "
                      "ms (GiB/s), and umig's time over them")
    cols = ["processes", "pages\nMiB", "readv", "lz4\ncompress", "lz4\ndecompress",
            "writev\nfresh", "frozen /\nmax(rd,c)", "resume /\nmax(d,wv)",
            "frozen /\nfrozen(1)", "resume /\nresume(1)", "image /\npages"]
    for i, name in enumerate(cols):
        lim.add_column(name, justify="left" if i == 0 else "right")
    one = next((r.med for r in rows if r.procs == 1 and r.med), {})

    def tp(secs, nbytes):
        return f"{secs * 1000:.0f} ({gr._gbps(nbytes, secs)})" if secs else "-"
    for row in rows:
        m = row.med
        if not m:
            continue
        lim.add_row(row.label, _mib(m["bytes"], 0), tp(m["readv_s"], m["bytes"]),
                    tp(m["lz4_compress_s"], m["bytes"]), tp(m["lz4_decompress_s"], m["bytes"]),
                    tp(m["writev_fresh_s"], m["nonzero_bytes"]),
                    _ratio(m["frozen_s"], max(m["readv_s"], m["lz4_compress_s"])),
                    _ratio(m["resume_s"], max(m["lz4_decompress_s"], m["writev_fresh_s"])),
                    _ratio(m["frozen_s"], one.get("frozen_s")),
                    _ratio(m["resume_s"], one.get("resume_s")),
                    _ratio(m["image_bytes"], m["bytes"]))
    console.print(lim)

    base = next((r for r in rows if r.per), None)
    if base is not None:
        b = base.per["base"]
        p = Table(title=f"per-process cost (x_N - x_{b}) / (N - {b}) over the medians, and "
                        f"over the {b}-process figure (for N = 1: one single-process grab "
                        f"of the same {meta['mib']} MiB)")
        cols = ["processes", "grab wall\nms", "frozen\nms", "resume\nms", "image\nMiB",
                "Pss after\nMiB", "Pss before\nMiB", "frozen /\nfrozen(base)",
                "resume /\nresume(base)"]
        for i, name in enumerate(cols):
            p.add_column(name, justify="left" if i == 0 else "right")
        for row in rows:
            m = row.med
            if not m:
                continue
            if not row.per:
                p.add_row(f"{row.label} (base)", f"({_ms(m['grab_wall_s'])} total)",
                          f"({_ms(m['frozen_s'])} total)", f"({_ms(m['resume_s'])} total)",
                          f"({_mib(m['image_bytes'])} total)",
                          f"({_mib(m['pss_after_bytes'])} total)",
                          f"({_mib(m['pss_before_bytes'])} total)", "-", "-")
                continue
            q = row.per
            bm = next(r.med for r in rows if r.procs == b)
            p.add_row(row.label, _ms(q["grab_wall_s"], 1), _ms(q["frozen_s"], 1),
                      _ms(q["resume_s"], 1), _mib(q["image_bytes"], 2),
                      _mib(q["pss_after_bytes"], 2), _mib(q["pss_before_bytes"], 2),
                      _ratio(q["frozen_s"], bm["frozen_s"], 3),
                      _ratio(q["resume_s"], bm["resume_s"], 3))
        console.print(p)

    c = Table(title="targets (measured vs limit, from the medians above)")
    for name, justify in (("processes", "left"), ("target", "left"), ("measured", "right"),
                          ("limit", "right"), ("ratio", "right"), ("", "left")):
        c.add_column(name, justify=justify)
    met = missed = 0
    for row in rows:
        for ch in row.checks:
            met += ch["met"]
            missed += not ch["met"]
            c.add_row(row.label, ch["target"], f"{_mib(ch['measured'])} MiB",
                      f"{_mib(ch['limit'])} MiB", f"{ch['ratio']:.2f}",
                      "[green]met[/green]" if ch["met"] else "[bold red]NOT met[/bold red]")
    console.print(c)
    console.print(f"{met} targets met, {missed} NOT met.")
    for row in rows:
        for e in row.errors:
            console.print(f"[red]{row.label}: {e}[/red]")


# ------------------------------------------------------------------ main

def build_victim(build: Path) -> None:
    r = subprocess.run(["gcc", "-O2", "-Wall", "-o", str(build / "cowtree"), str(VICTIM_SRC)],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"gcc {VICTIM_SRC}: {r.stderr.strip()}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", default="1,8,32",
                    help="process counts N of the tree, root included (default 1,8,32); "
                         "the smallest is the base of the per-process cost")
    ap.add_argument("--mib", type=int, default=256,
                    help="MiB the processes share copy-on-write (default 256)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per N (default 3)")
    ap.add_argument("--dir", default="/dev/shm",
                    help="where images go (a temporary directory is made in it and "
                         "removed; default /dev/shm)")
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE",
                    help="also write all runs and medians as JSON to FILE (or, without "
                         "FILE, to stdout, with the tables on stderr)")
    args = ap.parse_args(argv)
    counts = sorted({int(s) for s in args.procs.split(",") if s})
    if not counts or counts[0] < 1:
        ap.error("--procs: counts of 1 or more")
    if args.mib < 2:
        ap.error("--mib: 2 or more (the victim rewrites a first and a last MiB)")

    from rich.console import Console
    to_stderr = args.json == "-"
    tty = (sys.stderr if to_stderr else sys.stdout).isatty()
    console = Console(stderr=to_stderr, width=None if tty else 180)
    if os.geteuid() != 0:
        console.print("[yellow]not root: without the frame numbers of /proc/PID/pagemap "
                      "grab cannot tell shared pages apart, and writes them per "
                      "process[/yellow]")

    import umig.native  # noqa: F401  (mallopt: lz4 is slow here without it)

    def on_term(sig, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    gr._libc.prctl(gr.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    build = Path(tempfile.mkdtemp(prefix="umig-bench-build-"))
    workdir = Path(tempfile.mkdtemp(prefix="umig-bench-trees-", dir=args.dir))
    rows: list[Row] = []
    t_start = time.monotonic()
    b = TreeBench(workdir, build)
    interrupted = False
    try:
        helper = gr.build_natives(build)
        build_victim(build)
        for n in counts:
            row = Row(n, args.mib)
            rows.append(row)
            for i in range(args.repeat):
                res = one_run(b, helper, n, args.mib, i)
                row.runs.append(res)
                if "error" in res:
                    console.print(f"  {row.label} run {i + 1}: [red]{res['error']}[/red]")
                else:
                    console.print(
                        f"  {row.label} run {i + 1}: grab wall "
                        f"{res['grab']['wall_s'] * 1000:.0f} ms, frozen "
                        f"{res['grab']['frozen_s'] * 1000:.0f} ms, resume "
                        f"{res['resume']['resume_s'] * 1000:.0f} ms, image "
                        f"{res['grab']['image_bytes'] / MiB:.1f} MiB, Pss "
                        f"{res['pss_before_bytes'] / MiB:.1f} -> "
                        f"{res['pss_after_bytes'] / MiB:.1f} MiB, "
                        f"{res['procs_after']} processes after resume, {res['verify']}",
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
    per_process(rows)

    meta = {"repeat": args.repeat, "mib": args.mib, "kernel": platform.release(),
            "cpus": os.cpu_count(), "dir": args.dir, "python": platform.python_version(),
            "total_s": time.monotonic() - t_start,
            "per_process": "(median x_N - median x_base) / (N - base), base = smallest N",
            "limits": "grab_resume.measure_limits on the present pages of a single "
                      "process holding the same bytes (cowtree MIB 0), before the tree "
                      "starts: process_vm_readv (best of 2), lz4 block compress/decompress "
                      "in 4 MiB chunks, process_vm_writev of the non-zero bytes into fresh "
                      "memory"}
    print_tables(rows, meta, console)
    console.print(f"total {meta['total_s']:.0f} s", highlight=False)
    if args.json:
        doc = {"meta": meta, "rows": [{"procs": r.procs, "mib": r.mib, "median": r.med,
                                       "per_process": r.per, "checks": r.checks,
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
