#!/usr/bin/env python3
"""grab/resume benchmark: umig against the limits of this machine, measured
in the same run on the same bytes.

    .venv/bin/python bench/grab_resume.py [--sizes 64,1024] [--repeat 3]
        [--workloads random,half-zero,zero90,python-dict,python-dict-1g]
        [--dir /dev/shm] [--json [FILE]]

For every workload and size it starts a fresh victim per run, measures the
machine's limits on that victim's memory (process_vm_readv, lz4 compress and
decompress, process_vm_writev into fresh memory), then grabs it with umig in
a child process and resumes the image in another child process, reading
each child's own peak RSS (VmHWM) at the end.  The resumed victim checks its
memory and says PASS or FAIL.  Medians of --repeat runs are compared with
the targets; a target that is missed is printed as NOT met.  See
bench/README.md for what every column means.

The C victim and a small C helper (counting zero pages) are compiled into a
temporary directory with gcc; their source is below.  The grab and resume
workers, the process bookkeeping and the table helpers are in harness.py,
shared with threads.py and trees.py.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (processes, workers, medians, tables: shared by the benches)
from harness import MiB  # noqa: E402

PAGE = 4096
READV_IOV = 1 * MiB            # process_vm_readv: one 1 MiB iovec per call
LZ4_CHUNK = 4 * MiB            # lz4.block chunks, as umig compresses them

# CRIU's figures, from the issue
CRIU_FROZEN_1G_RANDOM_S = 0.570
CRIU_FROZEN_PY_DICT_S = 0.078
CRIU_RESUME_1G_S = 0.58
CRIU_PY_IMAGE_BYTES = 109 * MiB
FROZEN_RATIO_MAX = 1.3
ZERO_IMAGE_SLACK = 1.02
UMIG_RSS_MAX = 100 * MiB

WORKLOADS = {
    # name: (zero pages of every ten, description)
    "random": (0, "random bytes"),
    "half-zero": (5, "every other page written zeros, the rest random"),
    "zero90": (9, "9 of every 10 pages written zeros, the 10th random"),
}
PY_WORKLOADS = {
    "python-dict": 1_000_000,
    "python-dict-1g": 8_000_000,       # ~1 GiB of RSS on this machine (Python 3.11)
}

VICTIM_C = r"""
/* Fills SIZE_MIB MiB with pages of random bytes and written zeros (of every
 * ten pages, the first ZERO_TENTHS are zeros), prints "ready HASH", then
 * sleeps in a loop; on SIGUSR1 it rehashes and prints PASS or FAIL. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE 4096UL
static volatile sig_atomic_t check;
static void on_usr1(int s) { (void)s; check = 1; }

static uint64_t hash(const uint64_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    size_t size = strtoull(argv[1], 0, 10) << 20;
    unsigned zero_tenths = (unsigned)atoi(argv[2]);
    uint8_t *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                        -1, 0);
    if (mem == MAP_FAILED)
        return 3;
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    for (size_t pg = 0; pg < size / PAGE; pg++) {
        uint64_t *p = (uint64_t *)(mem + pg * PAGE);
        if (pg % 10 < zero_tenths) {
            memset(p, 0, PAGE);          /* a written zero page, present in memory */
            continue;
        }
        for (size_t i = 0; i < PAGE / 8; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            p[i] = x;
        }
    }
    uint64_t before = hash((uint64_t *)mem, size / 8);
    signal(SIGUSR1, on_usr1);
    printf("ready %016llx\n", (unsigned long long)before);
    fflush(stdout);
    struct timespec ts = {0, 50 * 1000 * 1000};
    for (;;) {
        nanosleep(&ts, NULL);
        if (check) {
            check = 0;
            uint64_t after = hash((uint64_t *)mem, size / 8);
            printf("%s %016llx\n", after == before ? "PASS" : "FAIL",
                   (unsigned long long)after);
            fflush(stdout);
        }
    }
}
"""

HELPER_C = r"""
#include <stdint.h>
/* Number of all-zero 4 KiB pages in p[0 .. npages*4096). */
uint64_t bench_zero_pages(const uint8_t *p, uint64_t npages)
{
    uint64_t n = 0;
    for (uint64_t k = 0; k < npages; k++) {
        const uint64_t *q = (const uint64_t *)(p + k * 4096);
        uint64_t acc = 0;
        for (unsigned i = 0; i < 512; i++)
            acc |= q[i];
        n += acc == 0;
    }
    return n;
}
"""

PY_VICTIM = r"""
import signal, sys, time
n = int(sys.argv[1])
d = {f"key-{i:09d}": i for i in range(n)}
check = False
def on_usr1(sig, frame):
    global check
    check = True
