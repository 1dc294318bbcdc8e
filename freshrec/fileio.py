"""Atomic file writes and the row encoder, written once for every writer in freshrec.

A file is complete when it appears under its final name: writers write a hidden temporary name
in the same directory (``.<name>.<uuid>.tmp``: leading dot, so Spark's file sources and our
listings ignore it), flush and fsync it, then rename it into place. Readers see the old file or
the new one, never a half-written one, and a crash leaves at most a hidden temporary behind.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import IO, Any, Iterator, Mapping


def temp_name(final: Path) -> Path:
    """The hidden temporary sibling ``final`` is written under before the rename."""
    return final.parent / f".{final.name}.{uuid.uuid4().hex}.tmp"


def fsync_path(path: Path) -> None:
    """Flush a written file (or every file under a directory) to disk."""
    paths = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be fsynced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temporary path to write (a file or a directory, by any writer: pyarrow, Spark, ...);
    on success it is fsynced and renamed to ``final`` (replacing it), on error removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    try:
        yield tmp
        fsync_path(tmp)
        if final.is_dir() and tmp.is_dir():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(final: Path, mode: str = "w", gz: bool = False) -> Iterator[IO[Any]]:
    """Open ``final`` for writing, atomically: text (``"w"``, UTF-8, no newline translation) or
    bytes (``"wb"``), optionally gzip-compressed with a zero mtime (identical content gives
    identical bytes). Every handle, the gzip stream's underlying file included, is closed
    before the rename."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes only: mode 'w' or 'wb', not {mode!r}")
    with atomic_path(final) as tmp, tmp.open("wb") as raw:
        zipped = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if gz else None
        binary: IO[bytes] = zipped if zipped is not None else raw
        text = io.TextIOWrapper(binary, encoding="utf-8", newline="") if mode == "w" else None
        try:
            yield text if text is not None else binary
        finally:
            if text is not None:
                text.flush()
                text.detach()  # leaves ``binary`` open: closed below, in order
            if zipped is not None:
                zipped.close()  # writes the gzip trailer; ``raw`` is closed by its with-block


def atomic_write_text(path: Path, text: str) -> Path:
    """Replace ``path`` with ``text`` atomically (readers see the old file or the new one)."""
    with atomic_open(path, "w") as fh:
        fh.write(text)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return path


def json_line(row: Mapping[str, Any]) -> str:
    """One event row as a compact JSON line (no newline); ``None`` fields are left out."""
    return json.dumps({k: v for k, v in row.items() if v is not None}, separators=(",", ":"), allow_nan=True)
