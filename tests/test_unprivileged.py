"""umig as a plain user (uid 65534) on that user's own processes, and the
privilege rules: a resume never gives anybody credentials they lacked."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import read_lines, run_umig, umig_cmd, wait_lines
from imagetools import rewrite
from umig.errors import Exit

NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="switching to uid 65534 needs root (run as root)")


@pytest.fixture
def shared_dir(victim):
    """A directory uid 65534 can use, holding a copy of the counter."""
    d = Path(tempfile.mkdtemp(prefix="umig-nobody-"))
    d.chmod(0o777)
    shutil.copy(victim("counter"), d / "counter")
    (d / "counter").chmod(0o755)
    r = subprocess.run(AS_NOBODY + [*umig_cmd("--version")], capture_output=True, cwd=d)
    if r.returncode != 0:
        pytest.fail("uid 65534 cannot run this Python interpreter "
                    f"({r.stderr.decode().strip()}); run the suite with ./dev test")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def as_nobody(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(AS_NOBODY + umig_cmd(*args), capture_output=True, cwd=cwd,
                          stdin=subprocess.DEVNULL, timeout=60)


def start_counter(procs, d: Path, user: bool = True):
    out = d / "out"
    f = out.open("w")
    os.chown(out, NOBODY, NOBODY)
    p = procs.start((AS_NOBODY if user else []) + [str(d / "counter"), "20000"], stdout=f,
                    cwd=d)
    wait_lines(out, 3)
    return p, out


def test_plain_user_grabs_and_resumes_own_process(procs, shared_dir):
    """GIVEN a counter run by uid 65534
    WHEN the same user grabs it and resumes it (no privileges at all)
    THEN it continues counting with a new pid (said on stderr: keeping pids
    needs CAP_CHECKPOINT_RESTORE), its cmdline intact, still uid 65534."""
    p, out = start_counter(procs, shared_dir)
    cmdline = Path(f"/proc/{p.pid}/cmdline").read_bytes()
    g = as_nobody("grab", "-o", "img", str(p.pid), cwd=shared_dir)
    assert g.returncode == 0, g.stderr
    p.wait(timeout=5)
    n = len(read_lines(out))
    r = as_nobody("resume", "--detach", "img", cwd=shared_dir)
    assert r.returncode == 0, r.stderr
    rpid = procs.adopt(int(r.stdout.split()[-1]))
    assert f"resumed as pid {rpid}" in r.stderr.decode()
    lines = wait_lines(out, n + 10)
    assert [int(x) for x in lines] == list(range(len(lines)))
    assert Path(f"/proc/{rpid}/cmdline").read_bytes() == cmdline
    status = Path(f"/proc/{rpid}/status").read_text()
    assert f"Uid:\t{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}" in status


def test_plain_user_cannot_keep_the_pid(procs, shared_dir):
    """GIVEN an image of the user's process WHEN resumed with --pid keep as that
    user THEN refused: keeping a pid needs CAP_CHECKPOINT_RESTORE."""
    p, out = start_counter(procs, shared_dir)
    assert as_nobody("grab", "-o", "img", str(p.pid), cwd=shared_dir).returncode == 0
    p.wait(timeout=5)
    r = as_nobody("resume", "--detach", "--pid", "keep", "img", cwd=shared_dir)
    assert r.returncode == Exit.ENVIRONMENT
    assert f"cannot keep pid {p.pid}: that needs CAP_CHECKPOINT_RESTORE" in r.stderr.decode()


def test_plain_user_cannot_grab_a_root_process(procs, shared_dir):
    """GIVEN a counter run by root WHEN uid 65534 tries to grab it THEN refused
    with the reason (other user) and what to do; the counter runs on."""
    p, out = start_counter(procs, shared_dir, user=False)
    r = as_nobody("grab", "-o", "img", str(p.pid), cwd=shared_dir)
    assert r.returncode == Exit.ACCESS
    err = r.stderr.decode()
    assert f"cannot trace process {p.pid}: it belongs to uid 0 and you are uid {NOBODY}" in err
    assert "run umig as that user, or as root" in err
    n = len(read_lines(out))
    wait_lines(out, n + 3)


def test_root_image_resumed_by_plain_user_is_refused(procs, shared_dir):
    """GIVEN an image of a root process WHEN uid 65534 resumes it THEN refused:
    it would not get root's credentials back."""
    p, out = start_counter(procs, shared_dir, user=False)
    img = shared_dir / "img"
    assert run_umig("grab", "-o", str(img), str(p.pid)).returncode == 0
    p.wait(timeout=5)
    img.chmod(0o644)
    r = as_nobody("resume", "--detach", "img", cwd=shared_dir)
    assert r.returncode == Exit.ENVIRONMENT
    assert "the image is of a process of root" in r.stderr.decode()


def test_setuid_image_resumed_by_plain_user_is_refused(procs, shared_dir):
    """GIVEN an image of the user's process with a saved set-user-id of 0
    WHEN that user resumes it THEN refused: set-uid state is not restored."""
    p, out = start_counter(procs, shared_dir)
    assert as_nobody("grab", "-o", "img", str(p.pid), cwd=shared_dir).returncode == 0
    p.wait(timeout=5)
    rewrite(shared_dir / "img", shared_dir / "suid",
            lambda n, v: {**v, "suid": 0} if n == "CREDS" else v)
    (shared_dir / "suid").chmod(0o644)
    r = as_nobody("resume", "--detach", "suid", cwd=shared_dir)
    assert r.returncode == Exit.ENVIRONMENT
    assert "(set-uid)" in r.stderr.decode()


def test_root_resumes_a_users_process_with_its_credentials(procs, shared_dir):
    """GIVEN an image of a uid 65534 counter WHEN root resumes it THEN the
    process runs as uid/gid 65534 with no capabilities, as before."""
    p, out = start_counter(procs, shared_dir)
    before = Path(f"/proc/{p.pid}/status").read_text()
    assert run_umig("grab", "-o", str(shared_dir / "img"), str(p.pid)).returncode == 0
    p.wait(timeout=5)
    n = len(read_lines(out))
    r = run_umig("resume", "--detach", str(shared_dir / "img"))
    assert r.returncode == 0, r.stderr
    rpid = procs.adopt(int(r.stdout.split()[-1]))
    assert rpid == p.pid
    wait_lines(out, n + 5)
    after = Path(f"/proc/{rpid}/status").read_text()
    for key in ("Uid:", "Gid:", "Groups:", "CapInh:", "CapPrm:", "CapEff:", "CapBnd:"):
        line_b = next(x for x in before.splitlines() if x.startswith(key))
        line_a = next(x for x in after.splitlines() if x.startswith(key))
        assert line_a == line_b
    os.kill(rpid, signal.SIGKILL)
