"""The image format: every record kind round-trips to identical bytes, a real
image decodes and re-encodes exactly, damaged images are refused with the
documented one-line messages, and `umig info` reads real images
(docs/image-format.md, STYLE.md §5-6)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time

import lz4.block
import pytest

from umig.errors import Exit
from umig.image import schema
from umig.image.stream import (FLAG_OPTIONAL, FRAME, ImageReader, ImageWriter, crc32c,
                               page_chunk_frame)

PAGE = 4096
RUN = struct.Struct("<QII")
RUN_DATA, RUN_ZERO = 0, 1
U64_MAX = (1 << 64) - 1

COUNTER_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) { for (long i = 0;; i++) { printf("%ld\n", i); fflush(stdout); usleep(20000); } }
"""


# ---------------------------------------------------------------- helpers

def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ 0x82F63B78 if n & 1 else n >> 1
        table.append(n)
    return table


CRC32C_TABLE = _crc32c_table()


def py_crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) as docs/image-format.md gives it, in plain Python."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def walk(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """A second reader, written from docs/image-format.md alone: (offset, tag,
    flags, payload) of every record, the trailer included, with each crc32c
    and the trailer's count and digest checked."""
    assert data[:8] == schema.MAGIC and len(data) >= 16
    out, pos, digest = [], 16, hashlib.sha256()
    while pos < len(data):
        tag, flags, length = struct.unpack_from("<HHI", data, pos)
        payload = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack_from("<I", data, pos + 8 + length)
        assert py_crc32c(data[pos:pos + 8 + length]) == crc, f"crc of record {len(out)}"
        out.append((pos, tag, flags, payload))
        if tag == schema.TRAILER.tag:
            records, = struct.unpack_from("<I", payload)
            assert records == len(out) - 1 and payload[-32:] == digest.digest()
            assert pos + 12 + length == len(data), "data after the trailer"
        digest.update(data[pos:pos + 8] + data[pos + 8 + length:pos + 12 + length])
        pos += 8 + length + 4
    assert pos == len(data) and out[-1][1] == schema.TRAILER.tag
    return out


def frame_bytes(tag: int, flags: int, payload: bytes) -> bytes:
    head = FRAME.pack(tag, flags, len(payload))
    return head + payload + struct.pack("<I", crc32c(head, payload))


def read_all(fd: int) -> tuple[ImageReader, list]:
    reader = ImageReader(fd)
    return reader, list(reader)


def assert_round_trip(data: bytes, frames, reader: ImageReader) -> set[int]:
    """Every frame decodes and re-encodes to its exact payload; returns the
    tags seen, the trailer (which the reader verifies, not yields) included."""
    raw = walk(data)
    seen = set()
    for frame in frames:
        offset, tag, _flags, payload = raw[frame.index]
        assert (frame.offset, frame.tag) == (offset, tag)
        assert bytes(frame.payload) == payload
        values = frame.decode()
        assert "_extra" not in values, f"record {frame.index} has undeclared bytes"
        assert schema.RECORDS[frame.tag].encode(values) == payload, frame.name
        seen.add(frame.tag)
    offset, tag, _flags, payload = raw[-1]
    assert tag == schema.TRAILER.tag and reader.trailer is not None
    assert schema.TRAILER.decode(payload) == reader.trailer
    assert schema.TRAILER.encode(reader.trailer) == payload
    seen.add(tag)
    return seen


def umig_info(path, *args: str, stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "umig", "info", *args, str(path)],
                          stdin=stdin, capture_output=True, text=True, timeout=60)


def test_record_checksum_is_standard_crc32c():
    """GIVEN the CRC-32C check string
    WHEN umig's native crc32c and the plain-Python one of the spec compute it
    THEN both give the standard check value, also when fed in pieces"""
    assert py_crc32c(b"123456789") == crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"1234", b"56789") == 0xE3069283


# ---------------------------------------------------------------- a synthetic image