signal.signal(signal.SIGUSR1, on_usr1)
print(f"ready {n}", flush=True)
while True:
    time.sleep(0.05)
    if check:
        check = False
        ok = (len(d) == n and sum(d.values()) == n * (n - 1) // 2
              and d[f"key-{n // 2:09d}"] == n // 2)
        print(("PASS " if ok else "FAIL ") + str(len(d)), flush=True)
"""


# ------------------------------------------------------------------ limits

class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = harness.libc
_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.process_vm_readv.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong,
                                   ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.c_ulong]
_libc.process_vm_writev.restype = ctypes.c_ssize_t
_libc.process_vm_writev.argtypes = _libc.process_vm_readv.argtypes
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def present_ranges(pid: int) -> list[tuple[int, int]]:
    """(addr, length) of the pages a checkpoint must carry, found with
    PAGEMAP_SCAN (through umig's thin wrapper) independently of umig's
    capture code: present or swapped pages of private readable mappings,
    without the shared zero page and without file pages not yet copied on
    write."""
    from umig.native import ffi, lib
    CAT_FILE, CAT_PRESENT, CAT_SWAPPED, CAT_PFNZERO = 4, 8, 16, 32
    vec = ffi.new("struct umig_region[]", 4096)
    walk_end = ffi.new("uint64_t *")
    out: list[tuple[int, int]] = []
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with open(f"/proc/{pid}/maps") as f:
            maps = f.read().splitlines()
        for line in maps:
            parts = line.split(None, 5)
            start, end = (int(x, 16) for x in parts[0].split("-"))
            perms, inode = parts[1], int(parts[4])
            path = parts[5] if len(parts) > 5 else ""
            if perms[3] != "p" or perms[0] != "r" or path in ("[vvar]", "[vvar_vclock]",
                                                              "[vdso]", "[vsyscall]"):
                continue
            file_backed = inode != 0
            while start < end:
                n = lib.umig_scan(fd, start, end, CAT_PRESENT | CAT_SWAPPED,
                                  CAT_PRESENT | CAT_SWAPPED | CAT_FILE | CAT_PFNZERO,
                                  vec, 4096, walk_end)
                if n < 0:
                    raise OSError(-n, f"PAGEMAP_SCAN of process {pid}: {os.strerror(-n)}")
                for i in range(n):
                    r = vec[i]
                    if r.categories & CAT_PFNZERO:
                        continue
                    if file_backed and r.categories & CAT_FILE and not r.categories & CAT_SWAPPED:
                        continue
                    out.append((r.start, r.end - r.start))
                start = walk_end[0] if walk_end[0] > start else end
    finally:
        os.close(fd)
    return out


def _pieces(ranges, piece: int):
    for addr, length in ranges:
        off = 0
        while off < length:
            n = min(piece, length - off)
            yield addr + off, n
            off += n


def measure_limits(pid: int, helper, passes: int = 2) -> dict:
    """The limits, on the victim's own memory: process_vm_readv (1 MiB
    iovecs into one reused buffer; best of `passes` passes), lz4 block
    compress/decompress of the same bytes in 4 MiB chunks, the number of
    non-zero pages, and process_vm_writev of that many bytes into fresh
    (untouched) memory of this process."""
    import lz4.block
    ranges = present_ranges(pid)
    total = sum(n for _, n in ranges)

    # 1. raw process_vm_readv bandwidth.  The buffer is page-aligned: into a
    #    destination that is not 64-byte aligned, the kernel's copy (rep movsb)
    #    runs at half speed or less on this CPU.
    area = mmap.mmap(-1, LZ4_CHUNK)
    buf = ctypes.c_char.from_buffer(area)
    local = _Iovec(ctypes.addressof(buf), READV_IOV)
    remote = _Iovec()
    readv = _libc.process_vm_readv
    best = float("inf")
    for _ in range(passes):
        t0 = time.perf_counter()
        for addr, n in _pieces(ranges, READV_IOV):
            remote.base, remote.len = addr, n
            local.len = n
            if readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) != n:
                raise OSError(ctypes.get_errno(), f"process_vm_readv of {pid} at {addr:#x}")
        best = min(best, time.perf_counter() - t0)
    readv_s = best

    # 2. lz4 on the same bytes, 4 MiB at a time (read again, untimed)
    iovs = (_Iovec * (LZ4_CHUNK // PAGE))()
    mv = memoryview(area)
    comp_s = decomp_s = 0.0
    comp_bytes = zero_pages = 0
    chunk: list[tuple[int, int]] = []
    used = 0

    def flush():
        nonlocal comp_s, decomp_s, comp_bytes, zero_pages
        for i, (a, n) in enumerate(chunk):
            iovs[i].base, iovs[i].len = a, n
        local.len = used
        if readv(pid, ctypes.byref(local), 1, iovs, len(chunk), 0) != used:
            raise OSError(ctypes.get_errno(), f"process_vm_readv of {pid}")
        zero_pages += helper.bench_zero_pages(ctypes.addressof(buf), used // PAGE)
        src = mv[:used]
        t0 = time.perf_counter()
        c = lz4.block.compress(src, store_size=False)
        t1 = time.perf_counter()
        lz4.block.decompress(c, uncompressed_size=used)
        t2 = time.perf_counter()
        comp_s += t1 - t0
        decomp_s += t2 - t1
        comp_bytes += len(c)

    # iovecs of at most 1 MiB, chunks of at most 4 MiB
    for addr, n in _pieces(ranges, READV_IOV):
        while n:
            take = min(n, LZ4_CHUNK - used)
            chunk.append((addr, take))
            used += take
            addr += take
            n -= take
            if used == LZ4_CHUNK:
                flush()
                chunk, used = [], 0
    if chunk:
        flush()
    nonzero = total - zero_pages * PAGE

    # 3. process_vm_writev of the non-zero bytes into untouched memory (page
    #    faults and copy: what filling the resumed process costs at best)
    writev_s = 0.0
    if nonzero:
        PROT_RW, MAP_PRIV_ANON = 3, 0x22
        dst = _libc.mmap(None, nonzero, PROT_RW, MAP_PRIV_ANON, -1, 0)
        if dst in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        try:
            me = os.getpid()
            local.len = READV_IOV
            t0 = time.perf_counter()
            for off in range(0, nonzero, READV_IOV):
                n = min(READV_IOV, nonzero - off)
                local.len = n
                remote.base, remote.len = dst + off, n
                if _libc.process_vm_writev(me, ctypes.byref(local), 1, ctypes.byref(remote),
                                           1, 0) != n:
                    raise OSError(ctypes.get_errno(), "process_vm_writev")
            writev_s = time.perf_counter() - t0
        finally:
            _libc.munmap(dst, nonzero)
    del buf, mv
    area.close()
    return {"bytes": total, "nonzero_bytes": nonzero, "readv_s": readv_s,
            "lz4_compress_s": comp_s, "lz4_decompress_s": decomp_s,
            "lz4_bytes": comp_bytes, "writev_fresh_s": writev_s}


def measure_sink(directory: Path, nbytes: int) -> float:
    """Seconds to write nbytes (4 MiB writes from one buffer) to a new file
    in directory, fsync included, as grab writes its image there.  On tmpfs
    this is mostly the allocation of fresh pages."""
    buf = b"\x5a" * LZ4_CHUNK
    path = directory / "sink"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        t0 = time.perf_counter()
        left = nbytes
        while left > 0:
            left -= os.write(fd, memoryview(buf)[:min(left, LZ4_CHUNK)])
        os.fsync(fd)
        return time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink()


# ------------------------------------------------------------------ one run

def one_run(b: harness.Bench, helper, workload: str, size_mib: int, run: int) -> dict:
    out = b.workdir / f"out-{workload}-{size_mib}-{run}.txt"
    image = b.workdir / f"img-{workload}-{size_mib}-{run}"
    res: dict = {"workload": workload, "size_mib": size_mib, "run": run}
    with b.recording(res, out, image):
        with out.open("w") as f:
            if workload in WORKLOADS:
                argv = [b.build / "victim", size_mib, WORKLOADS[workload][0]]
            else:
                argv = [sys.executable, "-c", PY_VICTIM, PY_WORKLOADS[workload]]
            t0 = time.perf_counter()
            victim = b.start(argv, stdout=f)
        ready = harness.wait_line(out, 0, 300, victim)
        res["victim_setup_s"] = time.perf_counter() - t0
        res["rss_bytes"] = harness.rss_bytes(victim.pid)
        res["limits"] = measure_limits(victim.pid, helper)

        res["grab"] = b.grab(victim, image)
        res["grab"]["image_file_bytes"] = image.stat().st_size
        worker, resumed = b.resume(image)
        res["resume"] = resumed

        # the resumed process checks its own memory
        os.kill(resumed["pid"], signal.SIGUSR1)
        verdict = harness.wait_line(out, 1, 120)
        expect = "PASS " + ready.split()[1]
        res["verify"] = "PASS" if verdict == expect else f"FAIL ({verdict!r}, want {expect!r})"
        b.end_resume(worker)
        image.unlink()
        res["limits"]["sink_s"] = measure_sink(b.workdir, res["grab"]["image_bytes"])
    return res


# ------------------------------------------------------------------ summary

@dataclass
class Row(harness.Row):
    workload: str
    size_mib: int

    @property
    def label(self) -> str:
        if self.workload in PY_WORKLOADS:
            return f"{self.workload} ({PY_WORKLOADS[self.workload] / 1e6:g}M entries)"
        return f"{self.workload} {self.size_mib} MiB"


def summarize(row: Row) -> None:
    ok = row.ok_runs()
    if not ok:
        return
    m = row.med
    m["rss"] = harness.median(r["rss_bytes"] for r in ok)
    harness.medians(m, ok, "limits", ("bytes", "nonzero_bytes", "readv_s", "lz4_compress_s",
                                      "lz4_decompress_s", "lz4_bytes", "writev_fresh_s",
                                      "sink_s"))
    harness.medians(m, ok, "grab", ("wall_s", "frozen_s", "image_bytes", "hwm_bytes",
                                    "hwm_after_import_bytes"), prefix="grab_")
    harness.medians(m, ok, "resume", ("resume_s", "hwm_bytes", "hwm_after_import_bytes"),
                    prefix="resume_")
    harness.phase_medians(m, ok)
    m["verify"] = harness.tally(ok, lambda r: r["verify"] == "PASS")
    m["same_pid"] = harness.tally(ok, lambda r: r["resume"]["same_pid"])

    check = row.check
    frozen = m["grab_frozen_s"]
    bound = max(m["readv_s"], m["lz4_compress_s"])
    check(f"frozen <= {FROZEN_RATIO_MAX} x max(readv, lz4 compress)", frozen,
          FROZEN_RATIO_MAX * bound, "s")
    one_gib = row.size_mib >= 1024 or row.workload == "python-dict-1g"
    if row.workload == "random" and row.size_mib == 1024:
        check("frozen < CRIU (1 GiB random: 570 ms)", frozen, CRIU_FROZEN_1G_RANDOM_S, "s",
              strict=True)
    if row.workload == "python-dict":
        check("frozen < CRIU (Python 1M dict: 78 ms)", frozen, CRIU_FROZEN_PY_DICT_S, "s",
              strict=True)
    if one_gib:
        check("resume <= CRIU (1 GiB: 0.58 s)", m["resume_resume_s"], CRIU_RESUME_1G_S, "s")
    if row.workload in ("half-zero", "zero90"):
        check(f"image <= non-zero part + {round((ZERO_IMAGE_SLACK - 1) * 100)}%",
              m["grab_image_bytes"], ZERO_IMAGE_SLACK * m["nonzero_bytes"], "B")
    if row.workload == "python-dict":
        check("image < CRIU's 109 MiB / 2", m["grab_image_bytes"], CRIU_PY_IMAGE_BYTES / 2,
              "B", strict=True)
    check("umig peak RSS in grab < 100 MiB", m["grab_hwm_bytes"], UMIG_RSS_MAX, "B",
          strict=True)
    check("umig peak RSS in resume < 100 MiB", m["resume_hwm_bytes"], UMIG_RSS_MAX, "B",
          strict=True)
    if m["verify"] != f"{len(ok)}/{len(ok)}":
        row.errors.append(f"resumed victim failed its self-check in "
                          f"{len(ok) - int(m['verify'].split('/')[0])} run(s)")


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.0f} ms"
    return f"{value / MiB:.1f} MiB"


def print_tables(rows: list[Row], meta: dict, console) -> None:
    from harness import mib, ms, throughput as tp

    def umig(row, m):
        return [row.label, mib(m["rss"], 0), ms(m["grab_wall_s"]), ms(m["grab_frozen_s"]),
                ms(m["resume_resume_s"]), mib(m["grab_image_bytes"]), mib(m["nonzero_bytes"]),
                mib(m["grab_hwm_bytes"]), mib(m["resume_hwm_bytes"]),
                harness.red_unless_all(m["verify"])]
    harness.print_table(
        console, f"umig grab/resume: median of {meta['repeat']} runs "
                 f"({meta['kernel']}, {meta['cpus']} vCPUs, images in {meta['dir']})",
        ["workload", "victim\nRSS MiB", "grab\nwall ms", "frozen\nms", "resume\nms",
         "image\nMiB", "non-zero\nMiB", "umig peak RSS\ngrab MiB", "umig peak RSS\nresume MiB",
         "self-\ncheck"], rows, umig, errors=True)

    def limits(row, m):
        bound = max(m["readv_s"], m["lz4_compress_s"])
        with_sink = max(bound, m["sink_s"] or 0)
        fill = max(m["lz4_decompress_s"], m["writev_fresh_s"])
        return [row.label, mib(m["bytes"], 0), tp(m["readv_s"], m["bytes"]),
                tp(m["lz4_compress_s"], m["bytes"]), f"{m['bytes'] / m['lz4_bytes']:.2f}",
                tp(m["lz4_decompress_s"], m["bytes"]),
                tp(m["writev_fresh_s"], m["nonzero_bytes"]),
                tp(m["sink_s"], m["grab_image_bytes"]),
                f"{m['grab_frozen_s'] / bound:.2f}", f"{m['grab_frozen_s'] / with_sink:.2f}",
                f"{m['resume_resume_s'] / fill:.2f}" if fill else "-"]
    harness.print_table(
        console, "limits measured on the same bytes in the same runs: ms (GiB/s), and umig's "
                 "time over them",
        ["workload", "pages\nMiB", "readv", "lz4\ncompress", "lz4\nratio", "lz4\ndecompress",
         "writev\nfresh", "image write\nto --dir", "frozen /\nmax(rd,c)",
         "frozen /\nmax(rd,c,wr)", "resume /\nmax(d,wv)"], rows, limits)
    harness.print_checks(console, rows, "workload", _fmt)


# ------------------------------------------------------------------ main

def build_natives(build: Path):
    (build / "victim.c").write_text(VICTIM_C)
    (build / "helper.c").write_text(HELPER_C)
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(build / "victim"),
                    str(build / "victim.c")], check=True, capture_output=True)
    subprocess.run(["gcc", "-O2", "-Wall", "-shared", "-fPIC", "-o",
                    str(build / "helper.so"), str(build / "helper.c")],
                   check=True, capture_output=True)
    helper = ctypes.CDLL(str(build / "helper.so"))
    helper.bench_zero_pages.restype = ctypes.c_uint64
    helper.bench_zero_pages.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    return helper


def progress(res: dict) -> str:
    return (f"frozen {res['grab']['frozen_s'] * 1000:.0f} ms, resume "
            f"{res['resume']['resume_s'] * 1000:.0f} ms, image "
            f"{res['grab']['image_bytes'] / MiB:.1f} MiB, {res['verify']}")


def main(argv: list[str] | None = None) -> int:
    ap = harness.parser(__doc__)
    ap.add_argument("--sizes", default="64,1024",
                    help="MiB of memory for the byte workloads (default 64,1024)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row (default 3)")
    ap.add_argument("--workloads", default=",".join([*WORKLOADS, *PY_WORKLOADS]),
                    help=f"comma-separated, of {', '.join([*WORKLOADS, *PY_WORKLOADS])} "
                         f"(default all)")
    harness.add_output_options(ap)
    args = ap.parse_args(argv)

    console = harness.console_for(args)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    names = [w for w in args.workloads.split(",") if w]
    for w in names:
        if w not in WORKLOADS and w not in PY_WORKLOADS:
            ap.error(f"unknown workload {w}")
    if os.geteuid() != 0:
        console.print("[yellow]not root: grab/resume may be refused by ptrace rules[/yellow]")

    import umig.native  # noqa: F401  (mallopt: lz4 is slow here without it)
    harness.become_reaper()

    plan = [(w, s) for w in names if w in WORKLOADS for s in sizes]
    plan += [(w, 0) for w in names if w in PY_WORKLOADS]
    t_start = time.monotonic()
    b = harness.Bench.create(args.dir, "umig-bench-", Path(__file__).resolve())
    rows, interrupted = harness.run_rows(
        b, (Row(w, s) for w, s in plan), args.repeat, console, prepare=build_natives,
        one_run=lambda helper, row, i: one_run(b, helper, row.workload, row.size_mib, i),
        progress=progress, summarize=summarize)

    meta = harness.run_meta(
        args.repeat, args.dir, t_start,
        readv="ctypes loop: one process_vm_readv per 1 MiB iovec into one reused "
              "page-aligned buffer; best of 2 passes",
        lz4="lz4.block.compress(store_size=False) / decompress on 4 MiB chunks of "
            "all present pages; python-lz4 allocates its output (no out-buffer API); "
            "glibc mmap threshold raised by import umig.native")
    harness.report(console, args, rows, meta, print_tables,
                   lambda r: {"workload": r.workload, "size_mib": r.size_mib, "label": r.label})
    failed = any(r.errors for r in rows) or interrupted
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(harness.entry(main))
