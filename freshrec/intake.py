"""Taking landing files: which are complete, which can be read at all, and which are new.

One implementation for both paths. The batch ``clean`` and every micro-batch call
:func:`take_files` under the lake lock; it returns the files to read and sets aside the rest:

* **Not yet complete** (*pending*): a file modified less than ``landing_settle_seconds`` ago
  that does not look finished (empty, a plain file not ending in a newline, a gzip stream cut
  short) may still be being written; a later run takes it. Files written by the contract (a
  temporary name, then a rename) are whole when they appear and are taken at once. Temporary
  names (a leading ``.`` or ``_``, a ``.tmp`` / ``.part`` suffix) are never taken, and neither is
  a name without a landing suffix. No file is ever dropped for its age.
* **Unreadable as a whole** (*quarantined*): :func:`check_file` reads every byte once (gunzipping,
  decoding UTF-8 strictly, measuring each line, reading a CSV header). A file that fails moves to
  ``lake/quarantine_files/<batch id>/`` beside a ``.reason.json`` and never stops the others. Its
  rows are counted: the lines read before the fault plus one for the fault itself, all of them
  quarantined, so read = clean + quarantined + duplicates still holds.
* **Already taken**: the ledger remembers each file's size and modification time when it was
  taken. A micro-batch takes only files it has not seen; a file that changed after it was taken
  is *reported* (by every later micro-batch and by ``freshrec status``) and read again, whole, by
  the next batch, which rebuilds the lake from the landing zone.

A micro-batch *claims* its files in the ledger under its batch id before it reads them and
marks them taken when it has finished; a run that was killed in between leaves the claim, and
the next run replays that batch id with the same files (every write of a micro-batch is keyed on
its batch id, so a replay adds nothing twice).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import json
import logging
import os
import shutil
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from freshrec.fileio import atomic_write_text
from freshrec.ledger import Ledger
from freshrec.schemas import LANDING_SUFFIXES
from freshrec.settings import Settings

log = logging.getLogger(__name__)

#: every file-level reason code (docs/events.md#files), in the order the checks run
FILE_REASON_CODES = ("empty_file", "corrupt_gzip", "undecodable_bytes", "line_too_long", "unknown_header",
                     "wrong_delimiter")
REQUIRED_COLUMNS = ("user_id", "event_type", "ts")
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart")
_CHUNK = 1 << 20
_DELIMITERS = (";", "\t", "|")


@dataclass(frozen=True)
class FileFault:
    """Why a landing file cannot be read as a whole; ``rows`` lines were read before the fault."""

    code: str
    message: str
    rows: int = 0

    @property
    def counted(self) -> int:
        """Rows this file adds to read (and to quarantined): those before the fault, and the fault."""
        return self.rows + 1


def is_landing_name(name: str) -> bool:
    """A name the landing zone takes: visible, not a temporary, with a landing suffix."""
    lower = name.lower()
    return not name.startswith((".", "_")) and not lower.endswith(TEMP_SUFFIXES) and lower.endswith(LANDING_SUFFIXES)


def landing_files(directory: Path) -> list[Path]:
    """The landing files of ``directory`` by name (complete or not), sorted."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and is_landing_name(p.name))


def is_csv(path: Path) -> bool:
    return path.name.lower().endswith((".csv", ".csv.gz"))


def _chunks(path: Path):
    """The file's bytes, gunzipped when its name ends in .gz, a chunk at a time."""
    if path.name.lower().endswith(".gz"):
        with gzip.open(path, "rb") as fh:  # read1: what decompresses before a cut is still handed over
            while chunk := fh.read1(_CHUNK):
                yield chunk
    else:
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                yield chunk


def _header_fault(header: str) -> FileFault | None:
    """A CSV header that names the required columns, else why not."""
    names = [c.strip().strip('"').lower() for c in next(csv.reader([header]), [])]
    if all(c in names for c in REQUIRED_COLUMNS):
        return None
    for delimiter in _DELIMITERS:
        split = [c.strip().strip('"').lower() for c in header.split(delimiter)]
        if all(c in split for c in REQUIRED_COLUMNS):
            shown = "tab" if delimiter == "\t" else repr(delimiter)
            return FileFault("wrong_delimiter", f"the header is separated by {shown}, not by commas: landing CSV "
                             f"files are comma-separated (convert it, or use `freshrec import csv`)")
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    return FileFault("unknown_header", f"the CSV header lacks {', '.join(missing)} (it reads: "
                     f"{_clip(header, 120)}); the columns are named in docs/events.md")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _json_header_fault(line: str) -> FileFault | None:
    """A JSON-lines file whose first line is a CSV header: every row would be malformed."""
    if line.lstrip().startswith(("{", "[")):
        return None
    if "user_id" in line and any(d in line for d in (",", *_DELIMITERS)):
        return FileFault("unknown_header", f"the first line is a CSV header in a JSON-lines file ({_clip(line, 120)}): "
                         "name the file .csv, or write one JSON object per line")
    return None


