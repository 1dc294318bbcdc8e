"""Scoring: the lists the publish step serves (docs/serving.md).

- ``write_user_lists``: a Spark job over partitions of users (``mapInArrow``). The recommender
  (the model's weights and item embeddings, or a baseline's item tables) is broadcast once;
  inside a partition users are scored in batches of matrix products and top-k (``score_arrow``,
  Arrow in and out), and each task writes its lists' Parquet file itself; ``score_frame`` is the
  same scoring pandas -> pandas, which the incremental and real-time paths call directly for
  the users who just acted.
- ``popular_lists``: per category, from features/item_stats (one row per item, pandas).
- ``query_items``: a Spark aggregation over the lake.
- ``similar_items``: per item, its co-occurrence neighbours, filled up from its category's and
  then the overall popular items; vectorised over blocks of items on the driver
  (``similar_item_blocks``), each block written as it is computed.

Items marked unavailable in the catalogue never appear in any list.
"""

from __future__ import annotations

import os
import pickle
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

#: how a task's file of ``write_user_lists`` starts until the driver keeps it (readers skip it)
ATTEMPT_PREFIX = ".attempt-"
#: an item event within this long after a search, in the same session, answers the query
QUERY_WINDOW_MINUTES = 30


def user_inputs(user_index: "DataFrame", sequences: "DataFrame", interactions: "DataFrame",
                exclude_seen: str) -> "DataFrame":
    """One row per known user: the recent sequence (item_ids, event_types, t epoch seconds) and
    the items FRESHREC_EXCLUDE_SEEN keeps out of their list (``exclude``). Users without item
    events get empty arrays: they are scored as new users. The Spark twin of
    ``jobs.history.scoring_frame``: the same columns, the same rule (SEEN_RULE)."""
    from freshrec.jobs.history import SEEN_RULE
    from pyspark.sql import functions as F

    seq = sequences.select("user_id", "item_ids", "event_types",
                           F.transform("ts", lambda x: F.unix_seconds(x)).alias("t"))
    if exclude_seen == "none":
        seen = None
    else:
        seen = (interactions.where(SEEN_RULE[exclude_seen]).groupBy("user_id")
                .agg(F.sort_array(F.collect_set("item_id")).alias("exclude")))
    out = user_index.select("user_id").join(seq, "user_id", "left")
    empty_s, empty_l = F.array().cast("array<string>"), F.array().cast("array<long>")
    out = out.select("user_id", F.coalesce("item_ids", empty_s).alias("item_ids"),
                     F.coalesce("event_types", empty_s).alias("event_types"), F.coalesce("t", empty_l).alias("t"))
    if seen is None:
        return out.withColumn("exclude", empty_s)
    return out.join(seen, "user_id", "left").withColumn("exclude", F.coalesce("exclude", empty_s))


def score_frame(rec, frame: pd.DataFrame, n: int, now: int, unavailable: np.ndarray | None = None,
                batch_size: int = 1024) -> pd.DataFrame:
    """Top-``n`` (items, scores) per row of ``frame`` (user_id, item_ids, event_types, t, exclude),
    each user's events oldest first in ``jobs.history.EVENT_ORDER``.

    ``rec`` is a fitted recommender bound to its catalogue; ``now`` (epoch seconds) is the
    moment every user is scored at; ``unavailable`` holds catalogue indices no list may show.
    ``score_arrow`` with pandas in and Python lists out (the real-time and micro-batch paths:
    a few users)."""
    import pyarrow as pa
    from freshrec.jobs.history import scoring_schema

    schema = scoring_schema()
    frame = frame.astype({"user_id": str})
    batch = pa.RecordBatch.from_arrays([pa.array(frame[f.name].tolist(), f.type) for f in schema], schema=schema)
    out = score_arrow(rec, batch, n, now, unavailable, batch_size)
    return pd.DataFrame({name: out.column(name).to_pylist() for name in out.schema.names})


