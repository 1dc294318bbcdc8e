"""The serving store: one interface over SQLite, Redis and PostgreSQL.

A *version* is one complete publish: per-user top-N lists, per-item similar items, popular
lists (overall and per category) and items per search query. A new version is written beside
the live one and only becomes visible when the live pointer is switched, in one atomic step.
Each read resolves the pointer and reads the value in one statement (SQL) or one script
(Redis), so a reader sees the old version or the new one, never a mix. There is no pointer
cache: reads never see a stale pointer.

Every list is stored as ONE value (a compact JSON object, see :func:`encode_list`), so a read
of a 100-item list is one key lookup plus one ``json.loads``. A version also holds each item's
details (category, price), one value per item, which a read asked for them adds to the listed
items. docs/serving.md documents the layout of each backend for people who write their own
serving layer.

The backends implement a handful of primitives (``_read``, ``_read_details``, ``_records``,
``_create_version``, ``_write_rows``, ``_finish``, ``_switch``, ``_retire``, ``_drop_data``,
``_upsert``); the rules
(what may be rolled back to, what prune keeps, completeness checks) live here once, and so do
the store URL helpers. The two SQL backends share one implementation (sql.py).
"""

from __future__ import annotations

import json
import logging
import math
import re
import struct
import time
from abc import ABC, abstractmethod
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np

from freshrec.errors import UserError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

log = logging.getLogger(__name__)

#: kinds of list; each maps to one table (SQL) or one key segment (Redis)
KINDS = ("user", "similar", "popular", "query")
#: the per-version item details (category, price), stored like a kind of list: table or key segment
DETAILS = "details"
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
NOTHING_PUBLISHED = "nothing published yet; run `freshrec run batch`"
DEFAULT_BATCH_ROWS = 2000
#: the version that stopped being live less than this many seconds ago is never pruned, so a
#: serving layer that resolved the pointer just before a switch can finish reading it
DEFAULT_GRACE_S = 60.0
#: a version still "writing" after this long is taken for a crashed publish and pruned
DEFAULT_STALE_WRITING_S = 24 * 3600.0
#: the most items one read returns (the HTTP API answers 400 above it); lists hold FRESHREC_TOP_N
MAX_N = 1000


class ServingError(UserError):
    """A serving-store problem a user can act on (the CLI prints it on one line)."""


class NothingPublished(ServingError):
    def __init__(self, message: str = NOTHING_PUBLISHED) -> None:
        super().__init__(message)


class VersionError(ServingError):
    """An unknown, malformed, already published or unreadable version."""


class LiveVersionChanged(VersionError):
    """An upsert meant for one live version found another live at commit; nothing was written."""

    def __init__(self, expected: str, live: str) -> None:
        super().__init__(f"the live version is {live}, not {expected} as expected; nothing was written")
        self.expected = expected
        self.live = live


class PublishError(ServingError):
    """A publish that cannot complete: bad rows, duplicate keys, incomplete content."""


class StoreUnavailable(ServingError):
    """The store cannot be reached."""


class _Conflict(Exception):
    """The live pointer moved under a compare-and-switch; the caller retries."""


# -- store URLs ----------------------------------------------------------------------------
# Parsed with SQLAlchemy's URL parser only (no engine): it splits and quotes user, password,
# host, database and query the way the client libraries read them, and hides the password.

def parse_url(url: str | URL) -> URL:
    # imported here: SQLAlchemy takes a few hundred ms to import, paid only by opening a store
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except ArgumentError:
        # not echoed: an unparsable URL cannot have its password hidden
        raise ServingError("malformed serving URL (not shown, it may hold a password): use sqlite:///path.db, "
                           "redis://host:port/db or postgresql://user@host:port/db") from None


def redacted(url: str | URL) -> str:
    """``url`` as messages show it: the password as ``***``."""
    return parse_url(url).render_as_string(hide_password=True)


