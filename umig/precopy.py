"""Pre-reading: read and compress memory while the process still runs, and
keep what it did not write by the time it is frozen.

Without soft-dirty (absent on this kernel) writes are tracked with
userfaultfd in asynchronous write-protect mode (KERNEL-NOTES.md, "Dirty
tracking without soft-dirty"): a `userfaultfd()` injected into the process
is taken with pidfd_getfd and closed there again; from here its private
VMAs are registered for write-protection and their present pages
protected.  The process never blocks on it (WP_ASYNC: the kernel
resolves the fault and clears the page's protection bit), and
PAGEMAP_SCAN reports the pages whose bit is gone as WRITTEN.  Closing the
fd ends the registration, so a umig that dies leaves nothing behind.

The state records come first in an image, so the pre-read chunks wait
until they are written: into a pipe, here in memory, up to a budget
(Cache), written after the freeze in place of the chunks grab would have
read then; into an image file, in the file itself, after room kept for
the state records (Spool, ImageWriter.adopt).  A pre-read chunk is used
only if it lists exactly the same pages as the chunk grab makes at the
freeze, every one of them lies in a VMA still registered (munmap, a new
mmap and mremap all drop the registration) and none was written, swapped
out or dropped since it was protected.  Anything else is read again,
frozen.
"""

from __future__ import annotations

import bisect
import fcntl
import os
import struct

from .image import schema
from .image.stream import PAD_FRAME, PAGES_HEAD, PageChunk, pad_frame
from .native import PAGE, ffi, lib, syscall

NR_close, NR_userfaultfd, NR_pidfd_getfd = 3, 323, 438
O_NONBLOCK, O_CLOEXEC, UFFD_USER_MODE_ONLY = 0o4000, 0o2000000, 1
UFFD_API = 0xAA
UFFD_FEATURE_WP_ASYNC = 1 << 15
UFFDIO_REGISTER_MODE_WP, UFFDIO_WRITEPROTECT_MODE_WP = 2, 1
CAT_WRITTEN = 2
CAT_SWAPPED = 16     # also a uffd-wp marker where a protected page was dropped


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (0xAA << 8) | nr


UFFDIO_API = _iowr(0x3F, 24)
UFFDIO_REGISTER = _iowr(0x00, 32)
UFFDIO_WRITEPROTECT = _iowr(0x06, 24)

BUDGET = 40 << 20        # bytes of pre-read chunks kept (umig stays under 100 MiB)
MIN_RSS = 16 << 20       # below this a frozen read is as quick as the set-up


class Tracker:
    """Write tracking of one process's private memory."""

    def __init__(self, pid: int):
        self.pid = pid
        self.uffd = -1
        self.spans: list[tuple[int, int]] = []       # registered, address order

    def take_fd(self, inj) -> None:
        """With the process stopped under `inj`: make its userfaultfd and take it."""
        r = inj.syscall(NR_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY)
        if r < 0:
            raise OSError(-r, f"userfaultfd in process {self.pid}: {os.strerror(-r)}")
        try:
            pidfd = os.pidfd_open(self.pid)
            try:
                self.uffd = syscall(NR_pidfd_getfd, pidfd, r, 0)
            finally:
                os.close(pidfd)
        finally:
            inj.syscall(NR_close, r)

    def protect(self, vmas: list[dict], ranges: list[tuple[int, int, int]]) -> None:
        """Register every private VMA with pages of its own, and write-protect
        the pages in `ranges` (addr, npages, flags), those present.  Only
        those: protecting a whole VMA leaves a marker in every empty page
        table entry, which PAGEMAP_SCAN reports as a swapped page, and which
        reading turns into the zero page; the pages of a chunk would then
        differ between the pre-read and the freeze and no chunk be kept
        (docs/kernel-findings.md).  A page that appears later is not
        protected: it shows as written, and its chunk lists another page set
        anyway."""
        buf = bytearray(struct.pack("<QQQ", UFFD_API, UFFD_FEATURE_WP_ASYNC, 0))
        fcntl.ioctl(self.uffd, UFFDIO_API, buf)
        starts = [r[0] for r in ranges]
        for v in vmas:
            if v["flags"] & schema.VMA_SHARED or v["content"] == schema.CONTENT_NONE:
                continue
            start, length = v["start"], v["end"] - v["start"]
            try:
                fcntl.ioctl(self.uffd, UFFDIO_REGISTER,
                            bytearray(struct.pack("<QQQQ", start, length,
                                                  UFFDIO_REGISTER_MODE_WP, 0)))
                i = bisect.bisect_left(starts, start)
                while i < len(ranges) and ranges[i][0] < v["end"]:
                    addr, npages, _ = ranges[i]
                    fcntl.ioctl(self.uffd, UFFDIO_WRITEPROTECT,
                                bytearray(struct.pack("<QQQ", addr, npages * PAGE,
                                                      UFFDIO_WRITEPROTECT_MODE_WP)))
                    i += 1
            except OSError:
                continue              # this VMA is not tracked: read at the freeze
            self.spans.append((v["start"], v["end"]))

    def unchanged(self, pagemapfd: int, smaps) -> "Unchanged":
        """At the freeze: where the pre-read copy still holds."""
        tracked = [(v.start, v.end) for v in smaps
                   if "uw" in v.vmflags and _inside(self.spans, v.start, v.end)]
        written: list[tuple[int, int]] = []
        cap = 4096
        vec = ffi.new("struct umig_region[]", cap)
        walk_end = ffi.new("uint64_t *")
        for start, end in tracked:
            while start < end:
                # written, or no longer in memory (swapped out, or dropped by
                # MADV_DONTNEED: what is left may be a marker, not a write)
                n = lib.umig_scan(pagemapfd, start, end, CAT_WRITTEN | CAT_SWAPPED,
                                  CAT_WRITTEN | CAT_SWAPPED, vec, cap, walk_end)
                if n < 0:
                    return Unchanged([], [])      # cannot tell: trust nothing
                written += [(vec[i].start, vec[i].end) for i in range(n)]
                start = walk_end[0] if walk_end[0] > start else end
        return Unchanged(_merge(tracked), _merge(written))

    def close(self) -> None:
        if self.uffd >= 0:
            os.close(self.uffd)
            self.uffd = -1


