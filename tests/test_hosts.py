"""Between hosts (issue 5): the rig itself, and a process moved with
`umig grab PID | ssh host umig resume -` from host to host and back."""

from __future__ import annotations

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
    return [int(x) for x in path.read_text().split()]


def test_process_moved_through_ssh_from_host_to_host_and_back(hosts, tmp_path):
    """GIVEN python3 counting into a file on host 0
    WHEN it is moved with `umig grab PID | ssh host umig resume --detach -`
    from host 0 to 1, to 2 and back to 0
    THEN after each hop it runs on the new host with the same pid, is gone
    from the old one, and the count goes on with no gap and no repeat."""
    out = tmp_path / "count"
    start = (f"cd {shlex.quote(str(tmp_path))}; setsid python3 -c {shlex.quote(COUNTER)} "
             f"> {shlex.quote(str(out))} 2>&1 < /dev/null & echo $!")
    r = run(hosts.ssh(0, start))
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout.split()[-1])
    try:
        wait_for(lambda: len(_numbers(out)) > 5 or None, 10, "the count on host 0")
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
