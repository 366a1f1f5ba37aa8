"""Process trees (grab --tree): a process and all its descendants frozen,
written and rebuilt together, with their pids, parent links, groups,
zombies, the pipes between them and the memory they share."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


from conftest import (assert_counting, descendants, read_lines, reap_orphans, run_umig,
                      start_with_pid, umig_cmd, wait_for, wait_lines)
from umig.errors import Exit


def ps(pid: int) -> dict:
    """ppid, pgid, state and comm of pid."""
    text = Path(f"/proc/{pid}/stat").read_text()
    comm = text[text.index("(") + 1:text.rindex(")")]
    f = text[text.rindex(")") + 2:].split()
    return {"state": f[0], "ppid": int(f[1]), "pgid": int(f[2]), "comm": comm}


def grab_tree(pid: int, img: Path) -> list[int]:
    """Grab pid --tree; returns the members it had."""
    members = [pid] + descendants(pid)
    r = run_umig("grab", "--tree", "-o", str(img), str(pid))
    assert r.returncode == 0, r.stderr.decode()
    return members


def gone(pids) -> None:
    """Every member of a grabbed tree is killed (and, reparented to this
    test as the subreaper, reaped here)."""
    wait_for(lambda: reap_orphans() or not any(os.path.exists(f"/proc/{p}") for p in pids),
             10, "the grabbed tree to be gone")


def resume_tree(img: Path, procs) -> int:
    r = run_umig("resume", "--detach", str(img))
    assert r.returncode == 0, r.stderr.decode()
    return procs.adopt_tree(int(r.stdout.split()[-1]))


def shmem_inodes(pid: int) -> set[int]:
    """Inodes of the shared anonymous mappings of pid."""
    out = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(None, 5)
        if parts[1].endswith("s") and len(parts) > 5 and (
                parts[5].startswith("/dev/zero") or parts[5].startswith("/memfd:umig-shm")):
            out.add(int(parts[4]))
    return out


def test_tree_with_pipes_shared_memory_and_a_zombie_checks_itself(victim, procs, tmp_path):
    """GIVEN a parent with three children (one already a zombie) and a
    grandchild, unread data in the pipes between them and a
    MAP_SHARED|MAP_ANONYMOUS page they all count in
    WHEN grabbed with --tree and resumed
    THEN every pid, parent link and the zombie (its name and exit code) are
    back, the members map one shared object, and after SIGUSR1 every line
    arrives in order, the shared counter holds every member's additions and
    the parent reaps its children with their own exit codes: PASS."""
    out = tmp_path / "out"
    src = procs.start([victim("tree")], stdout=out.open("w"))
    wait_lines(out, 1)
    pid = src.pid
    before = {p: ps(p) for p in [pid] + descendants(pid)}
    assert len(before) == 5 and sum(v["state"] == "Z" for v in before.values()) == 1
    grab_tree(pid, tmp_path / "img")
    assert src.wait(timeout=5) == -signal.SIGKILL
    gone(before)

    r = run_umig("info", "--json", str(tmp_path / "img"))
    doc = json.loads(r.stdout)
    names = [rec["name"] for rec in doc["records"]]
    assert names.count("PROCESS") == 4 and names.count("ZOMBIE") == 1
    assert doc["format_version"] == 2       # an older (version 1) reader refuses it

    rpid = resume_tree(tmp_path / "img", procs)
    assert rpid == pid
    after = {p: ps(p) for p in [pid] + descendants(pid)}
    assert set(after) == set(before)
    for p, v in before.items():
        if p != pid:
            assert (after[p]["ppid"], after[p]["state"] == "Z", after[p]["comm"]) == \
                (v["ppid"], v["state"] == "Z", v["comm"]), p
    live = [p for p in after if after[p]["state"] != "Z"]
    inodes = {p: shmem_inodes(p) for p in live}
    assert len(set().union(*inodes.values())) == 1 and all(inodes.values()), inodes

    os.kill(rpid, signal.SIGUSR1)
    result = wait_for(lambda: next((x for x in read_lines(out) if x.startswith(("PASS", "FAIL"))),
                                   None), 20, "PASS or FAIL")
    assert result == "PASS", read_lines(out)


def test_shell_pipeline_writes_every_line_once(victim, procs, tmp_path):
    """GIVEN bash -c 'counter | cat | cat > file' (four processes, two pipes
    with lines in flight)
    WHEN grabbed with --tree and resumed
    THEN the file goes on with every number exactly once, in order."""
    out = tmp_path / "out"
    counter = victim("counter")
    src = procs.start(["bash", "-c", f"{counter} 1000 | cat | cat > {out}"])
    wait_lines(out, 200)
    assert len(descendants(src.pid)) == 3
    gone(grab_tree(src.pid, tmp_path / "img"))
    src.wait(timeout=5)
    at_grab = len(read_lines(out))
    resume_tree(tmp_path / "img", procs)
    wait_lines(out, at_grab + 500, timeout=20)
    assert_counting(read_lines(out))


def test_children_created_while_grabbing_are_not_lost(victim, procs, tmp_path):
    """GIVEN a process forking a child every half millisecond and reaping
    each with waitpid some rounds later (a lost child fails the waitpid)
    WHEN grabbed with --tree while children come and go
    THEN the resumed process goes on reaping: its round counter grows and
    it never says FAIL."""
    out = tmp_path / "out"
    src = procs.start([victim("forker")], stdout=out.open("w"))
    wait_lines(out, 3)
    gone(grab_tree(src.pid, tmp_path / "img"))
    src.wait(timeout=5)
    last = int(read_lines(out)[-1])
    resume_tree(tmp_path / "img", procs)
    wait_for(lambda: not read_lines(out)[-1].isdigit() or int(read_lines(out)[-1]) > last + 300,
             15, "rounds after resume")
    assert all(x.isdigit() for x in read_lines(out)), read_lines(out)[-2:]


def test_grab_without_tree_refuses_a_process_with_children(procs, tmp_path):
    """GIVEN a shell with a child WHEN grabbed without --tree THEN refused,
    naming the child and pointing to --tree; nothing is written."""
    src = procs.start(["bash", "-c", "sleep 30; true"])
    kid = wait_for(lambda: (descendants(src.pid) or [None])[0], what="bash's child")
    r = run_umig("grab", "-o", str(tmp_path / "img"), str(src.pid))
    assert r.returncode == Exit.REFUSED, r.stderr.decode()
    msg = r.stderr.decode()
    assert f"process {src.pid} has child processes ({kid} (sleep))" in msg
    assert f"umig grab --tree {src.pid}" in msg
    assert not (tmp_path / "img").exists()


def test_tree_resume_refuses_when_a_member_pid_is_taken(victim, procs, tmp_path):
    """GIVEN an image of a tree and one member's pid now used by another
    process WHEN resumed THEN refused before anything starts, naming it."""
    out = tmp_path / "out"
    src = procs.start([victim("tree")], stdout=out.open("w"))
    wait_lines(out, 1)
    kid = min(p for p in descendants(src.pid) if ps(p)["state"] != "Z")
    gone(grab_tree(src.pid, tmp_path / "img"))
    src.wait(timeout=5)
    holder = start_with_pid(procs, kid)
    assert holder is not None, f"could not start a process with pid {kid}"
    r = run_umig("resume", "--detach", str(tmp_path / "img"))
    assert r.returncode == Exit.ENVIRONMENT, r.stderr.decode()
    assert f"cannot keep pid {kid}: it is taken by process {kid} (sleep)" in r.stderr.decode()
    assert not os.path.exists(f"/proc/{src.pid}")


def test_info_shows_the_tree(victim, procs, tmp_path):
    """GIVEN an image of a tree WHEN `umig info` shows it THEN a table lists
    every process with its parent and state."""
    out = tmp_path / "out"
    src = procs.start([victim("tree")], stdout=out.open("w"))
    wait_lines(out, 1)
    members = grab_tree(src.pid, tmp_path / "img")
    gone(members)
    src.wait(timeout=5)
    r = subprocess.run(umig_cmd("info", str(tmp_path / "img")),
                       capture_output=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr.decode()
    text = r.stdout.decode()
    assert "Process tree" in text
    for p in members:
        assert str(p) in text
    assert "zombie" in text


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise AssertionError(f"no Pss for {pid}")


def test_copy_on_write_memory_is_written_once_and_stays_shared(victim, procs, tmp_path):
    """GIVEN a parent with 64 MiB of random bytes and four children sharing
    them copy-on-write, one of which rewrote its first MiB and one dropped
    it (reads zeros), while the parent rewrote its last MiB
    WHEN grabbed with --tree and resumed
    THEN the image holds the shared pages once (under 80 MiB, not 5 x 64),
    the resumed members still share them (their Pss adds up to under
    2 x 64 MiB) and every member's checksum of its memory is what it was."""
    out = tmp_path / "out"
    src = procs.start([victim("cowtree"), "64", "4"], stdout=out.open("w"))
    wait_lines(out, 5, timeout=20)
    before = dict(line.split() for line in read_lines(out))
    gone(grab_tree(src.pid, tmp_path / "img"))
    src.wait(timeout=5)
    size = (tmp_path / "img").stat().st_size
    assert size < 80 << 20, f"image of {size >> 20} MiB: shared pages written more than once"

    rpid = resume_tree(tmp_path / "img", procs)
    members = [rpid] + descendants(rpid)
    assert sorted(map(str, members)) == sorted(before)
    total = sum(pss_kib(p) for p in members)
    assert total < 2 * 64 * 1024, f"Pss {total} KiB: the members no longer share memory"
    for p in members:
        os.kill(p, signal.SIGUSR2)
    again = wait_for(lambda: (lambda d: d if len(d) == 5 else None)(
        {x.split()[0]: x.split()[1] for x in read_lines(out) if x.endswith("again")}),
        20, "every member's second checksum")
    assert again == before