class Unchanged:
    """Tracked spans minus written pages."""

    def __init__(self, tracked: list[tuple[int, int]], written: list[tuple[int, int]]):
        self.tracked = tracked
        self.written = written
        self._ws = [s for s, _ in written]

    def holds(self, chunk) -> bool:
        for addr, npages, _flags in chunk:
            end = addr + npages * PAGE
            if not _inside(self.tracked, addr, end):
                return False
            i = bisect.bisect_right(self._ws, end - 1) - 1
            if i >= 0 and self.written[i][1] > addr:
                return False
        return True


class Cache:
    """Pre-read chunks, by the exact list of pages they hold."""

    def __init__(self, budget: int = BUDGET):
        self.budget = budget
        self.used = 0                  # bytes the kept chunks take (compressed)
        self.covered = 0               # bytes of memory they cover
        self.chunks: dict[tuple, tuple[PageChunk, int]] = {}
        self.reused = 0
        self.reread = 0

    def full(self) -> bool:
        return self.used >= self.budget

    def put(self, chunk, pc: PageChunk, pages: int) -> None:
        # the parts are views into reused read buffers: own them
        owned = PageChunk(pc.head, [bytes(p) for p in pc.parts], pc.crc, pc.npages)
        self.chunks[_key(chunk)] = (owned, pages)
        self.used += sum(len(p) for p in owned.parts)
        self.covered += pc.npages * PAGE

    def take(self, chunk, unchanged: Unchanged) -> tuple[PageChunk, int] | None:
        hit = self.chunks.pop(_key(chunk), None)
        if hit is not None and unchanged.holds(chunk):
            self.reused += 1
            return hit
        if hit is not None:
            self.reread += 1
        return None


class SpoolEntry:
    """A pre-read PAGES frame in the image file."""
    __slots__ = ("offset", "length", "head", "crc", "npages", "pages", "data_len", "kept",
                 "pad")

    def __init__(self, offset: int, pc: PageChunk, pages: int):
        self.offset = offset
        self.length = pc.length
        self.head, self.crc, self.npages, self.pages = pc.head, pc.crc, pc.npages, pages
        self.data_len = len(pc.parts[2])
        self.kept = False
        self.pad: tuple[bytes, bytes] | None = None   # head, crc of a PAD after a smaller
        #                                                 chunk written in its place