def synthetic_records() -> list[tuple[schema.Record, dict]]:
    """One realistic record of every kind but PAGES and TRAILER, in stream order."""
    heap, anon, stack = 0x5555_5555_9000, 0x7F00_0000_0000, 0x7FFF_FFFD_E000
    regs = list(range(1000, 1027))
    regs[15] = U64_MAX                    # orig_rax: not in a syscall
    siginfo = struct.pack("<iii", 10, 0, -6).ljust(128, b"\0")
    actions = [{"handler": 0, "flags": 0, "restorer": 0, "mask": 0} for _ in range(64)]
    actions[9] = {"handler": 0x5555_5555_1234, "flags": 0x1400_0004,
                  "restorer": 0x7F00_0004_2520, "mask": 1 << 11}   # SIGUSR1
    actions[12] = {"handler": 1, "flags": 0x0400_0000, "restorer": 0x7F00_0004_2520,
                   "mask": 0}                                     # SIGPIPE ignored
    vma = dict(pgoff=0, flags=0, madv=0, dev=0, ino=0, file_size=0, mtime_ns=0,
               vmflags="rd wr mr mw me ac", discard=[])
    return [
        (schema.HEADER, {"arch": "x86_64", "page_size": PAGE, "kernel": "6.18.0-test",
                         "xcr0": 0x207, "xsave_size": 2440, "cpu_flags": "avx avx2 sse4_2",
                         "hostname": "src-host", "time_ns": 1_700_000_000_123_456_789,
                         "umig_version": "0.1.0", "pid": 4242, "uid": 1000}),
        (schema.FILE, {"path": "/etc/counter.conf", "mode": 0o100644, "uid": 0, "gid": 0,
                       "size": 12, "mtime_ns": 1_700_000_000_000_000_000, "dev": 2049,
                       "ino": 77, "lz4": 1, "data": lz4.block.compress(b"speed = 11\n\n")}),
        (schema.PROCESS, {"pid": 4242, "ppid": 1, "pgid": 4242, "sid": 4000, "nthreads": 1,
                          "comm": "counter", "exe": "/usr/local/bin/counter",
                          "cmdline": b"/usr/local/bin/counter\x00--fast\x00",
                          "cwd": "/home/\u00e9l\u00e8ve/bad\udcff",   # not UTF-8 on disk
                          "personality": 0, "umask": 0o022, "pdeathsig": -1,
                          "no_new_privs": 1, "exit_signal": 17, "tty_nr": 0x8803,
                          "tpgid": 4242}),
        (schema.CREDS, {"uid": 1000, "euid": 1000, "suid": 1000, "fsuid": 1000,
                        "gid": 1000, "egid": 1000, "sgid": 1000, "fsgid": 1000,
                        "groups": [{"gid": 4}, {"gid": 27}, {"gid": 1000}],
                        "cap_inh": 0, "cap_prm": 0, "cap_eff": 0,
                        "cap_bnd": 0x1FF_FFFF_FFFF, "cap_amb": 0, "securebits": 0}),
        (schema.RLIMITS, {"limits": [{"resource": 3, "cur": 8 << 20, "max": U64_MAX},
                                     {"resource": 7, "cur": 1024, "max": 524288},
                                     {"resource": 9, "cur": U64_MAX, "max": U64_MAX}]}),
        (schema.MM, {"start_code": 0x5555_5555_4000, "end_code": 0x5555_5555_5000,
                     "start_data": 0x5555_5555_7000, "end_data": 0x5555_5555_8000,
                     "start_brk": heap, "brk": heap + 0x21000, "start_stack": stack + 0x1F000,
                     "arg_start": stack + 0x1F100, "arg_end": stack + 0x1F120,
                     "env_start": stack + 0x1F120, "env_end": stack + 0x1FF00,
                     "auxv": struct.pack("<8Q", 6, PAGE, 25, stack + 0x1F0A0, 33,
                                         0x7FFF_F7FC_1000, 0, 0),
                     "exe": "/usr/local/bin/counter"}),
        (schema.VDSO, {"vvar_start": 0x7FFF_F7FB_D000, "vvar_size": 0x4000,
                       "vclock_start": 0, "vclock_size": 0,
                       "vdso_start": 0x7FFF_F7FC_1000, "vdso_size": 0x2000,
                       "image": b"\x7fELF" + bytes(range(256)) * 31 + bytes(252)}),
        (schema.VMA, {**vma, "start": 0x5555_5555_4000, "end": 0x5555_5555_5000,
                      "pgoff": 0x1000, "prot": 5, "kind": schema.VMA_FILE,
                      "content": schema.CONTENT_FILE, "path": "/usr/local/bin/counter",
                      "dev": 0xFE00, "ino": 1234567, "file_size": 16104,
                      "mtime_ns": 1_699_999_999_000_000_000, "vmflags": "rd ex mr mw me"}),
        (schema.VMA, {**vma, "start": heap, "end": heap + 0x21000, "prot": 3,
                      "kind": schema.VMA_HEAP, "content": schema.CONTENT_PAGES,
                      "path": "[heap]"}),
        (schema.VMA, {**vma, "start": anon, "end": anon + 0x10000, "prot": 3,
                      "flags": schema.VMA_NORESERVE | schema.VMA_INHERIT,
                      "kind": schema.VMA_ANON, "content": schema.CONTENT_PAGES, "madv": 16,
                      "path": "", "discard": [{"start": anon + 0x4000, "npages": 2}]}),
        (schema.VMA, {**vma, "start": stack, "end": stack + 0x21000, "prot": 3,
                      "flags": schema.VMA_GROWSDOWN, "kind": schema.VMA_STACK,
                      "content": schema.CONTENT_PAGES, "path": "[stack]"}),
        (schema.THREAD, {"tid": 4242, "regs": regs, "xsave": bytes(i % 251 for i in range(2440)),
                         "sigmask": 1 << 9, "altstack_sp": 0x7F00_0000_8000,
                         "altstack_flags": 0, "altstack_size": 0x2000,
                         "clear_child_tid": 0x7F00_0000_0990, "robust_list": 0x7F00_0000_09A0,
                         "robust_len": 24, "rseq": 0x7F00_0000_0FE0, "rseq_len": 32,
                         "rseq_sig": 0x53053053, "comm": "counter",
                         "pending": [{"sig": 12, "info": siginfo}]}),
        (schema.SIGACTIONS, {"actions": actions}),
        (schema.PENDING, {"signals": [{"shared": 1, "sig": 10, "info": siginfo}]}),
        (schema.ITIMERS, {"timers": [{"which": 0, "interval_sec": 1, "interval_usec": 500000,
                                      "value_sec": 0, "value_usec": 250000}]}),
        (schema.FD, {"fd": 0, "kind": "chr", "flags": 0o100002, "cloexec": 0, "pos": 0,
                     "path": "/dev/null", "mode": 0o20666, "dev": 6, "ino": 4, "rdev": 0x103,
                     "size": 0, "mtime_ns": 0, "desc": 0, "state": b"", "locks": []}),
        (schema.FD, {"fd": 3, "kind": "file", "flags": 0o102001, "cloexec": 1, "pos": 8192,
                     "path": "/var/log/counter.log", "mode": 0o100644, "dev": 0xFE00,
                     "ino": 99, "rdev": 0, "size": 8192, "mtime_ns": 1_700_000_000_000_000_000,
                     "desc": 1, "state": b"",
                     "locks": [{"kind": 1, "write": 1, "start": 0, "end": (1 << 64) - 1},
                               {"kind": 2, "write": 0, "start": 10, "end": 19}]}),
        (schema.FD, {"fd": 4, "kind": "pipe", "flags": 0o4000, "cloexec": 0, "pos": 0,
                     "path": "pipe:[4711]", "mode": 0o10600, "dev": 0xE, "ino": 4711,
                     "rdev": 0, "size": 0, "mtime_ns": 0, "desc": 0, "state": b"", "locks": []}),
        (schema.FD, {"fd": 5, "kind": "pipe", "flags": 0o1, "cloexec": 0, "pos": 0,
                     "path": "pipe:[4711]", "mode": 0o10600, "dev": 0xE, "ino": 4711,
                     "rdev": 0, "size": 0, "mtime_ns": 0, "desc": 0, "state": b"", "locks": []}),
        (schema.PIPE, {"ino": 4711, "size": 65536, "data": b"queued\n" * 100, "ends": 3}),
        (schema.ZOMBIE, {"pid": 4250, "ppid": 4242, "pgid": 4242, "sid": 4000,
                         "exit_status": 3 << 8, "comm": "worker", "exit_signal": 17}),
    ]


