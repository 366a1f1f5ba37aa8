"""Command line: argument parsing, exit codes, signals, one-line errors.

No capture or restore logic lives here (ARCHITECTURE.md).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import sys
import termios
import traceback

from . import __version__
from .errors import Exit, Interrupted, UmigError


class _Flag:
    """SIGINT/SIGTERM/SIGHUP become an Interrupted exception, so that grab
    and resume stop at once and undo what they did (critical sections,
    umig/critical.py, hold it back until they are consistent).  Once a
    resumed process runs, they are forwarded to it instead (or, with
    --detach, left to it)."""

    def __init__(self):
        self.signal = 0
        self.running = 0        # pid of the resumed process, once it runs
        self.forward = True
        self.tty: int | None = None

    def __call__(self) -> bool:
        return bool(self.signal)

    def on_running(self, pid: int) -> None:
        """Called as the resumed process is let go: it takes over the
        terminal before it can read from it (no SIGTTIN)."""
        self.running = pid
        if self.forward and os.isatty(0):
            try:
                os.tcsetpgrp(0, pid)
                self.tty = 0
            except OSError:
                pass

    def install(self) -> None:
        def handler(sig, _frame):
            if self.running:
                if self.forward:
                    try:
                        os.kill(self.running, sig)
                    except ProcessLookupError:
                        pass
                return
            self.signal = sig
            raise Interrupted(f"interrupted by {signal.Signals(sig).name}")
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, handler)


def _warn(msg: str) -> None:
    print(f"umig: {msg}", file=sys.stderr, flush=True)


def cmd_grab(args) -> int:
    from . import capture
    from .image.stream import Output
    if args.output in (None, "-") and os.isatty(1):
        raise UmigError("refusing to write an image to a terminal", exit_code=Exit.TERMINAL,
                        hint=f"redirect it: umig grab {args.pid} > FILE, or use -o FILE")
    flag = _Flag()
    flag.install()
    out = Output(args.output)
    finish = "running" if args.leave_running else "stopped" if args.leave_stopped else "kill"
    try:
        with _Shown(f"grabbing process {args.pid}", os.isatty(2), "written") as shown:
            stats = capture.grab(args.pid, out.fd, finish=finish, interrupted=flag,
                                 on_complete=out.commit, prepare=out.preallocate, warn=_warn,
                                 progress=shown, write_ahead=out.seekable,
                                 **_grab_kwargs(args))
    except BaseException:
        out.abort()             # never leave a partial image behind
        raise
    finally:
        out.close()
    for w in stats.warnings:
        _warn(w)
    if stats.tcp_locks:
        tables = ", ".join(f"inet {t}" for t in stats.tcp_locks)
        _warn(f"{stats.tcp} TCP connection(s) are held back (nft table {tables}) until umig "
              f"resume takes them on this host; to give them up instead: nft delete table "
              f"{tables.split(', ')[0] if len(stats.tcp_locks) == 1 else 'inet NAME'}")
    if args.verbose or os.isatty(2):
        state = {"kill": "killed", "running": "left running", "stopped": "left stopped"}[finish]
        who = (f"process {stats.pid}" if stats.processes == 1 else
               f"process {stats.pid} and {stats.processes - 1} descendants")
        print(f"umig: grabbed {who}: {stats.image_bytes / 2**20:.1f} MiB image, "
              f"{stats.pages} pages ({stats.data_pages} with data), {stats.vmas} mappings, "
              f"{stats.fds} fds; frozen {stats.frozen_s * 1000:.0f} ms; {state}"
              + (f"; {stats.precopy}" if stats.precopy else ""), file=sys.stderr)
    return 0


def _open_image(path: str) -> int:
    if path == "-":
        return 0
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UmigError(f"no image {path}", path=path, exit_code=Exit.USAGE) from None
    except OSError as e:
        raise UmigError(f"cannot open {path}: {e.strerror}", path=path,
                        exit_code=Exit.USAGE) from None


def cmd_resume(args) -> int:
    from .restore import ResumeOptions, resume
    flag = _Flag()
    flag.forward = not args.detach
    flag.install()
    if args.report:
        _mark("ready")                   # for `umig migrate`: it may freeze its source now
    fd = _open_image(args.image)
    if fd == 0:
        from .migrate import big_pipe
        big_pipe(0)                      # (from ssh: fewer wake-ups per MiB)

    def on_running(pid: int) -> None:
        if args.report:
            # for `umig migrate`, two phases: it says "go" only once it heard
            # we are ready; without it nothing starts here (it may have
            # thawed its source)
            _mark("prepared")
            if _read_go(fd) != b"go":
                raise Interrupted("umig migrate did not say go (its connection broke?): "
                                  "nothing was started")
            _mark("starting")
        flag.on_running(pid)
    try:
        r = resume(fd, ResumeOptions(pid_mode=args.pid, pidns=args.pidns,
                                     image_on_stdin=fd == 0,
                                     warn=_warn, interrupted=flag,
                                     on_running=on_running, followed=args.report))
    finally:
        if fd != 0:
            os.close(fd)
    if args.report:
        _mark(f"running {r.pid}")
    if r.ns_init:
        _warn(f"resumed in a new PID namespace, where it has its pid; pid {r.pid} outside")
    elif not r.same_pid:
        _warn(f"resumed as pid {r.pid} (the image's pid was taken or could not be kept)")
    if args.detach:
        print(r.pid, flush=True)
        return 0
    return _foreground(r.pid, flag.tty, r.terminal_modes)


def _mark(what: str) -> None:
    from .migrate import MARK
    try:
        os.write(2, f"{MARK}{what}\n".encode())
    except OSError:
        pass      # migrate went away: it settles by what it last heard


GO_WAIT_S = 120


def _read_go(fd: int) -> bytes:
    """The line `umig migrate` sends after the image ("go"), or b"" if the
    stream ends or says nothing in GO_WAIT_S."""
    import select
    line = b""
    while not line.endswith(b"\n"):
        if not select.select([fd], [], [], GO_WAIT_S)[0]:
            return b""
        chunk = os.read(fd, 1)
        if not chunk:
            return b""
        line += chunk
    return line.strip()


def _checks_table(host: str, results: list[dict], as_json: bool) -> int:
    """migrate --dry-run: what the target has, check by check."""
    import json
    ok = all(r["ok"] for r in results)
    if as_json:
        print(json.dumps({"host": host, "ok": ok, "checks": results}, indent=1))
    else:
        from rich.console import Console
        from rich.table import Table
        t = Table(title=f"Can {host} take it?")
        for col in ("check", "result", "what was found"):
            t.add_column(col)
        for r in results:
            t.add_row(r["check"], "[green]pass[/green]" if r["ok"] else "[red]FAIL[/red]",
                      r["detail"])
        Console(width=None if os.isatty(1) else 160).print(t)
    return 0 if ok else int(Exit.ENVIRONMENT)


def cmd_probe(args) -> int:
    from .probe import main_probe
    print(main_probe(sys.stdin.buffer.read(), args.pidns), flush=True)
    return 0


def cmd_migrate(args) -> int:
    from . import migrate
    if (args.dest is None) == (args.to_file is None):
        raise UmigError("say where to: a host, or --to-file FILE (not both)",
                        exit_code=Exit.USAGE, hint=f"umig migrate {args.pid} HOST")
    if args.to_file:
        return _migrate_to_file(args)
    if args.tcp_established:
        raise UmigError("--tcp-established does not go through umig migrate yet: the "
                        "connection's address must move with it", exit_code=Exit.USAGE,
                        hint="grab -o FILE --tcp-established and resume it where the "
                             "address is")
    ssh_argv, host = migrate.ssh_command(args.dest, args.ssh, args.port, args.identity,
                                         args.option or [])
    results = migrate.probe(args.pid, ssh_argv, host, args.remote_umig, args.pidns,
                            args.ship_files, args.tree)
    if args.dry_run:
        return _checks_table(host, results, args.json)
    migrate.refuse_unless_ready(args.pid, host, results)
    flag = _Flag()
    flag.install()
    with _Shown(f"process {args.pid} → {host}",
                os.isatty(2) and not args.no_progress) as shown:
        stats, rpid = migrate.migrate(args.pid, args.dest, ssh_argv, host, args.remote_umig,
                                      args.detach, _warn, interrupted=flag, pidns=args.pidns,
                                      progress=shown, **_grab_kwargs(args))
    _summary(args, stats, f"moved process {args.pid} to {host} (pid {rpid} there)", host=host,
             pid_there=rpid)
    if args.json:
        return 0 if args.detach else (getattr(stats, "remote_status", 0) or 0)
    if args.detach:
        print(rpid, flush=True)
        return 0
    return getattr(stats, "remote_status", 0) or 0


def _migrate_to_file(args) -> int:
    from . import migrate
    if args.dry_run or args.detach or args.pidns:
        raise UmigError("--dry-run, --detach and --pidns are for a host, not --to-file",
                        exit_code=Exit.USAGE)
    flag = _Flag()
    flag.install()
    with _Shown(f"process {args.pid} → {args.to_file}",
                os.isatty(2) and not args.no_progress, "written") as shown:
        stats = migrate.to_file(args.pid, args.to_file, _warn, interrupted=flag,
                                progress=shown, **_grab_kwargs(args))
    for w in stats.warnings:
        _warn(w)
    _summary(args, stats, f"checkpointed process {args.pid} into {args.to_file}",
             file=args.to_file)
    return 0


def _summary(args, stats, where: str, **about) -> None:
    """migrate's last word: a line on a terminal (or -v), or --json."""
    memory = stats.data_pages * 4096
    summary = {"pid": args.pid, **about,
               "frozen_ms": round(stats.frozen_s * 1000, 1), "sent_bytes": stats.image_bytes,
               "memory_bytes": memory, "wall_s": round(stats.wall_s, 3),
               "ratio": round(memory / stats.image_bytes, 2) if stats.image_bytes else None,
               "memory_per_s": round(memory / stats.wall_s) if stats.wall_s else None}
    if args.json:
        print(json.dumps(summary), flush=True)
    elif args.verbose or os.isatty(2) or args.detach:
        rate = f", {memory / stats.wall_s / 2**20:.0f} MiB/s of memory" if stats.wall_s else ""
        ratio = f" ({summary['ratio']}x compressed)" if summary["ratio"] else ""
        verb = "written" if "file" in about else "sent"
        print(f"umig: {where}: "
              f"{stats.image_bytes / 2**20:.1f} MiB {verb}{ratio}, frozen "
              f"{stats.frozen_s * 1000:.0f} ms, {stats.wall_s:.2f} s in all{rate}",
              file=sys.stderr)


