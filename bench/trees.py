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
a child process), reaps the killed members, resumes the image with the
resume worker grab_resume.py uses (harness.py: the workers and process
bookkeeping the benches share), reads the resumed members' Pss and lets
every member sum its memory again (SIGUSR2): the sums must be the ones
printed before the grab.
Medians of --repeat runs; per-process cost is (t_N - t_1) / (N - 1) over the
medians, against the single-process grab of the same MIB MiB (N = 1) and
the raw limits of the same run.  See bench/README.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import grab_resume as gr  # noqa: E402  (the limits and their C helper)
import harness  # noqa: E402  (processes, the grab/resume workers, medians, tables)
from harness import MiB, kill_all, lines, proc_state, wait_for  # noqa: E402

VICTIM_SRC = HERE.parent / "tests" / "victims" / "cowtree.c"
# the target: 32 processes sharing 256 MiB make an image under 300 MiB
# (shared pages written once).  Checked for every N > 1 with --mib 256; other
# sizes have no target (the victim's 1 MiB changes do not scale with them)
TARGET_MIB = 256
IMAGE_TARGET_BYTES = 300 * MiB
WAIT_S = 120                      # for the victims' lines and the members to go


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


class TreeBench(harness.Bench):
    """harness.Bench, and at cleanup every descendant of this process is
    killed and reaped too: the members of a victim or resumed tree whose root
    died were reparented to us (a subreaper), whoever started them."""

    def cleanup(self) -> None:
        kill_all(descendants(os.getpid()))
        super().cleanup()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            left = descendants(os.getpid())
            if not left:
                break
            kill_all(left)
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                pass
            time.sleep(0.01)


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
        wait_for("the limit victim's 'PID SUM' line", lambda: lines(out), WAIT_S, single)
        wait_for("the limit victim asleep", lambda: proc_state(single.pid) == "S", WAIT_S)
        return gr.measure_limits(single.pid, helper)
    finally:
        single.kill()
        single.wait(timeout=20)
        out.unlink()


def one_run(b: TreeBench, helper, n: int, mib: int, run: int) -> dict:
    out = b.workdir / f"out-{n}-{run}.txt"
    image = b.workdir / f"img-{n}-{run}"
    res: dict = {"procs": n, "mib": mib, "run": run}
    with b.recording(res, out, image):
        res["limits"] = measure_limits(b, helper, mib, run)
        with out.open("w") as f:
            t0 = time.perf_counter()
            victim = b.start([b.build / "cowtree", mib, n - 1], stdout=f)
        got = wait_for(f"{n} 'PID SUM' lines", lambda: (lambda x: x if len(x) >= n else None)(
            lines(out)), WAIT_S, victim)
        res["victim_setup_s"] = time.perf_counter() - t0
        before = dict(x.split() for x in got)
        members = [victim.pid] + descendants(victim.pid)
        if sorted(map(str, members)) != sorted(before):
            raise RuntimeError(f"tree {members} but sums from {sorted(before)}")
        wait_for("every member asleep", lambda: all(proc_state(p) == "S" for p in members),
                 WAIT_S)
        res["members"] = members
        res["pss_before_bytes"] = sum(harness.pss_bytes(p) for p in members)
        res["rss_root_bytes"] = harness.rss_bytes(victim.pid)

        res["grab"] = b.grab(victim, image, tree=True)     # the root is reaped here
        res["grab"]["image_file_bytes"] = image.stat().st_size
        wait_gone(members)              # and its children, reparented here: the pids are free

        worker, resumed = b.resume(image)
        res["resume"] = resumed
        after = [resumed["pid"]] + descendants(resumed["pid"])
        res["same_pids"] = sorted(after) == sorted(members)
        res["procs_after"] = len(after)
        res["pss_after_bytes"] = sum(harness.pss_bytes(p) for p in after)

        # every member sums its memory again
        for p in after:
            os.kill(p, signal.SIGUSR2)

        def sums_again():
            got = {x.split()[0]: x.split()[1] for x in lines(out) if x.endswith(" again")}
            return got if len(got) >= len(after) else None
        again = wait_for(f"{len(after)} 'PID SUM again' lines", sums_again, WAIT_S)
        bad = sorted(p for p in before if again.get(p) != before[p])
        res["sums_ok"] = len(before) - len(bad)
        res["verify"] = "PASS" if not bad and len(again) == len(before) else \
            f"FAIL (sums differ for pids {bad[:5]}{'...' if len(bad) > 5 else ''})"

        kill_all(after[1:])             # the children first: the root's exit would orphan them
        b.end_resume(worker)            # the worker kills and reaps the root
        wait_gone(after)
    return res


# ------------------------------------------------------------------ summary

