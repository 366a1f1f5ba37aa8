"""The files a process has open or maps, by path: checked where it is
resumed, every difference reported at once before anything starts, and,
with `grab --ship-files`, carried in the image (FILE records) and created
where they are missing.  A file that is there but different is never
overwritten."""

from __future__ import annotations

import functools
import os
import stat

import lz4.block

from . import fdtable
from .errors import EnvironmentProblem, Refused
from .image import schema

SHOWN = 4          # problems named in the one-line message
DELETED = " (deleted)"


def _uses(images) -> list[tuple[int, str, str, dict, str]]:
    """(pid, path, kind, record, what) for every file by path the processes
    use: kind "map" (VMA content FILE), "file" (FD of a regular file), "dir"."""
    out = []
    for pid, vmas, fds in images:
        for v in vmas:
            if v["content"] == schema.CONTENT_FILE and not v["path"].endswith(DELETED):
                out.append((pid, v["path"], "map", v,
                            f"mapped at {v['start']:#x} by process {pid}"))
        for f in fds:
            if f["kind"] in ("file", "dir"):
                out.append((pid, f["path"], f["kind"], f, f"fd {f['fd']} of process {pid}"))
    return out


# ---- grab

def ship(members, max_contents: int) -> list[dict]:
    """FILE records for the files the members use (members: (pid, vmas,
    fds)), each file once; refuses one bigger than max_contents."""
    out, seen = [], set()
    for pid, path, kind, rec, what in _uses(members):
        if kind == "dir" or (rec["dev"], rec["ino"]) in seen or pseudo(path):
            continue
        seen.add((rec["dev"], rec["ino"]))
        fd = _open_same(pid, path, kind, rec)
        try:
            st = os.fstat(fd)
            if st.st_size > max_contents:
                raise Refused(f"{path} ({what}) is {st.st_size >> 20} MiB, more than "
                              f"--max-contents-mib ({max_contents >> 20}) allows to ship",
                              pid=pid, path=path, hint="raise --max-contents-mib, or put the "
                                                       "file in place where it is resumed")
            data = os.pread(fd, st.st_size, 0) if st.st_size else b""
        finally:
            os.close(fd)
        out.append({"path": path, "mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid,
                    "size": len(data), "mtime_ns": st.st_mtime_ns, "dev": st.st_dev,
                    "ino": st.st_ino, "lz4": 1, "data": lz4.block.compress(data)})
    return out


