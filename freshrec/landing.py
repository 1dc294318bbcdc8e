"""Atomic writes into the landing zone.

A landing file is complete when it appears: writers write a hidden temporary name in the same
directory and rename it, so readers (the batch clean and the streaming file source) never see a
half-written file. Hidden names (leading dot or underscore) are ignored by Spark's file sources.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import uuid
from pathlib import Path
from typing import IO, Iterable, Mapping


def _open_text(path: Path, gz: bool) -> IO[str]:
    if gz:
        # mtime=0 keeps the bytes deterministic for identical content.
        return io.TextIOWrapper(gzip.GzipFile(filename="", mode="wb", fileobj=path.open("wb"), mtime=0), encoding="utf-8")
    return path.open("w", encoding="utf-8", newline="")


def atomic_write_jsonl(directory: Path, name: str, rows: Iterable[Mapping], gz: bool = False) -> tuple[Path, int]:
    """Write rows as JSON lines to ``directory/name`` atomically; returns (path, rows written)."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / (name + (".gz" if gz and not name.endswith(".gz") else ""))
    tmp = directory / f".{final.name}.{uuid.uuid4().hex}.tmp"
    n = 0
    try:
        with _open_text(tmp, gz) as fh:
            for row in rows:
                fh.write(json.dumps({k: v for k, v in row.items() if v is not None}, separators=(",", ":"), allow_nan=True))
                fh.write("\n")
                n += 1
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final, n


def atomic_write_text(path: Path, text: str) -> Path:
    """Replace ``path`` with ``text`` atomically (readers see the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