def store_url(url: str | URL, param: str, given: str | None, default: str, pattern: re.Pattern[str],
              rule: str) -> tuple[str, str, str]:
    """``(URL to connect to, value of param, URL to show)``: ``param`` is freshrec's own query
    parameter (``prefix``, ``schema``), taken out because the client libraries reject it; its
    value is ``given``, else the URL's, else ``default``, and must match ``pattern``."""
    parsed = parse_url(url)
    found = parsed.query.get(param)
    value = given or (found[-1] if isinstance(found, tuple) else found) or default
    if not pattern.match(value):
        raise ServingError(f"malformed {param} {value!r}: {rule}")
    parsed = parsed.difference_update_query([param])
    shown = redacted(parsed) + ("" if value == default else f" ({param} {value})")
    return parsed.render_as_string(hide_password=False), value, shown


def check_keep(keep: int) -> None:
    """How many published versions prune keeps: at least 1 (the live one always stays)."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep (FRESHREC_KEEP_VERSIONS) must be an integer >= 1, the live version included; got {keep!r}")


# -- value codec ---------------------------------------------------------------------------

def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_to_epoch(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def check_version_id(version: str) -> str:
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise VersionError(f"malformed version id {version!r}: use letters, digits, '.', '_' and '-' (at most 128)")
    return version


def normalise_query(query: str) -> str:
    """Search queries are matched lower-cased, trimmed, with runs of whitespace collapsed."""
    return " ".join(str(query).lower().split())


def popular_key(category: str | None) -> str:
    """The overall popular list is stored under the empty category."""
    return "" if category is None else str(category)


def encode_list(items: Sequence[Any], scores: Sequence[Any], updated_at: str) -> str:
    """One stored list: ``{"items":[...],"scores":[...],"updated_at":"..."}`` (compact JSON)."""
    items, scores = checked_list(items, scores)
    try:
        return json.dumps({"items": items, "scores": scores, "updated_at": updated_at}, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise PublishError("scores must be finite numbers (NaN or infinity found)") from None


def checked_list(items: Sequence[Any], scores: Sequence[Any]) -> tuple[list[str], list[float]]:
    """``(item ids as str, scores as float)``; PublishError for a list no encoding can store."""
    if len(items) != len(scores):
        raise PublishError(f"items and scores differ in length ({len(items)} != {len(scores)})")
    if any(i is None for i in items):
        raise PublishError("a list holds a null item id")
    items = [i if type(i) is str else str(i) for i in items]
    try:
        scores = [s if type(s) is float else float(s) for s in scores]
    except (TypeError, ValueError):
        raise PublishError(f"scores must be numbers, got {[s for s in scores if not isinstance(s, (int, float))][:3]}") from None
    return items, scores


#: the first byte of a packed list; a JSON list starts with "{"
PACKED_MAGIC = 1
#: magic, n (uint16), lowest and highest score (float64), updated_at (int64 ms since the epoch)
PACKED_HEADER = struct.Struct("<BHddq")


def encode_packed(codes: Sequence[int], scores: Sequence[float], updated_at: str) -> bytes:
    """One stored list, packed (``?encoding=packed`` on a Redis URL): a 27-byte header, each
    item as its uint32 code in the store's item table, and each score quantised to 16 bits
    between the list's lowest and highest (kept exactly). 100 items take 627 bytes, against
    about 3 KB of JSON. ``scores`` come from :func:`checked_list`."""
    if len(codes) > 0xFFFF:
        raise PublishError(f"a packed list holds at most 65,535 items, got {len(codes)}")
    try:
        at = iso_to_epoch(updated_at) if isinstance(updated_at, str) else None
    except ValueError:
        at = None
    if at is None:
        raise PublishError(f"updated_at must be an ISO timestamp to be packed, got {updated_at!r}")
    values = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(values).all():
        raise PublishError("scores must be finite numbers (NaN or infinity found)")
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 0.0)
    span = hi - lo
    quantised = np.zeros(len(values), dtype="<u2") if span <= 0 else \
        np.clip(np.rint((values - lo) / span * 65535.0), 0, 65535).astype("<u2")
    return (PACKED_HEADER.pack(PACKED_MAGIC, len(codes), lo, hi, round(at * 1000))
            + np.asarray(codes, dtype="<u4").tobytes() + quantised.tobytes())


def packed_codes(raw: bytes, n: int) -> list[int]:
    """The item-table codes of a packed list's first ``n`` items."""
    length = PACKED_HEADER.unpack_from(raw)[1]
    return np.frombuffer(raw, dtype="<u4", count=min(n, length), offset=PACKED_HEADER.size).tolist()