def score_arrow(rec, batch: "pa.RecordBatch", n: int, now: int, unavailable: np.ndarray | None = None,
                batch_size: int = 1024) -> "pa.RecordBatch":
    """The lists of an Arrow batch of ``jobs.history.scoring_schema()`` (what ``write_user_lists``'
    tasks read; ``score_frame`` passes its pandas frame here), in the user_topn table's schema
    (``serving.publish.list_schema``): ids are matched to the catalogue and the lists built in
    Arrow's vectorised kernels, with no Python object per event or per list item."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from freshrec.models.data import EVENT_CODES

    from freshrec.serving.publish import list_schema

    ids = _arrow_ids(rec.catalogue)

    def flat(name: str) -> tuple["pa.Array", np.ndarray]:
        col = batch.column(name)
        return col.flatten(), pc.list_value_length(col).fill_null(0).to_numpy().astype(np.int64)

    def indices(values: "pa.Array", value_set: "pa.Array") -> np.ndarray:
        found = pc.index_in(values.cast(pa.string()), value_set=value_set)
        return found.fill_null(-1).to_numpy().astype(np.int64)

    items, lengths = flat("item_ids")
    etypes, _ = flat("event_types")
    excluded, ex_lengths = flat("exclude")
    codes = np.array([*EVENT_CODES.values(), EVENT_CODES["view"]], dtype=np.int8)  # an unknown type reads as a view
    etype = codes[indices(etypes, pa.array(list(EVENT_CODES), pa.string()))]
    users = batch.column("user_id").to_numpy(zero_copy_only=False).astype(object)
    top, vals, keep = _score(rec, users, lengths, indices(items, ids), etype, flat("t")[0].to_numpy().astype(np.int64),
                             ex_lengths, indices(excluded, ids), n, now, unavailable, batch_size)
    offsets = pa.array(np.concatenate([[0], np.cumsum(keep.sum(axis=1))]), pa.int32())
    return pa.RecordBatch.from_arrays(
        [pa.array(users, pa.string()), pa.ListArray.from_arrays(offsets, ids.take(pa.array(top[keep]))),
         pa.ListArray.from_arrays(offsets, pa.array(vals[keep].astype(np.float64)))],
        schema=list_schema("user_id"))


def _score(rec, users: np.ndarray, lengths: np.ndarray, idx: np.ndarray, etype: np.ndarray, t: np.ndarray,
           ex_lengths: np.ndarray, ex_items: np.ndarray, n: int, now: int, unavailable: np.ndarray | None,
           batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The lists of ``users`` from their events as flat arrays (``lengths`` a user, catalogue
    indices ``idx``, -1 outside it) and their excluded items (``ex_lengths`` a user): top
    catalogue indices, their scores, and which of them to show (real items with finite scores)."""
    from freshrec.models.data import Histories, Ragged

    if not len(users):
        return np.zeros((0, n), np.int64), np.zeros((0, n), np.float32), np.zeros((0, n), bool)
    cat = rec.catalogue
    known = idx >= 0
    safe = np.maximum(idx, 0)
    hist = Histories(user_ids=users, offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                     item=idx, etype=etype.astype(np.int8), t=t.astype(np.int64),
                     category=np.where(known, cat.category[safe], "").astype(object),
                     price=np.where(known, cat.price[safe], np.nan).astype(np.float64),
                     now=np.full(len(users), now, dtype=np.int64))
    ex_rows = np.repeat(np.arange(len(users)), ex_lengths)
    ok = ex_items >= 0
    ex_rows, ex_items = ex_rows[ok], ex_items[ok]
    if unavailable is not None and len(unavailable):
        ex_rows = np.concatenate([ex_rows, np.repeat(np.arange(len(users)), len(unavailable))])
        ex_items = np.concatenate([ex_items, np.tile(np.asarray(unavailable, np.int64), len(users))])
    top, vals = rec.recommend(hist, n, exclude=Ragged.from_pairs(ex_rows, ex_items, len(users)), batch_size=batch_size)
    return top, vals, (top >= 0) & np.isfinite(vals)


_ARROW_IDS: dict[int, Any] = {}


def _arrow_ids(catalogue) -> "pa.Array":
    """The catalogue's item ids as an Arrow string array, once per catalogue in a worker."""
    import pyarrow as pa

    key = id(catalogue)
    found = _ARROW_IDS.get(key)
    if found is None or found[0] is not catalogue:
        _ARROW_IDS.clear()
        found = _ARROW_IDS[key] = (catalogue, pa.array(catalogue.item_ids, pa.string()))
    return found[1]


_LOADED: dict[str, Any] = {}


def _broadcast_value(key: str, payload) -> Any:
    """The unpickled recommender of a broadcast, once per Python worker (workers are reused), on
    one thread: Spark runs a worker per core."""
    rec = _LOADED.get(key)
    if rec is None:
        _LOADED.clear()
        rec = _LOADED[key] = pickle.loads(payload.value).single_threaded()  # one worker per core already
    return rec


