"""`umig migrate PID [user@]host[:port]`: grab into `ssh host umig resume
--report -` as one transaction.

Nothing is frozen before the target's umig says it is there ("ready", a
marker line on its stderr).  The source stays frozen while its image
streams to the target, which rebuilds the process and says "prepared";
only then does migrate send "go" after the image, and only "go" lets the
target run it ("starting", then "running PID").  Only on "running" is the
source killed.  If the target fails before migrate said "go" (ssh cannot
connect, the image is refused, the stream breaks), nothing runs there:
the source is thawed and carries on.  If "go" was said but "running" never
came (the connection dropped just then), nobody can know whether it runs
there: the source is left stopped, never killed, and umig says how to
settle it.  Never two running copies, never none.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
from dataclasses import dataclass, field

from . import capture
from .errors import EnvironmentProblem, Exit, ImageIOError, Interrupted, NoProcess, UmigError

MARK = "\x1eumig-resume "           # the target's marker lines on its stderr
FAST_CIPHERS = "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-gcm@openssh.com"


def ssh_command(dest: str, ssh: str | None, port: int | None, identity: str | None,
                options: list[str]) -> tuple[list[str], str]:
    """The ssh argv (without the remote command) and the host, from
    [user@]host[:port] and the ssh options; the fastest cipher first
    unless the user chose (aes128-gcm is ~1.5x chacha20 here)."""
    host = dest
    if dest.count(":") == 1 and not dest.endswith("]"):
        host, p = dest.rsplit(":", 1)
        if not p.isdigit():
            raise UmigError(f"bad destination {dest!r}: port {p!r} is not a number",
                            exit_code=Exit.USAGE)
        port = port or int(p)
    argv = shlex.split(ssh) if ssh else ["ssh"]
    chose = any("Ciphers" in o for o in options) or (ssh and ("-c" in argv or "Ciphers" in ssh))
    if not chose:
        argv += ["-o", f"Ciphers={FAST_CIPHERS}"]
    if not any("ServerAlive" in o for o in options) and not (ssh and "ServerAlive" in ssh):
        # a dead link must end the transaction (and thaw the source) in
        # seconds, not after TCP gives up
        argv += ["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
    if port:
        argv += ["-p", str(port)]
    if identity:
        argv += ["-i", identity]
    for o in options:
        argv += ["-o", o]
    return argv + ["-o", "BatchMode=yes"], host


@dataclass
class _Target:
    """What the target's stderr said: markers taken out, the rest passed on."""
    proc: subprocess.Popen
    ready: threading.Event = field(default_factory=threading.Event)
    prepared: threading.Event = field(default_factory=threading.Event)
    starting: threading.Event = field(default_factory=threading.Event)
    running: int = 0
    last: str = ""
    quiet: bool = False              # what it says now is not passed on
    done: threading.Event = field(default_factory=threading.Event)

    def read(self) -> None:
        try:
            for raw in self.proc.stderr:
                line = raw.decode(errors="replace")
                if line.startswith(MARK):
                    what = line[len(MARK):].split()
                    if what[:1] == ["ready"]:
                        self.ready.set()
                    elif what[:1] == ["prepared"]:
                        self.prepared.set()
                    elif what[:1] == ["starting"]:
                        self.starting.set()
                    elif what[:1] == ["running"] and len(what) > 1:
                        self.running = int(what[1])
                    continue
                if line.strip():
                    self.last = line.strip()
                if self.ready.is_set() and not self.quiet:   # before: ssh's complaint, which
                    sys.stderr.write(line)       # umig's error line repeats
                    sys.stderr.flush()
        finally:
            self.done.set()
            self.ready.set()             # (wakes the waiters; done says it ended)
            self.prepared.set()