class _Shown:
    """grab's progress (capture.Progress) as a live line on stderr, a
    terminal: bytes sent, rate, pages left, time frozen so far.  Nothing
    is shown when `on` is false; the line goes when the work ends."""

    PHASES = {"pre-reading": "reading ahead (it runs)", "frozen": "frozen",
              "written": "image written", "starting": "starting it there"}

    def __init__(self, what: str, on: bool, verb: str = "sent"):
        self.what, self.on, self.verb = what, on, verb
        self.live = None
        self.now = None
        self.phase = ("", 0)
        self.sent_from = (0.0, 0)       # (time, bytes) where the rate is counted from

    def __enter__(self):
        if self.on:
            from rich.console import Console
            from rich.live import Live
            try:
                width = os.get_terminal_size(2).columns or None
            except OSError:
                width = None
            self.live = Live(self, console=Console(stderr=True, width=width), transient=True,
                             refresh_per_second=8)
            self.live.start()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.stop()
        return False

    def __call__(self, now) -> None:
        import time
        self.now = now
        if (now.phase, now.pages_total) != self.phase:    # (grab changes one in place)
            if now.phase != self.phase[0]:
                self.sent_from = (time.perf_counter(), now.image_bytes)
            self.phase = (now.phase, now.pages_total)
            if self.live:
                self.live.refresh()        # each phase is shown, however short

    def __rich__(self):
        import time
        from rich.text import Text
        now = self.now
        if now is None:
            return Text(f"starting · {self.what}", style="dim")
        t = time.perf_counter()
        parts = [self.PHASES.get(now.phase, now.phase)]
        if now.phase in ("frozen", "written", "starting"):
            t0, b0 = self.sent_from
            rate = (now.image_bytes - b0) / (t - t0) if t > t0 else 0
            parts.append(f"{now.image_bytes / 2**20:.1f} MiB {self.verb}")
            if now.phase == "frozen":
                parts.append(f"{rate / 2**20:.0f} MiB/s")
        if now.phase in ("pre-reading", "frozen") and now.pages_total:
            parts.append(f"{now.pages_total - now.pages_done} of {now.pages_total} "
                         f"pages left")
        if now.frozen_at:
            parts.append(f"frozen {(t - now.frozen_at) * 1000:.0f} ms")
        parts.append(self.what)         # last: a long path may be cut short
        return Text(" · ".join(parts), no_wrap=True, overflow="ellipsis")


