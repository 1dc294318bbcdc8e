"""Importers: map public data sets and generic files onto the canonical event log.

Importers *map*, they do not validate: every data row of a source becomes exactly one landing
row (an OTTO session line becomes one row per event), carrying its raw value where it cannot be
mapped, so that the Spark clean job quarantines it with a reason. Nothing is dropped silently;
the only rows left out on purpose are movielens ratings below ``--min-rating`` (an explicit
user choice, counted and reported) and blank lines (which hold no row).

Landing files are written atomically (:mod:`freshrec.landing`) and are named uniquely per
import, so the landing zone is append-only: importing the same source twice writes new files
whose rows carry the same derived ``event_id`` values, and downstream dedup counts the second
copy as duplicates.

Every reader streams, whatever the size of the source: rows are written as they are read and
memory stays bounded. The hot paths hand over ready JSON lines, byte for byte what
:func:`freshrec.fileio.json_line` makes of the row, because ``json.dumps`` per row would halve the rate.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import re
import shutil
import sys
import zipfile
import zlib
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import IO, Callable, Iterator

from freshrec.errors import UserError
from freshrec.fileio import atomic_path
from freshrec.landing import Row, write_parts
from freshrec.schemas import EVENT_FIELDS, EVENT_TYPES, LANDING_SUFFIXES

log = logging.getLogger(__name__)

# Field a landing row carries when a source line could not be mapped at all (e.g. an OTTO line
# that is not JSON). Not a canonical field: the clean job quarantines such rows, keeping the text.
RAW_SOURCE_FIELD = "raw_source"

RETAILROCKET_EVENTS = {"view": "view", "addtocart": "add_to_cart", "transaction": "purchase"}
OTTO_EVENTS = {"clicks": "view", "carts": "add_to_cart", "orders": "purchase"}
TAFENG_MEMBER = "ta_feng_all_months_merged.csv"
TAFENG_COLUMNS = ("TRANSACTION_DT", "CUSTOMER_ID", "PRODUCT_SUBCLASS", "PRODUCT_ID", "AMOUNT", "SALES_PRICE")

_esc = encode_basestring_ascii  # JSON string literal, quotes included, same as json.dumps


@dataclass(frozen=True)
class ImportOptions:
    """How ``freshrec import`` reads a source (docs/commands.md); the defaults are the command's."""

    rows_per_file: int = 500_000
    min_rating: float | None = None  # movielens: keep ratings >= this value
    # format csv: the source column holding each canonical field, and how to read them
    user_col: str | None = None
    item_col: str | None = None
    ts_col: str | None = None
    event_col: str | None = None
    session_col: str | None = None
    category_col: str | None = None
    price_col: str | None = None
    quantity_col: str | None = None
    query_col: str | None = None
    event_id_col: str | None = None
    event_map: str | None = None  # "click=view,buy=purchase"
    default_event: str | None = None
    ts_format: str | None = None  # strptime format, or epoch_ms / epoch_s
    delimiter: str = ","
    force: bool = False  # import even when most of the rows checked up front would be quarantined


@dataclass
class ImportReport:
    """What one ``import`` invocation did."""

    files: list[tuple[Path, int]] = field(default_factory=list)
    rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows deliberately left out
    check: "ImportCheck | None" = None  # the up-front check of the first rows of each source

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n


# --------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------

def import_sources(settings, fmt: str, sources: list[Path],
                   options: ImportOptions = ImportOptions()) -> list[tuple[Path, int]]:
    """Import ``sources`` of format ``fmt`` into the landing zone; returns (landing file, rows) per file."""
    try:
        report = run_import(settings, fmt, sources, options)
    except ImportRefused as exc:
        print(format_check(exc.check, fmt), file=sys.stderr)
        raise
    if report.check is not None and report.check.failed:
        print(format_check(report.check, fmt), file=sys.stderr)
    for reason, n in sorted(report.skipped.items()):
        if n:
            print(f"freshrec: note: left out {n:,} row(s): {reason}", file=sys.stderr)
    return report.files