@dataclass
class Row(harness.Row):
    procs: int
    mib: int

    @property
    def label(self) -> str:
        return f"{self.procs} process" + ("es" if self.procs != 1 else "")


PER = ("grab_wall_s", "frozen_s", "resume_s", "image_bytes", "pss_after_bytes",
       "pss_before_bytes")


def summarize(row: Row) -> None:
    ok = row.ok_runs(numbered=True)
    if not ok:
        return
    med = harness.median
    m = row.med
    m["grab_wall_s"] = med(r["grab"]["wall_s"] for r in ok)
    harness.medians(m, ok, "grab", ("frozen_s", "image_bytes", "image_file_bytes"))
    m["grab_hwm_bytes"] = med(r["grab"]["hwm_bytes"] for r in ok)
    harness.medians(m, ok, "resume", ("resume_s",))
    harness.phase_medians(m, ok, ("planned", "mapped", "filled", "ready"))
    m["resume_hwm_bytes"] = med(r["resume"]["hwm_bytes"] for r in ok)
    for k in ("pss_before_bytes", "pss_after_bytes", "rss_root_bytes"):
        m[k] = med(r[k] for r in ok)
    harness.medians(m, ok, "limits", ("bytes", "nonzero_bytes", "readv_s", "lz4_compress_s",
                                      "lz4_decompress_s", "lz4_bytes", "writev_fresh_s"))
    m["same_pids"] = harness.tally(ok, lambda r: r["same_pids"])
    m["verify"] = harness.tally(ok, lambda r: r["verify"] == "PASS")
    for r in ok:
        if r["procs_after"] != row.procs:
            row.errors.append(f"run {r['run'] + 1}: {r['procs_after']} processes after "
                              f"resume, not {row.procs}")
        if r["verify"] != "PASS":
            row.errors.append(f"run {r['run'] + 1}: {r['verify']}")
    if row.procs > 1 and row.mib == TARGET_MIB:
        row.check(f"image < {IMAGE_TARGET_BYTES / MiB:.0f} MiB ({row.procs} processes "
                  f"sharing {row.mib} MiB: shared pages written once)",
                  m["image_bytes"], IMAGE_TARGET_BYTES, "B", strict=True)


def print_tables(rows: list[Row], meta: dict, console) -> None:
    from harness import mib, ms, ratio, red_unless_all, throughput as tp

    def umig(row, m):
        return [row.label, ms(m["grab_wall_s"]), ms(m["frozen_s"]), ms(m["resume_s"]),
                f"{ms(m['resume_planned_s'])} / {ms(m['resume_mapped_s'])} / "
                f"{ms(m['resume_filled_s'])} / {ms(m['resume_ready_s'])}",
                mib(m["image_bytes"]), mib(m["pss_before_bytes"]), mib(m["pss_after_bytes"]),
                ratio(m["pss_after_bytes"], m["pss_before_bytes"]),
                red_unless_all(m["same_pids"]), red_unless_all(m["verify"])]
    harness.print_table(
        console, f"umig grab --tree / resume of N processes sharing {meta['mib']} MiB "
                 f"copy-on-write: median of {meta['repeat']} runs ({meta['kernel']}, "
                 f"{meta['cpus']} vCPUs, images in {meta['dir']})",
        ["processes", "grab\nwall ms", "frozen\nms", "resume\nms",
         "resume: planned / mapped /\nfilled / ready ms", "image\nMiB",
         "Pss before\nMiB", "Pss after\nMiB", "Pss\nafter/before", "same\npids",
         "sums\nagain"], rows, umig, errors=True)

    one = next((r.med for r in rows if r.procs == 1 and r.med), {})

    def limits(row, m):
        return [row.label, mib(m["bytes"], 0), tp(m["readv_s"], m["bytes"]),
                tp(m["lz4_compress_s"], m["bytes"]), tp(m["lz4_decompress_s"], m["bytes"]),
                tp(m["writev_fresh_s"], m["nonzero_bytes"]),
                ratio(m["frozen_s"], max(m["readv_s"], m["lz4_compress_s"])),
                ratio(m["resume_s"], max(m["lz4_decompress_s"], m["writev_fresh_s"])),
                ratio(m["frozen_s"], one.get("frozen_s")),
                ratio(m["resume_s"], one.get("resume_s")),
                ratio(m["image_bytes"], m["bytes"])]
    harness.print_table(
        console, "limits on a single process of the same bytes in the same runs, ms (GiB/s), "
                 "and umig's time over them",
        ["processes", "pages\nMiB", "readv", "lz4\ncompress", "lz4\ndecompress",
         "writev\nfresh", "frozen /\nmax(rd,c)", "resume /\nmax(d,wv)",
         "frozen /\nfrozen(1)", "resume /\nresume(1)", "image /\npages"], rows, limits)

    base = next((r for r in rows if r.per), None)
    if base is not None:
        b = base.per["base"]
        bm = next(r.med for r in rows if r.procs == b)

        def per_process(row, m):
            if not row.per:
                return [f"{row.label} (base)", f"({ms(m['grab_wall_s'])} total)",
                        f"({ms(m['frozen_s'])} total)", f"({ms(m['resume_s'])} total)",
                        f"({mib(m['image_bytes'])} total)",
                        f"({mib(m['pss_after_bytes'])} total)",
                        f"({mib(m['pss_before_bytes'])} total)", "-", "-"]
            q = row.per
            return [row.label, ms(q["grab_wall_s"], 1), ms(q["frozen_s"], 1),
                    ms(q["resume_s"], 1), mib(q["image_bytes"], 2),
                    mib(q["pss_after_bytes"], 2), mib(q["pss_before_bytes"], 2),
                    ratio(q["frozen_s"], bm["frozen_s"], 3),
                    ratio(q["resume_s"], bm["resume_s"], 3)]
        harness.print_table(
            console, f"per-process cost (x_N - x_{b}) / (N - {b}) over the medians, and over "
                     f"the {b}-process figure (for N = 1: one single-process grab of the same "
                     f"{meta['mib']} MiB)",
            ["processes", "grab wall\nms", "frozen\nms", "resume\nms", "image\nMiB",
             "Pss after\nMiB", "Pss before\nMiB", "frozen /\nfrozen(base)",
             "resume /\nresume(base)"], rows, per_process)
    harness.print_checks(console, rows, "processes", lambda v, unit: f"{mib(v)} MiB")


