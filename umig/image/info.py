"""`umig info`: what an image holds, as tables for people or JSON for tools.

The stream is read once, front to back, with ImageReader (it may be a pipe).
Nothing is printed until the trailer is verified: a bad image raises the
reader's BadImage/Incompatible and the CLI prints that one line.  Pages are
never looked at one by one: each run of a PAGES record is added to per-VMA
counters.  The JSON shape is documented in docs/image-format.md; keep it
stable.
"""

from __future__ import annotations

import bisect
import datetime
import json
import os
import struct
import sys

from .. import cpu, tracing
from ..errors import BadImage
from . import schema
from .stream import ImageReader, decode_pages

RUN = struct.Struct("<QII")          # schema.PAGES runs item: addr, npages, kind
RUN_ZERO = 1                         # = UMIG_RUN_ZERO: the run carries no bytes
JSON_MAX_RUNS = 64                   # PAGES runs are listed in JSON below this many
RLIM_INFINITY = (1 << 64) - 1
SS_DISABLE = 2
SIG_IGN = 1

RLIMIT_NAMES = ("CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "NOFILE",
                "MEMLOCK", "AS", "LOCKS", "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO",
                "RTTIME")
ITIMER_NAMES = ("ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF")
CONTENT_NAMES = ("none", "pages", "file")
# x86_64 kernel values, as /proc/PID/fdinfo reports them; O_SYNC before O_DSYNC
O_FLAGS = ((0o2000, "O_APPEND"), (0o4000, "O_NONBLOCK"), (0o4010000, "O_SYNC"),
           (0o10000, "O_DSYNC"), (0o20000, "O_ASYNC"), (0o40000, "O_DIRECT"),
           (0o100000, "O_LARGEFILE"), (0o200000, "O_DIRECTORY"), (0o400000, "O_NOFOLLOW"),
           (0o1000000, "O_NOATIME"), (0o10000000, "O_PATH"), (0o20000000, "O_TMPFILE"))
SA_FLAGS = ((0x1, "SA_NOCLDSTOP"), (0x2, "SA_NOCLDWAIT"), (0x4, "SA_SIGINFO"),
            (0x04000000, "SA_RESTORER"), (0x08000000, "SA_ONSTACK"),
            (0x10000000, "SA_RESTART"), (0x40000000, "SA_NODEFER"),
            (0x80000000, "SA_RESETHAND"))
REG = {name: i for i, name in enumerate(tracing.REG_NAMES)}


