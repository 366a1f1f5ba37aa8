"""Resume never starts a process from a bad image or in the wrong place:
one clear line, a distinct exit code, nothing running afterwards.  And the
vDSO path for an image from another kernel."""

from __future__ import annotations

import os
import signal
import struct
import time
from pathlib import Path

import pytest

from conftest import read_lines, run_umig, wait_lines
from imagetools import frames, record_offsets, rewrite
from umig.errors import Exit
from umig.image import schema


@pytest.fixture
def grabbed(victim, procs, tmp_path):
    """A counter grabbed (killed and reaped): (image path, output file, pid)."""
    out = tmp_path / "out"
    p = procs.start([victim("counter"), "20000"], stdout=out.open("w"))
    wait_lines(out, 3)
    img = tmp_path / "img"
    r = run_umig("grab", "-o", str(img), str(p.pid))
    assert r.returncode == 0, r.stderr
    p.wait(timeout=5)
    return img, out, p.pid


def assert_nothing_started(out: Path, pid: int) -> None:
    """The counter's file does not grow and its pid is not running it."""
    n = len(read_lines(out))
    time.sleep(0.15)
    assert len(read_lines(out)) == n
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return
    assert "counter" not in exe


def resume_fails(img: Path, code: int, *extra: str) -> str:
    r = run_umig("resume", "--detach", *extra, str(img))
    err = r.stderr.decode()
    assert r.returncode == code, err
    assert err.count("\n") == 1 and err.startswith("umig: "), err    # one line
    assert "Traceback" not in err
    return err


def test_empty_image(tmp_path):
    """GIVEN an empty file WHEN resumed THEN 'the image is empty'."""
    img = tmp_path / "img"
    img.write_bytes(b"")
    assert "the image is empty (0 bytes)" in resume_fails(img, Exit.BAD_IMAGE)


def test_wrong_magic(tmp_path):
    """GIVEN a file that is not an image WHEN resumed THEN 'not a umig image'."""
    img = tmp_path / "img"
    img.write_bytes(b"\x7fELF" + bytes(100))
    assert "not a umig image" in resume_fails(img, Exit.BAD_IMAGE)


def test_wrong_version_names_both(grabbed, tmp_path):
    """GIVEN an image whose format version is 7 WHEN resumed THEN the message
    names version 7 and the versions this umig reads."""
    img, out, pid = grabbed
    data = bytearray(img.read_bytes())
    data[8:12] = struct.pack("<I", 7)
    bad = tmp_path / "v7"
    bad.write_bytes(data)
    err = resume_fails(bad, Exit.INCOMPATIBLE)
    assert "image format version 7, this umig reads version 1 and 2" in err


def test_truncated_in_the_state_records(grabbed, tmp_path):
    """GIVEN an image cut inside its VMA records WHEN resumed THEN 'truncated at
    byte N' with N the size of what is there; nothing starts."""
    img, out, pid = grabbed
    name, off, length = next(r for r in record_offsets(img) if r[0] == "VMA")
    cut = off + 20
    bad = tmp_path / "cut"
    bad.write_bytes(img.read_bytes()[:cut])
    assert f"image truncated at byte {cut}" in resume_fails(bad, Exit.BAD_IMAGE)
    assert_nothing_started(out, pid)


def test_truncated_in_the_pages(grabbed, tmp_path):
    """GIVEN an image cut inside its last PAGES record (the process is being
    rebuilt by then) WHEN resumed THEN the same one line, and the half-built
    process never runs."""
    img, out, pid = grabbed
    name, off, length = [r for r in record_offsets(img) if r[0] == "PAGES"][-1]
    cut = off + 8 + length // 2
    bad = tmp_path / "cut"
    bad.write_bytes(img.read_bytes()[:cut])
    assert f"image truncated at byte {cut}" in resume_fails(bad, Exit.BAD_IMAGE)
    assert_nothing_started(out, pid)