def run_import(settings, fmt: str, sources: list[Path], options: ImportOptions = ImportOptions()) -> ImportReport:
    """Like :func:`import_sources` but returns the full :class:`ImportReport` (skip counts included)."""
    if fmt not in _READERS and fmt != "events":
        raise UserError(f"unknown import format {fmt!r}; expected one of events, {', '.join(sorted(_READERS))}")
    sources = [Path(s) for s in sources]
    if not sources:
        raise UserError("no source file given")
    for src in sources:
        _check_source_file(src)
    rows_per_file = options.rows_per_file
    if rows_per_file < 1:
        raise UserError(f"--rows-per-file must be >= 1, got {rows_per_file}")
    directory = settings.landing_events_dir
    directory.mkdir(parents=True, exist_ok=True)
    report = ImportReport()

    if fmt == "events":
        prepared = [(src, _events_suffix(src)) for src in sources]  # validate every name before copying any
        report.check = check_sources(settings, [_canonical_rows(src) for src in sources], options)
        with _progress() as progress:
            for src, suffix in prepared:
                path, n = _copy_canonical(directory, src, suffix)
                report.files.append((path, n))
                report.rows += n
                progress(src.name, n)
        return report

    reader = _READERS[fmt]
    # Open and check the header of every source before writing anything, so a bad second
    # file does not leave the first one half-imported.
    for src in sources:
        gen = reader(src, options, report)
        try:
            next(gen, None)
        finally:
            gen.close()
    report.check = check_sources(settings, [reader(src, options, ImportReport()) for src in sources], options)
    report.skipped.clear()

    with _progress() as progress:
        for src in sources:
            for path, n in _write_parts(directory, fmt, src, reader(src, options, report), rows_per_file, progress):
                report.files.append((path, n))
                report.rows += n
    log.info("imported %d rows from %d source(s) into %d landing file(s)", report.rows, len(sources), len(report.files))
    return report


# --------------------------------------------------------------------------------------------
# helpers shared by the readers
# --------------------------------------------------------------------------------------------

def event_ids(fmt: str, basename: str) -> Callable[[int | str], str]:
    """Deterministic event ids for the rows of one source file: ``make(row)`` is
    ``{fmt}-`` + the first 20 hex digits of sha1(``{fmt}:{basename}:{row}``), ``row`` a row or line
    number (or ``"line:k"``). Homes already hold these ids: never change the recipe."""
    head = f"{fmt}:{basename}:".encode("utf-8")  # encoded once: ids are made on every row's hot path
    prefix = f"{fmt}-"
    sha1 = hashlib.sha1

    def make(row: int | str) -> str:
        return prefix + sha1(head + str(row).encode("utf-8")).hexdigest()[:20]

    return make


def derive_event_id(fmt: str, basename: str, row: int | str) -> str:
    """The id :func:`event_ids` gives row ``row`` of source file ``basename`` of format ``fmt``."""
    return event_ids(fmt, basename)(row)