def test_checkpoint_of_a_tree_leaves_its_memory_shared(victim, procs, tmp_path):
    """GIVEN a parent and four children sharing 64 MiB copy-on-write
    WHEN the tree is grabbed with --leave-running (a checkpoint)
    THEN reading its memory did not unshare it: the members' Pss adds up
    to what it was (process_vm_readv pins pages and would have copied every
    shared page umig read; grab reads a tree through /proc/PID/mem)."""
    out = tmp_path / "out"
    src = procs.start([victim("cowtree"), "64", "4"], stdout=out.open("w"))
    wait_lines(out, 5, timeout=20)
    members = [src.pid] + descendants(src.pid)
    before = sum(pss_kib(p) for p in members)
    r = run_umig("grab", "--tree", "--leave-running", "-o", str(tmp_path / "img"),
                 str(src.pid))
    assert r.returncode == 0, r.stderr.decode()
    after = sum(pss_kib(p) for p in members)
    assert after < before + 8 * 1024, f"Pss {before} -> {after} KiB: the grab unshared memory"
    for p in members:
        os.kill(p, signal.SIGUSR2)
    wait_for(lambda: sum(x.endswith("again") for x in read_lines(out)) == 5, 20,
             "every member to go on")


def test_pty_pair_inside_the_tree_keeps_terminal_and_job_control(procs, tmp_path):
    """GIVEN python3 holding a pty master (30x90) whose slave is the
    controlling terminal of its child sh (a session leader), answering lines
    WHEN the tree is grabbed and resumed
    THEN sh answers through the new pty with the same window size, and
    Ctrl-C written to the master kills sh with SIGINT (the pty is its
    controlling terminal again, its group in the foreground): PASS."""
    script = Path(__file__).parent / "victims" / "ptypair.py"
    assert _tree_moved(procs, tmp_path, [sys.executable, str(script)]) == "PASS", \
        read_lines(tmp_path / "out")