def is_packed(raw: Any) -> bool:
    return isinstance(raw, (bytes, bytearray, memoryview)) and len(raw) > 0 and raw[0] == PACKED_MAGIC


def decode_packed(raw: bytes, n: int, item_ids: Sequence[str]) -> dict[str, Any]:
    """A packed list as the JSON encoding's object, its first ``n`` items (``item_ids``: their
    ids, looked up in the item table). A score comes back within 1/10,000 of the list's range:
    quantised to 1/65,535 of it, then rounded to the decimals that step allows, so that 0.99
    in a list from 0.5 to 1 reads 0.99."""
    _, length, lo, hi, at_ms = PACKED_HEADER.unpack_from(raw)
    n = min(n, length)
    if len(item_ids) != n:
        raise ServingError(f"a packed list's item codes are missing from the store's item table ({len(item_ids)} of {n} found)")
    q = np.frombuffer(raw, dtype="<u2", count=n, offset=PACKED_HEADER.size + 4 * length).astype(np.float64)
    step = (hi - lo) / 65535.0
    scores = lo + q * step
    if step > 0:
        scores = np.round(scores, max(0, int(math.floor(-math.log10(step)))))
    at = datetime.fromtimestamp(at_ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"items": [i.decode() if isinstance(i, bytes) else i for i in item_ids], "scores": scores.tolist(), "updated_at": at}


def decode_list(raw: Any, n: int) -> tuple[list[dict[str, Any]], str | None]:
    value = raw if isinstance(raw, dict) else json.loads(raw)
    items = value["items"][:n]
    scores = value["scores"][:n]
    return [{"item_id": i, "score": s} for i, s in zip(items, scores, strict=False)], value.get("updated_at")


def encode_details(category: Any, price: Any) -> str:
    """One item's details: ``{"category":"c","price":9.5}``, compact; an unknown one (None, or a
    price that is not finite) is left out."""
    value: dict[str, Any] = {}
    if category is not None:
        value["category"] = category if type(category) is str else str(category)
    if price is not None:
        try:
            price = float(price)
        except (TypeError, ValueError):
            raise PublishError(f"a price must be a number, got {price!r}") from None
        if math.isfinite(price):
            value["price"] = price
    return json.dumps(value, separators=(",", ":"))


def add_details(items: list[dict[str, Any]], raws: Sequence[str | bytes | None]) -> None:
    """Give each item the ``category`` and ``price`` of its stored details (``raws``, one per
    item, None where the version has none): null when unknown. One ``json.loads`` for all of
    them: per value, its overhead would cost more than the store's lookup."""
    text = b",".join(b"null" if r is None else r if isinstance(r, bytes) else r.encode() for r in raws)
    for item, value in zip(items, json.loads(b"[" + text + b"]"), strict=True):
        value = value or {}
        item["category"] = value.get("category")
        item["price"] = value.get("price")


def split_row(row: Sequence[Any]) -> tuple[Any, Sequence[Any], Sequence[Any]]:
    """``(key, [(item, score), ...])`` or ``(key, items, scores)`` -> ``(key, items, scores)``."""
    if len(row) == 3:
        return row[0], row[1] or (), row[2] or ()
    if len(row) == 2:
        pairs = row[1] or ()
        return row[0], [p[0] for p in pairs], [p[1] for p in pairs]
    raise PublishError(f"a row is (key, [(item, score), ...]) or (key, items, scores), got {len(row)} fields")


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return min(n, MAX_N)


# -- the interface -------------------------------------------------------------------------