def write_user_lists(spark: "SparkSession", inputs: "DataFrame", rec, n: int, now: int, out: Path,
                     unavailable: np.ndarray | None = None) -> int:
    """``score_arrow`` over Spark partitions of ``inputs`` (``user_inputs``), the recommender
    broadcast, written as the Parquet table ``out`` (user_topn's schema, one file a partition);
    returns the number of users written.

    Each task writes its own lists with Arrow's Parquet writer, under a hidden name that readers
    skip, and returns that name; the driver then renames the files of the attempts Spark kept
    and deletes any other attempt's (a retried or speculative task). So the lists never cross
    back from the Python workers to the JVM, whose Parquet writer encodes nested lists value by
    value: for 66k users' 100-item lists on 2 cores (``bench/score.py``), the JVM's CPU time per
    run fell from 2.7-2.9 s to 0.6-1.9 s, and Arrow's writer takes about 0.4 s of the workers'.
    Like any Spark write to a path, ``out`` must be on storage that every executor reaches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from freshrec.serving.publish import list_schema

    payload = spark.sparkContext.broadcast(pickle.dumps(rec, protocol=pickle.HIGHEST_PROTOCOL))
    key = uuid.uuid4().hex
    unavailable = np.zeros(0, np.int64) if unavailable is None else np.asarray(unavailable, np.int64)
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)  # the table is replaced whole
    out.mkdir(parents=True)
    directory = str(out)

    def run(batches):
        from pyspark import TaskContext

        task = TaskContext.get()
        name = f"{ATTEMPT_PREFIX}{task.partitionId():05d}-{task.attemptNumber()}.parquet"
        r = _broadcast_value(key, payload)
        writer, rows = None, 0
        try:
            for batch in batches:
                lists = score_arrow(r, batch, n, now, unavailable)
                if writer is None:
                    writer = pq.ParquetWriter(os.path.join(directory, name), lists.schema,
                                              use_dictionary=["items.list.element"])
                writer.write_batch(lists)
                rows += lists.num_rows
        finally:
            if writer is not None:
                writer.close()
        if writer is not None:
            yield pa.RecordBatch.from_pydict({"partition": [task.partitionId()], "name": [name], "rows": [rows]})

    kept = inputs.mapInArrow(run, "partition long, name string, rows long").collect()
    for row in kept:
        os.replace(out / row["name"], out / f"part-{row['partition']:05d}.parquet")
    for stray in out.glob(f"{ATTEMPT_PREFIX}*"):
        stray.unlink()
    if not kept:  # no users: the table still has its schema
        pq.write_table(list_schema("user_id").empty_table(), out / "part-00000.parquet")
    return sum(row["rows"] for row in kept)


POPULAR_COLUMNS = ["item_id", "category", "available", "n_events", "popularity"]


def fold_popularity(stats: pd.DataFrame, recent: pd.DataFrame, weights: Mapping[str, float],
                    half_life_days: float) -> pd.DataFrame:
    """``stats`` (features/item_stats: item_id, category, available, n_events, popularity,
    last_seen) with the item events of ``recent`` (item_id, event_type, ts, category) folded in.

    Popularity is a sum of event weights decayed from the newest item event (the batch's
    ``jobs.matrices.reference_time``: here the newest ``last_seen``), so moving the reference
    to the recent events' newest scales the batch sums by one factor and adds the new events'
    decayed weights: the numbers a batch over all events gives. An item first seen in ``recent`` comes in available, with its latest category."""
    if not len(recent):
        return stats
    ts = pd.to_datetime(recent["ts"], utc=True)
    ref_old = pd.to_datetime(stats["last_seen"], utc=True).max() if len(stats) else ts.max()
    ref = max(ref_old, ts.max())
    half_life_s = half_life_days * 86_400
    w = recent["event_type"].map(weights).fillna(0.0).clip(lower=0.0) * 2.0 ** (-(ref - ts).dt.total_seconds() / half_life_s)
    delta = (pd.DataFrame({"item_id": recent["item_id"].astype(str), "w": w, "category": recent["category"], "ts": ts})
             .sort_values("ts", kind="mergesort").groupby("item_id")
             .agg(popularity=("w", "sum"), n_events=("w", "size"), category=("category", "last")).reset_index())
    pop = stats["popularity"].to_numpy(dtype=float) * 2.0 ** (-(ref - ref_old).total_seconds() / half_life_s)
    count = stats["n_events"].to_numpy(dtype=np.int64, copy=True)
    at = pd.Index(stats["item_id"]).get_indexer(delta["item_id"])  # delta's items are unique
    known = at >= 0
    pop[at[known]] += delta["popularity"].to_numpy()[known]
    count[at[known]] += delta["n_events"].to_numpy()[known]
    return pd.concat([stats.assign(popularity=pop, n_events=count),
                      delta.loc[~known].assign(available=True)], ignore_index=True)


def popular_lists(item_stats: pd.DataFrame, n: int) -> list[tuple[str | None, list[tuple[str, float]]]]:
    """(category, [(item, popularity), ...]): the overall list (category None) and one per
    category, by decayed weighted popularity (ties: more events, then item id), available items
    only. One row per item in, so the batch and every micro-batch call this same function."""
    avail = item_stats.loc[item_stats["available"].astype("boolean").fillna(True).astype(bool)]
    # only an item at or above the n-th popularity of its category (or overall) can make a list:
    # the sort with the item-id tie-break, slow on strings, runs on those alone
    head = avail.sort_values("popularity", ascending=False, kind="mergesort")
    cut_overall = head["popularity"].iloc[min(n, len(head)) - 1] if len(head) else 0.0
    cut = head.groupby("category", sort=False).head(n).groupby("category", sort=False)["popularity"].min()
    keep = (avail["popularity"] >= cut_overall) | (avail["popularity"] >= avail["category"].map(cut))
    ranked = avail.loc[keep].sort_values(["popularity", "n_events", "item_id"], ascending=[False, False, True], kind="mergesort")

    def pairs(frame: pd.DataFrame) -> list[tuple[str, float]]:
        return list(zip(frame["item_id"].astype(str), frame["popularity"].astype(float), strict=True))

    per_cat = ranked.loc[ranked["category"].notna()].groupby("category", sort=False).head(n)
    return [(None, pairs(ranked.head(n)))] + [(str(c), pairs(g)) for c, g in per_cat.groupby("category", sort=True)]


def query_items(events: "DataFrame", weights: Mapping[str, float], n: int, min_users: int,
                unavailable_items: "DataFrame | None" = None) -> "DataFrame":
    """(query, items, scores): what users viewed, carted or bought within QUERY_WINDOW_MINUTES
    after searching the query, in the same session; only queries searched by at least
    ``min_users`` distinct users, so that no one person's searches become a public list. An
    item's score sums, over searches, the strongest event weight it got after one."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    searches = events.where((F.col("event_type") == "search") & F.col("query").isNotNull() & (F.col("query") != "")).select(
        F.col("event_id").alias("search_id"), "user_id", F.col("session_id").alias("s_session"),
        F.col("ts").alias("s_ts"), "query")
    frequent = searches.groupBy("query").agg(F.countDistinct("user_id").alias("n_users")).where(F.col("n_users") >= min_users)
    weight_of = F.create_map(*[x for k, v in weights.items() if v > 0 for x in (F.lit(k), F.lit(float(v)))])
    acts = events.where(F.col("item_id").isNotNull()).select(
        "user_id", F.col("session_id").alias("e_session"), F.col("ts").alias("e_ts"), "item_id",
        weight_of[F.col("event_type")].alias("w")).where(F.col("w").isNotNull())
    if unavailable_items is not None:
        acts = acts.join(unavailable_items.select("item_id"), "item_id", "left_anti")
    window = F.expr(f"INTERVAL {QUERY_WINDOW_MINUTES} MINUTES")
    joined = searches.join(frequent.select("query"), "query").join(acts, "user_id").where(
        (F.col("e_ts") > F.col("s_ts")) & (F.col("e_ts") <= F.col("s_ts") + window)
        & (F.col("s_session").isNull() | F.col("e_session").isNull() | (F.col("s_session") == F.col("e_session"))))
    per_search = joined.groupBy("search_id", "query", "item_id").agg(F.max("w").alias("w"))
    scored = per_search.groupBy("query", "item_id").agg(F.sum("w").alias("score"), F.count("*").alias("n"))
    ranked = scored.withColumn("_r", F.row_number().over(
        Window.partitionBy("query").orderBy(F.col("score").desc(), F.col("n").desc(), "item_id"))).where(F.col("_r") <= n)
    lists = ranked.groupBy("query").agg(F.sort_array(F.collect_list(F.struct("_r", "item_id", "score"))).alias("l"))
    return lists.select("query", F.col("l.item_id").alias("items"), F.col("l.score").cast("array<double>").alias("scores"))


