"""Reading an image up to its pages: everything resume must decide on
before it starts a process."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import BadImage
from ..image import schema
from ..image.stream import Frame, ImageReader

REQUIRED = ("HEADER", "PROCESS", "CREDS", "RLIMITS", "MM", "THREAD", "SIGACTIONS",
            "PENDING", "ITIMERS")


@dataclass
class Image:
    """One process of the image."""
    header: dict = field(default_factory=dict)
    process: dict = field(default_factory=dict)
    creds: dict = field(default_factory=dict)
    rlimits: dict = field(default_factory=dict)
    mm: dict = field(default_factory=dict)
    vdso: dict | None = None
    vmas: list[dict] = field(default_factory=list)
    threads: list[dict] = field(default_factory=list)     # the leader first
    sigactions: dict = field(default_factory=dict)
    pending: dict = field(default_factory=dict)
    itimers: dict = field(default_factory=dict)
    fds: list[dict] = field(default_factory=list)
    pipes: dict[int, dict] = field(default_factory=dict)      # by ino

    @property
    def thread(self) -> dict:
        """The leader: the thread whose tid is the pid."""
        return self.threads[0]


_SINGLE = {"HEADER": "header", "PROCESS": "process", "CREDS": "creds", "RLIMITS": "rlimits",
           "MM": "mm", "VDSO": "vdso", "SIGACTIONS": "sigactions",
           "PENDING": "pending", "ITIMERS": "itimers"}


class Loaded:
    """The image's state records, and the frames still to come (pages,
    then the trailer, verified by the reader).

    An image of a tree has one section per process, each starting with its
    PROCESS record (parents first); HEADER, PIPE and ZOMBIE records belong
    to the whole image.  `image` is the first (root) process."""

    def __init__(self, reader: ImageReader):
        self.reader = reader
        self._frames = iter(reader)
        self._pushed: Frame | None = None
        self.header: dict = {}
        self.images: list[Image] = []
        self.zombies: list[dict] = []
        self.pipes: dict[int, dict] = {}
        self.files: list[dict] = []          # FILE records (grab --ship-files)
        self._load()
        self.image = self.images[0]

    def _load(self) -> None:
        img: Image | None = None
        seen: set[str] = set()
        for frame in self._frames:
            name = frame.name
            if frame.index == 0 and name != "HEADER":
                raise BadImage(f"record 0 at byte {frame.offset} is {name}, not HEADER",
                               record=0, offset=frame.offset)
            if name in ("PAGES", "ROUND_END", "OWNER"):
                self._pushed = frame
                break
            values = frame.decode()
            if name == "HEADER":
                if self.header:
                    raise BadImage(f"record {frame.index} repeats HEADER", record=frame.index)
                self.header = values
                continue
            if name == "PIPE":
                self.pipes[values["ino"]] = values
                continue
            if name == "ZOMBIE":
                self.zombies.append(values)
                continue
            if name == "FILE":
                self.files.append(values)
                continue
            if name == "PROCESS":
                if img is not None:
                    self._finish(img, seen)
                img = Image(header=self.header)
                self.images.append(img)
                seen = {"HEADER"}
            elif img is None:
                if name in _SINGLE or name in ("VMA", "FD", "THREAD"):
                    raise BadImage(f"record {frame.index} ({name}) comes before any PROCESS "
                                   f"record", record=frame.index)
                continue      # records of optional kinds this umig does not use
            if name in _SINGLE:
                if name in seen:
                    raise BadImage(f"record {frame.index} repeats {name}", record=frame.index)
                seen.add(name)
                setattr(img, _SINGLE[name], values)
            elif name == "VMA":
                img.vmas.append(values)
            elif name == "FD":
                img.fds.append(values)
            elif name == "THREAD":
                seen.add(name)
                img.threads.append(values)
            # records of optional kinds this umig does not use are skipped
        if img is None:
            raise BadImage("image has no PROCESS record: it is truncated or corrupt")
        self._finish(img, seen)
        pids = [i.process["pid"] for i in self.images] + [z["pid"] for z in self.zombies]
        if len(set(pids)) != len(pids):
            raise BadImage("the image holds two processes with the same pid")
        for i in self.images:
            i.pipes = self.pipes

    def _finish(self, img: Image, seen: set[str]) -> None:
        missing = [r for r in REQUIRED if r not in seen]
        if missing:
            raise BadImage(f"image has no {', '.join(missing)} record"
                           f"{'s' if len(missing) > 1 else ''}"
                           + (f" for process {img.process['pid']}" if img.process else "")
                           + ": it is truncated or corrupt")
        self._check_threads(img)

    @staticmethod
    def _check_threads(img: Image) -> None:
        pid = img.process["pid"]
        tids = [t["tid"] for t in img.threads]
        if tids[0] != pid:
            raise BadImage(f"the image's first THREAD record is thread {tids[0]}, not the "
                           f"leader {pid}")
        if len(set(tids)) != len(tids):
            raise BadImage("the image has two THREAD records for the same thread")
        if img.process["nthreads"] != len(tids):
            raise BadImage(f"the image's PROCESS record counts {img.process['nthreads']} "
                           f"threads but it holds {len(tids)} THREAD records")
        # images from before THREAD.pending: the leader's own signals were in PENDING
        own = [s for s in img.pending["signals"] if not s["shared"]]
        if own:
            img.threads[0]["pending"] = img.threads[0].get("pending", []) + [
                {"sig": s["sig"], "info": s["info"]} for s in own]
            img.pending["signals"] = [s for s in img.pending["signals"] if s["shared"]]

    def page_frames(self) -> Iterator[tuple[int, Frame]]:
        """(pid, frame) for each PAGES frame; pid is the process the pages
        belong to (the OWNER before them; the root if none).  Returns once
        the trailer is verified."""
        owner = self.image.process["pid"]
        members = {i.process["pid"] for i in self.images}
        pending = [self._pushed] if self._pushed is not None else []
        self._pushed = None
        for frame in itertools.chain(pending, self._frames):
            if frame.tag == schema.PAGES.tag:
                yield owner, frame
            elif frame.tag == schema.OWNER.tag:
                owner = frame.decode()["pid"]
                if owner not in members:
                    raise BadImage(f"record {frame.index} (OWNER) names process {owner}, "
                                   f"which the image does not hold", record=frame.index)
            elif frame.tag != schema.ROUND_END.tag and (frame.name in _SINGLE
                                                         or frame.name in ("VMA", "FD",
                                                                           "THREAD", "PIPE",
                                                                           "PROCESS", "ZOMBIE")):
                raise BadImage(f"record {frame.index} ({frame.name}) at byte {frame.offset} "
                               f"comes after the pages", record=frame.index)