def deleted_maps(members, max_contents: int) -> list[dict]:
    """FILE records (path ending " (deleted)") for the deleted files the
    members map and hold no fd of (an fd's record carries the contents
    then), read through /proc/PID/map_files; resume maps the unlinked copy
    it makes of each."""
    by_fd = {(f["dev"], f["ino"]) for _pid, _vmas, fds in members for f in fds
             if f["kind"] == "deleted"}
    out, seen = [], set()
    for pid, vmas, _fds in members:
        for v in vmas:
            key = (v["dev"], v["ino"])
            if v["content"] != schema.CONTENT_FILE or not v["path"].endswith(DELETED) \
                    or key in by_fd or key in seen:
                continue
            seen.add(key)
            try:
                fd = os.open(f"/proc/{pid}/map_files/{v['start']:x}-{v['end']:x}",
                             os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise Refused(f"process {pid} maps a deleted file at {v['start']:#x} "
                              f"({v['path']}); umig reads it through /proc/{pid}/map_files, "
                              f"which it may not: {e.strerror}", pid=pid, path=v["path"],
                              hint="run umig as root") from None
            try:
                st = os.fstat(fd)
                if st.st_size > max_contents:
                    raise Refused(f"process {pid} maps a deleted file at {v['start']:#x} "
                                  f"({v['path']}) of {st.st_size >> 20} MiB, more than "
                                  f"--max-contents-mib ({max_contents >> 20}) allows",
                                  pid=pid, path=v["path"], hint="raise --max-contents-mib")
                data = os.pread(fd, st.st_size, 0) if st.st_size else b""
            finally:
                os.close(fd)
            out.append({"path": v["path"], "mode": st.st_mode, "uid": st.st_uid,
                        "gid": st.st_gid, "size": len(data), "mtime_ns": st.st_mtime_ns,
                        "dev": v["dev"], "ino": v["ino"], "lz4": 1,
                        "data": lz4.block.compress(data)})
    return out


def contents(f: dict) -> bytes:
    """A FILE record's contents."""
    data = lz4.block.decompress(f["data"]) if f["lz4"] else f["data"]
    if len(data) != f["size"]:
        raise EnvironmentProblem(f"the copy of {f['path']} in the image is {len(data)} bytes, "
                                 f"not {f['size']}", path=f["path"])
    return data


PSEUDO_FS = {"proc", "sysfs", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
             "configfs", "bpf", "pstore", "efivarfs", "devpts"}


def pseudo(path: str) -> bool:
    """Whether path is on a kernel's pseudo filesystem (/proc, /sys, ...):
    its files are the host's, not contents to ship, and their sizes mean
    nothing."""
    best, fstype = "", ""
    for point, kind in _mounts():
        if (path == point or path.startswith(point.rstrip("/") + "/")) \
                and len(point) >= len(best):
            best, fstype = point, kind
    return fstype in PSEUDO_FS


@functools.lru_cache(maxsize=1)
def _mounts() -> tuple[tuple[str, str], ...]:
    """(mount point, filesystem type) of this mount namespace, read once."""
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                out.append((left.split()[4].replace("\\040", " "), right.split()[0]))
    except OSError:
        pass
    return tuple(out)


def _open_same(pid: int, path: str, kind: str, rec: dict) -> int:
    """The very file the process uses (its fd through /proc, or the path if
    it is still the mapped inode, else map_files)."""
    if kind == "file":
        return os.open(f"/proc/{pid}/fd/{rec['fd']}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (rec["dev"], rec["ino"]):
            return fd
        os.close(fd)
    except OSError:
        pass
    return os.open(f"/proc/{pid}/map_files/{rec['start']:x}-{rec['end']:x}",
                   os.O_RDONLY | os.O_CLOEXEC)


# ---- resume

def _problem(path: str, kind: str, rec: dict, what: str) -> str | None:
    """What is wrong with path here for this use, or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"{path} ({what}) does not exist on this host"
    except OSError as e:
        return f"{path} ({what}): {e.strerror}"
    if kind == "dir":
        return None if stat.S_ISDIR(st.st_mode) else f"{path} ({what}) is not a directory"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} ({what}) is not a regular file"
    if kind == "map":
        if st.st_size != rec["file_size"] or st.st_mtime_ns != rec["mtime_ns"]:
            return (f"{path} ({what}) differs from the image's: size {st.st_size} vs "
                    f"{rec['file_size']}, mtime {st.st_mtime_ns} vs {rec['mtime_ns']}")
        return None
    if pseudo(path):
        return None            # /proc, /sys: there, and their sizes mean nothing
    if rec["size"] < 0:
        return None            # (umig migrate's probe: it is being written, it may grow)
    grown_by_appends = rec["flags"] & os.O_APPEND and st.st_size >= rec["size"]
    if st.st_size != rec["size"] and not grown_by_appends:
        return f"{path} ({what}) is {st.st_size} bytes, {rec['size']} when grabbed"
    return None


def check_here(images, shipped: list[dict]) -> list[dict]:
    """Refuse, naming every one, if a file the processes use (images:
    (pid, vmas, fds)) is missing or different here and no shipped copy
    stands in for it; returns the shipped files to create."""
    problems, create = problems_here(images, shipped)
    if problems:
        more = f"; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        shipped_clash = any("copy in the image" in p for p in problems)
        raise EnvironmentProblem(
            f"{len(problems)} file{'s' if len(problems) > 1 else ''} the process uses "
            f"{'are' if len(problems) > 1 else 'is'} missing or different here: "
            + "; ".join(problems[:SHOWN]) + more, path=problems[0].split(" (")[0],
            hint="move them out of the way (umig does not overwrite files)" if shipped_clash
            else "put the same files in place, or grab with --ship-files")
    return create


def problems_here(images, shipped: list[dict]) -> tuple[list[str], list[dict]]:
    """What is missing or different here, one line per file, and the
    shipped files that stand in for missing ones."""
    by_path = {f["path"]: f for f in shipped if not f["path"].endswith(DELETED)}
    problems: list[str] = []
    create: dict[str, dict] = {}
    named: set[str] = set()
    for _pid, path, kind, rec, what in _uses(images):
        copy = by_path.get(path)
        if copy is None:
            p = _problem(path, kind, rec, what)
            if p and path not in named:          # each file once, by its first use
                named.add(path)
                problems.append(p)
            continue
        try:
            st = os.stat(path)
        except FileNotFoundError:
            create[path] = copy
            continue
        if st.st_size != copy["size"] or st.st_mtime_ns != copy["mtime_ns"]:
            p = (f"{path} ({what}) is here but differs from the copy in the image "
                 f"({st.st_size} bytes, {copy['size']} shipped, or another mtime)")
            if p not in problems:
                problems.append(p)
    return problems, list(create.values())


def create(files: list[dict]) -> list[str]:
    """Create the shipped files that are missing here (and their
    directories), with their mode, owner and mtime; returns their paths."""
    made = []
    for f in files:
        data = contents(f)
        try:
            os.makedirs(os.path.dirname(f["path"]) or "/", exist_ok=True)
            fd = os.open(f["path"], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         stat.S_IMODE(f["mode"]))
            try:
                fdtable.write_all(fd, data)
                if os.geteuid() == 0:
                    os.fchown(fd, f["uid"], f["gid"])
                os.fchmod(fd, stat.S_IMODE(f["mode"]))
                os.utime(fd, ns=(f["mtime_ns"], f["mtime_ns"]))
            finally:
                os.close(fd)
        except OSError as e:
            raise EnvironmentProblem(f"cannot create {f['path']} from its shipped copy: "
                                     f"{e.strerror}", path=f["path"]) from None
        made.append(f["path"])
    return made
