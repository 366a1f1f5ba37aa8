"""What resume checks before it starts anything: the image was made for a
machine like this one and resuming gives nobody privileges they did not
have (the files it uses: umig/files.py)."""

from __future__ import annotations

import os
import platform

from .. import cpu, procfs
from ..errors import EnvironmentProblem, Incompatible, UmigError
from ..native import PAGE

CAP_SYS_ADMIN, CAP_CHECKPOINT_RESTORE = 21, 40


def own_caps() -> int:
    return int(procfs.parse_status(procfs.read("self", "status"))["CapEff"], 16)


def can_checkpoint_restore() -> bool:
    caps = own_caps()
    return bool(caps >> CAP_SYS_ADMIN & 1 or caps >> CAP_CHECKPOINT_RESTORE & 1)


def check_machine(header: dict) -> None:
    if header["arch"] != platform.machine():
        raise Incompatible(f"the image is of an {header['arch']} process; this host is "
                           f"{platform.machine()}")
    if header["page_size"] != PAGE:
        raise Incompatible(f"the image has {header['page_size']}-byte pages; this host uses "
                           f"{PAGE}")
    missing = cpu.missing(header["xcr0"], set(header["cpu_flags"].split()))
    if missing:
        raise Incompatible(f"the image was made on a CPU with {', '.join(missing)}, which "
                           f"this CPU lacks", hint="resume it on a host with those features")
    if header["xsave_size"] > cpu.xsave_size():
        raise Incompatible(f"the image's XSAVE area is {header['xsave_size']} bytes, this "
                           f"CPU's is {cpu.xsave_size()}")


def check_creds(creds: dict) -> bool:
    """Whether the restorer must set credentials; refuses what a plain user
    may not become."""
    mine = procfs.parse_status(procfs.read("self", "status"))
    uids = [int(x) for x in mine["Uid"].split()]
    gids = [int(x) for x in mine["Gid"].split()]
    groups = sorted(int(g) for g in mine.get("Groups", "").split())
    want_u = [creds["uid"], creds["euid"], creds["suid"], creds["fsuid"]]
    want_g = [creds["gid"], creds["egid"], creds["sgid"], creds["fsgid"]]
    want_groups = sorted(g["gid"] for g in creds["groups"])
    same = (uids == want_u and gids == want_g and groups == want_groups
            and int(mine["CapEff"], 16) == creds["cap_eff"]
            and int(mine["CapPrm"], 16) == creds["cap_prm"]
            and int(mine["CapBnd"], 16) == creds["cap_bnd"])
    if same:
        return False
    if os.geteuid() == 0:
        return True
    # a plain user: only an image of this very user, with no privileges
    if any(u != uids[0] for u in want_u) or any(g != gids[0] for g in want_g):
        who = "root" if 0 in want_u else f"uid {creds['uid']}"
        setuid = " (set-uid)" if len(set(want_u)) > 1 else ""
        raise EnvironmentProblem(
            f"the image is of a process of {who}{setuid}; resuming it as uid {uids[0]} "
            f"would not restore its credentials", hint="resume it as root or as that user")
    if creds["cap_eff"] or creds["cap_prm"] or creds["cap_amb"]:
        raise EnvironmentProblem(
            f"the image's process held capabilities {creds['cap_eff']:#x}; a plain user "
            f"cannot give them back", hint="resume it as root")
    return False


def pid_state(pid: int) -> str | None:
    """The state letter of pid, or None if free."""
    try:
        return procfs.parse_stat(procfs.read(pid, "stat"))[2]
    except (UmigError, OSError):
        return None


def userns_possible() -> bool:
    """Whether this user may make a user namespace (Debian's switch, and
    the count limit)."""
    for path, bad in (("/proc/sys/kernel/unprivileged_userns_clone", "0"),
                      ("/proc/sys/user/max_user_namespaces", "0")):
        try:
            with open(path) as f:
                if f.read().strip() == bad and os.geteuid() != 0:
                    return False
        except OSError:
            pass
    return True
