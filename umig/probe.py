"""Checks of a target before `umig migrate` freezes anything (and all that
`migrate --dry-run` does): what the source needs is described here, without
stopping it, and `umig probe` on the target says, check by check, whether
it has it.  The description and the answer are JSON over ssh."""

from __future__ import annotations

import json
import os
import stat

from . import __version__, procfs
from .errors import Incompatible, UmigError
from .image import schema


def describe(pid: int, ship_files: bool = False, tree: bool = False) -> dict:
    """What the target must offer process pid (read from /proc; it runs on).
    ship_files: the image will carry the files it uses (grab --ship-files),
    so a missing one is no problem there (a different one still is).  tree:
    the pids and tids of its descendants must be free there too (their
    files are checked by resume)."""
    from .capture import descendants, header_record
    try:
        maps = procfs.parse_maps(procfs.read(pid, "maps"))
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except (OSError, UmigError) as e:
        raise UmigError(f"cannot look at process {pid}: {e}", pid=pid) from None
    if tree:
        kids, zombies = descendants(pid)
        for k in kids:
            try:
                tids += [int(t) for t in os.listdir(f"/proc/{k}/task")]
            except OSError:
                pass              # ended meanwhile
        tids = sorted(set(tids + zombies))
    vmas, seen = [], set()
    for v in maps:
        if not v.path.startswith("/") or v.deleted or v.path in seen or v.inode == 0:
            continue
        seen.add(v.path)
        try:
            st = os.stat(f"/proc/{pid}/map_files/{v.start:x}-{v.end:x}")
        except OSError:
            try:
                st = os.stat(v.path)
            except OSError:
                continue
        vmas.append({"content": schema.CONTENT_FILE, "path": v.path, "start": v.start,
                     "file_size": st.st_size, "mtime_ns": st.st_mtime_ns})
    fds = []
    for n in sorted(int(x) for x in os.listdir(f"/proc/{pid}/fd")):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{n}")
            st = os.stat(f"/proc/{pid}/fd/{n}")
            flags = int(procfs.parse_fdinfo(procfs.read(pid, f"fdinfo/{n}")).get("flags", "0"),
                        8)
        except (OSError, UmigError):
            continue
        if target.startswith("/") and not target.endswith(" (deleted)") and (
                stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)) and \
                not target.startswith("/proc/"):
            # a file it writes grows while it runs: only its presence is checked
            writing = flags & os.O_ACCMODE != os.O_RDONLY
            fds.append({"fd": n, "kind": "file" if stat.S_ISREG(st.st_mode) else "dir",
                        "path": target, "size": -1 if writing else st.st_size,
                        "flags": flags})
    return {"umig": __version__, "format": schema.FORMAT_VERSION, "header": header_record(pid),
            "pid": pid, "tids": tids, "vmas": vmas, "fds": fds, "ship_files": ship_files}


def check(want: dict, pidns: bool = False) -> list[dict]:
    """On the target: each check, ok or not, with what it found."""
    from . import files
    from .restore import checks
    out = []

    def add(name: str, ok: bool, detail: str) -> None:
        out.append({"check": name, "ok": ok, "detail": detail})
    add("umig", want["format"] in schema.READABLE_VERSIONS,
        f"umig {__version__} here reads image format "
        f"{', '.join(map(str, schema.READABLE_VERSIONS))}; the source writes "
        f"{want['format']} (umig {want['umig']})")
    try:
        checks.check_machine(want["header"])
        add("cpu", True, f"{want['header']['arch']}, the source's XSAVE features are here too")
    except Incompatible as e:
        add("cpu", False, e.msg)
    shipped = []
    if want.get("ship_files"):
        # the image will carry them: those missing here are made from it
        uses = [v["path"] for v in want["vmas"]] + [f["path"] for f in want["fds"]
                                                    if f["kind"] == "file"]
        shipped = [{"path": p, "size": 0, "mtime_ns": 0} for p in dict.fromkeys(uses)
                   if not os.path.lexists(p)]
    problems, _ = files.problems_here([(want["pid"], want["vmas"], want["fds"])], shipped)
    n = len(want["vmas"]) + len(want["fds"])
    add("files", not problems, "; ".join(problems) if problems else
        f"all {n} files it maps or has open are here, the same"
        + (f" (or shipped: {len(shipped)} missing here come with the image)" if shipped else ""))
    taken = [t for t in want["tids"] if checks.pid_state(t) is not None]
    add("pids", pidns or not taken,
        (f"taken here: {', '.join(map(str, taken))}" + (" (fine: --pidns)" if pidns else ""))
        if taken else f"{want['pid']} and its {len(want['tids']) - 1} other thread and process "
                      f"ids are free")
    return out


def main_probe(stdin: bytes, pidns: bool) -> str:
    try:
        want = json.loads(stdin)
    except ValueError:
        raise UmigError("umig probe reads the JSON `umig migrate` sends on stdin") from None
    return json.dumps(check(want, pidns))
