"""Between hosts (issue 5): the rig itself, and a process moved with
`umig grab PID | ssh host umig resume -` from host to host and back."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path

from conftest import umig_cmd, wait_for

COUNTER = ("import itertools, time\n"
           "for i in itertools.count():\n"
           "    print(i, flush=True)\n"
           "    time.sleep(0.02)\n")


def run(argv: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def test_rig_hosts_are_separate_and_reachable_over_ssh(hosts):
    """GIVEN the rig's three hosts
    WHEN each is asked over real ssh (host keys checked) for its name, its
    pid 1 and its address
    THEN each answers with its own hostname, its own PID namespace (pid 1
    is its sshd) and its own address."""
    for i, h in enumerate(hosts.hosts):
        r = run(hosts.ssh(i, "hostname; cat /proc/1/comm; ip -4 -o addr show eth0"))
        assert r.returncode == 0, r.stderr
        name, init, addr = r.stdout.splitlines()[:3]
        assert name == h.name and init == "sshd" and f"inet {h.addr}/24" in addr, r.stdout


def _numbers(path: Path) -> list[int]:
    """The count in path: the first number of each line."""
    return [int(line.split()[0]) for line in path.read_text().splitlines() if line.strip()]


def test_process_moved_through_ssh_from_host_to_host_and_back(hosts, tmp_path):
    """GIVEN python3 counting into a file on host 0
    WHEN it is moved with `umig grab PID | ssh host umig resume --detach -`
    from host 0 to 1, to 2 and back to 0
    THEN after each hop it runs on the new host with the same pid, is gone
    from the old one, and the count goes on with no gap and no repeat."""
    out = tmp_path / "count"
    pid = _start_counter(hosts, 0, out)
    try:
        here = 0
        for there in (1, 2, 0):
            before = len(_numbers(out))
            grab = shlex.join(umig_cmd("grab", str(pid)))
            resume = shlex.join(umig_cmd("resume", "--detach", "-"))
            src, dst = hosts.hosts[here].addr, hosts.hosts[there].addr
            r = run(hosts.in_rig(f"$SSH root@{src} {shlex.quote(grab)} | "
                                 f"$SSH root@{dst} {shlex.quote(resume)}"))
            assert r.returncode == 0, r.stderr
            assert int(r.stdout.split()[-1]) == pid, r.stdout     # the same pid there
            gone = run(hosts.ssh(here, f"test -e /proc/{pid} && echo alive || echo gone"))
            assert gone.stdout.strip() == "gone", f"still on host {here}"
            comm = run(hosts.ssh(there, f"cat /proc/{pid}/comm"))
            assert comm.stdout.strip() == "python3", comm.stderr
            wait_for(lambda: len(_numbers(out)) > before + 10 or None, 10,
                     f"the count to go on on host {there}")
            here = there
        nums = _numbers(out)
        assert nums == list(range(len(nums))), f"a gap or a repeat: ...{nums[-20:]}"
    finally:
        for h in range(3):
            run(hosts.ssh(h, f"kill -9 {pid} 2>/dev/null; true"))


def _start(hosts, host: int, command: str, out: Path, lines: int = 6,
           timeout: float = 10) -> int:
    """command started on host in its own session, its output into out;
    returns its pid there once out has `lines` lines."""
    r = run(hosts.ssh(host, f"cd {shlex.quote(str(out.parent))}; setsid {command} "
                            f"> {shlex.quote(str(out))} 2>&1 < /dev/null & echo $!"))
    assert r.returncode == 0, r.stderr
    wait_for(lambda: out.exists() and len(_numbers(out)) >= lines or None, timeout, "the count")
    return int(r.stdout.split()[-1])


def _start_counter(hosts, host: int, out: Path) -> int:
    return _start(hosts, host, f"python3 -c {shlex.quote(COUNTER)}", out)


def _migrate_argv(hosts, here: int, pid: int, dest: str, *extra: str,
                  ssh: list[str] | None = None, remote: list[str] | None = None,
                  detach: bool = True) -> list[str]:
    """argv running `umig migrate --detach` (or without) on host `here`,
    with the rig's ssh (or ssh) and this umig there (or remote)."""
    cmd = umig_cmd("migrate", *(["--detach"] if detach else []), str(pid), dest,
                   "--ssh", shlex.join(ssh or hosts.ssh_client()),
                   "--remote-umig", shlex.join(remote or umig_cmd()), *extra)
    return hosts.ssh(here, shlex.join(cmd))


