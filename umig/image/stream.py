"""The image stream: framing, checksums, the trailer.  Read in one pass,
never seeking, so it may come through a pipe.  Written in one pass too,
except into an image file, where grab may write pre-read page chunks ahead
of the state records, at a place it keeps room before (ImageWriter.adopt).

    stream  := MAGIC(8) version(u32) reserved(u32) record* TRAILER
    record  := tag(u16) flags(u16) length(u32) payload crc32c(u32)

The crc32c covers the 8-byte frame header and the payload.  The trailer
holds the record count and a SHA-256 over every earlier record's frame
header and crc, so a dropped, repeated or reordered record is caught as well
as a damaged one, without hashing the page data twice.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import BadImage, Incompatible, ImageIOError, from_oserror
from ..native import ffi, lib
from . import schema

FRAME = struct.Struct("<HHI")
CRC = struct.Struct("<I")
PAGES_HEAD = struct.Struct("<IIII")      # round, flags, raw_len, nruns
FLAG_OPTIONAL = 1
PAD_FRAME = FRAME.size + CRC.size      # a PAD record's least size (no payload)
MAX_RECORD = 1 << 30


def crc32c(*parts) -> int:
    crc = 0
    for p in parts:
        if len(p):
            crc = lib.umig_crc32c(crc, ffi.from_buffer(p), len(p))
    return crc


_ZEROS = bytes(1 << 20)
NR_fallocate = 285
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2


def crc32c_zeros(crc: int, n: int) -> int:
    """crc32c continued over n zero bytes."""
    while n:
        k = min(n, len(_ZEROS))
        crc = lib.umig_crc32c(crc, _ZEROS, k)
        n -= k
    return crc


def zero_range(fd: int, offset: int, n: int) -> None:
    """Make n bytes of a file at offset zeros: a hole punched in it (no
    bytes to write), or zeros written where the file system cannot."""
    from ..native import syscall
    try:
        syscall(NR_fallocate, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, n)
        return
    except OSError:
        pass
    while n:
        k = os.pwrite(fd, memoryview(_ZEROS)[:min(n, len(_ZEROS))], offset)
        offset += k
        n -= k


def pad_frame(n: int) -> tuple[bytes, bytes]:
    """Frame head and checksum of a PAD record of n zero bytes (PAD_FRAME
    more in all), without the zeros themselves."""
    head = FRAME.pack(schema.PAD.tag, FLAG_OPTIONAL, n)
    return head, CRC.pack(crc32c_zeros(crc32c(head), n))


HOLD_BELOW = 256 << 10
SMALL_RECORD = 64 << 10


class NoRoom(Exception):
    """The state records outgrew the room kept for them before pre-read
    pages written ahead (ImageWriter.limit): nothing was written past it."""


class ImageWriter:
    """Writes records to a file descriptor (file, pipe or socket)."""

    limit: int | None = None       # bytes it may write before pad_to() (else NoRoom)

    def __init__(self, fd: int, what: str = "image", version: int = schema.FORMAT_VERSION):
        self.fd = fd
        self.what = what
        self.offset = 0
        self.records = 0
        self.page_records = 0
        self.pages = 0
        self.data_bytes = 0
        self._digest = hashlib.sha256()
        self._held: list = []          # small records not written yet (one writev for many)
        self._held_len = 0
        self._heads = bytearray()      # their frame heads and checksums, for the digest
        self._write([schema.MAGIC, struct.pack("<II", version, 0)])

    def _write(self, parts: list) -> None:
        views = [memoryview(p).cast("B") for p in parts if len(p)]
        if self.limit is not None and self.offset + sum(len(v) for v in views) > self.limit:
            raise NoRoom(self.offset)
        while views:
            try:
                n = os.writev(self.fd, views)
            except InterruptedError:
                continue
            except OSError as e:
                raise from_oserror(e, f"writing the {self.what} at byte {self.offset}",
                                   fd=self.fd) from e
            self.offset += n
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if n:
                views[0] = views[0][n:]

    def _frame(self, tag: int, flags: int, parts: list) -> None:
        head, crc = frame_of(tag, flags, parts)
        self._write_framed(head, parts, crc)

    def _write_framed(self, head: bytes, parts: list, crc: bytes) -> None:
        self.flush()
        self._digest.update(head)
        self._digest.update(crc)
        self.records += 1
        self._write([head, *parts, crc])

    def flush(self) -> None:
        """Write the records held back (before anything else is written,
        and at the end)."""
        if self._heads:
            self._digest.update(self._heads)
            self._heads = bytearray()
        held, self._held, self._held_len = self._held, [], 0
        for i in range(0, len(held), 512):       # writev takes at most 1024 pieces
            self._write(held[i:i + 512])

    def record(self, rec: schema.Record, values: dict) -> None:
        payload = rec.encode(values)
        flags = FLAG_OPTIONAL if rec.optional else 0
        if len(payload) < SMALL_RECORD:
            # the many small state records (10,000 FD records with 10,000
            # fds): one checksum call and no list work each
            head = FRAME.pack(rec.tag, flags, len(payload))
            framed = head + payload
            crc = CRC.pack(lib.umig_crc32c(0, framed, len(framed)))
            self._heads += head       # the digest takes them in one go, at flush()
            self._heads += crc
            self.records += 1
            self._held.append(framed + crc)
            self._held_len += len(framed) + CRC.size
            if self._held_len >= HOLD_BELOW:
                self.flush()
        else:
            self._frame(rec.tag, flags, [payload])
        if rec.tag == schema.PAGES.tag:          # as page_chunk() counts them
            self.page_records += 1
            self.pages += sum(r["npages"] for r in values["runs"])
            self.data_bytes += len(values["data"])

    def pad_to(self, offset: int) -> None:
        """Fill the image up to `offset` with a PAD record (the room kept for
        the state records before the pre-read pages); NoRoom if a PAD frame
        does not fit in what is left."""
        self.flush()
        gap = offset - self.offset
        if gap and gap < PAD_FRAME:
            raise NoRoom(self.offset)
        self.limit = None
        if gap:
            # zeros, as a hole where the file has one (the room was never
            # written): no buffer of them, nothing to write but head and crc
            n = gap - PAD_FRAME
            head, crc = pad_frame(n)
            if self._seekable():
                zero_range(self.fd, self.offset + FRAME.size, n)
                os.pwrite(self.fd, head, self.offset)
                os.pwrite(self.fd, crc, self.offset + FRAME.size + n)
                os.lseek(self.fd, self.offset + gap, os.SEEK_SET)
                self.offset += gap
                self._digest.update(head)
                self._digest.update(crc)
                self.records += 1
            else:
                self._write_framed(head, [bytes(n)], crc)

    def _seekable(self) -> bool:
        """A regular file written from where this writer started (its
        position is the image's offset)."""
        try:
            return (stat.S_ISREG(os.fstat(self.fd).st_mode)
                    and os.lseek(self.fd, 0, os.SEEK_CUR) == self.offset)
        except OSError:
            return False

    def adopt(self, spool) -> None:
        """Take in the page chunks a precopy.Spool wrote into this (regular)
        file at [spool.start, spool.end), right after what was written so far
        (pad_to(spool.start)).  Those it kept (or wrote again in place, with
        a PAD after a smaller one) count as PAGES records; the rest (pages
        written since) become PAD records in place.  The digest takes them
        all in file order.  Writing goes on at spool.end."""
        self.flush()
        if self.offset != spool.start:
            raise ValueError(f"the image is at byte {self.offset}, the spool starts at "
                             f"{spool.start}")
        for e in spool.entries:
            if e.kept:
                head, crc = e.head, e.crc
                self.page_records += 1
                self.pages += e.npages
                self.data_bytes += e.data_len
                if e.pad:                  # read again, smaller: written in its place
                    self._digest.update(head)
                    self._digest.update(crc)
                    self.records += 1
                    head, crc = e.pad
            else:
                # the old pages go (nothing written over in memory stays in
                # the image): their bytes become zeros, a PAD's payload
                length = e.length - PAD_FRAME
                zero_range(self.fd, e.offset + FRAME.size, length)
                head, crc = pad_frame(length)
                if (os.pwrite(self.fd, head, e.offset) != len(head)
                        or os.pwrite(self.fd, crc, e.offset + e.length - CRC.size) != len(crc)):
                    raise OSError(errno.EIO, "short write")
            self._digest.update(head)
            self._digest.update(crc)
            self.records += 1
        os.lseek(self.fd, spool.end, os.SEEK_SET)
        self.offset = spool.end

    def page_chunk(self, chunk: "PageChunk") -> None:
        """A PAGES record prepared (and checksummed) by page_chunk_frame,
        possibly in another thread, written without copying its buffers."""
        # written at once: its buffers are reused after
        self._write_framed(chunk.head, chunk.parts, chunk.crc)
        self.page_records += 1
        self.pages += chunk.npages
        self.data_bytes += len(chunk.parts[2])

    def finish(self) -> None:
        """Write the trailer; fsync if the image is a regular file."""
        self.flush()
        values = {"records": self.records, "page_records": self.page_records,
                  "pages": self.pages, "data_bytes": self.data_bytes,
                  "digest": self._digest.digest()}
        self._frame(schema.TRAILER.tag, 0, [schema.TRAILER.encode(values)])
        try:
            if stat.S_ISREG(os.fstat(self.fd).st_mode):
                os.fsync(self.fd)
        except OSError as e:
            raise from_oserror(e, f"syncing the {self.what}", fd=self.fd) from e


def frame_of(tag: int, flags: int, parts: list) -> tuple[bytes, bytes]:
    """The frame header and checksum of a record made of parts."""
    head = FRAME.pack(tag, flags, sum(len(p) for p in parts))
    return head, CRC.pack(crc32c(head, *parts))


@dataclass
class PageChunk:
    head: bytes
    parts: list
    crc: bytes
    npages: int

    @property
    def length(self) -> int:
        """Bytes of its whole frame in the image."""
        return len(self.head) + sum(len(p) for p in self.parts) + len(self.crc)


def page_chunk_frame(round_: int, runs, nruns: int, data, raw_len: int, lz4: bool,
                     npages: int) -> PageChunk:
    """Frame a PAGES record (round, flags, raw_len, run count, runs, data);
    the checksum is computed here, which releases the GIL."""
    parts = [PAGES_HEAD.pack(round_, schema.PAGES_FLAG_LZ4 if lz4 else 0, raw_len, nruns),
             runs, data]
    head, crc = frame_of(schema.PAGES.tag, 0, parts)
    return PageChunk(head, parts, crc, npages)


@dataclass
class Frame:
    index: int        # 0-based record number
    offset: int       # byte offset of the frame header
    tag: int
    flags: int
    payload: memoryview

    @property
    def name(self) -> str:
        rec = schema.RECORDS.get(self.tag)
        return rec.name if rec else f"tag {self.tag}"

    def decode(self) -> dict:
        try:
            return schema.RECORDS[self.tag].decode(self.payload)
        except (struct.error, UnicodeError, ValueError) as e:
            raise BadImage(f"record {self.index} ({self.name}) at byte {self.offset} "
                           f"is malformed: {e}", record=self.index, offset=self.offset)


class ImageReader:
    """Iterates the records of an image, verifying as it goes.  Iteration
    ends after a verified trailer; anything else raises BadImage."""

    def __init__(self, fd: int, what: str = "image", version: int = schema.FORMAT_VERSION,
                 followed: bool = False):
        self.fd = fd
        self.what = what
        self.followed = followed     # the stream goes on after the trailer (umig migrate)
        self.offset = 0
        self.trailer: dict | None = None
        self.version = 0
        self._buf = bytearray()

    def _read(self, n: int) -> memoryview:
        """Exactly n bytes, or fewer at the end of the stream.  One read()
        gets a whole record from a file (no zero-filled buffer first); a pipe
        may need several."""
        parts: list[bytes] = []
        got = 0
        while got < n:
            try:
                chunk = os.read(self.fd, n - got)
            except InterruptedError:
                continue
            except OSError as e:
                raise from_oserror(e, f"reading the {self.what} at byte {self.offset + got}",
                                   fd=self.fd) from e
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        self.offset += got
        return memoryview(parts[0] if len(parts) == 1 else b"".join(parts))

    def _header(self) -> None:
        head = self._read(16)
        if len(head) == 0:
            raise BadImage(f"the {self.what} is empty (0 bytes)")
        if not (schema.MAGIC.startswith(bytes(head[:8])) if len(head) < 8
                else bytes(head[:8]) == schema.MAGIC):
            raise BadImage(f"not a umig image: starts with {bytes(head[:8])!r}, "
                           f"expected {schema.MAGIC!r}")
        if len(head) < 16:
            raise BadImage(f"image truncated at byte {len(head)}: the stream header "
                           f"needs 16 bytes", offset=len(head))
        self.version = struct.unpack_from("<I", head, 8)[0]
        if self.version not in schema.READABLE_VERSIONS:
            raise Incompatible(f"image format version {self.version}, this umig reads "
                               f"version {' and '.join(map(str, schema.READABLE_VERSIONS))}",
                               hint="resume it with a umig of the version that made it"
                               if self.version > schema.FORMAT_VERSION else
                               "the image is from an older umig; re-grab the process")

    def __iter__(self) -> Iterator[Frame]:
        self._header()
        digest = hashlib.sha256()
        index = 0
        while True:
            at = self.offset
            head = self._read(8)
            if len(head) == 0:
                raise BadImage(f"image truncated at byte {at}: it ends after record "
                               f"{index - 1} without a trailer", offset=at)
            if len(head) < 8:
                raise BadImage(f"image truncated at byte {self.offset}: record {index} "
                               f"header is cut short", offset=self.offset, record=index)
            tag, flags, length = FRAME.unpack(head)
            rec = schema.RECORDS.get(tag)
            name = rec.name if rec else f"tag {tag}"
            if length > MAX_RECORD:
                raise BadImage(f"record {index} ({name}) at byte {at} claims {length} bytes: "
                               f"the image is corrupt", record=index, offset=at)
            body = self._read(length + 4)
            if len(body) < length + 4:
                raise BadImage(f"image truncated at byte {self.offset}: record {index} "
                               f"({name}) needs {length + 4 - len(body)} more bytes",
                               offset=self.offset, record=index)
            payload = body[:length]
            (crc,) = CRC.unpack_from(body, length)
            if crc32c(head, payload) != crc:
                raise BadImage(f"bad checksum in record {index} ({name}) at byte {at}",
                               record=index, offset=at)
            if rec is None and not flags & FLAG_OPTIONAL:
                raise Incompatible(f"record {index} at byte {at} has unknown tag {tag}: "
                                   f"the image needs a newer umig", record=index, offset=at)
            frame = Frame(index, at, tag, flags, payload)
            if tag == schema.TRAILER.tag:
                self._check_trailer(frame, index, digest)
                return
            digest.update(head)
            digest.update(body[length:])
            index += 1
            if rec is not None:
                yield frame

    def _check_trailer(self, frame: Frame, index: int, digest) -> None:
        t = frame.decode()
        if t["records"] != index:
            raise BadImage(f"trailer at byte {frame.offset} counts {t['records']} records, "
                           f"the image has {index}: records are missing or repeated",
                           offset=frame.offset)
        if t["digest"] != digest.digest():
            raise BadImage(f"trailer at byte {frame.offset}: the stream digest does not "
                           f"match; records were reordered or replaced", offset=frame.offset)
        self.trailer = t
        if self.followed:
            return
        extra = self._read(1)
        if len(extra):
            raise BadImage(f"data after the trailer at byte {self.offset - 1}",
                           offset=self.offset - 1)


def decode_pages(frame: Frame) -> tuple[int, int, int, memoryview, memoryview]:
    """(round, flags, raw_len, runs bytes, data bytes) of a PAGES record,
    as views into the payload."""
    p = frame.payload
    if len(p) < PAGES_HEAD.size:
        raise BadImage(f"record {frame.index} (PAGES) at byte {frame.offset} is too short",
                       record=frame.index, offset=frame.offset)
    round_, flags, raw_len, nruns = PAGES_HEAD.unpack_from(p)
    runs_end = PAGES_HEAD.size + 16 * nruns
    if runs_end > len(p):
        raise BadImage(f"record {frame.index} (PAGES) at byte {frame.offset} is malformed",
                       record=frame.index, offset=frame.offset)
    return round_, flags, raw_len, p[PAGES_HEAD.size:runs_end], p[runs_end:]


class Output:
    """Where grab writes an image.  A regular file is written under a
    temporary name next to it and renamed into place only when the image is
    complete and synced, so a failed grab leaves no partial image and never
    destroys an older one.  Anything else (stdout, a pipe, a device such as
    /dev/null) is written directly and never removed."""

    def __init__(self, path: str | None):
        self.path = path
        self.tmp: str | None = None
        self.seekable = False      # a new file of ours, open to read and write
        if path in (None, "-"):
            self.fd = 1
            return
        try:
            st = os.stat(path)
            direct = not stat.S_ISREG(st.st_mode)
        except FileNotFoundError:
            direct = False
        except OSError as e:
            raise ImageIOError(f"cannot write {path}: {e.strerror}", path=path) from e
        try:
            if direct:
                self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            else:
                d, base = os.path.split(os.path.abspath(path))
                self.tmp = os.path.join(d, f".{base}.umig-{os.getpid()}")
                # read and write if it can: grab writes pre-read pages ahead
                # into a file it may seek in (Output.seekable)
                flags = os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                try:
                    self.fd = os.open(self.tmp, os.O_RDWR | flags, 0o600)
                    self.seekable = True
                except OSError:
                    self.fd = os.open(self.tmp, os.O_WRONLY | flags, 0o600)
        except OSError as e:
            raise ImageIOError(f"cannot create {path}: {e.strerror}", path=path) from e

    def preallocate(self, nbytes: int) -> None:
        """Reserve room for the image before the process is frozen, so that
        the file system's allocation is not paid while it is (best effort:
        the estimate may be far too large, the real size is set by commit)."""
        if self.tmp and nbytes > 0:
            size = os.fstat(self.fd).st_size      # pre-read pages written ahead stay
            try:
                os.posix_fallocate(self.fd, 0, nbytes)
            except OSError:
                os.ftruncate(self.fd, size)

    def commit(self, size: int) -> None:
        """The image of `size` bytes is complete: cut the file to it, sync,
        and put it in place."""
        self.sync(size)
        self.place()

    def sync(self, size: int) -> None:
        """Cut the file to the image's `size` bytes and sync it, still under
        its temporary name, `tmp` (where it can be read back)."""
        if self.tmp:
            try:
                os.ftruncate(self.fd, size)
                os.fsync(self.fd)
            except OSError as e:
                raise ImageIOError(f"cannot write the image {self.path}: {e.strerror}",
                                   path=self.path) from e

    def place(self) -> None:
        """Put the synced image in place (rename, then sync the directory)."""
        if self.tmp:
            try:
                os.rename(self.tmp, self.path)
                dfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            except OSError as e:
                raise ImageIOError(f"cannot move the image into place at {self.path}: "
                                   f"{e.strerror}", path=self.path) from e
            self.tmp = None

    def abort(self) -> None:
        if self.tmp:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            self.tmp = None

    def close(self) -> None:
        if self.fd != 1:
            os.close(self.fd)
