"""The files a process uses, where it is resumed (issue 4): every missing or
different one named before anything starts; `grab --ship-files` carries
them, and resume creates the missing ones (never overwriting)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

from conftest import read_lines, run_umig, wait_for, wait_lines
from umig.errors import Exit

READER = """
import signal, sys, time, zlib
f = open(sys.argv[1], "rb")
head = f.read(1000)
print("ready", flush=True)
go = False
def on_usr1(*_):
    global go
    go = True
signal.signal(signal.SIGUSR1, on_usr1)
while not go:
    time.sleep(0.01)
rest = f.read()
print("PASS" if zlib.crc32(head + rest) == int(sys.argv[2]) and len(head + rest) == 5000
      else f"FAIL read {len(head + rest)} bytes", flush=True)
"""


def _data() -> bytes:
    return bytes((i * 31 + 7) % 256 for i in range(5000))


def _start_reader(procs, tmp_path, app: Path):
    import zlib
    app.mkdir()
    (app / "data").write_bytes(_data())
    (app / "conf").write_text("setting = 1\n")
    out = tmp_path / "out"
    src = procs.start([sys.executable, "-c", READER, str(app / "data"),
                       str(zlib.crc32(_data()))], stdout=out.open("w"),
                      stdin=(app / "conf").open("rb"))
    wait_lines(out, 1)
    return src, out


def test_missing_and_changed_files_are_all_named_before_anything_starts(procs, tmp_path):
    """GIVEN python3 holding app/data (read from) and app/conf (as stdin),
    grabbed
    WHEN app/data is gone and app/conf has grown before the resume
    THEN resume refuses (exit 72) naming both, with their fds, and starts
    nothing: the pid stays free."""
    app = tmp_path / "app"
    src, _out = _start_reader(procs, tmp_path, app)
    r = run_umig("grab", "-o", str(tmp_path / "img"), str(src.pid))
    assert r.returncode == 0, r.stderr.decode()
    src.wait(timeout=5)
    (app / "data").unlink()
    with (app / "conf").open("a") as f:
        f.write("other = 2\n")
    r = run_umig("resume", "--detach", str(tmp_path / "img"))
    err = r.stderr.decode()
    assert r.returncode == Exit.ENVIRONMENT, err
    assert err.count("\n") == 1, err
    assert "2 files the process uses are missing or different here" in err
    assert f"{app / 'data'} (fd 3 of process {src.pid}) does not exist on this host" in err
    assert f"{app / 'conf'} (fd 0 of process {src.pid}) is 22 bytes, 12 when grabbed" in err
    assert "--ship-files" in err
    assert not os.path.exists(f"/proc/{src.pid}")


def test_shipped_files_are_created_where_missing(procs, tmp_path):
    """GIVEN python3 that has read 1000 of the 5000 bytes of app/data, with
    app/conf as stdin, grabbed with --ship-files
    WHEN the whole app directory is gone before the resume
    THEN resume creates both files with their mode and mtime (saying so),
    and the process reads the rest of app/data: PASS."""
    app = tmp_path / "app"
    src, out = _start_reader(procs, tmp_path, app)
    os.chmod(app / "data", 0o640)
    before = os.stat(app / "data")
    r = run_umig("grab", "--ship-files", "-o", str(tmp_path / "img"), str(src.pid))
    assert r.returncode == 0, r.stderr.decode()
    src.wait(timeout=5)
    shutil.rmtree(app)
    r = run_umig("resume", "--detach", str(tmp_path / "img"))
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "created 2 files missing here from the image" in err and str(app / "data") in err
    pid = procs.adopt(int(r.stdout.split()[-1]))
    after = os.stat(app / "data")
    assert (after.st_mode, after.st_mtime_ns, after.st_size) == (
        before.st_mode, before.st_mtime_ns, 5000)
    assert (app / "conf").read_text() == "setting = 1\n"
    os.kill(pid, signal.SIGUSR1)
    assert wait_for(lambda: next((x for x in read_lines(out) if x.startswith(("PASS", "FAIL"))),
                                 None), 20, "PASS or FAIL") == "PASS", read_lines(out)


def test_shipped_program_and_a_different_file_in_its_place(victim, procs, tmp_path):
    """GIVEN the counter program run from app/counter, grabbed with
    --ship-files
    WHEN app/counter is replaced by another file
    THEN resume refuses naming it and does not overwrite it; once it is
    removed, resume recreates the program and the count goes on."""
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy2(victim("counter"), app / "counter")
    out = tmp_path / "out"
    src = procs.start([str(app / "counter"), "20000"], stdout=out.open("w"))
    wait_lines(out, 3)
    r = run_umig("grab", "--ship-files", "-o", str(tmp_path / "img"), str(src.pid))
    assert r.returncode == 0, r.stderr.decode()
    src.wait(timeout=5)
    last = int(read_lines(out)[-1])
    (app / "counter").unlink()
    (app / "counter").write_text("#!/bin/sh\necho another program\n")
    r = run_umig("resume", "--detach", str(tmp_path / "img"))
    err = r.stderr.decode()
    assert r.returncode == Exit.ENVIRONMENT, err
    assert f"{app / 'counter'} (mapped at 0x" in err and "differs from the copy in the image" \
        in err and "does not overwrite" in err
    assert (app / "counter").read_text().endswith("another program\n")
    (app / "counter").unlink()
    r = run_umig("resume", "--detach", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr.decode()
    procs.adopt(int(r.stdout.split()[-1]))
    wait_for(lambda: len(read_lines(out)) > last + 5 or None, 10, "the count to go on")
    nums = [int(x) for x in read_lines(out)]
    assert nums == list(range(len(nums))), f"a gap or a repeat: {nums[-10:]}"