def _migrate(hosts, here: int, pid: int, dest: str, *extra: str) -> subprocess.CompletedProcess:
    return run(_migrate_argv(hosts, here, pid, dest, "-v", *extra))


# counts, and every tenth line also prints a checksum of 8 MiB of random bytes
CHECKSUMMER = ("import hashlib, itertools, os, time\n"
               "blob = bytearray(os.urandom(8 << 20))\n"
               "for i in itertools.count():\n"
               "    print(i, hashlib.sha256(blob).hexdigest() if i % 10 == 0 else '', "
               "flush=True)\n"
               "    time.sleep(0.02)\n")


def _counts_and_sums(path: Path) -> tuple[list[int], list[str]]:
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [int(x[0]) for x in lines], [x[1] for x in lines if len(x) > 1]


def test_migrate_moves_it_around_and_kills_each_source_only_once_it_runs_there(hosts,
                                                                              tmp_path):
    """GIVEN python3 on host 0 counting into a file and checksumming 8 MiB
    of random memory
    WHEN `umig migrate --detach PID root@hostN` moves it from host 0 to 1,
    to 2 and back to 0
    THEN after each hop it prints the pid it has there (the same), the
    source is gone, the count goes on from the new host, and the summary
    says how long it was frozen (on the last hop, --json); in the end the
    count has no gap or repeat and every checksum is the first one."""
    out = tmp_path / "count"
    pid = _start(hosts, 0, f"python3 -c {shlex.quote(CHECKSUMMER)}", out)
    try:
        for here, there in ((0, 1), (1, 2), (2, 0)):
            dest = f"root@{hosts.hosts[there].addr}"
            last = there == 0
            r = _migrate(hosts, here, pid, dest, *(["--json"] if last else []))
            assert r.returncode == 0, r.stderr
            if last:
                summary = json.loads(r.stdout)
                assert summary["pid_there"] == pid and summary["host"] == dest
                assert summary["sent_bytes"] > 0 and summary["memory_bytes"] >= 8 << 20
                assert 0 < summary["frozen_ms"] < 60000
            else:
                assert int(r.stdout.split()[-1]) == pid
                assert f"moved process {pid} to {dest}" in r.stderr
                assert "frozen" in r.stderr and "MiB/s of memory" in r.stderr, r.stderr
            gone = run(hosts.ssh(here, f"test -e /proc/{pid} && echo alive || echo gone"))
            assert gone.stdout.strip() == "gone"
            assert run(hosts.ssh(there, f"cat /proc/{pid}/comm")).stdout.strip() == "python3"
            sums = len(_counts_and_sums(out)[1])
            wait_for(lambda: len(_counts_and_sums(out)[1]) >= sums + 2 or None, 10,
                     f"checksums from host {there}")
        nums, sums = _counts_and_sums(out)
        assert nums == list(range(len(nums))), f"a gap or a repeat: ...{nums[-20:]}"
        assert len(sums) >= 8 and set(sums) == {sums[0]}, sums
    finally:
        for h in range(3):
            run(hosts.ssh(h, f"kill -9 {pid} 2>/dev/null; true"))