class ServingStore(ABC):
    """Base of the three adapters. Thread-safe; share one instance between threads."""

    #: shown in messages; never holds a password
    display_url: str = ""

    def _encode(self, items: Sequence[Any], scores: Sequence[Any], updated_at: str) -> str | bytes:
        """One list as this store writes it: compact JSON (:func:`encode_list`), unless the
        backend packs it (Redis with ``?encoding=packed``)."""
        return encode_list(items, scores, updated_at)

    # ---- reads (hot path) ------------------------------------------------------------
    def get_user_recs(self, user_id: str, n: int = 10, version: str | None = None, *,
                      details: bool = False) -> dict[str, Any] | None:
        """``{"user_id", "version", "source": "personal", "updated_at", "items"}`` or None for an
        unknown user. Raises NothingPublished when nothing is live. ``details``: each item also
        gets its ``category`` and ``price`` (null when unknown), one more read."""
        user_id = str(user_id)
        v, items, updated_at = self._get("user", user_id, n, version, details)
        if items is None:
            return None
        return {"user_id": user_id, "version": v, "source": "personal", "updated_at": updated_at, "items": items}

    def get_similar(self, item_id: str, n: int = 10, version: str | None = None, *,
                    details: bool = False) -> dict[str, Any] | None:
        item_id = str(item_id)
        v, items, updated_at = self._get("similar", item_id, n, version, details)
        if items is None:
            return None
        return {"item_id": item_id, "version": v, "updated_at": updated_at, "items": items}

    def get_popular(self, category: str | None = None, n: int = 10, version: str | None = None, *,
                    details: bool = False) -> dict[str, Any] | None:
        category = category or None
        v, items, updated_at = self._get("popular", popular_key(category), n, version, details)
        if items is None:
            return None
        return {"category": category, "version": v, "updated_at": updated_at, "items": items}

    def get_query_items(self, query: str, n: int = 10, version: str | None = None, *,
                        details: bool = False) -> dict[str, Any] | None:
        query = normalise_query(query)
        v, items, updated_at = self._get("query", query, n, version, details)
        if items is None:
            return None
        return {"query": query, "version": v, "updated_at": updated_at, "items": items}

    def _get(self, kind: str, key: str, n: int, version: str | None,
             details: bool) -> tuple[str, list | None, str | None]:
        n = _check_n(n)
        if version is not None:
            check_version_id(version)
        with self._guard():
            v, raw = self._read(kind, key, version, n)
            if v is None:
                raise NothingPublished()
            if raw is None:
                if version is not None:
                    self._check_readable(version)
                return v, None, None
        items, updated_at = decode_list(raw, n)
        if details and items:
            # from the version the list came from, which prune keeps readable for a grace period
            with self._guard():
                add_details(items, self._read_details(v, [i["item_id"] for i in items]))
        return v, items, updated_at

    def _check_readable(self, version: str) -> None:
        record = self._record(version)
        if record is None or record["state"] not in ("complete", "live"):
            state = "unknown" if record is None else record["state"]
            raise VersionError(f"version {version} is not readable (state: {state})")

    # ---- versions --------------------------------------------------------------------
    def live_version(self) -> str | None:
        with self._guard():
            return self._live()

    def versions(self) -> list[dict[str, Any]]:
        """Every version this store remembers, newest first: ``{"version", "seq", "state",
        "created_at", "committed_at", "live_at", "replaced_at", "meta", "counts"}``."""
        with self._guard():
            return sorted(self._records(), key=lambda r: r["seq"], reverse=True)

    def version_info(self, version: str) -> dict[str, Any] | None:
        with self._guard():
            return self._record(check_version_id(version))

    def status(self) -> dict[str, Any]:
        """The live version and its record (``live_version`` None when nothing is live)."""
        with self._guard():
            live = self._live()
            record = self._record(live) if live else None
        return {"live_version": live, "store": self.display_url,
                "created_at": record and record["created_at"], "committed_at": record and record["committed_at"],
                "live_at": record and record["live_at"], "meta": (record or {}).get("meta") or {},
                "counts": (record or {}).get("counts") or {}}

    def begin_version(self, version: str, meta: dict[str, Any] | None = None, *, updated_at: str | None = None,
                      batch_rows: int = DEFAULT_BATCH_ROWS) -> "VersionWriter":
        """Start writing a new version beside the live one. Re-beginning a version id that is
        still ``writing`` (a retried task) discards that attempt; a complete or live id is an error."""
        check_version_id(version)
        meta = dict(meta or {})
        json.dumps(meta)  # fail now, not at commit, on a meta that cannot be stored
        with self._guard():
            record = self._record(version)
            if record is not None:
                if record["state"] in ("complete", "live"):
                    raise VersionError(f"version {version} is already published (state: {record['state']})")
                if record["state"] == "writing":
                    log.warning("discarding an unfinished publish of version %s", version)
                    self._retire(version, "aborted", from_state="writing")
                self._drop_data(version)
            self._create_version(version, meta, utc_now_iso())
        return VersionWriter(self, version, updated_at or utc_now_iso(), batch_rows)

    def rollback(self, to: str | None = None) -> str:
        """Make ``to`` live (a complete version), or by default the newest complete version
        published before the live one. Returns the version now live."""
        if to is not None:
            check_version_id(to)
        for _ in range(10):
            with self._guard():
                live = self._live()
                if live is None:
                    raise NothingPublished()
                records = {r["version"]: r for r in self._records()}
                if to is None:
                    live_seq = records[live]["seq"] if live in records else float("inf")
                    # an experiment's variant lists (meta "experiment") are never a rollback's default target
                    earlier = [r for r in records.values() if r["state"] == "complete" and r["seq"] < live_seq
                               and not (r.get("meta") or {}).get("experiment")]
                    if not earlier:
                        raise VersionError(f"no earlier complete version to roll back to (live: {live})")
                    target = max(earlier, key=lambda r: r["seq"])["version"]
                else:
                    target = to
                    if target == live:
                        return live
                    record = records.get(target)
                    if record is None or record["state"] != "complete":
                        state = "unknown" if record is None else record["state"]
                        keep = ", ".join(r["version"] for r in records.values() if r["state"] == "complete") or "none"
                        raise VersionError(f"cannot roll back to {target} (state: {state}); complete versions: {keep}")
                try:
                    self._switch(target, expected_live=live, now=utc_now_iso())
                    return target
                except _Conflict:
                    continue
        raise ServingError("the live version kept changing during rollback; try again")

    def prune(self, keep: int = 5, *, grace_s: float = DEFAULT_GRACE_S,
              stale_writing_s: float | None = DEFAULT_STALE_WRITING_S, protect: Iterable[str] = ()) -> list[str]:
        """Keep the newest ``keep`` complete versions (the live one always, the one live
        until less than ``grace_s`` ago, and every version in ``protect``: those a running
        experiment serves); delete the lists of the others and mark them ``retired``. Versions
        still ``writing`` after ``stale_writing_s`` are aborted. Returns the versions removed."""
        check_keep(keep)
        removed: list[str] = []
        now = time.time()
        with self._guard():
            live = self._live()
            records = sorted(self._records(), key=lambda r: r["seq"], reverse=True)
            published = [r for r in records if r["state"] in ("complete", "live")]
            protect = set(protect)
            for record in published[keep:]:
                replaced = iso_to_epoch(record.get("replaced_at"))
                if record["version"] == live or record["version"] in protect or (replaced is not None and now - replaced < grace_s):
                    continue
                if self._retire(record["version"], "retired", from_state="complete"):
                    self._drop_data(record["version"])
                    removed.append(record["version"])
            if stale_writing_s is not None:
                for record in records:
                    created = iso_to_epoch(record.get("created_at")) or now
                    if record["state"] == "writing" and now - created > stale_writing_s:
                        if self._retire(record["version"], "aborted", from_state="writing"):
                            self._drop_data(record["version"])
                            removed.append(record["version"])
        return removed

    # ---- incremental path ------------------------------------------------------------
    def upsert_user_recs(self, rows: Iterable[Sequence[Any]], updated_at: str | None = None, *,
                         expected_version: str | None = None) -> dict[str, Any]:
        """Replace (or add) users' lists in the LIVE version only.

        The whole call is applied atomically to exactly one version: the one live when it
        commits (SQLite and PostgreSQL hold the pointer lock for the transaction; Redis uses
        WATCH on the pointer and retries). If a new batch version goes live at the same time,
        the upsert lands either in the old version before the switch (and the new version does
        not contain it: the publish step re-scores the users whose events it lacks) or in the
        new one after. Other versions are never touched.

        ``expected_version``: the version these lists were computed for. When another version
        is live at commit, nothing is written and :class:`LiveVersionChanged` is raised (the
        check and the write are one atomic step). Returns ``{"version", "users"}``."""
        result = self.upsert_lists("user", rows, updated_at, expected_version=expected_version)
        return {"version": result["version"], "users": result["rows"]}

    def upsert_lists(self, kind: str, rows: Iterable[Sequence[Any]], updated_at: str | None = None, *,
                     expected_version: str | None = None, version: str | None = None) -> dict[str, Any]:
        """:meth:`upsert_user_recs` for any kind of list (``popular`` rows keyed by category,
        None for the overall list). ``version``: write into that published version instead of
        the live one (an experiment's variant; VersionError unless it is complete or live).
        Returns ``{"version", "rows"}``."""
        if kind not in KINDS:
            raise ValueError(f"unknown list kind {kind!r}; expected one of {', '.join(KINDS)}")
        if expected_version is not None:
            check_version_id(expected_version)
        if version is not None:
            check_version_id(version)
            updated_at = updated_at or utc_now_iso()
            encoded = [(_key(kind, key), self._encode(items, scores, updated_at))
                       for key, items, scores in (split_row(row) for row in rows)]
            if encoded:
                with self._guard():
                    self._upsert_into(kind, encoded, version)
            return {"version": version, "rows": len(encoded)}
        updated_at = updated_at or utc_now_iso()
        encoded = []
        for row in rows:
            key, items, scores = split_row(row)
            encoded.append((_key(kind, key), self._encode(items, scores, updated_at)))
        if not encoded:
            live = self.live_version()
            if expected_version is not None:
                check_live(live, expected_version)
            return {"version": live, "rows": 0}
        with self._guard():
            version = self._upsert(kind, encoded, expected_version)
        return {"version": version, "rows": len(encoded)}

    # ---- lifecycle -------------------------------------------------------------------
    def forget_user(self, user_id: str) -> int:
        """Remove ``user_id``'s list from every version this store holds (``freshrec forget``);
        returns how many lists were removed. Readers then get the fallback list for them."""
        with self._guard():
            return self._delete_key("user", str(user_id))

    def close(self) -> None:  # noqa: B027 - a no-op unless the backend holds connections
        """Release connections."""

    def __enter__(self) -> "ServingStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _guard(self):
        """A context manager turning backend connection errors into StoreUnavailable."""
        return _Guard(self)

    _connection_errors: tuple[type[BaseException], ...] = ()

    # ---- backend primitives ----------------------------------------------------------
    @abstractmethod
    def _read(self, kind: str, key: str, version: str | None, n: int = MAX_N) -> tuple[str | None, Any]:
        """``(version, raw value or None)`` resolved consistently; ``(None, None)`` when no
        version is live (and ``version`` is None). ``n``: the items the read will use (a packed
        value's item ids are looked up for those only)."""

    @abstractmethod
    def _read_details(self, version: str, item_ids: list[str]) -> list[Any]:
        """The stored details of each of ``item_ids`` in ``version`` (JSON text or None), in order."""

    @abstractmethod
    def _live(self) -> str | None: ...

    @abstractmethod
    def _records(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    def _record(self, version: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def _create_version(self, version: str, meta: dict[str, Any], created_at: str) -> None:
        """Insert a ``writing`` record (replacing an aborted or retired record of that id)."""

    @abstractmethod
    def _write_rows(self, version: str, kind: str, rows: list[tuple[str, str]]) -> None:
        """Insert rows (``kind`` is a list kind or DETAILS) into a ``writing`` version; a key
        already there is a PublishError."""

    @abstractmethod
    def _finish(self, version: str, counts: dict[str, int], activate: bool, now: str) -> None:
        """Atomically: ``writing`` -> ``complete``, and when ``activate`` switch the pointer."""

    @abstractmethod
    def _switch(self, target: str, expected_live: str | None, now: str) -> None:
        """Atomically point live at the complete version ``target`` if the pointer still names
        ``expected_live`` (else _Conflict)."""

    @abstractmethod
    def _retire(self, version: str, state: str, from_state: str) -> bool:
        """Atomically set ``state`` if the version is in ``from_state`` and not live."""

    @abstractmethod
    def _drop_data(self, version: str) -> None: ...

    @abstractmethod
    def _delete_key(self, kind: str, key: str) -> int:
        """Delete ``key``'s value of ``kind`` in every version, leaving no copy of it in the
        store's own files where the backend allows; how many values were deleted."""

    @abstractmethod
    def _upsert_into(self, kind: str, rows: list[tuple[str, str]], version: str) -> None:
        """Write ``rows`` into ``version`` in one atomic step that checks it is complete or live
        (else VersionError), so a version pruned meanwhile gets nothing."""

    @abstractmethod
    def _upsert(self, kind: str, rows: list[tuple[str, str]], expected_version: str | None) -> str:
        """Write ``rows`` into the live version in one atomic step that reads the pointer and
        calls :func:`check_live` on it first; returns the version written to."""


class _Guard:
    __slots__ = ("store",)

    def __init__(self, store: ServingStore) -> None:
        self.store = store

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is not None and self.store._connection_errors and isinstance(exc, self.store._connection_errors):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreUnavailable(f"serving store {self.store.display_url} is unavailable: {first}") from exc
        return False


def check_live(live: str | None, expected_version: str | None) -> str:
    """The live version an upsert may write to: NothingPublished before any publish,
    LiveVersionChanged when it is not ``expected_version`` (None: any)."""
    if live is None:
        raise NothingPublished()
    if expected_version is not None and live != expected_version:
        raise LiveVersionChanged(expected_version, live)
    return live


def _key(kind: str, key: Any) -> str:
    if key is None:
        if kind == "popular":
            return ""
        raise PublishError(f"a {kind} row has no key (null)")
    if kind == "query":
        key = normalise_query(key)
        if not key:
            raise PublishError("a query row has an empty query")
        return key
    key = key if type(key) is str else str(key)
    if not key and kind != "popular":
        raise PublishError(f"a {kind} row has an empty key")
    return key


_COUNT_NAMES = {"user": "users", "similar": "similar", "popular": "popular", "query": "queries", DETAILS: "items"}


class VersionWriter:
    """Streams one version's lists into the store; ``commit`` makes it live atomically.

    Rows are ``(key, [(item_id, score), ...])`` or ``(key, items, scores)``; they are written in
    batches of ``batch_rows`` so memory stays flat whatever the number of users. A duplicate
    key is an error (a query repeated after normalisation keeps its first list). Used as a
    context manager, an exception aborts the version."""

    def __init__(self, store: ServingStore, version: str, updated_at: str, batch_rows: int) -> None:
        self.store = store
        self.version = version
        self.updated_at = updated_at
        self.batch_rows = max(1, int(batch_rows))
        # "items" (the item details) is counted only when a version has them
        self.counts = {_COUNT_NAMES[kind]: 0 for kind in KINDS}
        self.state = "writing"
        self._has_overall_popular = False
        self._seen_queries: set[str] = set()

    def write_user_recs(self, rows: Iterable[Sequence[Any]]) -> int:
        return self._write("user", rows)

    def write_similar(self, rows: Iterable[Sequence[Any]]) -> int:
        return self._write("similar", rows)

    def write_popular(self, category: str | None, items: Sequence[Any], scores: Sequence[Any] | None = None) -> int:
        """One popular list: ``items`` as ``[(item_id, score), ...]``, or ids with ``scores``."""
        row = (category, items) if scores is None else (category, items, scores)
        return self._write("popular", [row])

    def write_popular_rows(self, rows: Iterable[Sequence[Any]]) -> int:
        """Several popular lists as rows keyed by category (None = overall)."""
        return self._write("popular", rows)

    def write_query_items(self, rows: Iterable[Sequence[Any]]) -> int:
        return self._write("query", rows)

    def write_item_details(self, rows: Iterable[Sequence[Any]]) -> int:
        """``(item_id, category, price)`` rows, None where unknown: the details reads add to each
        listed item of this version (counted as ``items``)."""
        return self._write_pairs(DETAILS, ((_key(DETAILS, r[0]), encode_details(r[1], r[2])) for r in rows))

    def _write(self, kind: str, rows: Iterable[Sequence[Any]]) -> int:
        return self._write_pairs(kind, self._encoded(kind, rows))

    def _encoded(self, kind: str, rows: Iterable[Sequence[Any]]) -> Iterator[tuple[str, str]]:
        for row in rows:
            key, items, scores = split_row(row)
            key = _key(kind, key)
            if kind == "query":
                if key in self._seen_queries:
                    continue
                self._seen_queries.add(key)
            elif kind == "popular" and key == "":
                self._has_overall_popular = True
            yield key, self.store._encode(items, scores, self.updated_at)

    def _write_pairs(self, kind: str, pairs: Iterable[tuple[str, str]]) -> int:
        if self.state != "writing":
            raise PublishError(f"version {self.version} is {self.state}; nothing more can be written")
        written = 0
        batch: list[tuple[str, str]] = []
        for pair in pairs:
            batch.append(pair)
            if len(batch) >= self.batch_rows:
                self._flush(kind, batch)
                written += len(batch)
                batch = []
        if batch:
            self._flush(kind, batch)
            written += len(batch)
        return written

    def _flush(self, kind: str, batch: list[tuple[str, str]]) -> None:
        with self.store._guard():
            self.store._write_rows(self.version, kind, batch)
        name = _COUNT_NAMES[kind]
        self.counts[name] = self.counts.get(name, 0) + len(batch)

    def commit(self, expected_users: int | None = None, *, require_popular: bool = True, activate: bool = True) -> dict[str, Any]:
        """Check completeness, then mark the version complete and (``activate``) switch the
        live pointer to it in one atomic step. On a failed check the version is aborted."""
        if self.state != "writing":
            raise PublishError(f"version {self.version} is {self.state}; it cannot be committed")
        try:
            if expected_users is not None and self.counts["users"] != expected_users:
                raise PublishError(f"incomplete publish of {self.version}: {self.counts['users']:,} user lists written, "
                                   f"{expected_users:,} expected")
            if require_popular and not self._has_overall_popular:
                raise PublishError(f"incomplete publish of {self.version}: no overall popular list "
                                   "(category None), which unknown users fall back to")
            with self.store._guard():
                self.store._finish(self.version, dict(self.counts), activate, utc_now_iso())
        except BaseException:
            self.abort()
            raise
        self.state = "live" if activate else "complete"
        record = self.store.version_info(self.version)
        return record or {"version": self.version, "state": self.state, "counts": dict(self.counts)}

    def abort(self) -> None:
        """Forget this version: it never becomes live and its lists are deleted. Idempotent."""
        if self.state != "writing":
            return
        self.state = "aborted"
        with self.store._guard():
            if self.store._retire(self.version, "aborted", from_state="writing"):
                self.store._drop_data(self.version)

    def __enter__(self) -> "VersionWriter":
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            self.abort()
        elif self.state == "writing":
            self.abort()
            raise PublishError(f"version {self.version} was neither committed nor aborted; it was aborted")

