"""Migrate processes between two hosts of the rig (tests/hosts.py) with
`umig migrate`, against raw ssh throughput between the same hosts measured
in the same run (issue 5: effective rate >= 2x raw ssh for heap-like data,
>= 0.9x for incompressible data).

Workloads: "heap", a Python dict (lz4 shrinks such a heap ~3-4x), and
"random", a C program full of random bytes.  The effective rate is the
process memory moved (pages with data) per second of the whole migrate
(connect, check, freeze, stream, rebuild, kill); raw ssh is `cat` of as
many bytes through ssh to the same host, with ssh's default cipher and
with the one migrate picks (aes128-gcm).

    .venv/bin/python bench/migrate.py                       # 64 MiB and 1 GiB, as root
    .venv/bin/python bench/migrate.py --sizes 64 --workloads random
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

import harness  # noqa: E402

UMIG = [sys.executable, "-m", "umig"]
TARGETS = {"heap": 2.0, "random": 0.9}     # effective rate / raw ssh (default cipher)


def run(argv, timeout=600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def start_victim(rig, work: Path, workload: str, mib: int, build: Path) -> tuple[int, Path]:
    out = work / f"{workload}-{mib}.out"
    if workload == "heap":
        cmd = f"python3 {shlex.quote(str(HERE / 'migrate_heap.py'))} {mib * 1000 // 1800}"
    else:
        cmd = f"{shlex.quote(str(build / 'migrate_victim'))} {mib} random"
    r = run(rig.ssh(0, f"setsid {cmd} > {shlex.quote(str(out))} 2>&1 < /dev/null & echo $!"))
    if r.returncode:
        raise RuntimeError(r.stderr)
    pid = int(r.stdout.split()[-1])
    harness.wait_line(out, 0, 300)
    return pid, out


def raw_ssh(rig, nbytes: int, cipher: str | None) -> float:
    """Seconds for ssh to carry nbytes (random) from the rig to host 1."""
    with tempfile.TemporaryFile() as f:
        left = nbytes
        while left:
            chunk = os.urandom(min(left, 1 << 24))
            f.write(chunk)
            left -= len(chunk)
        f.seek(0)
        argv = rig.ssh(1, "cat > /dev/null")
        if cipher:
            i = argv.index("ssh") + 1
            argv[i:i] = ["-c", cipher]
        t = time.perf_counter()
        r = subprocess.run(argv, stdin=f, capture_output=True, timeout=600)
        dt = time.perf_counter() - t
    if r.returncode:
        raise RuntimeError(r.stderr.decode())
    return dt


def one(rig, work: Path, build: Path, workload: str, mib: int) -> dict:
    pid, _out = start_victim(rig, work, workload, mib, build)
    try:
        ssh = shlex.join(rig.ssh_client())
        cmd = UMIG + ["migrate", "--json", "--detach", str(pid),
                      f"root@{rig.hosts[1].addr}", "--ssh", ssh, "--remote-umig",
                      shlex.join(UMIG)]
        r = run(rig.ssh(0, shlex.join(cmd)))
        if r.returncode:
            raise RuntimeError(r.stderr.strip())
        s = json.loads(r.stdout)
    finally:
        for h in (0, 1):
            run(rig.ssh(h, f"kill -9 {pid} 2>/dev/null; true"))
    s["raw_default_s"] = raw_ssh(rig, s["memory_bytes"], None)
    s["raw_gcm_s"] = raw_ssh(rig, s["memory_bytes"], "aes128-gcm@openssh.com")
    s["workload"], s["mib"] = workload, mib
    return s


def main(argv: list[str]) -> int:
    ap = harness.parser(__doc__)
    ap.add_argument("--sizes", default="64,1024", help="MiB, comma-separated")
    ap.add_argument("--workloads", default="heap,random")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/migrate.py makes a rig of hosts: run it as root", file=sys.stderr)
        return 64
    import hosts as rigmod
    from rich.console import Console
    console = Console(width=None if sys.stdout.isatty() else 180)
    build = Path(tempfile.mkdtemp(prefix="umig-bench-build-"))
    subprocess.run(["gcc", "-O2", "-o", str(build / "migrate_victim"),
                    str(HERE / "migrate_victim.c")], check=True)
    work = Path(tempfile.mkdtemp(prefix="umig-bench-migrate-"))
    rig = rigmod.make(2)
    rows = []
    try:
        for workload in args.workloads.split(","):
            for mib in harness.counts(ap, args.sizes, "--sizes"):
                try:
                    s = one(rig, work, build, workload, mib)
                except Exception as e:        # a failed row is shown, the rest still run
                    console.print(f"  {workload} {mib} MiB: [red]{e}[/red]")
                    continue
                rows.append(s)
                console.print(f"  {workload} {mib} MiB: frozen {s['frozen_ms']:.0f} ms, "
                              f"{s['wall_s']:.2f} s in all", highlight=False)
    finally:
        rig.down()
        subprocess.run(["rm", "-rf", str(work), str(build)])
    t = harness.table("umig migrate between two rig hosts",
                      ["workload", "memory", "sent", "ratio", "frozen", "total",
                       "rate", "limit: raw ssh\n(default)", "raw ssh\n(aes128-gcm)",
                       "rate /\nraw ssh", "target"])
    for s in rows:
        mem = s["memory_bytes"]
        rate = mem / s["wall_s"]
        raw = mem / s["raw_default_s"]
        gcm = mem / s["raw_gcm_s"]
        want = TARGETS[s["workload"]]
        t.add_row(s["workload"], harness.mib(mem), harness.mib(s["sent_bytes"]),
                  f"{s['ratio']:.2f}", f"{s['frozen_ms']:.0f} ms", f"{s['wall_s']:.2f} s",
                  f"{rate / 2**20:.0f} MiB/s", f"{raw / 2**20:.0f} MiB/s",
                  f"{gcm / 2**20:.0f} MiB/s", f"{rate / raw:.2f}",
                  f">= {want}: " + ("met" if rate / raw >= want else "[red]NOT met[/red]"))
    console.print(t)
    return 0


if __name__ == "__main__":
    sys.exit(harness.entry(main))