def test_migrate_carries_the_output_back_and_exits_with_its_status(hosts, tmp_path):
    """GIVEN python3 on host 0 counting to 300 into a pipe (read by cat,
    outside it) and then exiting with status 3
    WHEN `umig migrate PID root@host1` (no --detach) moves it
    THEN the rest of the count comes out of migrate's stdout (carried back
    by ssh from the stdout of umig resume on host 1), with what cat got
    before it makes 0..300 with no gap or repeat, and migrate exits 3."""
    out = tmp_path / "count"
    pidfile = tmp_path / "pid"
    to_100 = ("import os, sys, time\n"
              f"open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
              "for i in range(301):\n"
              "    print(i, flush=True)\n"
              "    time.sleep(0.02)\n"
              "sys.exit(3)\n")
    r = run(hosts.ssh(0, f"cd {shlex.quote(str(tmp_path))}; (setsid python3 -c "
                         f"{shlex.quote(to_100)} < /dev/null 2>/dev/null | cat > "
                         f"{shlex.quote(str(out))}) > /dev/null 2>&1 &"))
    assert r.returncode == 0, r.stderr
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 10, "its pid"))
    wait_for(lambda: out.exists() and len(_numbers(out)) >= 5 or None, 10, "the count")
    try:
        r = run(_migrate_argv(hosts, 0, pid, f"root@{hosts.hosts[1].addr}", detach=False))
        assert r.returncode == 3, r.stderr
        here = _numbers(out)
        there = [int(x) for x in r.stdout.split()]
        assert here and there, (here, there)
        assert here + there == list(range(301)), (here[-3:], there[:3])
    finally:
        for h in range(2):
            run(hosts.ssh(h, f"kill -9 {pid} 2>/dev/null; true"))


