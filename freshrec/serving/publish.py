"""Publish the scoring job's Parquet tables to a serving store as one new version.

Inputs under ``recs_dir`` (a directory of Parquet files each, as Spark writes them, or a single
``<name>.parquet`` file):

    user_topn    user_id string, items array<string>, scores array<double>    (required)
    popular      category string (null = overall), items, scores             (required; needs the overall row)
    similar      item_id string, items, scores                               (optional)
    query_items  query string, items, scores                                 (optional)

and, given as ``details``, a table of item details (item_id, and category and/or price: the
features' item_stats), stored once per version for the reads to add to each listed item.

Tables are streamed in record batches (never all in memory), written through one
:class:`~freshrec.serving.base.VersionWriter`, checked for completeness (every user row
written, an overall popular list present), and only then switched live. Any failure aborts the
version: the live version is unchanged and the partial lists are deleted.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from freshrec.serving.base import DEFAULT_GRACE_S, PublishError, ServingError, ServingStore, check_keep

log = logging.getLogger(__name__)

#: table name -> (key column, writer method)
TABLES = {
    "user_topn": ("user_id", "write_user_recs"),
    "similar": ("item_id", "write_similar"),
    "popular": ("category", "write_popular_rows"),
    "query_items": ("query", "write_query_items"),
}
REQUIRED = ("user_topn", "popular")
DEFAULT_KEEP = 5
DETAIL_COLUMNS = ("category", "price")


def _table_path(recs_dir: Path, name: str) -> Path | None:
    for candidate in (recs_dir / name, recs_dir / f"{name}.parquet"):
        if candidate.exists():
            return candidate
    return None


def _dataset(path: Path, name: str, key: str):
    import pyarrow.dataset as ds

    try:
        dataset = ds.dataset(str(path), format="parquet")
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for unreadable input
        raise PublishError(f"cannot read {name} at {path}: {exc}") from exc
    missing = [c for c in (key, "items", "scores") if c not in dataset.schema.names]
    if missing:
        raise PublishError(f"{name} at {path} lacks column(s) {', '.join(missing)} (has: {', '.join(dataset.schema.names)})")
    return dataset


def _rows(dataset, columns: Sequence[str | None], batch_rows: int) -> Iterator[tuple[Any, ...]]:
    """Rows of ``columns`` in record batches; a None column is None in every row."""
    present = [c for c in columns if c is not None]
    for batch in dataset.to_batches(columns=present, batch_size=batch_rows):
        values = {c: batch.column(c).to_pylist() for c in present}
        blank = [None] * batch.num_rows
        yield from zip(*(values[c] if c is not None else blank for c in columns), strict=True)


def _details_rows(path: Path, batch_rows: int) -> Iterator[tuple[Any, ...]] | None:
    """``(item_id, category, price)`` rows of the item-details table at ``path``, or None when
    there is no such table (a publish without details: reads show them as null)."""
    import pyarrow.dataset as ds

    if not path.exists():
        log.warning("no item details at %s; this version's items will have no category or price", path)
        return None
    try:
        dataset = ds.dataset(str(path), format="parquet")
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for unreadable input
        raise PublishError(f"cannot read the item details at {path}: {exc}") from exc
    if "item_id" not in dataset.schema.names:
        raise PublishError(f"the item details at {path} lack column item_id (has: {', '.join(dataset.schema.names)})")
    columns = ["item_id", *(c if c in dataset.schema.names else None for c in DETAIL_COLUMNS)]
    return _rows(dataset, columns, batch_rows)


def publish_tables(store: ServingStore, version: str, recs_dir: Path | str, meta: Mapping[str, Any] | None = None, *,
                   keep: int = DEFAULT_KEEP, batch_rows: int = 2000, activate: bool = True,
                   prune_grace_s: float = DEFAULT_GRACE_S, details: Path | str | None = None,
                   protect: Iterable[str] = ()) -> dict[str, Any]:
    """Write ``recs_dir``'s tables as ``version``, make it live, prune to ``keep`` versions
    (:meth:`ServingStore.prune`: versions live less than ``prune_grace_s`` ago, and those in
    ``protect``, are kept too).
    ``details``: the Parquet table of item details to store with it (missing: none, logged).

    Returns ``{"version", "users", "similar", "popular", "queries", "seconds", "pruned"}`` (and
    ``items``, the item details written, when there were some), and
    ``prune_error`` when the store failed while pruning after the switch (logged as an error; the
    next publish prunes again). A ``keep`` below 1 is refused before anything is written, so the
    live version stays. On any other exception the version is aborted and the exception re-raised."""
    check_keep(keep)
    recs_dir = Path(recs_dir)
    started = time.perf_counter()
    paths = {name: _table_path(recs_dir, name) for name in TABLES}
    missing = [name for name in REQUIRED if paths[name] is None]
    if missing:
        raise PublishError(f"nothing to publish: {', '.join(missing)} missing under {recs_dir}")
    datasets = {name: _dataset(path, name, TABLES[name][0]) for name, path in paths.items() if path is not None}
    expected_users = datasets["user_topn"].count_rows()
    meta = {**dict(meta or {}), "recs_dir": str(recs_dir.resolve())}
    details_rows = _details_rows(Path(details), batch_rows) if details is not None else None

    writer = store.begin_version(version, meta, batch_rows=batch_rows)
    try:
        for name, dataset in datasets.items():
            key, method = TABLES[name]
            written = getattr(writer, method)(_rows(dataset, (key, "items", "scores"), batch_rows))
            log.info("published %s: %d rows into version %s", name, written, version)
        if details_rows is not None:
            log.info("published item details: %d items into version %s", writer.write_item_details(details_rows), version)
        writer.commit(expected_users=expected_users, activate=activate)
    except BaseException:
        writer.abort()
        raise
    result: dict[str, Any] = {"version": version, **writer.counts, "seconds": round(time.perf_counter() - started, 3)}
    try:
        result["pruned"] = store.prune(keep=keep, grace_s=prune_grace_s, protect=protect)
    except ServingError as exc:  # the new version is live and stays; the next publish prunes again
        log.error("publish of %s succeeded but pruning failed: %s", version, exc)
        result["pruned"] = []
        result["prune_error"] = str(exc)
    return result


# -- writing such tables (tests, benchmarks, small jobs) -----------------------------------

ListRows = Iterable[tuple[Any, Sequence[tuple[str, float]]]] | Mapping[Any, Sequence[tuple[str, float]]]


def write_recs_tables(recs_dir: Path | str, *, users: ListRows = (), popular: ListRows = (), similar: ListRows = (),
                      queries: ListRows = (), rows_per_file: int = 100_000) -> Path:
    """Write the four tables under ``recs_dir`` from Python lists of ``(key, [(item, score), ...])``
    (or mappings key -> pairs); ``popular`` keys are categories, None for the overall list.
    Empty tables are still written (with their schema) so readers find them."""

    recs_dir = Path(recs_dir)
    sources = {"user_topn": users, "popular": popular, "similar": similar, "query_items": queries}
    for name, rows in sources.items():
        write_list_table(recs_dir / name, TABLES[name][0], rows, rows_per_file)
    return recs_dir


def write_list_table(out: Path | str, key: str, rows: ListRows, rows_per_file: int = 100_000) -> Path:
    """One table of ``(key, [(item, score), ...])`` rows as Parquet files under ``out`` (replaced)."""
    return write_list_blocks(out, key, _row_blocks(rows.items() if isinstance(rows, Mapping) else rows, rows_per_file),
                             rows_per_file)


def _row_blocks(rows: Iterable[tuple[Any, Sequence[tuple[str, float]]]], size: int) -> Iterator[tuple[list, list, list, list]]:
    """Rows as :func:`write_list_blocks`' blocks of ``size`` keys."""
    keys, offsets, items, scores = [], [0], [], []
    for key, pairs in rows:
        keys.append(key)
        items.extend(p[0] for p in pairs)
        scores.extend(float(p[1]) for p in pairs)
        offsets.append(len(items))
        if len(keys) >= size:
            yield keys, offsets, items, scores
            keys, offsets, items, scores = [], [0], [], []
    if keys:
        yield keys, offsets, items, scores


