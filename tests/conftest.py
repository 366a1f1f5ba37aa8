"""Shared test machinery: compiled victims, process bookkeeping, running umig.

Every process a test starts goes through `procs` and is killed and reaped at
teardown, also when the test fails.  The test process is a child subreaper,
so processes resumed with --detach (orphaned when umig exits) are reparented
to it and reaped here too, instead of lingering under PID 1 (which reaps
late on this VM, KERNEL-NOTES.md).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
VICTIMS = HERE / "victims"
PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def umig_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "umig", *args]


def run_umig(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(umig_cmd(*args), timeout=timeout, **kw)


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("victims")


@pytest.fixture(scope="session")
def victim(build_dir):
    """victim("counter") -> path of tests/victims/counter.c compiled."""
    built: dict[str, Path] = {}

    def get(name: str, *cflags: str) -> Path:
        key = name + "".join(cflags)
        if key not in built:
            src = VICTIMS / f"{name}.c"
            tag = hashlib.sha256(src.read_bytes() + " ".join(cflags).encode()).hexdigest()[:10]
            out = build_dir / f"{name}-{tag}"
            subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(src), *cflags],
                           check=True, capture_output=True)
            built[key] = out
        return built[key]
    return get


class Procs:
    """Processes a test started or resumed; all killed and reaped at the end."""

    def __init__(self):
        self.popens: list[subprocess.Popen] = []
        self.pids: set[int] = set()
        self.trees: set[int] = set()

    def start(self, argv, **kw) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        # not pytest's capture file (deleted while open: grab would refuse it)
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        kw.setdefault("close_fds", True)
        p = subprocess.Popen([str(a) for a in argv], **kw)
        self.popens.append(p)
        return p

    def adopt(self, pid: int) -> int:
        """Track a pid we did not start (a resumed process)."""
        assert pid > 1, f"refusing to track pid {pid}: killing it would hit more than one"
        self.pids.add(pid)
        return pid

    def adopt_tree(self, pid: int) -> int:
        """Track a resumed tree: at cleanup its root and every descendant
        it has then are killed."""
        self.trees.add(pid)
        return self.adopt(pid)

    def cleanup(self) -> None:
        for root in list(self.trees) + [p.pid for p in self.popens]:
            for pid in descendants(root):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
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
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for f in (p.stdin, p.stdout, p.stderr):
                if f:
                    f.close()
        deadline = time.monotonic() + 10
        for pid in self.pids:
            while time.monotonic() < deadline:
                try:
                    got, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    break            # not ours (or already reaped)
                if got:
                    break
                time.sleep(0.01)
        reap_orphans()


def descendants(pid: int) -> list[int]:
    """Every process below pid (children of all its threads), as /proc shows
    them now."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = [int(x) for x in Path(f"/proc/{p}/task/{t}/children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def start_with_pid(procs: Procs, pid: int):
    """Start `sleep 60` with exactly this pid (through ns_last_pid, as
    root); None if that did not work."""
    for _ in range(20):
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(pid - 1))
        except OSError:
            return None
        p = procs.start(["sleep", "60"])
        if p.pid == pid:
            return p
        p.kill()
        p.wait()
    return None


def nspid(pid: int) -> list[int]:
    """The pid of `pid` in each PID namespace it is in, outermost first."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no NSpid for {pid}")


def ns_init(pid: int) -> int:
    """The init (pid 1) of pid's PID namespace, by its pid outside."""
    ns = os.readlink(f"/proc/{pid}/ns/pid")
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/ns/pid") == ns and nspid(int(name))[-1] == 1:
                    return int(name)
            except OSError:
                continue
    raise AssertionError(f"no init in the PID namespace of {pid}")


def reap_orphans() -> None:
    """Reap any child that has exited (orphans reparented to us)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


@pytest.fixture
def procs():
    p = Procs()
    try:
        yield p
    finally:
        p.cleanup()


@pytest.fixture
def counter(victim, procs, tmp_path):
    """start(ballast_mib): the C counter (one line per 20 ms into a file, with
    that much random memory); returns (Popen, its output file)."""

    def start(ballast_mib: int = 0):
        out = tmp_path / "count.out"
        p = procs.start([victim("counter"), "20000", str(ballast_mib)], stdout=out.open("w"))
        wait_lines(out, 3, timeout=30)
        return p, out
    return start


def wait_for(pred, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def wait_lines(path: Path, n: int, timeout: float = 10.0) -> list[str]:
    return wait_for(lambda: (lambda ls: ls if len(ls) >= n else None)(read_lines(path)),
                    timeout, f"{n} lines in {path}")


def readline(stream, timeout: float = 10.0) -> str:
    """One line from a pipe, with a timeout."""
    import select
    fd = stream.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"timed out reading a line (got {buf!r})")
        chunk = os.read(fd, 1)
        if not chunk:
            break
        buf += chunk
    return buf.decode()


def pid_gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


def assert_counting(lines: list[str]) -> list[int]:
    """The numbers go 0, 1, 2, ... with no gap and no repeat."""
    nums = [int(x) for x in lines if x.strip()]
    assert nums == list(range(len(nums))), \
        f"sequence broken near {next((i for i, n in enumerate(nums) if n != i), None)}: " \
        f"{nums[:3]}...{nums[-3:]}"
    return nums


def have_cmd(name: str) -> bool:
    return shutil.which(name) is not None


@pytest.fixture(scope="module")
def hosts():
    """A rig of three hosts (tests/hosts.py: network, PID, mount and UTS
    namespaces, each with its own sshd), removed after the module, also
    when a test failed."""
    if os.geteuid() != 0:
        pytest.skip("the multi-host rig needs root (namespaces, sshd); this run is not root")
    import hosts as rigmod
    rig = rigmod.make(3)
    try:
        yield rig
    finally:
        rig.down()