def test_probe_names_cpu_features_the_target_lacks(hosts, procs):
    """GIVEN the description of a process whose XSAVE state used features
    this machine lacks (AVX-512 or AMX state in its XCR0, with the flags)
    WHEN host 1's `umig probe` checks it, as migrate does before freezing
    THEN the cpu check fails naming each of those features, and the other
    checks still answer."""
    from umig import cpu, probe
    p = procs.start(["sleep", "60"])
    want = probe.describe(p.pid)
    absent = [b for b in (5, 6, 7, 17, 18) if not cpu.xcr0() >> b & 1]
    assert absent, "this CPU has AVX-512 and AMX state: no feature to be missing"
    want["header"]["xcr0"] |= sum(1 << b for b in absent)
    r = subprocess.run(hosts.ssh(1, shlex.join(umig_cmd("probe"))), input=json.dumps(want),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    checks = {c["check"]: c for c in json.loads(r.stdout)}
    assert not checks["cpu"]["ok"], checks["cpu"]
    for b in absent:
        assert cpu.XFEATURES[b] in checks["cpu"]["detail"], checks["cpu"]
    assert {"umig", "files", "pids"} <= set(checks)


def test_migrate_failures_leave_the_source_counting(hosts, tmp_path):
    """GIVEN python3 counting on host 0
    WHEN it is migrated to an address where no host answers, and to host 1
    with a remote umig that does not exist
    THEN each fails (exit 72) saying what failed, and the source goes on
    counting on host 0, never frozen for long, with nothing started on
    host 1."""
    out = tmp_path / "count"
    pid = _start_counter(hosts, 0, out)
    try:
        r = _migrate(hosts, 0, pid, "root@10.231.7.77", "-o", "ConnectTimeout=2")
        assert r.returncode == 72, r.stderr
        assert "10.231.7.77" in r.stderr and "nothing was frozen" in r.stderr, r.stderr
        r = run(_migrate_argv(hosts, 0, pid, f"root@{hosts.hosts[1].addr}",
                              remote=["/nonexistent/umig"]))
        assert r.returncode == 72, r.stderr
        assert "/nonexistent/umig" in r.stderr, r.stderr
        before = len(_numbers(out))
        wait_for(lambda: len(_numbers(out)) > before + 10 or None, 10, "the count on host 0")
        assert run(hosts.ssh(0, f"cat /proc/{pid}/comm")).stdout.strip() == "python3"
        assert run(hosts.ssh(1, f"test -e /proc/{pid} && echo yes || echo no")
                   ).stdout.strip() == "no"
    finally:
        run(hosts.ssh(0, f"kill -9 {pid} 2>/dev/null; true"))


def test_migrate_to_a_host_missing_a_file_leaves_the_source_running(hosts, tmp_path):
    """GIVEN python3 counting into a file on host 0, and host 1 where that
    file's directory is hidden (an empty tmpfs mounted over it in host 1's
    own mount namespace)
    WHEN it is migrated to host 1
    THEN the target's checks name the file before anything is frozen,
    migrate fails (exit 72), and the process goes on counting on host 0;
    WHEN it is then migrated with --ship-files
    THEN --dry-run passes, and it moves: the file is made on host 1 from
    the image and the count goes on there with no gap or repeat."""
    out = tmp_path / "count"
    pid = _start_counter(hosts, 0, out)
    hide = run(hosts.ssh(1, f"mount -t tmpfs none {shlex.quote(str(tmp_path))}"))
    assert hide.returncode == 0, hide.stderr
    try:
        r = _migrate(hosts, 0, pid, f"root@{hosts.hosts[1].addr}")
        assert r.returncode == 72, r.stderr
        assert str(out) in r.stderr and "does not exist" in r.stderr, r.stderr
        assert "nothing was frozen" in r.stderr, r.stderr
        before = len(_numbers(out))
        wait_for(lambda: len(_numbers(out)) > before + 10 or None, 10, "the count on host 0")
        assert run(hosts.ssh(1, f"test -e /proc/{pid} && echo yes || echo no")
                   ).stdout.strip() == "no"

        dest = f"root@{hosts.hosts[1].addr}"
        r = run(_migrate_argv(hosts, 0, pid, dest, "--ship-files", "--dry-run", "--json"))
        assert r.returncode == 0, r.stdout + r.stderr
        files = [c for c in json.loads(r.stdout)["checks"] if c["check"] == "files"]
        assert files[0]["ok"] and "come with the image" in files[0]["detail"], files
        r = _migrate(hosts, 0, pid, dest, "--ship-files")      # libpython is 22 MiB
        assert r.returncode == 67 and "--max-contents-mib" in r.stderr, r.stderr
        assert "image is empty" not in r.stderr, r.stderr        # (the target's echo)
        r = _migrate(hosts, 0, pid, dest, "--ship-files", "--max-contents-mib", "64")
        assert r.returncode == 0, r.stderr
        at_move = len(_numbers(out))           # host 0's view stops growing here

        def there() -> list[int]:
            return [int(x) for x in run(hosts.ssh(1, f"cat {shlex.quote(str(out))}")
                                        ).stdout.split()]
        wait_for(lambda: len(there()) > at_move + 10 or None, 10, "the count on host 1")
        nums = there()
        assert nums == list(range(len(nums))), f"a gap or a repeat: ...{nums[-20:]}"
        assert len(_numbers(out)) <= at_move + 1
    finally:
        run(hosts.ssh(1, f"kill -9 {pid} 2>/dev/null; umount {shlex.quote(str(tmp_path))}"))
        run(hosts.ssh(0, f"kill -9 {pid} 2>/dev/null; true"))


def test_migrate_whose_answer_is_lost_leaves_the_source_stopped(hosts, tmp_path):
    """GIVEN python3 counting on host 0, and an ssh that drops the
    connection right when host 1's umig says it lets the process go
    WHEN it is migrated to host 1
    THEN migrate cannot know whether it runs there: it exits 76 saying the
    source is left stopped and how to settle it; the source is stopped
    (not killed) on host 0 and the process runs on host 1 - never two
    running copies, never none."""
    out = tmp_path / "count"
    pid = _start_counter(hosts, 0, out)
    drop = Path(__file__).parent / "victims" / "ssh_drop_ack.py"
    try:
        r = run(_migrate_argv(hosts, 0, pid, f"root@{hosts.hosts[1].addr}",
                              ssh=["python3", str(drop)] + hosts.ssh_client()))
        assert r.returncode == 76, r.stderr
        assert "left stopped" in r.stderr and f"kill -CONT {pid}" in r.stderr, r.stderr
        state = run(hosts.ssh(0, f"cut -d' ' -f3 /proc/{pid}/stat")).stdout.strip()
        assert state == "T", f"the source on host 0 is {state!r}, not stopped"
        wait_for(lambda: run(hosts.ssh(1, f"cat /proc/{pid}/comm")).stdout.strip() == "python3"
                 or None, 10, "the process on host 1")
        before = len(_numbers(out))
        wait_for(lambda: len(_numbers(out)) > before + 10 or None, 10, "the count on host 1")
    finally:
        for h in range(3):
            run(hosts.ssh(h, f"kill -9 {pid} 2>/dev/null; true"))


def _big_counter(hosts, victim, host: int, out: Path) -> int:
    """The C counter with 300 MiB of random ballast (its image takes a
    while to stream), started on host."""
    return _start(hosts, host, f"{shlex.quote(str(victim('counter')))} 20000 300", out,
                  lines=4, timeout=30)


def test_migrate_whose_target_dies_mid_stream_thaws_the_source(hosts, victim, tmp_path):
    """GIVEN a counter with 300 MiB of random memory on host 0
    WHEN it is being migrated to host 1 and host 1's umig resume is killed
    while the image streams
    THEN migrate fails (exit 72) saying the process was thawed, nothing runs
    on host 1, and the counter goes on on host 0."""
    out = tmp_path / "count"
    pid = _big_counter(hosts, victim, 0, out)
    mig = subprocess.Popen(_migrate_argv(hosts, 0, pid, f"root@{hosts.hosts[1].addr}"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        find = "pgrep -f 'umig resume --report'"
        victim_pid = wait_for(lambda: run(hosts.ssh(1, find)).stdout.split() or None, 20,
                              "umig resume on host 1")
        time.sleep(0.2)
        run(hosts.ssh(1, f"kill -9 {' '.join(victim_pid)}"))
        _, err = mig.communicate(timeout=60)
        assert mig.returncode in (68, 72), err
        assert "thawed and goes on here" in err, err
        before = len(_numbers(out))
        wait_for(lambda: len(_numbers(out)) > before + 5 or None, 10, "the count on host 0")
        assert run(hosts.ssh(1, f"test -e /proc/{pid} && echo yes || echo no")
                   ).stdout.strip() == "no"
    finally:
        if mig.poll() is None:
            mig.kill()
            mig.wait()
        run(hosts.ssh(0, f"kill -9 {pid} 2>/dev/null; true"))


def test_migrate_over_a_link_that_goes_down_thaws_the_source(hosts, victim, tmp_path):
    """GIVEN a counter with 300 MiB of random memory on host 0
    WHEN host 1's link to the rig goes down (ip link set down) while the
    image streams to it
    THEN ssh gives up (keepalives), migrate fails saying the process was
    thawed, and the counter goes on on host 0."""
    out = tmp_path / "count"
    pid = _big_counter(hosts, victim, 0, out)
    ssh = hosts.ssh_client() + ["-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=2"]
    mig = subprocess.Popen(_migrate_argv(hosts, 0, pid, f"root@{hosts.hosts[1].addr}", ssh=ssh),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import hosts as rigmod
    try:
        # frozen (a ptrace stop, 't'): the image is streaming
        wait_for(lambda: run(hosts.ssh(0, f"cut -d' ' -f3 /proc/{pid}/stat")).stdout.strip()
                 == "t" or None, 20, "the source to be frozen")
        down = run(["ip", "-n", rigmod.RIG_NS, "link", "set", "v1", "down"])
        assert down.returncode == 0, down.stderr
        _, err = mig.communicate(timeout=60)
        assert mig.returncode in (68, 72), err
        assert "thawed and goes on here" in err, err
        before = len(_numbers(out))
        wait_for(lambda: len(_numbers(out)) > before + 5 or None, 10, "the count on host 0")
    finally:
        run(["ip", "-n", rigmod.RIG_NS, "link", "set", "v1", "up"])
        if mig.poll() is None:
            mig.kill()
            mig.wait()
        run(hosts.ssh(0, f"kill -9 {pid} 2>/dev/null; true"))


def test_migrate_dry_run_tables_for_a_ready_and_an_unready_target(hosts, tmp_path):
    """GIVEN python3 counting on host 0
    WHEN `umig migrate --dry-run` asks host 1 as it is, then with the
    counter's directory hidden there
    THEN the first table passes every check (umig, cpu, files, pids) with
    exit 0, the second fails "files" naming the missing file with exit 72;
    nothing is ever frozen (the count never stops) and nothing moves."""
    out = tmp_path / "count"
    pid = _start_counter(hosts, 0, out)
    dry = _migrate_argv(hosts, 0, pid, f"root@{hosts.hosts[1].addr}", "--dry-run")
    try:
        r = run(dry)
        assert r.returncode == 0, r.stdout + r.stderr
        for check in ("umig", "cpu", "files", "pids"):
            assert any(line.split("│")[1:3] and check in line.split("│")[1]
                       and "pass" in line.split("│")[2] for line in r.stdout.splitlines()), \
                r.stdout
        assert run(hosts.ssh(1, f"mount -t tmpfs none {shlex.quote(str(tmp_path))}")
                   ).returncode == 0
        r = run(dry)
        assert r.returncode == 72, r.stdout + r.stderr
        assert "FAIL" in r.stdout and str(out) in r.stdout.replace("\n", ""), r.stdout
        assert run(hosts.ssh(0, f"cut -d' ' -f3 /proc/{pid}/stat")).stdout.strip() in ("S", "R")
        before = len(_numbers(out))
        wait_for(lambda: len(_numbers(out)) > before + 5 or None, 10, "the count on host 0")
    finally:
        run(hosts.ssh(1, f"umount {shlex.quote(str(tmp_path))}"))
        run(hosts.ssh(0, f"kill -9 {pid} 2>/dev/null; true"))


def test_migrate_tree_moves_parent_and_child_together(hosts, tmp_path):
    """GIVEN on host 0 a shell waiting for its python3 child, which counts
    WHEN `umig migrate --tree` moves the shell to host 1 (the probe checks
    the child's pid there too)
    THEN both run on host 1 with their pids, parent and child again, both
    are gone from host 0, and the count goes on with no gap or repeat."""
    out = tmp_path / "count"
    pid = _start(hosts, 0, f"sh -c {shlex.quote(f'python3 -c {shlex.quote(COUNTER)}; true')}",
                 out)
    child = int(run(hosts.ssh(0, f"cat /proc/{pid}/task/{pid}/children")).stdout.split()[0])
    try:
        r = _migrate(hosts, 0, pid, f"root@{hosts.hosts[1].addr}", "--tree")
        assert r.returncode == 0, r.stderr
        gone = run(hosts.ssh(0, f"ls -d /proc/{pid} /proc/{child} 2>/dev/null | wc -l"))
        assert gone.stdout.strip() == "0"
        there = run(hosts.ssh(1, f"cat /proc/{pid}/comm /proc/{child}/comm; "
                                 f"cut -d' ' -f4 /proc/{child}/stat")).stdout.split()
        assert there == ["sh", "python3", str(pid)], there
        before = len(_numbers(out))
        wait_for(lambda: len(_numbers(out)) > before + 10 or None, 10, "the count on host 1")
        nums = _numbers(out)
        assert nums == list(range(len(nums))), f"a gap or a repeat: ...{nums[-20:]}"
    finally:
        for h in range(2):
            run(hosts.ssh(h, f"kill -9 {pid} {child} 2>/dev/null; true"))
