"""`umig migrate PID --to-file img` (issue 5): the migrate transaction into a
file, and the progress display a terminal gets."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import termios
import time

import pytest

from conftest import assert_counting, read_lines, run_umig, umig_cmd, wait_for, wait_lines
from test_grab_failures import assert_still_counting
from umig.errors import Exit


def test_checkpoint_to_file_kills_only_after_the_image_is_whole(counter, procs, tmp_path):
    """GIVEN a C counter with 16 MiB of random memory, writing to a file
    WHEN `umig migrate PID --to-file img --json` checkpoints it
    THEN the summary says what was written, the source is killed, no
    temporary file is left beside the image, and the image resumes with
    the same pid and the count going on with no gap and no repeat."""
    p, out = counter(16)
    img = tmp_path / "ck" / "img"
    img.parent.mkdir()
    r = run_umig("migrate", str(p.pid), "--to-file", str(img), "--json")
    assert r.returncode == 0, r.stderr.decode()
    summary = json.loads(r.stdout)
    assert summary["pid"] == p.pid and summary["file"] == str(img)
    assert summary["sent_bytes"] == img.stat().st_size
    assert summary["memory_bytes"] >= 16 << 20
    assert p.wait(timeout=5) == -signal.SIGKILL
    assert sorted(os.listdir(img.parent)) == ["img"]
    at_grab = len(read_lines(out))

    r = run_umig("resume", "--detach", str(img))
    assert r.returncode == 0, r.stderr.decode()
    rpid = procs.adopt(int(r.stdout.split()[-1]))
    assert rpid == p.pid
    wait_lines(out, at_grab + 10)
    os.kill(rpid, signal.SIGKILL)
    assert_counting(read_lines(out))


def test_checkpoint_to_a_full_disk_thaws_the_source(counter, tmp_path):
    """GIVEN a 1 MiB tmpfs and a process whose image needs 8 MiB
    WHEN it is checkpointed there with migrate --to-file
    THEN ENOSPC is reported with exit IO and the thaw, no file (partial or
    temporary) is left, and the source keeps counting."""
    p, out = counter(8)
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        r = run_umig("migrate", str(p.pid), "--to-file", str(mnt / "img"))
        err = r.stderr.decode()
        assert r.returncode == Exit.IO, err
        assert "no space left on device" in err and "thawed" in err, err
        assert os.listdir(mnt) == []
        assert_still_counting(out, p.pid)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("argv, says", [
    ([], "a host, or --to-file"),
    (["somehost", "--to-file", "x"], "not both"),
    (["--to-file", "/dev/null"], "regular file"),
    (["--to-file", "x", "--pidns"], "not --to-file"),
    (["somehost", "--tcp-established"], "does not go through umig migrate yet"),
])
def test_migrate_says_where_to_once(counter, argv, says):
    """GIVEN a running counter
    WHEN migrate is given no destination, two, a device as the file, an
    option that only means something for a host, or --tcp-established
    THEN it refuses with a usage error saying so and the counter runs on."""
    p, out = counter()
    r = run_umig("migrate", str(p.pid), *argv)
    assert r.returncode == Exit.USAGE, r.stderr
    assert says in r.stderr.decode(), r.stderr
    assert_still_counting(out, p.pid)


def _on_a_terminal(argv: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run argv with its stderr on a fresh pty; its exit status and all
    that was drawn on the terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave, close_fds=True)
    os.close(slave)
    drawn = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(master, 65536)
            except OSError:          # EIO: every writer of the slave is gone
                break
            if not chunk:
                break
            drawn += chunk
        return proc.wait(timeout=max(1.0, deadline - time.monotonic())), drawn.decode(
            errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_progress_on_a_terminal(counter, tmp_path):
    """GIVEN a counter with 48 MiB of random memory and stderr on a terminal
    WHEN it is checkpointed with migrate --to-file
    THEN the terminal was shown it being read ahead, then frozen with MiB
    written, a rate, the pages left and the time frozen so far, and the
    summary line at the end; with stderr not a terminal, none of that."""
    p, _ = counter(48)
    code, drawn = _on_a_terminal(umig_cmd("migrate", str(p.pid), "--to-file",
                                          str(tmp_path / "img")))
    assert code == 0, drawn
    assert "reading ahead (it runs)" in drawn, drawn
    frozen = re.findall(r"frozen · ([\d.]+) MiB written · (\d+) MiB/s · (\d+) of (\d+) pages "
                        r"left · frozen (\d+) ms", drawn)
    assert frozen, drawn
    total = {int(f[3]) for f in frozen}
    assert len(total) == 1 and total.pop() >= 48 * 256, frozen
    assert re.search(r"umig: checkpointed process \d+ into .*: [\d.]+ MiB written", drawn), drawn
    assert p.wait(timeout=5) == -signal.SIGKILL

    q, _ = counter(1)
    r = run_umig("migrate", str(q.pid), "--to-file", str(tmp_path / "img2"))
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    wait_for(lambda: q.poll() is not None, what="the second counter killed")
