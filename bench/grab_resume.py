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
temporary directory with gcc; their source is below.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30
PAGE = 4096
READV_IOV = 1 * MiB            # process_vm_readv: one 1 MiB iovec per call
LZ4_CHUNK = 4 * MiB            # lz4.block chunks, as umig compresses them
PR_SET_CHILD_SUBREAPER = 36

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


# ------------------------------------------------------------------ workers

def _vm_hwm() -> int:
    """This process's peak resident set (VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def worker_grab(pid: int, image: str) -> dict:
    """In a fresh child: grab pid into image (finish=kill), report stats and
    this process's peak RSS."""
    t0 = time.perf_counter()
    from umig import capture
    from umig.image.stream import Output
    base = _vm_hwm()
    out = Output(image)          # as `umig grab -o IMAGE` does (preallocated, renamed)
    try:
        st = capture.grab(pid, out.fd, finish="kill", on_complete=out.commit,
                          prepare=out.preallocate)
    except BaseException:
        out.abort()
        raise
    finally:
        out.close()
    return {"frozen_s": st.frozen_s, "wall_s": st.wall_s, "image_bytes": st.image_bytes,
            "pages": st.pages, "data_pages": st.data_pages, "vmas": st.vmas, "fds": st.fds,
            "hwm_bytes": _vm_hwm(), "hwm_after_import_bytes": base,
            "import_s": time.perf_counter() - t0 - st.wall_s}


def worker_resume(image: str) -> None:
    """In a fresh child: resume image, report timings and this process's
    peak RSS, then wait for "kill" on stdin and kill and reap the resumed
    process (it is our child)."""
    from umig.restore import ResumeOptions, resume
    base = _vm_hwm()
    fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    try:
        r = resume(fd, ResumeOptions())
    finally:
        os.close(fd)
    t = r.timings
    out = {"pid": r.pid, "same_pid": r.same_pid, "vdso_mode": r.vdso_mode,
           "resume_s": t["running"] - t["start"],
           "phases_s": {k: v - t["start"] for k, v in t.items() if k != "start"},
           "hwm_bytes": _vm_hwm(), "hwm_after_import_bytes": base}
    print(json.dumps(out), flush=True)
    try:
        sys.stdin.readline()
    finally:
        os.kill(r.pid, signal.SIGKILL)
        os.waitpid(r.pid, 0)


def worker_main(argv: list[str]) -> int:
    try:
        if argv[0] == "grab":
            print(json.dumps(worker_grab(int(argv[1]), argv[2])), flush=True)
        elif argv[0] == "resume":
            worker_resume(argv[1])
        else:
            raise SystemExit(f"unknown worker {argv[0]}")
    except Exception as e:          # one line the parent can show
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        return 1
    return 0


# ------------------------------------------------------------------ limits

class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
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

class Bench:
    """Everything started here is killed and reaped in cleanup()."""

    def __init__(self, workdir: Path, build: Path):
        self.workdir = workdir
        self.build = build
        self.popens: list[subprocess.Popen] = []
        self.pids: set[int] = set()

    def start(self, argv, **kw) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        kw.setdefault("close_fds", True)
        p = subprocess.Popen([str(a) for a in argv], **kw)
        self.popens.append(p)
        return p

    def cleanup(self) -> None:
        for p in self.popens:
            if p.poll() is None:
                try:
                    p.kill()
                except ProcessLookupError:
                    pass
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
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


def _wait_line(path: Path, index: int, timeout: float, proc=None) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines()
        if len(lines) > index and path.read_text().endswith("\n"):
            return lines[index]
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"victim exited with {proc.returncode} before line {index}")
        time.sleep(0.01)
    raise RuntimeError(f"no line {index} in {path} after {timeout:.0f} s")


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _worker_argv(*args) -> list:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", *args]


