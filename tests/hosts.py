"""A rig of hosts on this machine for multi-host tests (issue 5).

Each host is its own network namespace (a veth into a bridge, its own
address in a private /24 that exists only inside the rig's namespaces),
its own PID, mount (own /proc) and UTS namespace (its own hostname), and
runs its own sshd on port 22 with a host key generated for the rig and an
authorized key for the tests.  The tests' ssh runs in the rig's own
namespace (where the bridge has an address), with the hosts' keys in a
known_hosts file of the rig: host keys are checked, as they should be.

    python -m tests.hosts up 3      # as root; prints the hosts and an ssh command
    python -m tests.hosts down      # removes everything `up` made

The pytest fixture `hosts` (tests/conftest.py) makes a rig for a test
module and removes it afterwards, also when a test failed.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PREFIX = "umig-h"                    # host namespaces: umig-h0, umig-h1, ...
RIG_NS = "umig-rig"                  # the bridge, and where the tests' ssh runs
NET = "10.231.7"                     # hosts .1 .. .N, the rig's end .254
STATE = Path("/run/umig-rig.json")   # what `up` made, for `down`
SSHD = "/usr/sbin/sshd"
PID_BASE = 1000             # host i's pids start at PID_BASE * (i + 1)


@dataclass
class Host:
    name: str            # its hostname and network namespace
    addr: str
    pid: int = 0         # the `unshare` process whose child (pid 1 there) is sshd


@dataclass
class Rig:
    workdir: str
    hosts: list[Host] = field(default_factory=list)

    # ---- using it

    def ssh(self, host: Host | int, *command: str, user: str = "root") -> list[str]:
        """argv running command on host over real ssh (from the rig's
        namespace, host keys checked)."""
        h = self.hosts[host] if isinstance(host, int) else host
        return ["ip", "netns", "exec", RIG_NS] + self.ssh_client() + [
            f"{user}@{h.addr}", *command]

    def ssh_client(self) -> list[str]:
        """The ssh command with the rig's key and known_hosts (no host)."""
        w = Path(self.workdir)
        return ["ssh", "-i", str(w / "client_key"),
                "-o", f"UserKnownHostsFile={w / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=5"]

    def in_rig(self, shell: str) -> list[str]:
        """argv running a shell command line in the rig's namespace (where
        `ssh` reaches the hosts), with $SSH set to the rig's ssh command."""
        return ["ip", "netns", "exec", RIG_NS, "env", f"SSH={shlex.join(self.ssh_client())}",
                "sh", "-c", shell]

    # ---- making it

    def up(self, n: int) -> None:
        if os.geteuid() != 0:
            raise SystemExit("the rig needs root (network and PID namespaces, sshd)")
        for tool in (SSHD, "ssh", "ssh-keygen", "ip", "unshare"):
            if not shutil.which(tool):
                raise SystemExit(f"the rig needs {tool}: apt-get install openssh-server "
                                 f"openssh-client iproute2 util-linux")
        self.save()                     # before anything: down() can undo a partial up()
        w = Path(self.workdir)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "umig-rig",
             "-f", str(w / "client_key"))
        (w / "authorized_keys").write_text((w / "client_key.pub").read_text())
        _run("ip", "netns", "add", RIG_NS)
        _run("ip", "-n", RIG_NS, "link", "set", "lo", "up")
        _run("ip", "-n", RIG_NS, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", RIG_NS, "addr", "add", f"{NET}.254/24", "dev", "br0")
        _run("ip", "-n", RIG_NS, "link", "set", "br0", "up")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)   # sshd's privilege separation
        known = []
        for i in range(n):
            h = Host(f"{PREFIX}{i}", f"{NET}.{i + 1}")
            self.hosts.append(h)
            self.save()
            _run("ip", "netns", "add", h.name)
            _run("ip", "-n", RIG_NS, "link", "add", f"v{i}", "type", "veth", "peer", "name",
                 "eth0", "netns", h.name)
            _run("ip", "-n", RIG_NS, "link", "set", f"v{i}", "master", "br0", "up")
            _run("ip", "-n", h.name, "addr", "add", f"{h.addr}/24", "dev", "eth0")
            _run("ip", "-n", h.name, "link", "set", "eth0", "up")
            _run("ip", "-n", h.name, "link", "set", "lo", "up")
            key = w / f"{h.name}_host_key"
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", h.name, "-f", str(key))
            known.append(f"{h.addr} {(w / f'{h.name}_host_key.pub').read_text().strip()}")
            conf = w / f"{h.name}_sshd_config"
            conf.write_text(SSHD_CONFIG.format(key=key, auth=w / "authorized_keys"))
            log = open(w / f"{h.name}_sshd.log", "w")
            # its own PID, mount (/proc) and UTS namespace; pid 1 there is sh,
            # which names the host and becomes sshd.  Each host's pids start
            # elsewhere (1000, 2000, ...), as on real hosts whose pid spaces
            # differ: otherwise the sshd sessions of a migration take the very
            # pids the process brings along
            p = subprocess.Popen(
                ["ip", "netns", "exec", h.name, "unshare", "--pid", "--fork", "--kill-child",
                 "--mount-proc", "--uts", "sh", "-c",
                 f"hostname {h.name} && echo {PID_BASE * (i + 1)} > "
                 f"/proc/sys/kernel/ns_last_pid && exec {SSHD} -D -e -f {conf} "
                 f"-o ListenAddress={h.addr} -o Port=22"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
            log.close()
            h.pid = p.pid
            self.save()
        (w / "known_hosts").write_text("\n".join(known) + "\n")
        for h in self.hosts:
            self._wait_ready(h)

    def _wait_ready(self, h: Host, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            r = subprocess.run(self.ssh(h, "hostname"), capture_output=True, text=True)
            if r.returncode == 0 and r.stdout.strip() == h.name:
                return
            if time.monotonic() > deadline:
                log = Path(self.workdir, f"{h.name}_sshd.log").read_text()[-500:]
                raise RuntimeError(f"host {h.name} ({h.addr}): sshd does not answer: "
                                   f"{r.stderr.strip()} | sshd log: {log}")
            time.sleep(0.1)

    def down(self) -> None:
        """Stop every host (kill its sshd, pid 1 of its PID namespace: the
        kernel kills all else there) and remove the namespaces and files."""
        for h in self.hosts:
            for pid in _children(h.pid) if h.pid else []:
                _kill(pid)                    # its pid 1 ("unshare --fork" ignores SIGTERM)
            if h.pid:
                _kill(h.pid)
                _reap(h.pid)
        for h in self.hosts:
            subprocess.run(["ip", "netns", "del", h.name], capture_output=True)
        subprocess.run(["ip", "netns", "del", RIG_NS], capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)
        STATE.unlink(missing_ok=True)
        self.hosts.clear()

    def save(self) -> None:
        STATE.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls) -> Rig | None:
        try:
            d = json.loads(STATE.read_text())
        except (OSError, ValueError):
            return None
        return cls(d["workdir"], [Host(**h) for h in d["hosts"]])


SSHD_CONFIG = """\
HostKey {key}
AuthorizedKeysFile {auth}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
PrintMotd no
"""


def make(n: int) -> Rig:
    """A rig of n hosts (removing what a crashed earlier run left)."""
    old = Rig.load()
    if old is not None:
        old.down()
    for name in (RIG_NS, *(f"{PREFIX}{i}" for i in range(16))):
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    rig = Rig(tempfile.mkdtemp(prefix="umig-rig-"))
    try:
        rig.up(n)
    except BaseException:
        rig.down()
        raise
    return rig


def _run(*argv: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{shlex.join(argv)}: {r.stderr.strip() or r.returncode}")


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:        # not ours (a `down` from another process)
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.02)


def main(argv: list[str]) -> int:
    if argv[:1] == ["up"] and len(argv) <= 2:
        rig = make(int(argv[1]) if len(argv) > 1 else 2)
        for h in rig.hosts:
            print(f"{h.name} {h.addr}")
        print(f"ssh: {shlex.join(rig.ssh(0, 'hostname'))}")
        print("down: python -m tests.hosts down")
        return 0
    if argv == ["down"]:
        rig = Rig.load()
        if rig is None:
            print("no rig is up")
            return 0
        rig.down()
        return 0
    print("usage: python -m tests.hosts up [N] | down", file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