def probe(pid: int, ssh_argv: list[str], host: str, remote_umig: str,
          pidns: bool, ship_files: bool = False, tree: bool = False) -> list[dict]:
    """The target's checks for process pid (umig/probe.py), asked over ssh
    without stopping anything."""
    import json
    from . import probe as probemod
    want = json.dumps(probemod.describe(pid, ship_files, tree)).encode()
    remote = f"{remote_umig} probe{' --pidns' if pidns else ''}"
    try:
        r = subprocess.run(ssh_argv + [host, remote], input=want, capture_output=True,
                           timeout=PROBE_WAIT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EnvironmentProblem(f"cannot ask {host} about process {pid}: {e}", pid=pid,
                                 hint="check that ssh reaches it") from None
    try:
        return json.loads(r.stdout)
    except ValueError:
        why = (r.stderr.decode(errors="replace").strip().splitlines() or
               [f"ssh exited with status {r.returncode}"])[-1]
        raise EnvironmentProblem(f"cannot move process {pid} to {host}: {why}; nothing was "
                                 f"frozen, it goes on here", pid=pid,
                                 hint="check that ssh reaches it and umig is installed there "
                                      "(--remote-umig)") from None


PROBE_WAIT_S = 60
PIPE_BYTES = 1 << 20                # fs.pipe-max-size's default


def big_pipe(fd: int) -> None:
    """A 1 MiB pipe instead of 64 KiB: 16 times fewer wake-ups between the
    image's writer (or reader) and ssh (best effort: a pipe only, and
    pipe-max-size may be lower)."""
    import fcntl
    from .fdtable import F_SETPIPE_SZ
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        pass


def refuse_unless_ready(pid: int, host: str, results: list[dict]) -> None:
    bad = [r for r in results if not r["ok"]]
    if bad:
        raise EnvironmentProblem(f"{host} cannot take process {pid}: "
                                 + "; ".join(f"{r['check']}: {r['detail']}" for r in bad)
                                 + "; nothing was frozen, it goes on here", pid=pid,
                                 hint="see umig migrate --dry-run")


def migrate(pid: int, dest: str, ssh_argv: list[str], host: str, remote_umig: str,
            detach: bool, warn, interrupted=lambda: False,
            pidns: bool = False, progress=lambda now: None,
            **grab_options) -> tuple[capture.GrabStats, int]:
    """Move process pid to host; returns the grab's stats and the pid it
    runs as there.  Raises with the source thawed (the target failed) or,
    when it cannot be known whether the target runs it, left stopped.
    progress(now) as for capture.grab, and then once more with now.phase
    "starting" while the target rebuilds and starts it; grab_options go
    to capture.grab."""
    remote = (f"{remote_umig} resume --report{' --detach' if detach else ''}"
              f"{' --pidns' if pidns else ''} -")
    argv = ssh_argv + [host, remote]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdout=subprocess.DEVNULL if detach else None)
    except OSError as e:
        raise EnvironmentProblem(f"cannot run {argv[0]}: {e.strerror}",
                                 hint="install ssh, or give --ssh") from None
    big_pipe(proc.stdin.fileno())
    target = _Target(proc)
    reader = threading.Thread(target=target.read, daemon=True)
    reader.start()
    # nothing is frozen until the target's umig is there and reading
    target.ready.wait()
    if target.done.is_set():
        proc.wait()
        why = target.last or f"ssh exited with status {proc.returncode}"
        raise EnvironmentProblem(f"cannot move process {pid} to {host}: {why}; nothing was "
                                 f"frozen, it goes on here", pid=pid,
                                 hint="check that ssh reaches it and umig is installed there "
                                      "(--remote-umig)")
    try:
        stats = capture.grab(pid, proc.stdin.fileno(), finish="hold", interrupted=interrupted,
                             warn=warn, progress=progress, **grab_options)
    except UmigError as e:
        target.quiet = not isinstance(e, ImageIOError)    # (it would only say it got nothing)
        proc.stdin.close()
        proc.wait()
        reader.join(5)
        if isinstance(e, ImageIOError) and proc.returncode and target.last:
            # the target stopped reading: its refusal is the error
            raise EnvironmentProblem(f"{host} refused process {pid}: "
                                     f"{target.last.removeprefix('umig: ')}; process {pid} was "
                                     f"thawed and goes on here", pid=pid) from None
        why = ""
        if isinstance(e, ImageIOError):
            why = (f" (the target {host} said: {target.last})" if target.last else
                   f" (the target {host} ended without a word: ssh exited with "
                   f"{proc.returncode})")
        e.msg = f"{e.msg}; process {pid} was thawed and goes on here{why}"
        raise
    held = stats.held
    progress(capture.Progress("starting", frozen_at=held.fr.frozen_at,
                              image_bytes=stats.image_bytes))
    # phase two: the target has the whole process, stopped; "go" lets it run
    target.prepared.wait()
    said_go = False
    if not target.done.is_set():
        try:
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            said_go = True
        except OSError:
            pass                     # it cannot have heard it: nothing runs there
    try:
        proc.stdin.close()
    except OSError:
        pass
    reader.join()                    # the target's stderr ends with its umig (or ssh)
    if target.running:
        held.kill()
        if not detach:
            code = proc.wait()
            stats.remote_status = code
        else:
            proc.wait()
        return stats, target.running
    proc.wait()
    if said_go:                      # it may have heard "go" and let the process run
        held.stop()
        raise UmigError(
            f"the connection to {host} broke after umig told it to start process {pid}, before "
            f"it said it runs: it may run there; here it is left stopped (SIGSTOP), not killed",
            pid=pid, exit_code=Exit.UNCERTAIN,
            hint=f"look on {host} (ps -p {pid}); if it runs there, kill -9 {pid} here, "
                 f"else kill -CONT {pid} here")
    for problem in held.thaw():
        warn(problem)
    why = target.last or f"ssh exited with status {proc.returncode}"
    raise EnvironmentProblem(f"moving process {pid} to {host} failed: {why}; process {pid} "
                             f"was thawed and goes on here", pid=pid)