@pytest.mark.parametrize("kind", ["VMA", "PAGES"])
def test_flipped_byte_names_the_record(grabbed, tmp_path, kind):
    """GIVEN one byte flipped inside a VMA (or PAGES) record WHEN resumed
    THEN 'bad checksum in record K' names that record; nothing starts."""
    img, out, pid = grabbed
    recs = record_offsets(img)
    k = next(i for i, r in enumerate(recs) if r[0] == kind)
    _, off, length = recs[k]
    data = bytearray(img.read_bytes())
    data[off + 8 + length // 2] ^= 0x40
    bad = tmp_path / "flip"
    bad.write_bytes(data)
    err = resume_fails(bad, Exit.BAD_IMAGE)
    assert f"bad checksum in record {k} ({kind}) at byte {off}" in err
    assert_nothing_started(out, pid)


def test_foreign_arch(grabbed, tmp_path):
    """GIVEN an image that says it is of an aarch64 process WHEN resumed here
    THEN refused naming both architectures."""
    img, out, pid = grabbed
    bad = tmp_path / "arm"
    rewrite(img, bad, lambda n, v: {**v, "arch": "aarch64"} if n == "HEADER" else v)
    err = resume_fails(bad, Exit.INCOMPATIBLE)
    assert "the image is of an aarch64 process; this host is x86_64" in err


def test_cpu_features_this_host_lacks(grabbed, tmp_path):
    """GIVEN an image made on a CPU with AVX-512 state and avx512f (this one
    has neither) WHEN resumed THEN refused naming the features."""
    img, out, pid = grabbed

    def edit(name, v):
        if name == "HEADER":
            return {**v, "xcr0": v["xcr0"] | 0xE0, "cpu_flags": v["cpu_flags"] + " avx512f"}
        return v
    bad = tmp_path / "avx512"
    rewrite(img, bad, edit)
    from umig import cpu
    if "avx512f" in cpu.flags():
        pytest.skip("this CPU has AVX-512: no missing feature to test with")
    err = resume_fails(bad, Exit.INCOMPATIBLE)
    assert "AVX-512 opmask" in err and "avx512f" in err and "which this CPU lacks" in err


def test_missing_mapped_file(grabbed, tmp_path):
    """GIVEN an image mapping a file that is not on this host WHEN resumed
    THEN refused naming the file."""
    img, out, pid = grabbed

    def edit(name, v):
        if name == "VMA" and v["content"] == schema.CONTENT_FILE and "counter" in v["path"]:
            return {**v, "path": "/nonexistent/counter"}
        return v
    bad = tmp_path / "nofile"
    rewrite(img, bad, edit)
    err = resume_fails(bad, Exit.ENVIRONMENT)
    assert "/nonexistent/counter" in err and "does not exist on this host" in err


def test_mapped_file_that_changed(grabbed, tmp_path):
    """GIVEN an image whose mapped executable has another mtime than the
    file here WHEN resumed THEN refused: it differs from the image's."""
    img, out, pid = grabbed

    def edit(name, v):
        if name == "VMA" and v["content"] == schema.CONTENT_FILE and "counter" in v["path"]:
            return {**v, "mtime_ns": v["mtime_ns"] - 10**9}
        return v
    bad = tmp_path / "changed"
    rewrite(img, bad, edit)
    err = resume_fails(bad, Exit.ENVIRONMENT)
    assert "counter" in err and "differs from the image's" in err


def test_pid_keep_when_taken(victim, procs, tmp_path):
    """GIVEN an image of a process that still runs (--leave-running)
    WHEN resumed with --pid keep THEN refused naming the pid and who has it.
    (Its output file is opened O_APPEND: a file grown by appends is no
    reason to refuse; one grown otherwise would be.)"""
    out = tmp_path / "out"
    p = procs.start([victim("counter"), "20000"], stdout=out.open("a"))
    wait_lines(out, 3)
    img = tmp_path / "img"
    assert run_umig("grab", "--leave-running", "-o", str(img), str(p.pid)).returncode == 0
    err = resume_fails(img, Exit.ENVIRONMENT, "--pid", "keep")
    assert f"cannot keep pid {p.pid}: it is taken by process {p.pid}" in err


def test_resume_of_a_missing_image_file(tmp_path):
    """GIVEN no such file WHEN resumed THEN a usage error naming it."""
    err = resume_fails(tmp_path / "nope", Exit.USAGE)
    assert "no image" in err


def _damage_vdso(v: dict) -> dict:
    """The image's vDSO as if from another kernel: every function body (past
    its first 16 bytes) is int3, so running old code traps; only the
    redirection can keep the process alive."""
    from umig.restore.vdso import _functions
    image = bytearray(v["image"])
    for name, (off, size) in _functions(bytes(image)).items():
        image[off + 16:off + size] = b"\xcc" * max(0, size - 16)
    return {**v, "image": bytes(image)}


def test_vdso_from_another_kernel_is_redirected(victim, procs, tmp_path):
    """GIVEN a process that calls clock_gettime/gettimeofday/time/getcpu
    through glibc's cached vDSO pointers, and its image altered so its vDSO
    is not this kernel's (function bodies replaced by int3)
    WHEN resumed
    THEN resume says it redirected the vDSO, the old vDSO address holds the
    patched copy, this kernel's vDSO is mapped elsewhere, and the process
    keeps calling the clocks without crashing."""
    out = tmp_path / "out"
    p = procs.start([victim("clock")], stdout=out.open("w"))
    wait_lines(out, 5)
    img = tmp_path / "img"
    assert run_umig("grab", "-o", str(img), str(p.pid)).returncode == 0
    p.wait(timeout=5)
    bad = tmp_path / "other-kernel"
    rewrite(img, bad, lambda n, v: _damage_vdso(v) if n == "VDSO" else v)
    old = next(f.decode() for f in frames(bad) if f.name == "VDSO")
    r = run_umig("resume", "--detach", str(bad))
    assert r.returncode == 0, r.stderr
    rpid = procs.adopt(int(r.stdout.split()[-1]))
    assert "the vDSO differs from the image's" in r.stderr.decode()
    n = len(read_lines(out))
    lines = wait_lines(out, n + 25)
    assert not any(line.startswith("FAIL") for line in lines)
    nums = [int(line.split()[0]) for line in lines]
    assert nums == list(range(len(nums)))
    maps = Path(f"/proc/{rpid}/maps").read_text().splitlines()
    vdso_line = next(line for line in maps if line.endswith("[vdso]"))
    assert int(vdso_line.split("-")[0], 16) != old["vdso_start"]
    at_old = next(line for line in maps if int(line.split("-")[0], 16) == old["vdso_start"])
    assert " r-xp " in at_old
    mem = os.open(f"/proc/{rpid}/mem", os.O_RDONLY)
    try:
        patched = os.pread(mem, old["vdso_size"], old["vdso_start"])
    finally:
        os.close(mem)
    from umig.restore.vdso import _functions
    off, _ = _functions(old["image"])["__vdso_clock_gettime"]
    assert patched[off] in (0xE9, 0x49)              # a jump, not the old code
    os.kill(rpid, signal.SIGKILL)
