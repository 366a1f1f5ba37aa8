"""The image schema: every record umig writes, declared in one place.

Rules (docs/image-format.md has the full text):

* Tags are stable and never reused.  A retired field stays here as a comment.
* Fields are little-endian, fixed width, in declaration order; `str` and
  `bytes` are a u32 length and the bytes; an `array` is a u32 count and that
  many fixed-width items; `tail` (PAGES and PAD only) is whatever is left.
* Appending a field or adding a record kind that old readers may skip
  (flag `optional`) does not change FORMAT_VERSION; anything else does,
  and a reader names both versions when it refuses.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

MAGIC = b"UMIGIMG\x00"
FORMAT_VERSION = 2
# Version 2 is version 1 plus what an older reader would misread rather than
# refuse: several processes (tree sections, OWNER, ZOMBIE) and VMAs flagged
# SHM_SEEN or INHERIT.  A writer puts 1 on images that use none of it, so
# older readers still read them; this reader reads both.
READABLE_VERSIONS = (1, 2)

_FIXED = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "i32": "i", "i64": "q"}


@dataclass(frozen=True)
class F:
    """A field: name, type and how `umig info` shows it."""
    name: str
    type: str                      # u8..i64, "u64*N", "str", "bytes", "array", "tail", "sN"
    show: str = ""                 # hex | size | sigmask | prot | bytes | time | hidden
    items: tuple["F", ...] = ()    # for arrays: the item's fixed-width fields


_U32 = struct.Struct("<I")


def _packed(run: list[tuple[str, str]]) -> tuple[tuple[str, ...], struct.Struct]:
    return tuple(n for n, _ in run), struct.Struct("<" + "".join(c for _, c in run))


@dataclass(frozen=True)
class Record:
    tag: int
    name: str
    fields: tuple[F, ...]
    doc: str
    optional: bool = False         # a reader that does not know the tag may skip it
    _item_structs: dict = field(default_factory=dict, compare=False, repr=False)

    # -- encoding --------------------------------------------------------
    def encode(self, values: dict) -> bytes:
        return self._encoder()(values)

    def _encoder(self):
        """encode() compiled once per kind into one Python function: a
        struct per run of fixed-width fields, strings and bytes inline, the
        rest through _encode_field (10,000 FD records are encoded while the
        process is frozen: 2 us each instead of 6)."""
        enc = self._item_structs.get("__encoder__")
        if enc is not None:
            return enc
        env = {"U32": _U32, "record": self}
        lines = ["def encode(v):", "    out = []"]
        for i, (f, names, st) in enumerate(self._runs()):
            if f is None:
                env[f"S{i}"] = st
                lines.append(f"    out.append(S{i}.pack("
                             + "".join(f"v[{n!r}], " for n in names) + "))")
            elif f.type in ("str", "bytes"):
                conv = ".encode('utf-8', 'surrogateescape')" if f.type == "str" else ""
                lines += [f"    b = v[{f.name!r}]{conv}",
                          "    out.append(U32.pack(len(b)))", "    out.append(b)"]
            else:
                env[f"F{i}"] = f
                lines += ["    b = bytearray()",
                          f"    record._encode_field(b, F{i}, v[{f.name!r}])",
                          "    out.append(b)"]
        lines.append("    return b''.join(out)")
        exec("\n".join(lines), env)      # noqa: S102 - our own schema, not input
        enc = self._item_structs["__encoder__"] = env["encode"]
        return enc

    def _runs(self):
        """The fields as the compiled coders take them: (None, names, Struct)
        for each run of fixed-width fields, (field, None, None) for the rest."""
        run: list[tuple[str, str]] = []
        for f in self.fields:
            if f.type in _FIXED:
                run.append((f.name, _FIXED[f.type]))
                continue
            if run:
                yield None, *_packed(run)
                run = []
            yield f, None, None
        if run:
            yield None, *_packed(run)

    def _encode_field(self, out: bytearray, f: F, v) -> None:
        t = f.type
        if t.startswith("u64*"):
            out += struct.pack(f"<{int(t[4:])}Q", *v)
        elif t[0] == "s" and t[1:].isdigit():
            if len(v) != int(t[1:]):
                raise ValueError(f"{self.name}.{f.name}: needs {t[1:]} bytes")
            out += bytes(v)
        elif t == "array":
            st = self._item_struct(f)
            out += struct.pack("<I", len(v))
            for item in v:
                out += st.pack(*(item[i.name] for i in f.items))
        elif t == "tail":
            out += bytes(v)
        else:  # pragma: no cover - schema typo
            raise TypeError(f"{self.name}.{f.name}: unknown type {t}")

    def decode(self, payload: bytes | memoryview) -> dict:
        steps = self._decoders()
        if steps is not None:
            out: dict = {}
            try:
                pos = 0
                for step in steps:
                    pos = step(payload, pos, out)
            except (struct.error, ValueError):
                return self._decode_slowly(payload)    # fields appended since: absent
            if pos != len(payload):
                out["_extra"] = bytes(payload[pos:])
            return out
        return self._decode_slowly(payload)

    def _decoders(self) -> list | None:
        """decode() compiled once per kind for records of fixed fields, str,
        bytes and arrays (10,000 FD records are read by every resume); None
        for the others, which take _decode_slowly."""
        cache = self._item_structs
        if "__dec__" in cache:
            return cache["__dec__"]
        steps = []
        for f, names, st in self._runs():
            if f is None:
                def step(b, pos, out, names=names, st=st):
                    out.update(zip(names, st.unpack_from(b, pos)))
                    return pos + st.size
                steps.append(step)
                continue
            t = f.type
            if t == "array":
                def step(b, pos, out, f=f, st=self._item_struct(f)):
                    (count,) = _U32.unpack_from(b, pos)
                    end = pos + 4 + count * st.size
                    if end > len(b):
                        raise ValueError(f"{f.name}: {count} items past the end")
                    names = [i.name for i in f.items]
                    out[f.name] = [dict(zip(names, vals))
                                   for vals in st.iter_unpack(b[pos + 4:end])]
                    return end
                steps.append(step)
                continue
            if t not in ("str", "bytes"):
                cache["__dec__"] = None
                return None

            def step(b, pos, out, n=f.name, text=t == "str"):
                (size,) = _U32.unpack_from(b, pos)
                end = pos + 4 + size
                if end > len(b):
                    raise ValueError(f"{n}: {size} bytes past the end")
                raw = bytes(b[pos + 4:end])
                out[n] = raw.decode("utf-8", "surrogateescape") if text else raw
                return end
            steps.append(step)
        cache["__dec__"] = steps
        return steps

    def _decode_slowly(self, payload: bytes | memoryview) -> dict:
        mv = memoryview(payload)
        pos = 0
        out: dict = {}
        for f in self.fields:
            t = f.type
            if pos == len(mv) and pos and f.name not in out:
                # a field appended after this image was written: absent
                out[f.name] = _default(t)
                continue
            if t in _FIXED:
                fmt = "<" + _FIXED[t]
                out[f.name] = struct.unpack_from(fmt, mv, pos)[0]
                pos += struct.calcsize(fmt)
            elif t.startswith("u64*"):
                n = int(t[4:])
                out[f.name] = list(struct.unpack_from(f"<{n}Q", mv, pos))
                pos += 8 * n
            elif t[0] == "s" and t[1:].isdigit():
                n = int(t[1:])
                if pos + n > len(mv):
                    raise struct.error(f"{f.name}: {n} bytes past the end")
                out[f.name] = bytes(mv[pos:pos + n])
                pos += n
            elif t in ("str", "bytes"):
                (n,) = struct.unpack_from("<I", mv, pos)
                pos += 4
                if pos + n > len(mv):
                    raise struct.error(f"{f.name}: {n} bytes past the end")
                raw = bytes(mv[pos:pos + n])
                out[f.name] = raw.decode("utf-8", "surrogateescape") if t == "str" else raw
                pos += n
            elif t == "array":
                st = self._item_struct(f)
                (n,) = struct.unpack_from("<I", mv, pos)
                pos += 4
                if pos + n * st.size > len(mv):
                    raise struct.error(f"{f.name}: {n} items past the end")
                names = [i.name for i in f.items]
                out[f.name] = [dict(zip(names, vals)) for vals in st.iter_unpack(
                    mv[pos:pos + n * st.size])]
                pos += n * st.size
            elif t == "tail":
                out[f.name] = bytes(mv[pos:])
                pos = len(mv)
        if pos != len(mv):
            # fields appended by a newer writer of the same version: keep them
            out["_extra"] = bytes(mv[pos:])
        return out

    def _item_struct(self, f: F) -> struct.Struct:
        st = self._item_structs.get(f.name)
        if st is None:
            fmt = "<" + "".join(_FIXED.get(i.type) or (i.type[1:] + "s") for i in f.items)
            st = self._item_structs[f.name] = struct.Struct(fmt)
        return st


def _default(t: str):
    """The value of a field missing from an older record of the same version."""
    if t in _FIXED:
        return 0
    if t.startswith("u64*"):
        return [0] * int(t[4:])
    if t == "str":
        return ""
    if t == "array":
        return []
    if t[0] == "s" and t[1:].isdigit():
        return bytes(int(t[1:]))
    return b""


def _u64s(*names: str, show: str = "hex") -> tuple[F, ...]:
    return tuple(F(n, "u64", show) for n in names)


HEADER = Record(1, "HEADER", (
    F("arch", "str"),
    F("page_size", "u32"),
    F("kernel", "str"),
    F("xcr0", "u64", "hex"),
    F("xsave_size", "u32"),
    F("cpu_flags", "str", "hidden"),
    F("hostname", "str"),
    F("time_ns", "u64", "time"),
    F("umig_version", "str"),
    F("pid", "u32"),
    F("uid", "u32"),
), "What made the image and where: checked before anything is resumed.")

PROCESS = Record(2, "PROCESS", (
    F("pid", "u32"),
    F("ppid", "u32"),
    F("pgid", "u32"),
    F("sid", "u32"),
    F("nthreads", "u32"),
    F("comm", "str"),
    F("exe", "str"),
    F("cmdline", "bytes", "bytes"),
    F("cwd", "str"),
    F("personality", "u32", "hex"),
    F("umask", "u32"),
    F("pdeathsig", "i32"),
    F("no_new_privs", "u32"),
    F("exit_signal", "i32"),
    F("tty_nr", "u32", "hex"),
    F("tpgid", "i32"),
), "The process as a whole.  In an image of a tree (grab --tree) each process "
   "has its own section that starts with its PROCESS record, parents first.")

CREDS = Record(3, "CREDS", (
    F("uid", "u32"), F("euid", "u32"), F("suid", "u32"), F("fsuid", "u32"),
    F("gid", "u32"), F("egid", "u32"), F("sgid", "u32"), F("fsgid", "u32"),
    F("groups", "array", items=(F("gid", "u32"),)),
    F("cap_inh", "u64", "hex"), F("cap_prm", "u64", "hex"), F("cap_eff", "u64", "hex"),
    F("cap_bnd", "u64", "hex"), F("cap_amb", "u64", "hex"),
    F("securebits", "u32", "hex"),
), "User, groups and capabilities.")

RLIMITS = Record(4, "RLIMITS", (
    F("limits", "array", items=(F("resource", "u32"), F("cur", "u64"), F("max", "u64"))),
), "Resource limits (from /proc/PID/limits).")

MM = Record(5, "MM", (
    *_u64s("start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
           "start_stack", "arg_start", "arg_end", "env_start", "env_end"),
    F("auxv", "bytes", "bytes"),
    F("exe", "str"),
), "The mm fields PR_SET_MM_MAP restores (cmdline, environ, brk, auxv, exe).")

# VMA kinds
VMA_ANON, VMA_FILE, VMA_HEAP, VMA_STACK, VMA_SHMEM, VMA_VDSO, VMA_VVAR, VMA_VVAR_VCLOCK = range(8)
VMA_KIND_NAMES = ["anon", "file", "heap", "stack", "shmem", "vdso", "vvar", "vvar_vclock"]
# VMA flags.  SHM_SEEN: shared memory whose pages an earlier VMA of the
# image (same ino, pgoff and size) carries already.  INHERIT: a private VMA
# of a tree member that its parent has alike: the member gets it by fork,
# sharing pages copy-on-write; its PAGES carry only the pages it does not
# share (zeros included), and `discard` lists the pages only the parent has
VMA_SHARED, VMA_GROWSDOWN, VMA_NORESERVE, VMA_SHM_SEEN, VMA_INHERIT = 1, 2, 4, 8, 16
# how the pages of a VMA reach the image
CONTENT_NONE, CONTENT_PAGES, CONTENT_FILE = 0, 1, 2

VMA = Record(6, "VMA", (
    F("start", "u64", "hex"),
    F("end", "u64", "hex"),
    F("pgoff", "u64", "hex"),
    F("prot", "u32", "prot"),
    F("flags", "u32"),
    F("kind", "u32"),
    F("content", "u32"),
    F("madv", "u32"),
    F("path", "str"),
    F("dev", "u64", "hidden"),
    F("ino", "u64", "hidden"),
    F("file_size", "u64", "size"),
    F("mtime_ns", "u64", "time"),
    F("vmflags", "str", "hidden"),
    F("discard", "array", items=(F("start", "u64"), F("npages", "u32"))),
), "One memory mapping.  Pages of content=PAGES come in PAGES records; "
   "content=FILE maps the file (checked by size and mtime).")

VDSO = Record(7, "VDSO", (
    F("vvar_start", "u64", "hex"), F("vvar_size", "u64", "size"),
    F("vclock_start", "u64", "hex"), F("vclock_size", "u64", "size"),
    F("vdso_start", "u64", "hex"), F("vdso_size", "u64", "size"),
    F("image", "bytes", "bytes"),
), "Where the vDSO block was, and the vDSO itself (to match or redirect).")

THREAD = Record(8, "THREAD", (
    F("tid", "u32"),
    F("regs", "u64*27", "hidden"),
    F("xsave", "bytes", "bytes"),
    F("sigmask", "u64", "sigmask"),
    F("altstack_sp", "u64", "hex"),
    F("altstack_flags", "u32"),
    F("altstack_size", "u64", "size"),
    F("clear_child_tid", "u64", "hex"),
    F("robust_list", "u64", "hex"),
    F("robust_len", "u64"),
    F("rseq", "u64", "hex"),
    F("rseq_len", "u32"),
    F("rseq_sig", "u32", "hex"),
    F("comm", "str"),
    F("pending", "array", items=(F("sig", "u32"), F("info", "s128"))),
), "One thread (the leader first, then the others): registers (user_regs_struct "
   "order), XSAVE area, signal mask, altstack, futex and rseq registrations, and "
   "(threads other than the leader) the signals queued for this thread alone.")

SIGACTIONS = Record(9, "SIGACTIONS", (
    F("actions", "array", items=(F("handler", "u64"), F("flags", "u64"),
                                 F("restorer", "u64"), F("mask", "u64"))),
), "Dispositions of signals 1..64 (kernel struct sigaction).")

PENDING = Record(10, "PENDING", (
    F("signals", "array", items=(F("shared", "u32"), F("sig", "u32"), F("info", "s128"))),
), "Queued signals with their siginfo: the process-wide queue (shared=1) and the "
   "leader's own (shared=0); the other threads' own are in their THREAD records.")

ITIMERS = Record(11, "ITIMERS", (
    F("timers", "array", items=(F("which", "u32"), F("interval_sec", "u64"),
                                F("interval_usec", "u64"), F("value_sec", "u64"),
                                F("value_usec", "u64"))),
), "setitimer timers (ITIMER_REAL, VIRTUAL, PROF) that were armed.")

FD = Record(12, "FD", (
    F("fd", "u32"),
    F("kind", "str"),
    F("flags", "u32", "hex"),
    F("cloexec", "u32"),
    F("pos", "u64"),
    F("path", "str"),
    F("mode", "u32", "hex"),
    F("dev", "u64", "hidden"),
    F("ino", "u64", "hidden"),
    F("rdev", "u64", "hidden"),
    F("size", "u64", "size"),
    F("mtime_ns", "u64", "time"),
    F("desc", "u32"),
    F("state", "bytes", "bytes"),
    F("locks", "array", items=(F("kind", "u32"), F("write", "u32"), F("start", "u64"),
                               F("end", "u64"))),
), "One file descriptor; `kind` names the fdtable class that re-creates it.  "
   "FD records with the same non-zero `desc` (in one process or several) are one "
   "open file description (dup, fork): recreated once, so they share offset and "
   "flags.  `state` is what the kind needs beyond that (fdtable.py: eventfd, timerfd, "
   "signalfd, epoll, ...).  `locks`: the file locks held through it (kind 1 flock, 2 "
   "POSIX record lock, 3 OFD lock; end inclusive, 2**64-1 = to the end of file).")

PIPE = Record(16, "PIPE", (
    F("ino", "u64"),
    F("size", "u32", "size"),
    F("data", "bytes", "bytes"),
    F("ends", "u32"),
), "A pipe the grabbed process(es) hold (FD records of kind 'pipe' name it by "
   "ino): its capacity, the bytes buffered in it, and which ends some process "
   "still holds (1 read, 2 write; an end no process holds stays closed).",
   optional=True)

ZOMBIE = Record(17, "ZOMBIE", (
    F("pid", "u32"),
    F("ppid", "u32"),
    F("pgid", "u32"),
    F("sid", "u32"),
    F("exit_status", "u32", "hex"),
    F("comm", "str"),
    F("exit_signal", "i32"),
), "A process of the tree that has exited and waits for its parent (a "
   "member) to reap it: recreated as a zombie with the same wait status.",
   optional=True)

OWNER = Record(18, "OWNER", (
    F("pid", "u32"),
), "In an image of a tree: the PAGES records that follow, up to the next "
   "OWNER, belong to this process.", optional=True)

FILE = Record(19, "FILE", (
    F("path", "str"),
    F("mode", "u32", "hex"),
    F("uid", "u32"),
    F("gid", "u32"),
    F("size", "u64", "size"),
    F("mtime_ns", "u64", "time"),
    F("dev", "u64", "hidden"),
    F("ino", "u64", "hidden"),
    F("lz4", "u32"),
    F("data", "bytes", "bytes"),
), "A file the process has open or maps, shipped with `grab --ship-files`: "
   "resume creates it where it is missing (with its mode, owner and mtime) and "
   "refuses where a different file is in its place.  data: the contents, one lz4 "
   "block when lz4 is 1.  FILE records come right after HEADER.")

PAGES_FLAG_LZ4 = 1

PAGES = Record(13, "PAGES", (
    F("round", "u32"),
    F("flags", "u32"),
    F("raw_len", "u32", "size"),
    F("runs", "array", items=(F("addr", "u64"), F("npages", "u32"), F("kind", "u32"))),
    F("data", "tail", "size"),
), "A chunk of pages: runs of data or zero pages and the data pages' bytes "
   "(lz4 block if flags&1).  Chunks may come in any order and a page may come "
   "again: the later record wins.")

ROUND_END = Record(14, "ROUND_END", (
    F("round", "u32"),
    F("pages", "u64"),
    F("records", "u32"),
), "All pages of a round were sent.", optional=True)

TRAILER = Record(15, "TRAILER", (
    F("records", "u32"),
    F("page_records", "u32"),
    F("pages", "u64"),
    F("data_bytes", "u64", "size"),
    F("digest", "s32", "hidden"),
), "Counts and the SHA-256 of every record's frame and checksum before it.")

PAD = Record(20, "PAD", (
    F("fill", "tail", "size"),
), "Bytes that mean nothing, skipped by readers: room grab kept for the state "
   "records in an image file whose pre-read pages it wrote ahead of them, and "
   "pre-read pages found written since (their PAGES frame turned into PAD in "
   "place, its bytes zeros).  May come anywhere between HEADER and TRAILER.",
   optional=True)

RECORDS: dict[int, Record] = {r.tag: r for r in (
    HEADER, PROCESS, CREDS, RLIMITS, MM, VMA, VDSO, THREAD, SIGACTIONS, PENDING,
    ITIMERS, FD, PAGES, ROUND_END, TRAILER, PIPE, ZOMBIE, OWNER, FILE, PAD)}
BY_NAME: dict[str, Record] = {r.name: r for r in RECORDS.values()}