def similar_items(similarity, catalogue, popularity: np.ndarray, n: int,
                  unavailable: np.ndarray | None = None) -> Iterator[tuple[str, list[tuple[str, float]]]]:
    """``(item_id, [(item_id, score), ...])`` per catalogue item: the rows of
    :func:`similar_item_blocks`."""
    for keys, offsets, items, scores in similar_item_blocks(similarity, catalogue, popularity, n, unavailable):
        for k, key in enumerate(keys.tolist()):
            lo, hi = offsets[k], offsets[k + 1]
            yield key, list(zip(items[lo:hi].tolist(), scores[lo:hi].tolist(), strict=True))


def similar_item_blocks(similarity, catalogue, popularity: np.ndarray, n: int, unavailable: np.ndarray | None = None,
                        block: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per catalogue item: its top-``n`` neighbours in ``similarity`` (items x items, sparse,
    e.g. cosine co-occurrence; ties by item order), filled up with its category's and then the
    overall most popular items (score 0.0: "popular beside it", not "bought with it").
    Unavailable items and the item itself never appear.

    Vectorised over ``block`` items at a time, so memory stays within one block's lists: yields
    ``(item ids, offsets, listed item ids, scores)`` per block, item k's list at
    ``offsets[k]:offsets[k + 1]``."""
    import scipy.sparse as sp

    sim = sp.csr_matrix(similarity)
    n_items = len(catalogue)
    blocked = np.zeros(n_items, bool)
    if unavailable is not None and len(unavailable):
        blocked[np.asarray(unavailable, np.int64)] = True
    order = np.lexsort((np.arange(n_items), -np.asarray(popularity, np.float64)))
    order = order[~blocked[order]]
    codes = np.asarray(catalogue.category_code)
    # per category its n + 1 best sellers (-1 padded), then the overall 2n + 1: the fill order
    fill = np.full((int(codes.max(initial=-1)) + 2, n + 1), -1, dtype=np.int64)
    by_code = order[codes[order] >= 0]
    by_code = by_code[np.argsort(codes[by_code], kind="stable")]
    starts = np.searchsorted(codes[by_code], codes[by_code], side="left")
    rank = np.arange(len(by_code)) - starts
    first = rank <= n
    fill[codes[by_code][first], rank[first]] = by_code[first]
    top_overall = order[: 2 * n + 1]
    ids = np.asarray(catalogue.item_ids, dtype=object)
    for a in range(0, n_items, block):
        b = min(a + block, n_items)
        span = np.arange(a, b)
        lo, hi = sim.indptr[a], sim.indptr[b]
        rows = np.repeat(span, np.diff(sim.indptr[a:b + 1]))
        cols, vals = sim.indices[lo:hi].astype(np.int64), sim.data[lo:hi]
        ok = (~blocked[cols]) & (cols != rows) & (vals > 0)
        rows, cols, vals = rows[ok], cols[ok], vals[ok]
        o = np.lexsort((cols, -vals, rows))
        rows, cols, vals = rows[o], cols[o], vals[o]
        kept = (np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")) < n
        rows, cols, vals = rows[kept], cols[kept], vals[kept].astype(np.float64)
        found = np.bincount(rows - a, minlength=b - a)
        # fill candidates in order: the category's, then overall; each item once, never the
        # item itself nor one of its neighbours
        cats = codes[a:b]
        cand = np.concatenate([np.where(cats[:, None] >= 0, fill[np.maximum(cats, 0)], -1),
                               np.broadcast_to(top_overall, (b - a, len(top_overall)))], axis=1)
        key = span[:, None] * n_items + cand
        valid = (cand >= 0) & (cand != span[:, None]) & ~np.isin(key, rows * n_items + cols)
        flat = np.flatnonzero(valid.ravel())
        _, first_seen = np.unique(key.ravel()[flat], return_index=True)
        once = np.zeros(valid.size, bool)
        once[flat[first_seen]] = True
        valid &= once.reshape(valid.shape)
        take = valid & (np.cumsum(valid, axis=1) <= (n - found)[:, None])
        f_rows, f_pos = np.nonzero(take)
        all_rows = np.concatenate([rows - a, f_rows])
        all_items = np.concatenate([cols, cand[f_rows, f_pos]])
        all_scores = np.concatenate([vals, np.zeros(len(f_rows))])
        # neighbours first (already in order), then the fill in its order
        o = np.lexsort((np.concatenate([np.arange(len(rows)), len(rows) + f_pos]), all_rows))
        offsets = np.concatenate([[0], np.cumsum(np.bincount(all_rows, minlength=b - a))])
        yield ids[a:b], offsets, ids[all_items[o]], all_scores[o]