def write_synthetic(fd: int) -> dict:
    """Write a whole image: the state records, two rounds of PAGES (lz4 and
    plain, with data and zero runs) each closed by ROUND_END, and the trailer."""
    heap, anon = 0x5555_5555_9000, 0x7F00_0000_0000
    w = ImageWriter(fd)
    for rec, values in synthetic_records():
        w.record(rec, values)
    w.flush()
    w.pad_to(w.offset + 4096 + 7)     # room grab kept for the state: skipped by readers
    # round 0: 2 data pages, 3 zero pages, 1 data page; compressible data
    runs0 = [(heap, 2, RUN_DATA), (heap + 2 * PAGE, 3, RUN_ZERO), (anon, 1, RUN_DATA)]
    raw0 = b"".join(bytes([i]) * PAGE for i in (1, 2, 3))
    data0 = lz4.block.compress(raw0, store_size=False)
    assert len(data0) < len(raw0)
    w.record(schema.OWNER, {"pid": 4242})
    w.page_chunk(page_chunk_frame(0, b"".join(RUN.pack(*r) for r in runs0), len(runs0), data0, len(raw0),
                 True, 6))
    w.record(schema.ROUND_END, {"round": 0, "pages": 6, "records": 1})
    # round 1: a page sent again (it changed), one zeroed since; stored raw
    runs1 = [(heap, 1, RUN_DATA), (anon, 1, RUN_ZERO)]
    raw1 = hashlib.sha256(b"page").digest() * (PAGE // 32)
    w.page_chunk(page_chunk_frame(1, b"".join(RUN.pack(*r) for r in runs1), len(runs1), raw1, len(raw1),
                 False, 2))
    w.record(schema.ROUND_END, {"round": 1, "pages": 8, "records": 2})   # counts so far
    w.finish()
    return {"pages": 8, "zero_pages": 4, "page_records": 2, "raw0": raw0, "raw1": raw1}


def test_every_record_kind_round_trips_to_identical_bytes():
    """GIVEN one realistic record of every kind, written by ImageWriter into a pipe
    WHEN ImageReader reads the pipe and each record is decoded and re-encoded
    THEN every payload is byte-identical, the values are the ones written, and
         no record kind of the schema is missing from the round trip"""
    rfd, wfd = os.pipe()

    def write_into_pipe():
        try:
            write_synthetic(wfd)
        finally:
            os.close(wfd)

    # the writer runs in a thread: the image is bigger than a pipe buffer
    writer = threading.Thread(target=write_into_pipe)
    writer.start()
    try:
        reader, frames = read_all(rfd)
    finally:
        writer.join(10)
        os.close(rfd)
    # the same (deterministic) image again, as bytes for the independent frame walk
    with tempfile.TemporaryFile() as f:
        write_synthetic(f.fileno())
        f.seek(0)
        data = f.read()

    seen = assert_round_trip(data, frames, reader)
    missing = [schema.RECORDS[t].name for t in set(schema.RECORDS) - seen]
    assert seen == set(schema.RECORDS), f"missing from the round trip: {missing}"

    written = iter(synthetic_records())
    for frame in frames:
        if frame.tag in (schema.PAGES.tag, schema.ROUND_END.tag, schema.OWNER.tag):
            continue
        if frame.tag == schema.PAD.tag:
            assert frame.flags == FLAG_OPTIONAL and bytes(frame.payload) == bytes(4096 + 7 - 12)
            continue
        rec, values = next(written)
        assert (frame.tag, frame.decode()) == (rec.tag, values)
    assert frames[-1].flags == FLAG_OPTIONAL and frames[-1].name == "ROUND_END"
    pages = [f.decode() for f in frames if f.tag == schema.PAGES.tag]
    assert [(p["round"], p["flags"], len(p["runs"])) for p in pages] == \
        [(0, schema.PAGES_FLAG_LZ4, 3), (1, 0, 2)]
    assert lz4.block.decompress(pages[0]["data"], uncompressed_size=pages[0]["raw_len"]) == \
        b"".join(bytes([i]) * PAGE for i in (1, 2, 3))
    assert reader.trailer["records"] == len(frames)
    assert reader.trailer["pages"] == 8 and reader.trailer["page_records"] == 2


def test_info_on_the_synthetic_image_counts_pages_per_vma(tmp_path):
    """GIVEN the synthetic image (a run of zero pages in the heap, a page sent again)
    WHEN `umig info --json` and `umig info` read it from stdin (a pipe)
    THEN the JSON lists the PAGES runs and the summary counts data and zero pages,
         and the human form shows each VMA's page counts and the signal handlers"""
    img = tmp_path / "synthetic.img"
    fd = os.open(img, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        write_synthetic(fd)
    finally:
        os.close(fd)
    with open(img, "rb") as f:
        r = umig_info("-", "--json", stdin=f)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    s = doc["summary"]
    assert (s["pages"], s["zero_pages"], s["data_pages"], s["page_records"]) == (8, 4, 4, 2)
    assert s["records"] == len(doc["records"]) == len(walk(img.read_bytes()))
    assert s["rounds_complete"] == [0, 1] and s["pages_outside_vmas"] == 0
    p0 = next(r["values"] for r in doc["records"] if r["name"] == "PAGES")
    assert p0["nruns"] == 3 and p0["runs"][1] == {"addr": 0x5555_5555_9000 + 2 * PAGE,
                                                  "npages": 3, "kind": RUN_ZERO}
    assert "data" not in p0 and p0["data_len"] < p0["raw_len"] == 3 * PAGE
    proc = next(r["values"] for r in doc["records"] if r["name"] == "PROCESS")
    assert proc["cwd"] == "/home/\u00e9l\u00e8ve/bad\\xff"    # the non-UTF-8 byte, escaped

    r = umig_info(img)
    assert r.returncode == 0, r.stderr
    rows = {row[-2]: row for row in (
        [c.strip() for c in line.split("│")] for line in r.stdout.splitlines()
        if line.startswith("│ 5555") or line.startswith("│ 7f"))}
    # columns: start-end size prot kind content pages zero path
    assert rows["[heap]"][6:8] == ["6", "3"]       # 2 data + 3 zero, then 1 data again
    assert rows[""][6:8] == ["2", "1"]             # the anonymous VMA: 1 data, then zeroed
    assert rows["[stack]"][6:8] == ["0", "0"]
    assert "SIGUSR1" in r.stdout and "SIG_IGN" in r.stdout and "SA_SIGINFO" in r.stdout
    assert "/home/\u00e9l\u00e8ve/bad\\xff" in r.stdout


def test_unknown_optional_record_is_skipped_and_counted(tmp_path):
    """GIVEN an image with a record of a kind this umig does not know, flagged optional
    WHEN `umig info --json` reads it
    THEN the record is skipped, counted as skipped, and the trailer still verifies"""
    future = schema.Record(4000, "FUTURE", (schema.F("x", "u32"),), "a later kind",
                           optional=True)
    img = tmp_path / "future.img"
    fd = os.open(img, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        w = ImageWriter(fd)
        for rec, values in synthetic_records():
            w.record(rec, values)
            if rec is schema.HEADER:
                w.record(future, {"x": 7})
        w.finish()
    finally:
        os.close(fd)
    r = umig_info(img, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["summary"]["skipped_records"] == 1
    assert [e["index"] for e in doc["records"]][:2] == [0, 2]


def test_info_refuses_trailer_page_counts_that_disagree_with_the_pages(tmp_path):
    """GIVEN an image whose writer counted 5 pages for a PAGES record whose runs hold 6
         (framing, crcs and digest all valid)
    WHEN `umig info` reads it
    THEN it is refused as a bad image naming both counts"""
    img = tmp_path / "miscounted.img"
    fd = os.open(img, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        w = ImageWriter(fd)
        for rec, values in synthetic_records():
            w.record(rec, values)
        runs = [(0x5555_5555_9000, 6, RUN_ZERO)]
        w.page_chunk(page_chunk_frame(0, b"".join(RUN.pack(*r) for r in runs), 1, b"", 0, False, 5))
        w.finish()
    finally:
        os.close(fd)
    r = umig_info(img)
    assert r.returncode == Exit.BAD_IMAGE and r.stdout == ""
    assert r.stderr == "umig: the trailer counts 5 pages, the PAGES records hold 6\n"


# ---------------------------------------------------------------- a real image

@pytest.fixture(scope="module")
def real_image(tmp_path_factory):
    """A C counter compiled here, grabbed with --leave-running, then killed and
    reaped (also when grabbing fails)."""
    d = tmp_path_factory.mktemp("img")
    src, exe, out, img = d / "counter.c", d / "counter", d / "counter.out", d / "counter.img"
    src.write_text(COUNTER_C)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True, capture_output=True)
    with open(out, "wb") as f:
        proc = subprocess.Popen([str(exe)], stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, close_fds=True)
    try:
        deadline = time.monotonic() + 5
        while out.stat().st_size == 0:
            assert time.monotonic() < deadline, "the counter never printed"
            time.sleep(0.01)
        r = subprocess.run([sys.executable, "-m", "umig", "grab", "--leave-running",
                            "-o", str(img), str(proc.pid)], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=60)
        assert r.returncode == 0, r.stderr
        assert proc.poll() is None, "grab --leave-running ended the process"
    finally:
        proc.kill()
        proc.wait(10)
    return {"path": img, "data": img.read_bytes(), "pid": proc.pid, "exe": str(exe)}


def test_real_image_round_trips_to_identical_bytes(real_image):
    """GIVEN the image of a real running process
    WHEN every record is decoded and re-encoded
    THEN each payload is byte-identical, and the image has the records a grab writes"""
    fd = os.open(real_image["path"], os.O_RDONLY)
    try:
        reader, frames = read_all(fd)
    finally:
        os.close(fd)
    seen = assert_round_trip(real_image["data"], frames, reader)
    names = {schema.RECORDS[t].name for t in seen}
    assert {"HEADER", "PROCESS", "CREDS", "RLIMITS", "MM", "VMA", "THREAD", "SIGACTIONS",
            "PENDING", "ITIMERS", "FD", "PAGES", "ROUND_END", "TRAILER"} <= names
    assert frames[0].name == "HEADER" and frames[0].decode()["pid"] == real_image["pid"]


def damaged(data: bytes, how: str) -> tuple[bytes, dict]:
    """A damaged copy of an image, and facts the expected message depends on."""
    frames = walk(data)
    by_name = {}
    for i, (off, tag, _f, payload) in enumerate(frames):
        by_name.setdefault(schema.RECORDS[tag].name, []).append((i, off, len(payload)))
    if how == "empty":
        return b"", {}
    if how == "magic":
        return b"NOTANIMG" + data[8:], {}
    if how == "version":
        return data[:8] + struct.pack("<I", schema.FORMAT_VERSION + 6) + data[12:], {}
    if how == "truncated":
        i, off, length = by_name["THREAD"][0]
        cut = off + 8 + length // 2
        return data[:cut], {"at": cut, "record": i}
    if how == "flipped":
        i, off, length = by_name["PROCESS"][0]
        pos = off + 8 + length // 2
        return data[:pos] + bytes([data[pos] ^ 0x40]) + data[pos + 1:], {"record": i}
    if how == "removed":
        i, off, length = by_name["FD"][-1]
        # frames counts the trailer, which the trailer's count does not
        return data[:off] + data[off + 12 + length:], {"was": len(frames) - 1,
                                                       "n": len(frames) - 2}
    if how == "swapped":
        (_, a, la), (_, b, lb) = by_name["VMA"][:2]
        assert a + 12 + la == b
        return data[:a] + data[b:b + 12 + lb] + data[a:b] + data[b + 12 + lb:], {}
    if how == "unknown_tag":
        i, off, _ = by_name["ITIMERS"][0]
        return data[:off] + frame_bytes(900, 0, b"\1\2\3\4") + data[off:], {"record": i}
    raise AssertionError(how)


@pytest.mark.parametrize("how, code, message", [
    ("empty", Exit.BAD_IMAGE, "the image is empty (0 bytes)"),
    ("magic", Exit.BAD_IMAGE, "not a umig image: starts with b'NOTANIMG'"),
    ("version", Exit.INCOMPATIBLE, f"image format version {schema.FORMAT_VERSION + 6}, "
                                   f"this umig reads version 1 and 2"),
    ("truncated", Exit.BAD_IMAGE, "image truncated at byte {at}: record {record} (THREAD)"),
    ("flipped", Exit.BAD_IMAGE, "bad checksum in record {record} (PROCESS)"),
    ("removed", Exit.BAD_IMAGE,
     "counts {was} records, the image has {n}: records are missing or repeated"),
    ("swapped", Exit.BAD_IMAGE, "the stream digest does not match"),
    ("unknown_tag", Exit.INCOMPATIBLE, "record {record} at byte"),
])
def test_damaged_image_is_refused_with_one_clear_line(real_image, tmp_path, how, code, message):
    """GIVEN a copy of a real image, damaged in one way
    WHEN `umig info` reads it
    THEN it exits with the documented code, prints exactly one line naming what is
         wrong (and where), and prints nothing on stdout"""
    data, facts = damaged(real_image["data"], how)
    img = tmp_path / f"{how}.img"
    img.write_bytes(data)
    r = umig_info(img)
    assert r.returncode == code, r.stderr
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("umig: "), r.stderr
    assert message.format(**facts) in lines[0]
    if how == "unknown_tag":
        assert "unknown tag 900" in lines[0]


def test_info_json_and_human_on_a_real_image(real_image):
    """GIVEN the image of a real process
    WHEN `umig info --json` and `umig info` read it
    THEN the JSON parses and holds HEADER, PROCESS, VMA records and a summary that
         agrees with the trailer; the human form names the pid and the executable"""
    r = umig_info(real_image["path"], "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["format_version"] == 1       # one process: readable by version-1 readers
    names = [e["name"] for e in doc["records"]]
    assert names[0] == "HEADER" and names[-1] == "TRAILER"
    assert {"PROCESS", "VMA", "THREAD", "PAGES"} <= set(names)
    by = {e["name"]: e for e in doc["records"]}
    assert by["PROCESS"]["values"]["pid"] == real_image["pid"]
    assert by["PROCESS"]["values"]["exe"] == real_image["exe"]
    assert bytes.fromhex(by["PROCESS"]["values"]["cmdline"]) == \
        real_image["exe"].encode() + b"\0"
    assert len(bytes.fromhex(by["THREAD"]["values"]["xsave"])) == \
        by["HEADER"]["values"]["xsave_size"]
    assert "data" not in by["PAGES"]["values"]
    offsets = [(e["offset"], e["tag"]) for e in doc["records"]]
    assert offsets == [(off, tag) for off, tag, _f, _p in walk(real_image["data"])]
    s, t = doc["summary"], by["TRAILER"]["values"]
    assert s["trailer_verified"] is True and s["image_bytes"] == len(real_image["data"])
    assert (s["records"], s["page_records"], s["pages"], s["data_bytes"]) == \
        (t["records"] + 1, t["page_records"], t["pages"], t["data_bytes"])
    assert s["pages_outside_vmas"] == 0
    assert names.count("VMA") > 5

    r = umig_info(real_image["path"])
    assert r.returncode == 0, r.stderr
    assert str(real_image["pid"]) in r.stdout
    assert real_image["exe"] in r.stdout
    assert "Memory map" in r.stdout and "verified" in r.stdout


@pytest.mark.parametrize("args", [(), ("--json",)])
def test_info_into_a_closed_pipe_exits_quietly(real_image, args):
    """GIVEN a reader that has gone away (`umig info IMG | head -1`)
    WHEN `umig info` writes its output
    THEN it exits 0 without a traceback or an 'internal error' line"""
    rfd, wfd = os.pipe()
    os.close(rfd)           # before umig writes anything: every write gets EPIPE
    try:
        r = subprocess.run([sys.executable, "-m", "umig", "info", *args,
                            str(real_image["path"])], stdin=subprocess.DEVNULL, stdout=wfd,
                           stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(wfd)
    assert (r.returncode, r.stderr) == (0, "")


def test_fields_appended_later_decode_as_absent_from_older_records():
    """GIVEN an FD record written before its last five fields existed (the
    payload simply ends there, as an older umig of the same format version
    wrote it)
    WHEN a reader that knows the longer record decodes it
    THEN the known fields come out as written and the missing ones as absent
    (0), instead of the record being called malformed."""
    full = {"fd": 3, "kind": "file", "flags": 0o2001, "cloexec": 1, "pos": 42,
            "path": "/etc/hosts", "mode": 0o100644, "dev": 1, "ino": 2, "rdev": 0,
            "size": 99, "mtime_ns": 123456789, "desc": 7, "state": b"\x01\x02", "locks": []}
    payload = schema.FD.encode(full)
    older = payload[:-30]            # without size, mtime_ns, desc, state and locks
    got = schema.FD.decode(older)
    assert got == {**full, "size": 0, "mtime_ns": 0, "desc": 0, "state": b"", "locks": []}