def test_unix_connections_through_named_listeners_inside_the_tree(procs, tmp_path):
    """GIVEN python3 listening on a path (stream) and an abstract name
    (seqpacket), with its child connected to both, bytes and messages
    queued for the parent
    WHEN the tree is grabbed and resumed
    THEN the parent reads them, both accepted ends have the listeners'
    names, the child answers on its connection (seeing the path as its
    peer's name) and the listener still accepts: PASS."""
    script = Path(__file__).parent / "victims" / "unixconn.py"
    assert _tree_moved(procs, tmp_path, [sys.executable, str(script), str(tmp_path)]) == \
        "PASS", read_lines(tmp_path / "out")


def test_posix_shared_memory_stays_shared_between_members(procs, tmp_path):
    """GIVEN python3 and its child sharing a POSIX shared memory object in
    /dev/shm (both map it, the parent holds its fd), answering requests
    through it
    WHEN the tree is grabbed and resumed
    THEN a request written by the parent is answered by the child through
    the same memory: PASS."""
    name = f"umig-test-{os.getpid()}-{time.monotonic_ns()}"
    script = Path(__file__).parent / "victims" / "shmtree.py"
    try:
        assert _tree_moved(procs, tmp_path, [sys.executable, str(script), name]) == "PASS", \
            read_lines(tmp_path / "out")
    finally:
        if os.path.exists(f"/dev/shm/{name}"):
            os.unlink(f"/dev/shm/{name}")


def _tree_moved(procs, tmp_path, argv: list[str]) -> str:
    """Start argv (it prints "ready CHILD"), grab it with --tree (killed),
    wait until its child is gone, resume it, send the root SIGUSR1; returns
    its PASS or FAIL line."""
    out = tmp_path / "out"
    src = procs.start(argv, stdout=out.open("w"))
    child = int(wait_lines(out, 1)[0].split()[1])
    r = run_umig("grab", "--tree", "-o", str(tmp_path / "img"), str(src.pid))
    assert r.returncode == 0, r.stderr.decode()
    src.wait(timeout=5)
    wait_for(lambda: reap_orphans() or not os.path.exists(f"/proc/{child}") or None, 10,
             "the child to be gone")
    r = run_umig("resume", "--detach", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr.decode()
    os.kill(procs.adopt_tree(int(r.stdout.split()[-1])), signal.SIGUSR1)
    return wait_for(lambda: next((x for x in read_lines(out) if x.startswith(("PASS", "FAIL"))),
                                 None), 20, "PASS or FAIL")
