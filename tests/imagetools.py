"""Rewriting real images for tests: decode every record, let the test change
values, and write a new, well-formed image (fresh checksums and trailer)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from umig.image import schema
from umig.image.stream import ImageReader, ImageWriter


def frames(path: Path) -> list:
    fd = os.open(path, os.O_RDONLY)
    try:
        return list(ImageReader(fd))
    finally:
        os.close(fd)


def rewrite(src: Path, dst: Path, edit: Callable[[str, dict], dict | None]) -> None:
    """edit(record name, values) returns the values to write, or None to drop
    the record."""
    recs = [(schema.RECORDS[f.tag], f.decode()) for f in frames(src)]
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        w = ImageWriter(fd)
        for rec, values in recs:
            values = edit(rec.name, values)
            if values is not None:
                w.record(rec, values)
        w.finish()
    finally:
        os.close(fd)


def record_offsets(path: Path) -> list[tuple[str, int, int]]:
    """(name, offset, payload length) of every record but the trailer."""
    return [(f.name, f.offset, len(f.payload)) for f in frames(path)]