def one_run(b: Bench, helper, workload: str, size_mib: int, run: int) -> dict:
    out = b.workdir / f"out-{workload}-{size_mib}-{run}.txt"
    image = b.workdir / f"img-{workload}-{size_mib}-{run}"
    res: dict = {"workload": workload, "size_mib": size_mib, "run": run}
    try:
        with out.open("w") as f:
            if workload in WORKLOADS:
                argv = [b.build / "victim", size_mib, WORKLOADS[workload][0]]
            else:
                argv = [sys.executable, "-c", PY_VICTIM, PY_WORKLOADS[workload]]
            t0 = time.perf_counter()
            victim = b.start(argv, stdout=f)
        ready = _wait_line(out, 0, 300, victim)
        res["victim_setup_s"] = time.perf_counter() - t0
        res["rss_bytes"] = _rss_bytes(victim.pid)
        res["limits"] = measure_limits(victim.pid, helper)

        g = b.start(_worker_argv("grab", victim.pid, image), stdout=subprocess.PIPE)
        line = g.stdout.readline()
        g.wait(timeout=120)
        grab = json.loads(line) if line else {"error": f"grab worker exited {g.returncode}"}
        if "error" in grab:
            raise RuntimeError(f"grab: {grab['error']}")
        res["grab"] = grab
        victim.wait(timeout=20)         # killed by grab; reaped here so its pid is free
        res["grab"]["image_file_bytes"] = image.stat().st_size

        r = b.start(_worker_argv("resume", image), stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE)
        line = r.stdout.readline()
        resumed = json.loads(line) if line else {"error": f"resume worker exited "
                                                          f"{r.poll()}"}
        if "error" in resumed:
            raise RuntimeError(f"resume: {resumed['error']}")
        b.pids.add(resumed["pid"])
        res["resume"] = resumed

        # the resumed process checks its own memory
        os.kill(resumed["pid"], signal.SIGUSR1)
        verdict = _wait_line(out, 1, 120)
        expect = "PASS " + ready.split()[1]
        res["verify"] = "PASS" if verdict == expect else f"FAIL ({verdict!r}, want {expect!r})"
        r.stdin.write(b"kill\n")
        r.stdin.close()
        r.wait(timeout=30)
        image.unlink()
        res["limits"]["sink_s"] = measure_sink(b.workdir, res["grab"]["image_bytes"])
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
    workload: str
    size_mib: int
    runs: list = field(default_factory=list)
    med: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)
    errors: list = field(default_factory=list)

    @property
    def label(self) -> str:
        if self.workload in PY_WORKLOADS:
            return f"{self.workload} ({PY_WORKLOADS[self.workload] / 1e6:g}M entries)"
        return f"{self.workload} {self.size_mib} MiB"


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(row: Row) -> None:
    ok = [r for r in row.runs if "error" not in r]
    row.errors = [r["error"] for r in row.runs if "error" in r]
    if not ok:
        return
    m = row.med
    m["n"] = len(ok)
    m["rss"] = _median(r["rss_bytes"] for r in ok)
    for k in ("bytes", "nonzero_bytes", "readv_s", "lz4_compress_s", "lz4_decompress_s",
              "lz4_bytes", "writev_fresh_s", "sink_s"):
        m[k] = _median(r["limits"][k] for r in ok)
    for k in ("wall_s", "frozen_s", "image_bytes", "hwm_bytes", "hwm_after_import_bytes"):
        m["grab_" + k] = _median(r["grab"][k] for r in ok)
    for k in ("resume_s", "hwm_bytes", "hwm_after_import_bytes"):
        m["resume_" + k] = _median(r["resume"][k] for r in ok)
    for ph in ("planned", "mapped", "filled", "ready", "running"):
        m["resume_" + ph + "_s"] = _median(r["resume"]["phases_s"].get(ph) for r in ok)
    m["verify"] = f"{sum(r['verify'] == 'PASS' for r in ok)}/{len(ok)}"
    m["same_pid"] = f"{sum(r['resume']['same_pid'] for r in ok)}/{len(ok)}"

    def check(target: str, measured: float, limit: float, unit: str, strict: bool = False):
        ratio = measured / limit if limit else float("inf")
        met = measured < limit if strict else measured <= limit
        row.checks.append({"target": target, "measured": measured, "limit": limit,
                           "unit": unit, "ratio": ratio, "met": bool(met)})

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