def check_file(path: Path, max_line_bytes: int) -> FileFault | None:
    """Read ``path`` once, whole: None when every byte can be handed to the row rules, else the
    file-level fault (an empty file, a corrupt gzip, bytes that are not UTF-8, a line over
    ``max_line_bytes``, a CSV header without the required columns or with another delimiter)."""
    if path.stat().st_size == 0:
        return FileFault("empty_file", "the file is empty (0 bytes)")
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    csv_file = is_csv(path)
    rows = 0          # complete lines before the current chunk (the CSV header included)
    line_len = 0      # bytes of the line in progress
    first = bytearray()
    header_done = False
    offset = 0
    try:
        for chunk in _chunks(path):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                at = offset + exc.start
                line = rows + chunk.count(b"\n", 0, exc.start) + 1
                return FileFault("undecodable_bytes", f"byte {at:,} (line {line:,}) is not UTF-8: "
                                 f"{chunk[exc.start:exc.start + 4]!r}; re-export the file as UTF-8",
                                 _data_rows(line - 1, csv_file))
            lines = chunk.split(b"\n")
            for i, part in enumerate(lines):
                line_len += len(part)
                if line_len > max_line_bytes:
                    line = rows + i + 1
                    return FileFault("line_too_long", f"line {line:,} is longer than {max_line_bytes:,} bytes "
                                     "(FRESHREC_MAX_LINE_BYTES)", _data_rows(line - 1, csv_file))
                if i < len(lines) - 1:
                    line_len = 0
            if not header_done:
                first += chunk[: max_line_bytes + 1]
                if b"\n" in first or len(first) > max_line_bytes:
                    header_done = True
            rows += len(lines) - 1
            offset += len(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        return FileFault("undecodable_bytes", f"the file ends inside a UTF-8 character ({exc.reason})",
                         _data_rows(rows, csv_file))
    except (EOFError, OSError, zlib.error) as exc:
        return FileFault("corrupt_gzip", f"cannot gunzip past byte {offset:,} of the uncompressed stream: {exc}",
                         _data_rows(rows, csv_file))
    head = bytes(first).split(b"\n", 1)[0].decode("utf-8").rstrip("\r")
    if csv_file:
        return _header_fault(head)
    return _json_header_fault(head)


def _data_rows(lines: int, csv_file: bool) -> int:
    """Complete lines that are rows (a CSV's first line is its header)."""
    return max(lines - 1, 0) if csv_file else lines


# -- taking files ----------------------------------------------------------------------------


@dataclass
class Intake:
    """What :func:`take_files` decided for one run."""

    files: list[tuple[Path, float]] = field(default_factory=list)   # to read: (path, landing time)
    pending: list[str] = field(default_factory=list)                 # not settled yet: a later run takes them
    quarantined: list[dict[str, Any]] = field(default_factory=list)  # set aside as files, with their reason
    changed: list[dict[str, Any]] = field(default_factory=list)      # taken earlier, changed since
    counts: list[dict[str, Any]] = field(default_factory=list)       # per-file counts of the quarantined files
    replay: bool = False                                              # the files of a micro-batch that did not finish

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.pending:
            out["pending_files"] = self.pending
        if self.quarantined:
            out["quarantined_files"] = [{k: q[k] for k in ("name", "code", "message")} for q in self.quarantined]
        if self.changed:
            out["changed_files"] = [c["name"] for c in self.changed]
        return out


def quarantine_files_dir(settings: Settings) -> Path:
    return settings.lake_dir / "quarantine_files"


def _move_aside(settings: Settings, path: Path, fault: FileFault, batch_id: str) -> Path:
    """Move an unreadable file into lake/quarantine_files/<batch id>/ with its reason beside it."""
    target_dir = quarantine_files_dir(settings) / batch_id
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / path.name
    reason = {"name": path.name, "code": fault.code, "message": fault.message, "rows": fault.rows,
              "batch_id": batch_id, "landed_at": path.stat().st_mtime}
    atomic_write_text(target_dir / f"{path.name}.reason.json", json.dumps(reason, indent=1))
    try:
        os.replace(path, target)  # same file system: atomic
    except OSError:
        shutil.move(str(path), target)
    return target


def _ends_whole(path: Path, size: int) -> bool:
    """Whether a file modified moments ago looks finished: not empty, and a plain file ends with
    a newline (a writer flushing its buffer mid-file stops mid-line far more often than not)."""
    if size == 0:
        return False
    if path.name.lower().endswith(".gz"):
        return True  # judged by check_file: a gzip stream cut short cannot be gunzipped
    with path.open("rb") as fh:
        fh.seek(size - 1)
        return fh.read(1) == b"\n"


def take_files(settings: Settings, batch_id: str, mode: Literal["batch", "micro"], now: float | None = None) -> Intake:
    """Decide which landing files this run reads (call under the lake lock).

    ``batch``: every settled, readable file (a full rebuild), each recorded as taken by
    ``batch_id``. ``micro``: only settled, readable files never taken before, claimed for
    ``batch_id`` (:meth:`Ledger.finish_claim` marks them taken when the micro-batch is done).
    Unreadable files are moved aside in both modes and counted under their own name."""
    now = time.time() if now is None else now
    ledger = Ledger(settings.state_db)
    known = ledger.landing_states()
    intake = Intake()
    taken: list[tuple[str, int, int]] = []
    for path in landing_files(settings.landing_events_dir):
        try:
            st = path.stat()
        except FileNotFoundError:  # removed while we listed
            continue
        young = now - st.st_mtime < settings.landing_settle_seconds
        if young and not _ends_whole(path, st.st_size):
            intake.pending.append(path.name)
            continue
        before = known.get(path.name)
        seen = before is not None and before["state"] in ("taken", "claimed")
        same = seen and (before["size"], before["mtime_ns"]) == (st.st_size, st.st_mtime_ns)
        if seen and not same:
            intake.changed.append({"name": path.name, "taken_by": before["batch_id"],
                                   "size": [before["size"], st.st_size]})
        if mode == "micro" and seen:
            continue
        if not same:  # new, or changed since it was checked
            fault = check_file(path, settings.max_line_bytes)
            if fault is not None and young and fault.code == "corrupt_gzip":
                intake.pending.append(path.name)  # a gzip stream still being written ends early too
                continue
            if fault is not None:
                stored = _move_aside(settings, path, fault, batch_id)
                log.warning("landing file %s quarantined (%s): %s", path.name, fault.code, fault.message)
                intake.quarantined.append({"name": path.name, "code": fault.code, "message": fault.message,
                                           "rows": fault.rows, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                           "path": str(stored)})
                intake.counts.append({"source_file": path.name, "read": fault.counted, "clean": 0,
                                      "quarantined": fault.counted, "duplicates": 0})
                continue
        intake.files.append((path, st.st_mtime))
        taken.append((path.name, st.st_size, st.st_mtime_ns))
    ledger.record_landing(taken, intake.quarantined, batch_id, state="taken" if mode == "batch" else "claimed")
    if intake.counts:
        ledger.record_file_counts(intake.counts, batch_id)
    return intake


def landing_report(settings: Settings, ledger: Ledger) -> dict[str, Any]:
    """For ``freshrec status``: files quarantined whole (newest first), files changed since a run
    took them, and how many landing files no run has taken yet."""
    states = ledger.landing_states()
    changed, waiting = [], 0
    for path in landing_files(settings.landing_events_dir):
        state = states.get(path.name)
        if state is None or state["state"] == "quarantined":
            waiting += 1
            continue
        st = path.stat()
        if (st.st_size, st.st_mtime_ns) != (state["size"], state["mtime_ns"]):
            changed.append(path.name)
    quarantined = sorted(({"name": n, "code": st["code"], "message": st["message"], "batch_id": st["batch_id"]}
                          for n, st in states.items() if st["state"] == "quarantined"),
                         key=lambda q: q["batch_id"], reverse=True)
    return {"quarantined_files": quarantined, "changed_files": changed, "waiting_files": waiting}