def _foreground(pid: int, tty: int | None, own_modes: bytes | None) -> int:
    """Wait for the resumed process like a shell waits for a job: it owns the
    terminal, our SIGINT/SIGTERM/SIGHUP go to it (_Flag), its status is ours.
    When it stops (Ctrl-Z, or reading the terminal in the background), so
    do we, with the terminal and its settings back as we had them, and our
    shell sees its job stopped; when the shell continues us (fg, bg), we
    continue it, in the foreground again if the shell gave us the terminal.
    own_modes: our terminal's settings and window size (termios + winsize)
    before the process's were put on it."""
    job_modes = None
    try:
        while True:
            try:
                # without a terminal there is no job control to take part in
                _, status = os.waitpid(pid, os.WUNTRACED if tty is not None else 0)
            except InterruptedError:
                continue
            if not os.WIFSTOPPED(status):
                break
            job_modes = _tty_call(lambda: _modes(tty))
            _take_back(tty, pid, own_modes)
            os.kill(os.getpid(), signal.SIGSTOP)          # our shell: "Stopped"
            if _tty_call(lambda: os.tcgetpgrp(tty)) == os.getpgrp():
                if job_modes:
                    _tty_call(lambda: _set_modes(tty, job_modes))
                _tty_call(lambda: os.tcsetpgrp(tty, pid))   # fg: it owns the terminal again
            try:
                os.killpg(pid, signal.SIGCONT)
            except ProcessLookupError:
                os.kill(pid, signal.SIGCONT)
    finally:
        _take_back(tty, pid, own_modes)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _modes(tty: int) -> bytes:
    from .fdtable import TCGETS, TERMIOS_SIZE, TIOCGWINSZ, WINSIZE_SIZE
    return fcntl.ioctl(tty, TCGETS, bytes(TERMIOS_SIZE)) + fcntl.ioctl(
        tty, TIOCGWINSZ, bytes(WINSIZE_SIZE))


