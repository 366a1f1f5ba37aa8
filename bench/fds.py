"""Grab and resume a process holding many fds (issue 4: 10,000 fds of
files, pipes and sockets frozen under 0.5 s), against the kernel's own cost
of describing them, measured in the same run.

The limit: reading readlink, stat and fdinfo of each of the victim's fds
from /proc (what any checkpointer outside the process must read), timed in
one thread with umig's native scan.  Each run: start the victim (python3,
bench/fds_victim.py), grab it in a fresh worker (killed), resume it in
another, have it use a sample of every kind (it prints PASS).

    .venv/bin/python bench/fds.py                  # 10,000 fds, 3 runs
    .venv/bin/python bench/fds.py --fds 1000,10000 --repeat 5
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

HERE = Path(__file__).resolve().parent
TARGET_S = 0.5          # frozen, for 10,000 fds


def proc_floor(pid: int) -> float:
    """Seconds to read readlink, stat and fdinfo of every fd of pid (one
    thread, native, no parsing): the kernel's share of describing them."""
    from umig.native import ffi, lib
    fds = sorted(int(n) for n in os.listdir(f"/proc/{pid}/fd"))
    arr = ffi.new("int32_t[]", fds)
    out = ffi.new("struct umig_fdstat[]", len(fds))
    textlen = len(fds) * 512 + (1 << 20)
    text = ffi.new("uint8_t[]", textlen)
    best = None
    for _ in range(3):
        t = time.perf_counter()
        used = lib.umig_fd_scan(pid, -1, arr, len(fds), out, text, textlen)
        dt = time.perf_counter() - t
        if used < 0:
            raise OSError(-used, os.strerror(-used))
        best = dt if best is None else min(best, dt)
    return best


def one_run(b: harness.Bench, n: int, i: int) -> dict:
    res: dict = {"fds": n}
    files = b.workdir / f"files-{n}-{i}"
    files.mkdir()
    out, image = b.workdir / f"out-{n}-{i}", b.workdir / f"img-{n}-{i}"
    with b.recording(res, image, out):
        victim = b.start([sys.executable, HERE / "fds_victim.py", n, files],
                         stdout=out.open("w"))
        line = harness.wait_line(out, 0, 120, victim)
        res["held"] = int(line.split()[1])
        res["floor_s"] = proc_floor(victim.pid)
        grab = b.grab(victim, image)
        res.update(frozen_s=grab["frozen_s"], grab_wall_s=grab["wall_s"],
                   image_bytes=grab["image_bytes"])
        try:
            worker, resumed = b.resume(image)
        except RuntimeError as e:
            if "open files at once" not in str(e):
                raise
            # umig resume holds each fd above the process's highest until the
            # restorer moves it: 2x the fds, more than this shell's hard limit
            res["resume_s"] = None
            res["check"] = "not resumed: " + str(e).split(": ", 2)[-1].split(";")[0]
            return res
        res["resume_s"] = resumed["resume_s"]
        os.kill(resumed["pid"], signal.SIGUSR1)
        res["check"] = harness.wait_line(out, 1, 60)
        b.end_resume(worker)
    return res


def main(argv: list[str]) -> int:
    ap = harness.parser(__doc__)
    ap.add_argument("--fds", default="10000", help="fd counts, comma-separated")
    ap.add_argument("--repeat", type=int, default=3)
    harness.add_output_options(ap)
    args = ap.parse_args(argv)
    counts = harness.counts(ap, args.fds, "--fds")
    harness.become_reaper()
    b = harness.Bench.create(args.dir, "umig-bench-fds-", Path(__file__).resolve())
    console = harness.console_for(args)
    rows = []
    ok = True
    try:
        for n in counts:
            runs = []
            for i in range(args.repeat):
                res = one_run(b, n, i)
                runs.append(res)
                if "error" in res or not res.get("check", "").startswith(("PASS", "not resumed")):
                    ok = False
                    console.print(f"  {n} fds run {i + 1}: [red]{res.get('error') or res.get('check')}[/red]")
                else:
                    resume = (f"{res['resume_s'] * 1000:.0f} ms" if res["resume_s"] is not None
                              else "-")
                    console.print(f"  {n} fds run {i + 1}: frozen {res['frozen_s'] * 1000:.0f} ms, "
                                  f"/proc floor {res['floor_s'] * 1000:.0f} ms, resume "
                                  f"{resume}, {res['check']}", highlight=False)
            rows.append((n, [r for r in runs if "error" not in r]))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
    finally:
        b.close()
    t = harness.table(f"{'/'.join(map(str, counts))} fds (median of {args.repeat})",
                      ["fds", "held", "frozen", "limit: /proc\nfloor", "frozen /\nfloor",
                       "grab wall", "resume", "image", f"target\nfrozen < {TARGET_S * 1000:.0f} ms\n(10,000)"])
    for n, runs in rows:
        if not runs:
            continue
        med = {k: statistics.median(r[k] for r in runs)
               for k in ("frozen_s", "floor_s", "grab_wall_s", "image_bytes")}
        resumes = [r["resume_s"] for r in runs if r["resume_s"] is not None]
        med["resume_s"] = statistics.median(resumes) if resumes else None
        target = ("met" if med["frozen_s"] < TARGET_S else "[red]NOT met[/red]") \
            if n == 10000 else ""
        t.add_row(str(n), str(runs[0]["held"]), harness.ms(med["frozen_s"]),
                  harness.ms(med["floor_s"]), harness.ratio(med["frozen_s"], med["floor_s"], 1),
                  harness.ms(med["grab_wall_s"]),
                  harness.ms(med["resume_s"]) if med["resume_s"] is not None else "fd limit",
                  harness.mib(med["image_bytes"]), target)
    console.print(t)
    console.print("Frozen: from the freeze to the kill, the image complete.  The /proc floor: "
                  "readlink, stat and fdinfo of every fd, read in one thread (umig reads "
                  "them in two).  \"fd limit\": umig resume needs about twice the fds (it "
                  "holds each one above the process's highest fd until the restorer moves "
                  "it) and the hard limit of open files here is lower.", highlight=False)  # noqa: E501
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(harness.entry(main))