def to_file(pid: int, path: str, warn, interrupted=lambda: False,
            progress=lambda now: None, **grab_options) -> capture.GrabStats:
    """`umig migrate PID --to-file img`: the same transaction into a file.
    The image is written under a temporary name, synced, read back from
    the disk with every checksum checked, and only then put in place and
    the source killed; if any of that fails, no file is left and the
    source is thawed."""
    from .image.stream import Output
    if path == "-" or (os.path.exists(path) and not os.path.isfile(path)):
        raise UmigError(f"--to-file needs the path of a regular file, not {path}", path=path,
                        exit_code=Exit.USAGE, hint="to stream an image, use umig grab")
    out = Output(path)
    try:
        try:
            stats = capture.grab(pid, out.fd, finish="hold", interrupted=interrupted,
                                 prepare=out.preallocate, on_complete=out.sync, warn=warn,
                                 progress=progress, write_ahead=out.seekable, **grab_options)
        except BaseException as e:
            out.abort()
            if isinstance(e, UmigError) and not isinstance(e, (NoProcess, Interrupted)):
                e.msg = f"{e.msg}; no image was left, process {pid} was thawed and goes on"
            raise
        try:
            _read_back(out.tmp, path)
            out.place()
        except BaseException as e:
            out.abort()
            for problem in stats.held.thaw():
                warn(problem)
            if isinstance(e, UmigError):
                e.msg = f"{e.msg}; no image was left, process {pid} was thawed and goes on"
            raise
    finally:
        out.close()
    stats.held.kill()
    return stats


def _read_back(tmp: str, path: str) -> None:
    """Read a synced image back from the disk (its cached pages dropped
    first): every record's and chunk's checksum, the records' order and
    the trailer are checked, as resume will."""
    from .image.stream import ImageReader
    from .restore.load import Loaded
    try:
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ImageIOError(f"cannot read back the image {path}: {e.strerror}",
                           path=path) from None
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        for _ in Loaded(ImageReader(fd, what=f"image {path} (read back)")).page_frames():
            pass
    finally:
        os.close(fd)