def _gbps(nbytes, secs) -> str:
    return f"{nbytes / GiB / secs:.2f}" if secs else "-"


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.0f} ms"
    return f"{value / MiB:.1f} MiB"


def print_tables(rows: list[Row], meta: dict, console) -> None:
    from rich.table import Table
    t = Table(title=f"umig grab/resume: median of {meta['repeat']} runs "
                    f"({meta['kernel']}, {meta['cpus']} vCPUs, images in {meta['dir']})")
    cols = ["workload", "victim\nRSS MiB", "grab\nwall ms", "frozen\nms",
            "resume\nms", "image\nMiB", "non-zero\nMiB", "umig peak RSS\ngrab MiB",
            "umig peak RSS\nresume MiB", "self-\ncheck"]
    for i, name in enumerate(cols):
        t.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        m = row.med
        if not m:
            t.add_row(row.label, *(["-"] * (len(cols) - 2)), "[red]error[/red]")
            continue
        n_ok, n = m["verify"].split("/")
        t.add_row(row.label, f"{m['rss'] / MiB:.0f}", f"{m['grab_wall_s'] * 1000:.0f}",
                  f"{m['grab_frozen_s'] * 1000:.0f}", f"{m['resume_resume_s'] * 1000:.0f}",
                  f"{m['grab_image_bytes'] / MiB:.1f}", f"{m['nonzero_bytes'] / MiB:.1f}",
                  f"{m['grab_hwm_bytes'] / MiB:.1f}", f"{m['resume_hwm_bytes'] / MiB:.1f}",
                  m["verify"] if n_ok == n else f"[red]{m['verify']}[/red]")
    console.print(t)

    def tp(secs, nbytes):
        return f"{secs * 1000:.0f} ({_gbps(nbytes, secs)})" if secs else "-"

    lim = Table(title="limits measured on the same bytes in the same runs: ms (GiB/s), "
                      "and umig's time over them")
    cols = ["workload", "pages\nMiB", "readv", "lz4\ncompress", "lz4\nratio",
            "lz4\ndecompress", "writev\nfresh", "image write\nto --dir",
            "frozen /\nmax(rd,c)", "frozen /\nmax(rd,c,wr)", "resume /\nmax(d,wv)"]
    for i, name in enumerate(cols):
        lim.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        m = row.med
        if not m:
            continue
        bound = max(m["readv_s"], m["lz4_compress_s"])
        with_sink = max(bound, m["sink_s"] or 0)
        fill = max(m["lz4_decompress_s"], m["writev_fresh_s"])
        lim.add_row(row.label, f"{m['bytes'] / MiB:.0f}", tp(m["readv_s"], m["bytes"]),
                    tp(m["lz4_compress_s"], m["bytes"]), f"{m['bytes'] / m['lz4_bytes']:.2f}",
                    tp(m["lz4_decompress_s"], m["bytes"]),
                    tp(m["writev_fresh_s"], m["nonzero_bytes"]),
                    tp(m["sink_s"], m["grab_image_bytes"]),
                    f"{m['grab_frozen_s'] / bound:.2f}", f"{m['grab_frozen_s'] / with_sink:.2f}",
                    f"{m['resume_resume_s'] / fill:.2f}" if fill else "-")
    console.print(lim)

    c = Table(title="targets (measured vs limit, from the medians above)")
    for name, justify in (("workload", "left"), ("target", "left"), ("measured", "right"),
                          ("limit", "right"), ("ratio", "right"), ("", "left")):
        c.add_column(name, justify=justify)
    met = missed = 0
    for row in rows:
        for ch in row.checks:
            met += ch["met"]
            missed += not ch["met"]
            c.add_row(row.label, ch["target"], _fmt(ch["measured"], ch["unit"]),
                      _fmt(ch["limit"], ch["unit"]), f"{ch['ratio']:.2f}",
                      "[green]met[/green]" if ch["met"] else "[bold red]NOT met[/bold red]")
    console.print(c)
    console.print(f"{met} targets met, {missed} NOT met.")
    for row in rows:
        for e in row.errors:
            console.print(f"[red]{row.label}: {e}[/red]")


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64,1024",
                    help="MiB of memory for the byte workloads (default 64,1024)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row (default 3)")
    ap.add_argument("--workloads", default=",".join([*WORKLOADS, *PY_WORKLOADS]),
                    help=f"comma-separated, of {', '.join([*WORKLOADS, *PY_WORKLOADS])} "
                         f"(default all)")
    ap.add_argument("--dir", default="/dev/shm",
                    help="where images go (a temporary directory is made in it and "
                         "removed; default /dev/shm)")
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE",
                    help="also write all runs and medians as JSON to FILE (or, without "
                         "FILE, to stdout, with the tables on stderr)")
    args = ap.parse_args(argv)

    from rich.console import Console
    to_stderr = args.json == "-"
    tty = (sys.stderr if to_stderr else sys.stdout).isatty()
    console = Console(stderr=to_stderr, width=None if tty else 180)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    names = [w for w in args.workloads.split(",") if w]
    for w in names:
        if w not in WORKLOADS and w not in PY_WORKLOADS:
            ap.error(f"unknown workload {w}")
    if os.geteuid() != 0:
        console.print("[yellow]not root: grab/resume may be refused by ptrace rules[/yellow]")

    import umig.native  # noqa: F401  (mallopt: lz4 is slow here without it)

    def on_term(sig, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    plan = [(w, s) for w in names if w in WORKLOADS for s in sizes]
    plan += [(w, 0) for w in names if w in PY_WORKLOADS]
    build = Path(tempfile.mkdtemp(prefix="umig-bench-build-"))
    workdir = Path(tempfile.mkdtemp(prefix="umig-bench-", dir=args.dir))
    rows: list[Row] = []
    t_start = time.monotonic()
    b = Bench(workdir, build)
    interrupted = False
    try:
        helper = build_natives(build)
        for w, s in plan:
            row = Row(w, s)
            rows.append(row)
            for i in range(args.repeat):
                res = one_run(b, helper, w, s, i)
                row.runs.append(res)
                if "error" in res:
                    console.print(f"  {row.label} run {i + 1}: [red]{res['error']}[/red]")
                else:
                    console.print(
                        f"  {row.label} run {i + 1}: frozen "
                        f"{res['grab']['frozen_s'] * 1000:.0f} ms, resume "
                        f"{res['resume']['resume_s'] * 1000:.0f} ms, image "
                        f"{res['grab']['image_bytes'] / MiB:.1f} MiB, {res['verify']}",
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

    meta = {"repeat": args.repeat, "kernel": platform.release(), "cpus": os.cpu_count(),
            "dir": args.dir, "python": platform.python_version(),
            "total_s": time.monotonic() - t_start,
            "readv": "ctypes loop: one process_vm_readv per 1 MiB iovec into one reused "
                     "page-aligned buffer; best of 2 passes",
            "lz4": "lz4.block.compress(store_size=False) / decompress on 4 MiB chunks of "
                   "all present pages; python-lz4 allocates its output (no out-buffer API); "
                   "glibc mmap threshold raised by import umig.native"}
    print_tables(rows, meta, console)
    console.print(f"total {meta['total_s']:.0f} s", highlight=False)
    if args.json:
        doc = {"meta": meta, "rows": [{"workload": r.workload, "size_mib": r.size_mib,
                                       "label": r.label, "median": r.med, "checks": r.checks,
                                       "errors": r.errors, "runs": r.runs} for r in rows]}
        text = json.dumps(doc, indent=1)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    failed = any(r.errors for r in rows) or interrupted
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