# ------------------------------------------------------------------ main

def build_natives(build: Path):
    """grab_resume.py's C helper (for the limits), and the victim."""
    helper = gr.build_natives(build)
    r = subprocess.run(["gcc", "-O2", "-Wall", "-o", str(build / "cowtree"), str(VICTIM_SRC)],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"gcc {VICTIM_SRC}: {r.stderr.strip()}")
    return helper


def progress(res: dict) -> str:
    return (f"grab wall {res['grab']['wall_s'] * 1000:.0f} ms, frozen "
            f"{res['grab']['frozen_s'] * 1000:.0f} ms, resume "
            f"{res['resume']['resume_s'] * 1000:.0f} ms, image "
            f"{res['grab']['image_bytes'] / MiB:.1f} MiB, Pss "
            f"{res['pss_before_bytes'] / MiB:.1f} -> {res['pss_after_bytes'] / MiB:.1f} MiB, "
            f"{res['procs_after']} processes after resume, {res['verify']}")


def main(argv: list[str] | None = None) -> int:
    ap = harness.parser(__doc__)
    ap.add_argument("--procs", default="1,8,32",
                    help="process counts N of the tree, root included (default 1,8,32); "
                         "the smallest is the base of the per-process cost")
    ap.add_argument("--mib", type=int, default=256,
                    help="MiB the processes share copy-on-write (default 256)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per N (default 3)")
    harness.add_output_options(ap)
    args = ap.parse_args(argv)
    counts = harness.counts(ap, args.procs, "--procs")
    if args.mib < 2:
        ap.error("--mib: 2 or more (the victim rewrites a first and a last MiB)")

    console = harness.console_for(args)
    if os.geteuid() != 0:
        console.print("[yellow]not root: without the frame numbers of /proc/PID/pagemap "
                      "grab cannot tell shared pages apart, and writes them per "
                      "process[/yellow]")

    import umig.native  # noqa: F401  (mallopt: lz4 is slow here without it)
    harness.become_reaper()

    t_start = time.monotonic()
    b = TreeBench.create(args.dir, "umig-bench-trees-", Path(__file__).resolve())
    rows, interrupted = harness.run_rows(
        b, (Row(n, args.mib) for n in counts), args.repeat, console, prepare=build_natives,
        one_run=lambda helper, row, i: one_run(b, helper, row.procs, row.mib, i),
        progress=progress, summarize=summarize)
    harness.per_count(rows, lambda r: r.procs, PER)

    meta = harness.run_meta(
        args.repeat, args.dir, t_start, lead={"mib": args.mib},
        per_process="(median x_N - median x_base) / (N - base), base = smallest N",
        limits="grab_resume.measure_limits on the present pages of a single "
               "process holding the same bytes (cowtree MIB 0), before the tree "
               "starts: process_vm_readv (best of 2), lz4 block compress/decompress "
               "in 4 MiB chunks, process_vm_writev of the non-zero bytes into fresh "
               "memory")
    harness.report(console, args, rows, meta, print_tables,
                   lambda r: {"procs": r.procs, "mib": r.mib}, per="per_process")
    failed = any(r.errors for r in rows) or interrupted or any(not r.med for r in rows)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(harness.entry(main))