class Spool:
    """Pre-read chunks written straight into the image file, when it is a
    regular file grab writes from its start: from `start` on, room being
    kept before it for the state records (written at the freeze).  There
    is no budget, memory holds only their frame heads, and at the freeze
    the chunks that still hold are already in place: the process is frozen
    for the state and for the pages written since, not for writing its
    memory out.  Used like Cache (put, take, full); ImageWriter.adopt()
    then takes them in."""

    def __init__(self, fd: int, start: int):
        self.fd = fd
        self.start = self.end = start
        self.entries: list[SpoolEntry] = []          # file order
        self._by_key: dict[tuple, SpoolEntry] = {}
        self._stale: dict[tuple, SpoolEntry] = {}     # written since: taken, not kept
        self.used = 0                  # bytes of the file they take
        self.covered = 0               # bytes of memory they cover
        self.reused = 0
        self.reread = 0
        self.in_place = 0              # of those read again, written over their copy

    @staticmethod
    def full() -> bool:
        return False

    def _pwrite(self, parts: list, at: int) -> None:
        views = [memoryview(p).cast("B") for p in parts if len(p)]
        while views:
            n = os.pwritev(self.fd, views, at)
            at += n
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if n:
                views[0] = views[0][n:]

    def put(self, chunk, pc: PageChunk, pages: int) -> None:
        e = SpoolEntry(self.end, pc, pages)
        self._pwrite([pc.head, *pc.parts, pc.crc], self.end)
        self.entries.append(e)
        self._by_key[_key(chunk)] = e
        self.end += e.length
        self.used += e.length
        self.covered += pc.npages * PAGE

    def take(self, chunk, unchanged: Unchanged) -> SpoolEntry | None:
        e = self._by_key.pop(_key(chunk), None)
        if e is not None and unchanged.holds(chunk):
            e.kept = True
            self.reused += 1
            return e
        if e is not None:
            self.reread += 1
            self._stale[_key(chunk)] = e
        return None

    def to_cache(self, budget: int = BUDGET) -> Cache:
        """The chunks written so far as a Cache holds them, read back from
        the file in order up to its budget: what grab keeps of them when
        the image must start again (the state outgrew its room)."""
        cache = Cache(budget)
        for key, e in self._by_key.items():
            if cache.full():
                break
            payload = os.pread(self.fd, e.length - PAD_FRAME, e.offset + len(e.head))
            runs_end = PAGES_HEAD.size + 16 * PAGES_HEAD.unpack_from(payload)[3]
            pc = PageChunk(e.head, [payload[:PAGES_HEAD.size],
                                    payload[PAGES_HEAD.size:runs_end], payload[runs_end:]],
                           e.crc, e.npages)
            cache.chunks[key] = (pc, e.pages)
            cache.used += len(payload)
            cache.covered += e.npages * PAGE
        return cache

    def stale(self, chunk) -> SpoolEntry | None:
        """The copy of chunk in the file, if take() found it written since."""
        return self._stale.get(_key(chunk))

    def replace(self, chunk, pc: PageChunk, pages: int) -> SpoolEntry | None:
        """Write chunk as read again (pc) over its stale copy, if it fits:
        the same size, or smaller by a PAD frame (12 bytes) or more, the
        rest then a PAD.  Returns the entry, now kept, or None."""
        e = self._stale.get(_key(chunk))
        if e is None:
            return None
        room = e.length - pc.length
        if room < 0 or 0 < room < PAD_FRAME:
            return None
        del self._stale[_key(chunk)]
        parts = [pc.head, *pc.parts, pc.crc]
        if room:
            e.pad = pad_frame(room - PAD_FRAME)
            parts += [e.pad[0], bytes(room - PAD_FRAME), e.pad[1]]
        self._pwrite(parts, e.offset)
        e.head, e.crc, e.npages, e.pages = pc.head, pc.crc, pc.npages, pages
        e.data_len = len(pc.parts[2])
        e.kept = True
        self.in_place += 1
        return e


def state_room(nvmas: int, nfds: int, nthreads: int, extra: int = 0) -> int:
    """Bytes to keep for a process's state records ahead of pages written
    in advance (the image's first bytes, up to its PAD record).  Measured:
    a C program with 24 VMAs, 3 fds and one thread takes 18.6 KB (VMA
    records some 130 bytes with their path, FD records 100-200, a THREAD
    2.6-3.2 KB with its XSAVE area, the rest about 8 KB); this keeps a
    quarter more than 16 KiB + 256 per VMA + 384 per fd + 4 KiB per
    thread, plus `extra`: what grab knows will be carried (XSAVE areas, a
    deleted file's or memfd's contents, the bytes in pipes).  A state that
    outgrows it (a unix socket's queue, fds opened meanwhile) makes grab
    start the image again, keeping the first BUDGET bytes of pre-read
    pages in memory (ImageWriter.limit, NoRoom, Spool.to_cache)."""
    override = os.environ.get("UMIG_STATE_ROOM")     # tests: force the fallback
    if override:
        return int(override)
    return (16_384 + 256 * nvmas + 384 * nfds + 4_096 * nthreads + extra) * 5 // 4


def _key(chunk) -> tuple:
    return tuple(tuple(r) for r in chunk)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _inside(spans: list[tuple[int, int]], start: int, end: int) -> bool:
    """[start, end) lies in the sorted `spans` (possibly across adjacent ones)."""
    i = bisect.bisect_right(spans, (start, 1 << 64)) - 1
    while i >= 0 and i < len(spans) and spans[i][0] <= start:
        if spans[i][1] >= end:
            return True
        if spans[i][1] <= start:
            return False
        start = spans[i][1]
        i += 1
    return False
