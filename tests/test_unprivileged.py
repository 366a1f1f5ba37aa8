"""umig as a plain user (uid 65534) on that user's own processes, and the
privilege rules: a resume never gives anybody credentials they lacked."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

import umig
from conftest import ns_init, nspid, read_lines, run_umig, wait_lines
from imagetools import rewrite
from umig.errors import Exit

NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="switching to uid 65534 needs root (run as root)")


# how uid 65534 runs umig: this interpreter (its real path) with umig and
# its dependencies staged where that user can read them (nobody_umig)
_NOBODY: dict = {}


@pytest.fixture(scope="session")
def nobody_umig():
    """Stage this umig and the packages it imports in a world-readable
    directory: the checkout (a clone in a mode-0700 temporary directory,
    say) and its .venv may be out of reach of uid 65534."""
    stage = Path(tempfile.mkdtemp(prefix="umig-stage-"))
    try:
        stage.chmod(0o755)
        shutil.copytree(Path(umig.__file__).parent, stage / "umig",
                        ignore=shutil.ignore_patterns("__pycache__"))
        site = Path(sysconfig.get_paths()["purelib"])
        shutil.copytree(site, stage / "site",
                        ignore=shutil.ignore_patterns("__pycache__", "pip", "pip-*",
                                                      "setuptools*", "_pytest", "pytest*",
                                                      "umig*", "__editable__*", "*.pth"))
        for path in [stage, *stage.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else path.stat().st_mode | 0o444)
        _NOBODY["argv"] = [os.path.realpath(sys.executable), "-m", "umig"]
        _NOBODY["env"] = {**os.environ, "PYTHONPATH": f"{stage}:{stage / 'site'}"}
        yield _NOBODY
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@pytest.fixture
def shared_dir(victim, nobody_umig):
    """A directory uid 65534 can use, holding a copy of the counter."""
    d = Path(tempfile.mkdtemp(prefix="umig-nobody-"))
    d.chmod(0o777)
    shutil.copy(victim("counter"), d / "counter")
    (d / "counter").chmod(0o755)
    r = as_nobody("--version", cwd=d)
    if r.returncode != 0:
        pytest.fail("uid 65534 cannot run umig staged for it with "
                    f"{nobody_umig['argv'][0]} ({r.stderr.decode().strip()})")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def as_nobody(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(AS_NOBODY + _NOBODY["argv"] + list(args), capture_output=True,
                          cwd=cwd, stdin=subprocess.DEVNULL, timeout=60, env=_NOBODY["env"])


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


@pytest.mark.parametrize("how", ["--pidns", "auto"])
def test_plain_user_resumes_a_tree_in_a_pid_namespace_keeping_pids(procs, shared_dir, victim,
                                                                   how):
    """GIVEN the pipe-and-shared-memory tree (parent, three children, one a
    zombie, and a grandchild) run and grabbed with --tree by uid 65534
    WHEN the same user resumes it with --pidns, or without it (a tree must
    keep its pids and a plain user cannot choose pids here, so umig makes
    the namespace by itself)
    THEN every member has, inside the new PID namespace, the pid it had,
    under the same parent, as uid 65534, and the tree checks itself: PASS."""
    from conftest import descendants, reap_orphans, wait_for
    shutil.copy(victim("tree"), shared_dir / "tree")
    out = shared_dir / "out"
    f = out.open("w")
    os.chown(out, NOBODY, NOBODY)
    src = procs.start(AS_NOBODY + [str(shared_dir / "tree")], stdout=f, cwd=shared_dir)
    wait_lines(out, 1)
    members = [src.pid] + descendants(src.pid)
    parents = {p: int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
               for p in members[1:]}
    g = as_nobody("grab", "--tree", "-o", "img", str(src.pid), cwd=shared_dir)
    assert g.returncode == 0, g.stderr
    src.wait(timeout=5)
    wait_for(lambda: reap_orphans() or not any(os.path.exists(f"/proc/{p}") for p in members),
             10, "the grabbed tree to be gone")

    r = as_nobody("resume", "--detach", *([how] if how != "auto" else []), "img",
                  cwd=shared_dir)
    assert r.returncode == 0, r.stderr
    assert "resumed in a new PID namespace" in r.stderr.decode()
    outer = procs.adopt_tree(int(r.stdout.split()[-1]))
    init = procs.adopt(ns_init(outer))  # killing the namespace's init ends them all
    inside = {nspid(p)[-1]: p for p in [outer] + descendants(outer)}
    assert sorted(inside) == sorted(members)
    assert nspid(init)[-1] == 1
    for pid, parent in parents.items():
        ppid_outer = int(Path(f"/proc/{inside[pid]}/status").read_text()
                         .split("PPid:")[1].split()[0])
        assert nspid(ppid_outer)[-1] == parent, pid
    assert f"Uid:\t{NOBODY}\t{NOBODY}" in Path(f"/proc/{outer}/status").read_text()
    os.kill(outer, signal.SIGUSR1)
    result = wait_for(lambda: next((x for x in read_lines(out)
                                    if x.startswith(("PASS", "FAIL"))), None), 20, "PASS")
    assert result == "PASS", read_lines(out)


def test_plain_user_tree_shares_copy_on_write_memory_by_content(procs, shared_dir, victim):
    """GIVEN uid 65534's parent with 64 MiB of random bytes and four children
    sharing them copy-on-write (two changed their first MiB), where a plain
    user cannot see the frame numbers that tell shared pages apart
    WHEN it grabs the tree and resumes it
    THEN pages a child has byte for byte as its parent are written once
    (image under 80 MiB, not 5 x 64), the resumed members share them again
    (Pss under 2 x 64 MiB) and every member's checksum is what it was."""
    from conftest import descendants, reap_orphans, wait_for
    shutil.copy(victim("cowtree"), shared_dir / "cowtree")
    out = shared_dir / "out"
    f = out.open("w")
    os.chown(out, NOBODY, NOBODY)
    src = procs.start(AS_NOBODY + [str(shared_dir / "cowtree"), "64", "4"], stdout=f,
                      cwd=shared_dir)
    wait_lines(out, 5, timeout=20)
    before = dict(line.split() for line in read_lines(out))
    members = [int(p) for p in before]
    g = as_nobody("grab", "--tree", "-o", "img", str(src.pid), cwd=shared_dir)
    assert g.returncode == 0, g.stderr
    src.wait(timeout=5)
    wait_for(lambda: reap_orphans() or not any(os.path.exists(f"/proc/{p}") for p in members),
             10, "the grabbed tree to be gone")
    size = (shared_dir / "img").stat().st_size
    assert size < 80 << 20, f"image of {size >> 20} MiB: shared pages written more than once"

    r = as_nobody("resume", "--detach", "img", cwd=shared_dir)
    assert r.returncode == 0, r.stderr
    outer = procs.adopt_tree(int(r.stdout.split()[-1]))
    procs.adopt(ns_init(outer))
    resumed = [outer] + descendants(outer)
    pss = sum(int(line.split()[1]) for p in resumed
              for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()
              if line.startswith("Pss:"))
    assert pss < 2 * 64 * 1024, f"Pss {pss} KiB: the members no longer share memory"
    inner = {str(nspid(p)[-1]): p for p in resumed}
    assert sorted(inner) == sorted(before)
    for p in resumed:
        os.kill(p, signal.SIGUSR2)
    again = wait_for(lambda: (lambda d: d if len(d) == 5 else None)(
        {x.split()[0]: x.split()[1] for x in read_lines(out) if x.endswith("again")}),
        20, "every member's second checksum")
    assert again == before