def _set_modes(tty: int, modes: bytes) -> None:
    from .fdtable import TCSETSW, TERMIOS_SIZE, TIOCSWINSZ
    fcntl.ioctl(tty, TCSETSW, modes[:TERMIOS_SIZE])
    if len(modes) > TERMIOS_SIZE:
        fcntl.ioctl(tty, TIOCSWINSZ, modes[TERMIOS_SIZE:])


def _take_back(tty: int | None, pid: int, own_modes: bytes | None) -> None:
    """The terminal back to our process group, with our settings and size,
    if the process (its group) has it: never from whoever else has it (our
    shell, when we run in the background)."""
    if tty is None or _tty_call(lambda: os.tcgetpgrp(tty)) not in (pid, os.getpgrp(), 0):
        return
    _tty_call(lambda: os.tcsetpgrp(tty, os.getpgrp()))
    if own_modes:
        _tty_call(lambda: _set_modes(tty, own_modes))


def _tty_call(fn):
    """fn on our terminal, which we may not own (SIGTTOU ignored meanwhile);
    None if it fails."""
    old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        return fn()
    except (OSError, termios.error):
        return None
    finally:
        signal.signal(signal.SIGTTOU, old)


def cmd_info(args) -> int:
    from .image import info
    fd = _open_image(args.image)
    try:
        return info.show(fd, as_json=args.json)
    finally:
        if fd != 0:
            os.close(fd)


def cmd_check(args) -> int:
    from . import check
    return check.main(as_json=args.json)


def _grab_options(p: argparse.ArgumentParser) -> None:
    """What grab and migrate share: how the process is read."""
    p.add_argument("--preread", choices=("auto", "on", "off"), default="auto",
                   help="read and compress memory before freezing the process and keep "
                        "what it does not write meanwhile (auto: from 16 MiB resident)")
    p.add_argument("--tree", action="store_true",
                   help="grab the process and all its descendants together")
    p.add_argument("--max-contents-mib", type=int, default=16, metavar="MIB",
                   help="carry the contents of files deleted while open and of memfds up "
                        "to this size each (default 16; they are held in memory while "
                        "grabbing)")
    p.add_argument("--ship-files", action="store_true",
                   help="carry the files the process has open or maps (its program and "
                        "libraries too) in the image: resume creates them where they are "
                        "missing (each up to --max-contents-mib)")
    p.add_argument("--external-pipes", choices=("refuse", "devnull"), default="refuse",
                   help="a pipe at fd 3 or above whose other end a process outside holds: "
                        "refuse (default), or give the resumed process /dev/null there "
                        "(reads see end of file, writes are thrown away)")
    p.add_argument("--tcp-established", action="store_true",
                   help="take established TCP connections too (TCP_REPAIR; needs root and "
                        "nft; resume where the connection's address is): their packets are "
                        "held back until umig resume has them, so peers see a delay, not a "
                        "reset")