def write_list_blocks(out: Path | str, key: str, blocks: Iterable[tuple[Any, Any, Any, Any]],
                      rows_per_file: int = 100_000) -> Path:
    """:func:`write_list_table` for lists given as arrays, a block at a time: ``(keys, offsets,
    items, scores)`` with key k's list at ``offsets[k]:offsets[k + 1]`` (what
    jobs.score.similar_item_blocks yields), written without a Python object per item."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.parquet"):
        old.unlink()
    part, pending, n_rows = 0, [], 0
    for keys, offsets, items, scores in blocks:
        offsets = pa.array(offsets, pa.int32())
        pending.append(pa.table({key: pa.array(keys, pa.string()),
                                 "items": pa.ListArray.from_arrays(offsets, pa.array(items, pa.string())),
                                 "scores": pa.ListArray.from_arrays(offsets, pa.array(scores, pa.float64()))},
                                schema=list_schema(key)))
        n_rows += len(keys)
        if n_rows >= rows_per_file:
            pq.write_table(pa.concat_tables(pending), out / f"part-{part:05d}.parquet")
            part, pending, n_rows = part + 1, [], 0
    if pending or part == 0:
        pq.write_table(pa.concat_tables(pending) if pending else list_schema(key).empty_table(), out / f"part-{part:05d}.parquet")
    return out


def list_schema(key: str):
    """The Arrow schema of a list table keyed by ``key`` (the four tables of the module docstring)."""
    import pyarrow as pa

    return pa.schema([pa.field(key, pa.string()), pa.field("items", pa.list_(pa.string())),
                      pa.field("scores", pa.list_(pa.float64()))])

