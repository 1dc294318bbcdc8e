"""Landing files: event rows as JSON lines, each file written atomically through :mod:`freshrec.fileio`.

Readers of the landing zone (the batch clean, the streaming file source) never see a
half-written file, and a source too big for one file is split into numbered parts
(``{stem}00000.jsonl``, ``{stem}00001.jsonl``, ...) that each appear complete.
"""

from __future__ import annotations

from itertools import chain, islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Union

from freshrec.fileio import atomic_open, json_line

# An event row, or (on an importer's or the generator's hot path) its finished JSON line without
# the "\n": encoding each row with json.dumps would halve their rate.
Row = Union[Mapping[str, Any], str]

_LINES_PER_WRITE = 4096  # one write call per line costs more than joining them


def write_rows(final: Path, rows: Iterable[Row], gz: bool = False,
               on_rows: Callable[[int], None] | None = None) -> int:
    """Write ``rows`` as JSON lines to ``final`` atomically, gzip-compressed when ``gz``; returns
    the rows written. ``on_rows(n)`` hears of each ``n`` rows written (progress)."""
    it = iter(rows)
    n = 0
    with atomic_open(final, "w", gz=gz) as fh:
        while lines := [row if type(row) is str else json_line(row) for row in islice(it, _LINES_PER_WRITE)]:
            lines.append("")
            fh.write("\n".join(lines))
            n += len(lines) - 1
            if on_rows is not None:
                on_rows(len(lines) - 1)
    return n


def write_parts(directory: Path, stem: str, rows: Iterable[Row], rows_per_file: int,
                on_rows: Callable[[int], None] | None = None) -> Iterator[tuple[Path, int]]:
    """Write ``rows`` into ``directory/{stem}{part:05d}.jsonl`` files of at most ``rows_per_file``
    rows (none when there are no rows); yields (path, rows) as each file appears."""
    it = iter(rows)
    for part, first in enumerate(it):
        path = directory / f"{stem}{part:05d}.jsonl"
        yield path, write_rows(path, chain((first,), islice(it, rows_per_file - 1)), on_rows=on_rows)


def atomic_write_jsonl(directory: Path, name: str, rows: Iterable[Mapping], gz: bool = False) -> tuple[Path, int]:
    """Write rows as JSON lines to ``directory/name`` (``.gz`` added when ``gz``) atomically;
    returns (path, rows written)."""
    final = directory / (name + (".gz" if gz and not name.endswith(".gz") else ""))
    return final, write_rows(final, rows, gz=gz)