class Scan:
    """Everything `umig info` shows, gathered in one pass."""

    def __init__(self, keep_json: bool):
        self.keep_json = keep_json
        self.entries: list[dict] = []            # the JSON "records"
        self.state: dict[str, list[dict]] = {}   # decoded non-PAGES records by name
        self.vmas: list[dict] = []
        self.vma_pages: list[int] = []
        self.vma_zero: list[int] = []
        self._index: tuple[list[int], list[int], list[int]] | None = None
        self.page_size = 4096
        self.frames = self.page_records = self.pages = self.zero_pages = 0
        self.outside = self.data_bytes = self.raw_bytes = self.pad_bytes = 0
        self.pad_records = 0

    def add(self, frame) -> None:
        self.frames += 1
        if frame.tag == schema.PAGES.tag:
            values = self._pages(frame)
        elif frame.tag == schema.PAD.tag:
            values = {"bytes": len(frame.payload)}      # what it fills, not the zeros
            self.pad_bytes += len(frame.payload)
            self.pad_records += 1
        else:
            values = frame.decode()
            self.state.setdefault(frame.name, []).append(values)
            if frame.tag == schema.HEADER.tag:
                self.page_size = values["page_size"] or 4096
            elif frame.tag == schema.VMA.tag:
                self.vmas.append(values)
                self.vma_pages.append(0)
                self.vma_zero.append(0)
                self._index = None
        if self.keep_json:
            self.entries.append({"index": frame.index, "offset": frame.offset,
                                 "tag": frame.tag, "name": frame.name,
                                 "values": _jsonable(values)})

    def _pages(self, frame) -> dict:
        round_, flags, raw_len, runs, data = decode_pages(frame)
        nruns = len(runs) // RUN.size
        self.page_records += 1
        self.data_bytes += len(data)
        self.raw_bytes += raw_len
        listed = []
        for addr, npages, kind in RUN.iter_unpack(runs):
            self.pages += npages
            if kind == RUN_ZERO:
                self.zero_pages += npages
            self._count(addr, npages, kind == RUN_ZERO)
            if self.keep_json and nruns < JSON_MAX_RUNS:
                listed.append({"addr": addr, "npages": npages, "kind": kind})
        out = {"round": round_, "flags": flags, "raw_len": raw_len, "nruns": nruns,
               "data_len": len(data)}
        if nruns < JSON_MAX_RUNS:
            out["runs"] = listed
        return out

    def _count(self, addr: int, npages: int, zero: bool) -> None:
        """Add a run to the VMAs it covers (a run may span adjacent VMAs)."""
        if self._index is None:
            order = sorted(range(len(self.vmas)), key=lambda i: self.vmas[i]["start"])
            self._index = (order, [self.vmas[i]["start"] for i in order],
                           [self.vmas[i]["end"] for i in order])
        order, starts, ends = self._index
        ps = self.page_size
        while npages > 0:
            i = bisect.bisect_right(starts, addr) - 1
            if i >= 0 and addr < ends[i]:
                take = min(npages, max(1, (ends[i] - addr) // ps))
                self.vma_pages[order[i]] += take
                if zero:
                    self.vma_zero[order[i]] += take
            else:
                nxt = starts[i + 1] if i + 1 < len(starts) else addr + npages * ps
                take = min(npages, max(1, (nxt - addr) // ps))
                self.outside += take
            addr += take * ps
            npages -= take

    def finish(self, reader: ImageReader) -> None:
        t = reader.trailer
        for what, mine in (("page_records", self.page_records), ("pages", self.pages),
                           ("data_bytes", self.data_bytes)):
            if t[what] != mine:
                raise BadImage(f"the trailer counts {t[what]} {what.replace('_', ' ')}, the "
                               f"PAGES records hold {mine}")
        self.image_bytes = reader.offset
        self.records = t["records"] + 1            # the trailer counts those before it
        self.skipped = t["records"] - self.frames  # unknown optional kinds
        if self.keep_json:
            size = 12 + len(schema.TRAILER.encode(t)) + len(t.get("_extra", b""))
            self.entries.append({"index": t["records"], "offset": reader.offset - size,
                                 "tag": schema.TRAILER.tag, "name": "TRAILER",
                                 "values": _jsonable(t)})

    def summary(self) -> dict:
        return {
            "records": self.records, "skipped_records": self.skipped,
            "page_records": self.page_records, "pages": self.pages,
            "data_pages": self.pages - self.zero_pages, "zero_pages": self.zero_pages,
            "pages_outside_vmas": self.outside, "data_bytes": self.data_bytes,
            "raw_bytes": self.raw_bytes,
            "ratio": round(self.raw_bytes / self.data_bytes, 3) if self.data_bytes else None,
            "rounds_complete": [r["round"] for r in self.state.get("ROUND_END", [])],
            "pad_records": self.pad_records, "pad_bytes": self.pad_bytes,
            "image_bytes": self.image_bytes, "trailer_verified": True}


def show(fd: int, as_json: bool) -> int:
    reader = ImageReader(fd)
    scan = Scan(keep_json=as_json)
    for frame in reader:
        scan.add(frame)
    scan.finish(reader)
    try:
        if as_json:
            doc = {"format_version": reader.version, "records": scan.entries,
                   "summary": scan.summary()}
            sys.stdout.write(json.dumps(doc, indent=1) + "\n")
        else:
            _render(scan, reader.version)
        sys.stdout.flush()
    except BrokenPipeError:         # `umig info img | head`: the reader has enough
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 0


# ---------------------------------------------------------------- formatting

def _text(s: str) -> str:
    """A str field printable anywhere: bytes that were not UTF-8 (kept by the
    schema as surrogate escapes) are shown as \\xNN."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _jsonable(v):
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, str):
        return _text(v)
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{int(n)} {unit}" if n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # pragma: no cover


def _time(ns: int) -> str:
    if not ns:
        return "-"
    return datetime.datetime.fromtimestamp(ns / 1e9).astimezone().isoformat(timespec="seconds")


def _sigset(mask: int) -> str:
    sigs = [s for s in range(1, 65) if mask >> (s - 1) & 1]
    if not sigs:
        return "none"
    if len(sigs) > 32:
        rest = [s for s in range(1, 65) if not mask >> (s - 1) & 1]
        return "all" if not rest else "all but " + " ".join(map(tracing.signal_name, rest))
    return " ".join(map(tracing.signal_name, sigs))


def _prot(prot: int, flags: int = 0) -> str:
    return ("r" if prot & 1 else "-") + ("w" if prot & 2 else "-") + \
        ("x" if prot & 4 else "-") + ("s" if flags & schema.VMA_SHARED else "p")


def _bits(value: int, table) -> list[str]:
    out = []
    for bit, name in table:
        if value & bit == bit:
            out.append(name)
            value &= ~bit
    if value:
        out.append(hex(value))
    return out


def _fd_flags(flags: int, cloexec: int) -> str:
    acc = ("O_RDONLY", "O_WRONLY", "O_RDWR", "O_ACCMODE")[flags & 3]
    return "|".join([acc, *_bits(flags & ~3, O_FLAGS)] + (["O_CLOEXEC"] if cloexec else []))


def _value(f: schema.F, v) -> str:
    """A field as `umig info` shows it, by its schema hint."""
    if f.show == "hex":
        return hex(v)
    if f.show == "size":
        return _size(len(v) if isinstance(v, (bytes, memoryview)) else v)
    if f.show == "time":
        return _time(v)
    if f.show == "sigmask":
        return _sigset(v)
    if f.show == "prot":
        return _prot(v)
    if f.show == "bytes" or isinstance(v, bytes):
        return f"{len(v)} bytes"
    if isinstance(v, list):
        return f"{len(v)} items"
    return str(v)


def _render(scan: Scan, version: int) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    con = Console(highlight=False, width=None if sys.stdout.isatty() else 160)

    def broken_pipe() -> None:      # rich would exit(1) here; show() handles it
        raise BrokenPipeError
    con.on_broken_pipe = broken_pipe

    def table(title: str, columns, rows) -> None:
        if not rows:
            con.print(Text(f"{title}: none"))
            return
        t = Table(title=Text(_text(title)), title_justify="left", show_header=bool(columns[0]))
        for c in columns:
            t.add_column(c, overflow="fold",
                         justify="right" if c in ("fd", "size", "pages", "zero") else "left")
        for r in rows:
            t.add_row(*(Text(_text(str(c))) for c in r))
        con.print(t)

    def kv(title: str, rows) -> None:
        table(title, ("", ""), rows)

    def one(name: str) -> dict:
        return scan.state.get(name, [{}])[0]

    h = one("HEADER")
    kv("Image", h and [
        ("arch", h["arch"]), ("kernel", h["kernel"]), ("host", h["hostname"]),
        ("time", _time(h["time_ns"])), ("umig version", h["umig_version"]),
        ("format version", version), ("page size", h["page_size"]),
        ("xcr0", f"{h['xcr0']:#x} ({' '.join(cpu.feature_names(h['xcr0']))})"),
        ("xsave size", f"{h['xsave_size']} bytes"), ("grabbed by uid", h["uid"])])

    procs, zombies = scan.state.get("PROCESS", []), scan.state.get("ZOMBIE", [])
    if len(procs) > 1 or zombies:
        table("Process tree", ("pid", "ppid", "pgid", "sid", "threads", "state", "comm"),
              _tree_rows(procs, zombies))

    p, c = one("PROCESS"), one("CREDS")
    rows = [("pid", p.get("pid")), ("ppid", p.get("ppid")),
            ("pgid / sid", f"{p.get('pgid')} / {p.get('sid')}"),
            ("threads", p.get("nthreads")), ("comm", p.get("comm")), ("exe", p.get("exe")),
            ("cmdline", p.get("cmdline", b"").rstrip(b"\0").replace(b"\0", b" ")
             .decode("utf-8", "replace")),
            ("cwd", p.get("cwd")), ("umask", f"{p.get('umask', 0):04o}")]
    if c:
        ids = lambda k: " ".join(str(c[pre + k]) for pre in ("", "e", "s", "fs"))  # noqa: E731
        rows += [("uid (r e s fs)", ids("uid")), ("gid (r e s fs)", ids("gid")),
                 ("groups", " ".join(str(g["gid"]) for g in c["groups"]) or "none"),
                 ("capabilities", f"eff {c['cap_eff']:#x} prm {c['cap_prm']:#x} "
                  f"inh {c['cap_inh']:#x} amb {c['cap_amb']:#x}")]
    kv("Process", rows if p else [])

    for name in ("MM", "VDSO"):
        rec = schema.BY_NAME[name]
        for values in scan.state.get(name, []):
            kv(name, [(f.name, _value(f, values[f.name])) for f in rec.fields
                      if f.show != "hidden"])

    table("Memory map", ("start-end", "size", "prot", "kind", "content", "pages", "zero",
                         "path"),
          [(f"{v['start']:x}-{v['end']:x}", _size(v["end"] - v["start"]),
            _prot(v["prot"], v["flags"]),
            schema.VMA_KIND_NAMES[v["kind"]] if v["kind"] < len(schema.VMA_KIND_NAMES)
            else v["kind"], CONTENT_NAMES[v["content"]] if v["content"] < 3 else v["content"],
            scan.vma_pages[i], scan.vma_zero[i], v["path"])
           for i, v in enumerate(scan.vmas)])

    for t in scan.state.get("THREAD", []):
        regs = t["regs"]
        orig = regs[REG["orig_rax"]]
        kv(f"Thread {t['tid']} ({t['comm']})", [
            ("rip", hex(regs[REG["rip"]])), ("rsp", hex(regs[REG["rsp"]])),
            ("in syscall", "no" if orig == RLIM_INFINITY else tracing.syscall_name(orig)),
            ("blocked signals", _sigset(t["sigmask"])),
            ("altstack", "disabled" if t["altstack_flags"] & SS_DISABLE else
             f"{t['altstack_sp']:#x} size {_size(t['altstack_size'])}"),
            ("rseq", f"{t['rseq']:#x} len {t['rseq_len']} sig {t['rseq_sig']:#x}"
             if t["rseq"] else "none"),
            ("xsave", f"{len(t['xsave'])} bytes")])

    acts = one("SIGACTIONS").get("actions", [])
    table("Signal handlers", ("signal", "handler", "flags", "mask"),
          [(tracing.signal_name(i + 1), "SIG_IGN" if a["handler"] == SIG_IGN
            else hex(a["handler"]), "|".join(_bits(a["flags"], SA_FLAGS)) or "0",
            _sigset(a["mask"])) for i, a in enumerate(acts) if a["handler"]])
    table("Pending signals", ("signal", "queue", "si_code"),
          [(tracing.signal_name(s["sig"]), "process" if s["shared"] else "thread",
            struct.unpack_from("<i", s["info"], 8)[0])
           for s in one("PENDING").get("signals", [])])
    table("Interval timers", ("timer", "value", "interval"),
          [(ITIMER_NAMES[t["which"]] if t["which"] < 3 else t["which"],
            f"{t['value_sec']}.{t['value_usec']:06d} s",
            f"{t['interval_sec']}.{t['interval_usec']:06d} s")
           for t in one("ITIMERS").get("timers", [])])
    lim = lambda x: "unlimited" if x == RLIM_INFINITY else str(x)  # noqa: E731
    table("Resource limits (not unlimited)", ("resource", "soft", "hard"),
          [(f"RLIMIT_{RLIMIT_NAMES[r['resource']]}" if r["resource"] < len(RLIMIT_NAMES)
            else r["resource"], lim(r["cur"]), lim(r["max"]))
           for r in one("RLIMITS").get("limits", [])
           if r["cur"] != RLIM_INFINITY or r["max"] != RLIM_INFINITY])
    table("File descriptors", ("fd", "kind", "flags", "pos", "path"),
          [(f["fd"], f["kind"], _fd_flags(f["flags"], f["cloexec"]), f["pos"], f["path"])
           for f in scan.state.get("FD", [])])
    table("Files carried in the image (--ship-files, deleted files mapped)",
          ("path", "mode", "size", "in the image", "mtime"),
          [(f["path"], f"{f['mode'] & 0o7777:04o}", _size(f["size"]), _size(len(f["data"])),
            _time(f["mtime_ns"])) for f in scan.state.get("FILE", [])])

    s = scan.summary()
    kv("Summary", [
        ("records", f"{s['records']}" + (f" ({s['skipped_records']} of unknown optional "
                                         f"kinds skipped)" if s["skipped_records"] else "")),
        ("page records", s["page_records"]),
        ("pages", f"{s['pages']} ({s['data_pages']} with data, {s['zero_pages']} zero"
         + (f", {s['pages_outside_vmas']} outside every VMA" if s["pages_outside_vmas"]
            else "") + ")"),
        ("page data", f"{_size(s['data_bytes'])} in the image, {_size(s['raw_bytes'])} raw"
         + (f" (ratio {s['ratio']:.2f})" if s["ratio"] else "")),
        ("rounds complete", " ".join(map(str, s["rounds_complete"])) or "none"),
        *([("padding", f"{_size(s['pad_bytes'])} in {s['pad_records']} PAD record"
            f"{'s' if s['pad_records'] > 1 else ''} (pre-read pages were written ahead)")]
          if s["pad_records"] else []),
        ("image size", f"{_size(s['image_bytes'])} ({s['image_bytes']} bytes)"),
        ("trailer", "verified (record count and digest)")])


def _tree_rows(procs: list[dict], zombies: list[dict]) -> list[tuple]:
    """One row per process, each under its parent (indented by depth)."""
    nodes = {p["pid"]: ("running", p) for p in procs}
    for z in zombies:
        st = z["exit_status"]
        how = (f"zombie, killed by {tracing.signal_name(st & 0x7F)}" if st & 0x7F
               else f"zombie, exit {st >> 8 & 0xFF}")
        nodes[z["pid"]] = (how, {**z, "nthreads": 0})
    kids: dict[int, list[int]] = {}
    for pid, (_, v) in nodes.items():
        kids.setdefault(v["ppid"], []).append(pid)
    roots = [pid for pid, (_, v) in nodes.items() if v["ppid"] not in nodes]
    rows: list[tuple] = []

    def walk(pid: int, depth: int) -> None:
        state, v = nodes[pid]
        rows.append(("  " * depth + str(pid), v["ppid"], v["pgid"], v["sid"],
                     v["nthreads"] or "", state, v["comm"]))
        for k in sorted(kids.get(pid, [])):
            walk(k, depth + 1)
    for r in roots:
        walk(r, 0)
    return rows