def _grab_kwargs(args) -> dict:
    return {"preread": args.preread, "tree": args.tree,
            "max_contents": args.max_contents_mib << 20, "ship_files": args.ship_files,
            "external_pipes": args.external_pipes, "tcp_established": args.tcp_established}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="umig", description="Move running Linux processes: "
                                "grab one into an image stream, resume it anywhere.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"umig {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("grab", help="checkpoint a process into an image (stdout or -o)")
    g.add_argument("pid", type=int)
    g.add_argument("-o", "--output", metavar="FILE", help="write the image here, not stdout")
    how = g.add_mutually_exclusive_group()
    how.add_argument("--leave-running", action="store_true",
                     help="let the process carry on after the image is written")
    how.add_argument("--leave-stopped", action="store_true",
                     help="leave the process stopped (SIGSTOP) after the image is written")
    _grab_options(g)
    g.add_argument("-v", "--verbose", action="store_true", help="print a summary line")
    g.set_defaults(func=cmd_grab)

    r = sub.add_parser("resume", help="rebuild a process from an image and run it")
    r.add_argument("image", help="image file, or - for stdin")
    r.add_argument("--pid", choices=("auto", "keep", "new"), default="auto",
                   help="keep the image's pid (keep: or fail), or take a new one")
    r.add_argument("--pidns", action="store_true",
                   help="rebuild it in a new user + PID namespace, where all its pids and "
                        "tids are free (no root needed); automatic for a plain user when "
                        "ids must be kept")
    r.add_argument("--detach", action="store_true",
                   help="print the pid and return at once instead of waiting")
    r.set_defaults(func=cmd_resume)

    r.add_argument("--report", action="store_true",
                   help="say on stderr, in marker lines, when the process is let go and "
                        "when it runs (for umig migrate)")

    m = sub.add_parser("migrate", help="move a process to another host over ssh, as one "
                                       "transaction: killed here only once it runs there")
    m.add_argument("pid", type=int)
    m.add_argument("dest", metavar="[user@]host[:port]", nargs="?",
                   help="where to (or --to-file)")
    m.add_argument("--to-file", metavar="FILE",
                   help="checkpoint into a file instead, as the same transaction: the "
                        "process is killed only once the image is synced and read back "
                        "whole from the disk")
    m.add_argument("--ssh", metavar="CMD", help="the ssh command to use (default: ssh)")
    m.add_argument("-p", "--port", type=int, help="ssh port")
    m.add_argument("-i", "--identity", metavar="FILE", help="ssh identity file")
    m.add_argument("-o", "--option", action="append", metavar="OPTION",
                   help="ssh -o option (repeatable)")
    m.add_argument("--remote-umig", default="umig", metavar="CMD",
                   help="how to run umig on the target (default: umig)")
    m.add_argument("--detach", action="store_true",
                   help="do not carry the process's output back: print its pid there and "
                        "return once it runs")
    m.add_argument("--pidns", action="store_true",
                   help="resume it in a new PID namespace there (its pids need not be free)")
    m.add_argument("--dry-run", action="store_true",
                   help="only check the target (umig, CPU features, files, pids) and print "
                        "what passes and fails; nothing is frozen")
    m.add_argument("--json", action="store_true",
                   help="the checks (--dry-run) or the summary as JSON, for scripts")
    m.add_argument("-v", "--verbose", action="store_true", help="print a summary line")
    m.add_argument("--no-progress", action="store_true",
                   help="no progress display (it is shown when stderr is a terminal)")
    _grab_options(m)
    m.set_defaults(func=cmd_migrate)

    pr = sub.add_parser("probe", help="(run by umig migrate on a target) check what a process "
                                      "described as JSON on stdin needs here")
    pr.add_argument("--pidns", action="store_true")
    pr.set_defaults(func=cmd_probe)

    i = sub.add_parser("info", help="show what is in an image")
    i.add_argument("image", help="image file, or - for stdin")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=cmd_info)

    c = sub.add_parser("check", help="probe the kernel features umig relies on")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(func=cmd_check)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return Exit.USAGE if e.code not in (0, None) else 0
    try:
        return args.func(args)
    except UmigError as e:
        if args.debug:
            traceback.print_exc()
        print(f"umig: {e.line()}", file=sys.stderr)
        return int(e.exit_code)
    except KeyboardInterrupt:
        print("umig: interrupted", file=sys.stderr)
        return Exit.INTERRUPTED
    except Exception as e:  # a bug: say so in one line unless --debug
        if args.debug:
            traceback.print_exc()
        print(f"umig: internal error: {type(e).__name__}: {e} (run with --debug and report "
              f"it)", file=sys.stderr)
        return Exit.INTERNAL


if __name__ == "__main__":
    sys.exit(main())