def _check_source_file(src: Path) -> None:
    if not src.exists():
        raise UserError(f"source file not found: {src}")
    if src.is_dir():
        raise UserError(f"source is a directory, expected a file: {src}")
    if not src.is_file():
        raise UserError(f"source is not a regular file: {src}")
    if src.stat().st_size == 0:
        raise UserError(f"source file is empty: {src}")


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _stem(src: Path) -> str:
    name = src.name
    for suffix in (".gz", ".zip"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    for suffix in (".jsonl", ".json", ".csv", ".dat", ".data", ".tsv", ".txt"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return _SAFE.sub("_", name).strip("._") or "source"


def _unique_prefix(directory: Path, fmt: str, src: Path) -> str:
    """``{fmt}-{stem}-{UTC time to the microsecond}``, unused so far in ``directory``."""
    stem = _stem(src)
    while True:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        prefix = f"{fmt}-{stem}-{stamp}"
        if not any(directory.glob(f"{prefix}-*")) and not any(directory.glob(f".{prefix}-*")):
            return prefix


def _write_parts(directory: Path, fmt: str, src: Path, rows: Iterator[Row], rows_per_file: int,
                 progress: Callable[[str, int], None]) -> Iterator[tuple[Path, int]]:
    desc = f"{fmt} {src.name}"
    stem = f"{_unique_prefix(directory, fmt, src)}-"
    return write_parts(directory, stem, rows, rows_per_file, on_rows=lambda n: progress(desc, n))


@contextmanager
def _open_text(src: Path, member: str | None = None, encoding: str = "utf-8-sig") -> Iterator[IO[str]]:
    """Open a source as text: plain, ``.gz`` or a ``.zip`` (the named member, else its only file)."""
    with ExitStack() as stack:
        name = src.name.lower()
        if name.endswith(".zip") or (not name.endswith(".gz") and zipfile.is_zipfile(src)):
            try:
                zf = stack.enter_context(zipfile.ZipFile(src))
            except zipfile.BadZipFile as exc:
                raise UserError(f"{src}: not a readable zip file ({exc})") from None
            names = [i.filename for i in zf.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX/")]
            wanted = [n for n in names if member and n.rsplit("/", 1)[-1] == member]
            if not wanted and member is None and len(names) == 1:
                wanted = names
            if not wanted:
                expected = f"member {member!r}" if member else "exactly one file"
                raise UserError(f"{src}: zip has no {expected}; it holds: {', '.join(names) or '(nothing)'}")
            binary = stack.enter_context(zf.open(wanted[0]))
        elif name.endswith(".gz"):
            binary = stack.enter_context(gzip.open(src, "rb"))
        else:
            binary = stack.enter_context(src.open("rb"))
        text = stack.enter_context(io.TextIOWrapper(binary, encoding=encoding, errors="replace", newline=""))
        try:
            yield text
        except (EOFError, gzip.BadGzipFile, zipfile.BadZipFile, zlib.error) as exc:
            raise UserError(f"{src}: corrupt compressed data ({exc})") from None


def _source_ids(fmt: str, src: Path, member: str | None) -> Callable[[int | str], str]:
    """:func:`event_ids` for the data file ``src`` holds (a zip's member, not the zip)."""
    return event_ids(fmt, _zip_member_basename(src, member))


def _zip_member_basename(src: Path, member: str | None) -> str:
    """Base name used for derived ids: the data file's own name (a zip's member, not the zip)."""
    if src.name.lower().endswith(".zip") or zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX/")]
        for n in names:
            if member and n.rsplit("/", 1)[-1] == member:
                return member
        if len(names) == 1:
            return names[0].rsplit("/", 1)[-1]
    name = src.name
    return name[:-3] if name.lower().endswith(".gz") else name


def _header_index(src: Path, header: list[str] | None, wanted: dict[str, str | None], fmt: str) -> dict[str, int | None]:
    """Map canonical name -> column index; UserError naming the missing column and the ones available."""
    if header is None:
        raise UserError(f"{src}: empty file, no header row")
    cols = [h.strip() for h in header]
    out: dict[str, int | None] = {}
    for key, col in wanted.items():
        if col is None:
            out[key] = None
            continue
        if col in cols:
            out[key] = cols.index(col)
            continue
        lowered = [c.lower() for c in cols]
        if col.lower() in lowered:
            out[key] = lowered.index(col.lower())
            continue
        raise UserError(f"{src}: column {col!r} not found ({fmt}); available columns: {', '.join(cols) or '(none)'}")
    return out


def _numbered_rows(reader: Iterator[list[str]], report: ImportReport) -> Iterator[tuple[int, list[str]]]:
    """The non-blank rows, numbered from 1 (the number names the row's event id); blank ones are counted as skipped."""
    n = 0
    for row in reader:
        if not row or not any(cell.strip() for cell in row):
            report.skip("blank lines")
            continue
        n += 1
        yield n, row


def _first_row(reader: Iterator[list[str]]) -> list[str] | None:
    for row in reader:
        if row and any(cell.strip() for cell in row):
            return row
    return None


def _int_or_raw(text: str | None):
    """An int where the cell holds one (or a whole float), a float or the raw text otherwise: the clean job judges."""
    value = _float_or_raw(text)
    if not isinstance(value, float):
        return value
    try:
        return int(text.strip())
    except ValueError:
        return int(value) if value.is_integer() and abs(value) < 2**63 else value


def _float_or_raw(text: str | None):
    if _none_if_empty(text) is None:
        return None
    try:
        return float(text.strip())
    except ValueError:
        return text


def _none_if_empty(text: str | None) -> str | None:
    if text is None:
        return None
    return text if text.strip() != "" else None


def _cell(row: list[str], idx: int | None) -> str | None:
    if idx is None or idx >= len(row):
        return None
    return row[idx]


# --------------------------------------------------------------------------------------------
# events: canonical files are copied byte for byte
# --------------------------------------------------------------------------------------------

def _events_suffix(src: Path) -> str:
    name = src.name.lower()
    for suffix in sorted(LANDING_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise UserError(f"{src}: canonical events must be named *{', *'.join(LANDING_SUFFIXES)}")


def _copy_canonical(directory: Path, src: Path, suffix: str) -> tuple[Path, int]:
    with src.open("rb") as fh:
        magic = fh.read(2)
    is_gz = magic == b"\x1f\x8b"
    if suffix.endswith(".gz") and not is_gz:
        raise UserError(f"{src}: named .gz but is not gzip data")
    if not suffix.endswith(".gz") and is_gz:
        raise UserError(f"{src}: holds gzip data; name it *{suffix}.gz")
    final = directory / f"{_unique_prefix(directory, 'events', src)}-00000{suffix}"
    with atomic_path(final) as tmp:
        shutil.copyfile(src, tmp)
        n = _count_rows(tmp, suffix, src)
        if n == 0 and not suffix.startswith(".csv"):
            raise UserError(f"{src}: no events in file")
    return final, n


def _count_rows(path: Path, suffix: str, src: Path) -> int:
    """Rows in a canonical file: non-blank lines for JSON lines, records after the header for CSV."""
    try:
        opener = gzip.open(path, "rb") if suffix.endswith(".gz") else path.open("rb")
        with opener as fh:
            if suffix.startswith(".csv"):
                text = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="replace", newline="")
                rows = sum(1 for row in csv.reader(text) if row and any(c.strip() for c in row))
                if rows == 0:
                    raise UserError(f"{src}: empty file, no header row")
                return rows - 1
            n = 0
            for line in fh:
                if line.strip():
                    n += 1
            return n
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise UserError(f"{src}: corrupt gzip data ({exc})") from None


# --------------------------------------------------------------------------------------------
# retailrocket: events.csv (timestamp, visitorid, event, itemid, transactionid)
# --------------------------------------------------------------------------------------------

def _read_retailrocket(src: Path, options: ImportOptions, report: ImportReport) -> Iterator[Row]:
    make_id = _source_ids("retailrocket", src, None)
    with _open_text(src) as text:
        reader = csv.reader(text)
        idx = _header_index(src, _first_row(reader), {"ts": "timestamp", "user_id": "visitorid", "event": "event",
                                                       "item_id": "itemid"}, "retailrocket")
        its, iu, ie, ii = idx["ts"], idx["user_id"], idx["event"], idx["item_id"]
        width = max(its, iu, ie, ii) + 1
        mapping = RETAILROCKET_EVENTS
        for n, row in _numbered_rows(reader, report):
            eid = make_id(n)
            if len(row) < width:
                row = row + [""] * (width - len(row))
            ts, user, event, item = row[its], row[iu], row[ie], row[ii]
            ev = mapping.get(event)
            try:
                t = int(ts)
            except ValueError:
                t = None
            if t is not None and ev is not None and user and item:
                yield f'{{"event_id":"{eid}","ts":{t},"user_id":{_esc(user)},"event_type":"{ev}","item_id":{_esc(item)}}}'
                continue
            yield {
                "event_id": eid,
                "ts": _int_or_raw(ts),
                "user_id": _none_if_empty(user),
                "event_type": ev or _none_if_empty(event),  # unknown strings kept: the clean job quarantines them
                "item_id": _none_if_empty(item),
            }


# --------------------------------------------------------------------------------------------
# otto: one JSON session per line
# --------------------------------------------------------------------------------------------

def _read_otto(src: Path, options: ImportOptions, report: ImportReport) -> Iterator[Row]:
    make_id = _source_ids("otto", src, None)
    mapping = OTTO_EVENTS
    loads = json.loads
    with _open_text(src) as text:
        line_no = 0
        seen_any = False
        for line in text:
            line_no += 1
            if not line.strip():
                report.skip("blank lines")
                continue
            seen_any = True
            try:
                obj = loads(line)
            except ValueError:
                obj = None
            events = obj.get("events") if type(obj) is dict else None
            if type(events) is not list:
                # Not an OTTO session: one row the clean job quarantines, with the raw text.
                yield {"event_id": make_id(line_no),
                       "event_type": "<unparseable otto line>", RAW_SOURCE_FIELD: line.rstrip("\r\n")}
                continue
            session = obj.get("session")
            sid = None if session is None or isinstance(session, (dict, list)) else str(session)
            sid_json = _esc(sid) if sid else None
            for k, ev in enumerate(events):
                eid = make_id(f"{line_no}:{k}")
                if type(ev) is not dict:
                    yield {"event_id": eid, "user_id": sid, "session_id": sid,
                           "event_type": "<unparseable otto event>", RAW_SOURCE_FIELD: json.dumps(ev)}
                    continue
                typ = ev.get("type")
                aid = ev.get("aid")
                ts = ev.get("ts")
                mapped = mapping.get(typ) if type(typ) is str else None
                if mapped is not None and sid_json is not None and type(aid) is int and type(ts) is int:
                    yield (f'{{"event_id":"{eid}","ts":{ts},"user_id":{sid_json},"session_id":{sid_json},'
                           f'"event_type":"{mapped}","item_id":"{aid}"}}')
                    continue
                yield {
                    "event_id": eid,
                    "ts": ts,
                    "user_id": sid,
                    "session_id": sid,
                    "event_type": mapped or typ,
                    "item_id": None if aid is None else (aid if isinstance(aid, (dict, list)) else str(aid)),
                }
        if not seen_any:
            raise UserError(f"{src}: no sessions in file")


# --------------------------------------------------------------------------------------------
# tafeng: the zip as distributed or the CSV inside it
# --------------------------------------------------------------------------------------------

def tafeng_date(raw: str) -> tuple[str, str]:
    """'11/1/2000' -> ('2000-11-01T00:00:00', '2000-11-01'); the raw text twice when it does not parse."""
    try:
        m, d, y = raw.strip().split("/")
        day = date(int(y), int(m), int(d)).isoformat()
    except ValueError:
        return raw, raw
    return f"{day}T00:00:00", day


def tafeng_unit_price(amount, sales: str):
    """SALES_PRICE is the line total: unit price = SALES_PRICE / AMOUNT (None when AMOUNT is 0 or not a number).

    A SALES_PRICE that is not a number is passed through raw, for the clean job to quarantine.
    """
    if type(amount) is not int or amount == 0:
        return None
    try:
        return round(float(sales) / amount, 4)
    except ValueError:
        return _none_if_empty(sales)


def _read_tafeng(src: Path, options: ImportOptions, report: ImportReport) -> Iterator[Row]:
    make_id = _source_ids("tafeng", src, TAFENG_MEMBER)
    with _open_text(src, member=TAFENG_MEMBER, encoding="utf-8-sig") as text:
        reader = csv.reader(text)
        idx = _header_index(src, _first_row(reader), {c: c for c in TAFENG_COLUMNS}, "tafeng")
        i_dt, i_cust, i_cat, i_item, i_amt, i_sales = (idx[c] for c in TAFENG_COLUMNS)
        width = max(idx.values()) + 1
        dates: dict[str, tuple[str, str, str]] = {}
        n = 0
        for row in reader:
            if len(row) < width:
                if not row or not any(c.strip() for c in row):
                    report.skip("blank lines")
                    continue
                row = row + [""] * (width - len(row))
            n += 1
            eid = make_id(n)
            raw_dt, cust, item, cat, amount = row[i_dt], row[i_cust], row[i_item], row[i_cat], row[i_amt]
            hit = dates.get(raw_dt)
            if hit is None:
                ts, day = tafeng_date(raw_dt)
                hit = (ts, day, _esc(ts))
                if len(dates) < 100_000:
                    dates[raw_dt] = hit
            ts, day, ts_json = hit
            try:
                qty = int(amount)
            except ValueError:
                qty = _int_or_raw(amount)
            price = tafeng_unit_price(qty, row[i_sales])
            if cust and item and cat and type(qty) is int and type(price) is float and price - price == 0.0:
                yield (f'{{"event_id":"{eid}","ts":{ts_json},"user_id":{_esc(cust)},"session_id":{_esc(cust + "-" + day)},'
                       f'"event_type":"purchase","item_id":{_esc(item)},"category":{_esc(cat)},"price":{price!r},'
                       f'"quantity":{qty}}}')
                continue
            yield {
                "event_id": eid,
                "ts": ts,
                "user_id": cust or None,
                "session_id": f"{cust}-{day}",
                "event_type": "purchase",
                "item_id": item or None,
                "category": cat or None,
                "price": price,
                "quantity": qty,
            }


# --------------------------------------------------------------------------------------------
# movielens: ml-100k u.data (tab), ml-1m ratings.dat (::), ml-latest ratings.csv (header)
# --------------------------------------------------------------------------------------------

def _movielens_separator(first: str) -> str | None:
    if "::" in first:
        return "::"  # ml-1m, ml-10m ratings.dat
    if "\t" in first:
        return "\t"  # ml-100k u.data
    if "," in first:
        return ","  # ml-latest / ml-20m ratings.csv
    return None  # any whitespace


def _read_movielens(src: Path, options: ImportOptions, report: ImportReport) -> Iterator[Row]:
    make_id = _source_ids("movielens", src, None)
    min_rating = options.min_rating
    skip_reason = f"movielens ratings below --min-rating {min_rating:g}" if min_rating is not None else ""
    with _open_text(src) as text:
        sep: str | None = None
        started = False
        line_no = 0
        for line in text:
            line_no += 1
            s = line.strip()
            if not s:
                report.skip("blank lines")
                continue
            if not started:
                started = True
                sep = _movielens_separator(s)
                if s.split(sep)[0].strip().lower().split(":")[0] in ("userid", "user_id", "user"):
                    continue  # a header line (RecBole's atomic files name types too: user_id:token)
            eid = make_id(line_no)
            parts = s.split(sep)
            if len(parts) < 4:
                yield {"event_id": eid, "event_type": "<unparseable movielens line>", RAW_SOURCE_FIELD: s}
                continue
            user, item, rating, secs = parts[0].strip(), parts[1].strip(), parts[2].strip(), parts[3].strip()
            if min_rating is not None:
                try:
                    if float(rating) < min_rating:
                        report.skip(skip_reason)
                        continue
                except ValueError:
                    pass  # an unparseable rating is kept: the row is still a valid interaction
            try:
                ts = int(secs) * 1000
            except ValueError:
                ts = None
            if ts is not None and user and item:
                yield f'{{"event_id":"{eid}","ts":{ts},"user_id":{_esc(user)},"event_type":"purchase","item_id":{_esc(item)}}}'
                continue
            yield {
                "event_id": eid,
                "ts": ts if ts is not None else (secs or None),
                "user_id": user or None,
                "event_type": "purchase",
                "item_id": item or None,
            }
        if not started:
            raise UserError(f"{src}: empty file, no ratings")


# --------------------------------------------------------------------------------------------
# csv: generic, column flags
# --------------------------------------------------------------------------------------------

def _parse_event_map(text: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if not text:
        return out
    for pair in text.split(","):
        if not pair.strip():
            continue
        if "=" not in pair:
            raise UserError(f"--event-map: expected source=canonical pairs separated by commas, got {pair.strip()!r}")
        src, dst = (p.strip() for p in pair.split("=", 1))
        if dst not in EVENT_TYPES:
            raise UserError(f"--event-map: {dst!r} is not an event type; expected one of {', '.join(EVENT_TYPES)}")
        out[src] = dst
    return out


def _delimiter(text: str | None) -> str:
    if text is None or text == "":
        return ","
    named = {"\\t": "\t", "tab": "\t", "TAB": "\t", "\\x01": "\x01", "space": " "}
    text = named.get(text, text)
    if len(text) != 1:
        raise UserError(f"--delimiter must be one character, got {text!r}")
    return text


def _ts_converter(fmt: str | None) -> Callable[[str | None], object]:
    if not fmt:
        def convert(raw: str | None) -> object:
            if raw is None:
                return None
            s = raw.strip()
            if not s:
                return None
            if s.isdigit():
                return int(s)
            return s
        return convert
    low = fmt.strip().lower()
    if low in ("epoch_ms", "ms", "epoch_s", "epoch", "s", "unix"):
        factor = 1 if low in ("epoch_ms", "ms") else 1000

        def convert_epoch(raw: str | None) -> object:
            if raw is None or not raw.strip():
                return None
            try:
                return int(round(float(raw) * factor))
            except ValueError:
                return raw
        return convert_epoch
    try:
        datetime.strptime(datetime(2001, 2, 3, 4, 5, 6).strftime(fmt), fmt)
    except ValueError:
        raise UserError(f"--ts-format {fmt!r} is not a usable strptime format") from None

    def convert_fmt(raw: str | None) -> object:
        if raw is None or not raw.strip():
            return None
        try:
            dt = datetime.strptime(raw.strip(), fmt)
        except ValueError:
            return raw
        if dt.tzinfo is not None:
            return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ").replace(".000000Z", "Z")
        return dt.isoformat()
    return convert_fmt


def _read_csv(src: Path, options: ImportOptions, report: ImportReport) -> Iterator[Row]:
    user_col, ts_col, event_col = options.user_col, options.ts_col, options.event_col
    default_event = options.default_event
    if not user_col:
        raise UserError("format csv needs --user-col (the column holding the user id)")
    if not ts_col:
        raise UserError("format csv needs --ts-col (the column holding the timestamp)")
    if not event_col and not default_event:
        raise UserError("format csv needs --event-col or --default-event")
    if default_event and default_event not in EVENT_TYPES:
        raise UserError(f"--default-event {default_event!r} is not an event type; expected one of {', '.join(EVENT_TYPES)}")
    event_map = _parse_event_map(options.event_map)
    delimiter = _delimiter(options.delimiter)
    convert_ts = _ts_converter(options.ts_format)
    wanted = {
        "user_id": user_col, "ts": ts_col, "event_type": event_col, "item_id": options.item_col,
        "session_id": options.session_col, "category": options.category_col, "price": options.price_col,
        "quantity": options.quantity_col, "query": options.query_col, "event_id": options.event_id_col,
    }
    make_id = _source_ids("csv", src, None)
    with _open_text(src) as text:
        reader = csv.reader(text, delimiter=delimiter)
        idx = _header_index(src, _first_row(reader), wanted, "csv")
        i_user, i_ts, i_ev, i_item, i_sess, i_cat, i_price, i_qty, i_query, i_id = (
            idx["user_id"], idx["ts"], idx["event_type"], idx["item_id"], idx["session_id"], idx["category"],
            idx["price"], idx["quantity"], idx["query"], idx["event_id"])
        for n, row in _numbered_rows(reader, report):
            if i_ev is not None:
                raw_ev = _cell(row, i_ev)
                ev = event_map.get(raw_ev.strip(), raw_ev.strip()) if raw_ev is not None else None
                if not ev:
                    ev = default_event
            else:
                ev = default_event
            eid = _none_if_empty(_cell(row, i_id)) if i_id is not None else None
            yield {
                "event_id": eid if eid is not None else make_id(n),
                "ts": convert_ts(_cell(row, i_ts)),
                "user_id": _none_if_empty(_cell(row, i_user)),
                "session_id": _none_if_empty(_cell(row, i_sess)),
                "event_type": ev,
                "item_id": _none_if_empty(_cell(row, i_item)),
                "query": _none_if_empty(_cell(row, i_query)),
                "category": _none_if_empty(_cell(row, i_cat)),
                "price": _float_or_raw(_cell(row, i_price)),
                "quantity": _int_or_raw(_cell(row, i_qty)),
            }


_READERS: dict[str, Callable[[Path, ImportOptions, ImportReport], Iterator[Row]]] = {
    "retailrocket": _read_retailrocket,
    "otto": _read_otto,
    "tafeng": _read_tafeng,
    "movielens": _read_movielens,
    "csv": _read_csv,
}


# --------------------------------------------------------------------------------------------
# the up-front check: the first rows of each source through the clean job's rules
# --------------------------------------------------------------------------------------------

CHECK_ROWS = 1_000  # rows checked per source before anything is written
# strptime formats tried on timestamps the clean job cannot read, to suggest a --ts-format
TS_FORMAT_GUESSES = (
    "%m/%d/%Y %H:%M:%S", "%d/%m/%Y %H:%M:%S", "%m/%d/%Y %H:%M", "%d/%m/%Y %H:%M", "%m/%d/%Y", "%d/%m/%Y",
    "%d.%m.%Y %H:%M:%S", "%d.%m.%Y", "%Y/%m/%d %H:%M:%S", "%Y/%m/%d", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M",
    "%Y-%m-%dT%H:%M%z", "%d-%m-%Y %H:%M:%S", "%d-%m-%Y", "%Y%m%d%H%M%S", "%Y%m%d", "%d %b %Y %H:%M:%S", "%b %d %Y %H:%M:%S",
)
# source event names a user most likely means by each canonical type, for --event-map suggestions
EVENT_NAME_GUESSES = {
    "view": ("click", "clicks", "pageview", "page_view", "detail", "detail_view", "impression", "visit", "views"),
    "add_to_cart": ("cart", "carts", "addtocart", "add", "add-to-cart", "basket", "add_to_basket", "addtobasket"),
    "remove_from_cart": ("removefromcart", "remove", "remove-from-cart", "remove_from_basket"),
    "purchase": ("buy", "order", "orders", "transaction", "checkout", "sale", "purchased", "purchases"),
    "search": ("query", "searches", "search_query"),
}


@dataclass
class ImportCheck:
    """What the clean job would make of the first rows of each source."""

    checked: int = 0
    failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # reason code -> rows
    examples: dict[str, tuple[str, str]] = field(default_factory=dict)  # code -> (reason, row as JSON)
    unknown_events: dict[str, int] = field(default_factory=dict)  # event type as found -> rows
    bad_ts: list[str] = field(default_factory=list)  # a few timestamps the clean job cannot read
    epoch_seconds: int = 0  # rows whose ts looks like epoch seconds read as milliseconds

    @property
    def refused(self) -> bool:
        return self.failed * 2 > self.checked


class ImportRefused(UserError):
    """Most rows checked up front would be quarantined; nothing was written."""

    def __init__(self, message: str, check: ImportCheck):
        super().__init__(message)
        self.check = check


def _canonical_rows(src: Path) -> Iterator[Row]:
    """The rows of a canonical landing file as the clean job reads them: JSON lines as they
    are, a CSV row as the object of its canonical columns (empty cells absent)."""
    suffix = _events_suffix(src)
    with src.open("rb") as fh:
        if (fh.read(2) == b"\x1f\x8b") != suffix.endswith(".gz"):
            return  # the copy refuses it, with the reason
    with (gzip.open(src, "rt", encoding="utf-8-sig", errors="replace", newline="") if suffix.endswith(".gz")
          else src.open(encoding="utf-8-sig", errors="replace", newline="")) as text:
        if suffix.startswith(".csv"):
            for row in csv.DictReader(text):
                yield {k: v for k, v in row.items() if k in EVENT_FIELDS and v not in (None, "")}
            return
        yield from (line.rstrip("\r\n") for line in text if line.strip())


def check_sources(settings, sources: list[Iterator[Row]], options: ImportOptions) -> ImportCheck:
    """Run the first :data:`CHECK_ROWS` rows of each source through the clean job's rules
    (:mod:`freshrec.jobs.rules`); raise :class:`ImportRefused` when more than half would be
    quarantined, unless ``options.force``."""
    from itertools import islice

    check = ImportCheck()
    now = datetime.now(timezone.utc)
    for rows in sources:
        try:
            for row in islice(rows, CHECK_ROWS):
                _check_row(check, row, now, settings)
        except (OSError, EOFError, zlib.error):
            pass  # a source that cannot be read is reported, with its name, when it is written
        finally:
            getattr(rows, "close", lambda: None)()
    if check.refused and not options.force:
        share = check.failed / check.checked
        raise ImportRefused(f"{check.failed:,} of the {check.checked:,} rows checked ({share:.0%}) would be quarantined; "
                            "nothing was written to the landing zone. Fix the mapping (see above), or add --force "
                            "to import anyway", check)
    return check


def _check_row(check: ImportCheck, row: Row, now: datetime, settings) -> None:
    from freshrec.jobs.rules import parse_line, reason_codes, validate_row

    check.checked += 1
    _, reasons = validate_row(row, now, settings.min_event_ts, settings.max_future_skew_hours)
    if not reasons:
        return
    check.failed += 1
    text = row if isinstance(row, str) else json.dumps({k: v for k, v in row.items() if v is not None})
    for code, reason in zip(reason_codes(reasons), reasons, strict=True):
        check.reasons[code] = check.reasons.get(code, 0) + 1
        check.examples.setdefault(code, (reason, text))
    try:
        obj = parse_line(text)
    except ValueError:
        return
    if not isinstance(obj, dict):
        return
    if any(r.startswith("unknown_event_type") for r in reasons):
        event = str(obj.get("event_type")).strip()
        check.unknown_events[event] = check.unknown_events.get(event, 0) + 1
    if any(r.startswith("invalid_ts") for r in reasons) and len(check.bad_ts) < 20:
        check.bad_ts.append(str(obj.get("ts")).strip())
    ts = obj.get("ts")
    if any(r.startswith("ts_out_of_range") for r in reasons) and str(ts).strip().isdigit() and 9 <= len(str(ts).strip()) <= 10:
        check.epoch_seconds += 1


def guess_event_map(unknown: dict[str, int]) -> str | None:
    """An --event-map for the unknown event names with an obvious canonical type."""
    pairs = []
    for name in sorted(unknown, key=lambda n: -unknown[n]):
        low = name.lower().replace(" ", "_")
        target = next((t for t, names in EVENT_NAME_GUESSES.items() if low in names or low == t), None)
        if target is not None:
            pairs.append(f"{name}={target}")
    return ",".join(pairs) or None


def guess_ts_format(values: list[str]) -> list[str]:
    """The strptime formats of :data:`TS_FORMAT_GUESSES` that read every value."""
    def reads(fmt: str, value: str) -> bool:
        try:
            datetime.strptime(value, fmt)
        except ValueError:
            return False
        return True

    return [fmt for fmt in TS_FORMAT_GUESSES if values and all(reads(fmt, v) for v in values)]


def suggestions(check: ImportCheck, fmt: str) -> list[str]:
    """Which flag fixes what the check found, as concrete as the rows allow."""
    out = []
    flag_ok = fmt == "csv"  # the mapping flags exist for the generic csv format only
    if check.unknown_events:
        found = ", ".join(f"{k!r} ({n:,})" for k, n in sorted(check.unknown_events.items(), key=lambda kv: -kv[1])[:5])
        guess = guess_event_map(check.unknown_events)
        fix = (f"--event-map {guess}" if guess else "--event-map SOURCE=TYPE,...") if flag_ok else "map them in the source"
        out.append(f"unknown event types {found}: {fix} (event types: {', '.join(EVENT_TYPES)})")
    if check.bad_ts:
        formats = guess_ts_format(check.bad_ts)
        example = check.bad_ts[0]
        if formats and flag_ok:
            also = f" (or {', '.join(repr(f) for f in formats[1:3])})" if len(formats) > 1 else ""
            out.append(f"timestamps like {example!r} are not ISO-8601: --ts-format '{formats[0]}'{also}")
        else:
            out.append(f"timestamps like {example!r} are not ISO-8601 or epoch milliseconds: "
                       + ("--ts-format with a strptime format" if flag_ok else "convert them in the source"))
    if check.epoch_seconds:
        fix = "--ts-format epoch_s" if flag_ok else "multiply them by 1000 in the source"
        out.append(f"{check.epoch_seconds:,} timestamp(s) look like epoch seconds (read as milliseconds, they land in 1970): {fix}")
    return out


def format_check(check: ImportCheck, fmt: str) -> str:
    """The check for people: rows per reason with one example each, then the fixes."""
    lines = [f"freshrec: checked the first {check.checked:,} row(s): {check.failed:,} would be quarantined"]
    width = max(len(code) for code in check.reasons)
    for code, n in sorted(check.reasons.items(), key=lambda kv: -kv[1]):
        reason, text = check.examples[code]
        lines.append(f"  {code:<{width}}  {n:>6,}  e.g. {reason}")
        lines.append(f"  {'':<{width}}          row: {text[:200]}")
    lines += [f"freshrec: fix: {tip}" for tip in suggestions(check, fmt)]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# progress (stderr, only on a terminal)
# --------------------------------------------------------------------------------------------

@contextmanager
def _progress() -> Iterator[Callable[[str, int], None]]:
    if not sys.stderr.isatty():
        yield lambda desc, n: None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    tasks: dict[str, int] = {}
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed:,.0f} rows"),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        def advance(desc: str, n: int) -> None:
            if desc not in tasks:
                tasks[desc] = bar.add_task(desc, total=None)
            bar.advance(tasks[desc], n)
        yield advance


