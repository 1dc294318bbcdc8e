"""One order and one exclusion rule on a log full of ties (real Spark).

A user's last L item events and the items kept out of their list, three ways: training's
Histories (models.data), the batch's Spark features (recent_sequences, interactions,
user_inputs) and the micro-batch's re-scoring inputs (batch features plus features/recent,
with events in both). Every user gets the same sequence and the same exclusions from all three.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from freshrec.jobs.history import scoring_schema
from freshrec.jobs.matrices import interactions, new_id_rows, recent_sequences
from freshrec.jobs.score import user_inputs
from freshrec.models.data import EVENT_NAMES, Catalogue, Histories, normalize_events
from freshrec.models.split import seen_items

from freshrec.lake import write_recent
from freshrec.rescore import scoring_inputs

pytestmark = pytest.mark.integration

LENGTH = 4
SCHEMA = "event_id string, ts timestamp, user_id string, event_type string, item_id string, category string"
TYPES = np.array(["view", "add_to_cart", "remove_from_cart", "purchase", "search"], dtype=object)


def _tied_log(seed: int = 7, n: int = 900) -> pd.DataFrame:
    """Few distinct times (a day's basket shares one, as in Ta-Feng; a few events a microsecond
    apart), the same time across event types, and rows equal in all but their event id."""
    rng = np.random.default_rng(seed)
    times = pd.Timestamp("2024-05-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 3, n), unit="D") \
        + pd.to_timedelta(rng.choice([0, 0, 0, 1, 2], n), unit="us")
    types = rng.choice(TYPES, n, p=[0.4, 0.2, 0.1, 0.2, 0.1])
    log = pd.DataFrame({
        "user_id": [f"u{i}" for i in rng.integers(0, 40, n)],
        "item_id": np.where(types == "search", None, [f"i{i}" for i in rng.integers(0, 12, n)]),
        "event_type": types, "ts": times, "category": "c",
    })
    copies = log.sample(frac=0.3, random_state=seed)  # the same user, item, type and time again
    basket = log.sample(frac=0.2, random_state=seed + 1).assign(event_type="purchase")  # same time, other type
    log = pd.concat([log, copies, basket.loc[basket["item_id"].notna()]], ignore_index=True)
    # ids in no relation to the rows' order, so only the tie-break can order them
    log["event_id"] = [f"{int(k) * 2654435761 % (1 << 32):08x}" for k in rng.permutation(len(log))]
    return log.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _as_lists(frame: pd.DataFrame) -> dict[str, tuple]:
    return {u: (list(zip(list(i), list(e), [int(x) for x in t], strict=True)), sorted(x)) for u, i, e, t, x in
            zip(frame["user_id"], frame["item_ids"], frame["event_types"], frame["t"], frame["exclude"], strict=True)}


def _training(log: pd.DataFrame, users: list[str], mode: str) -> dict[str, tuple]:
    ev = normalize_events(log)
    cat = Catalogue.from_events(ev)
    last = Histories.from_events(ev, cat, users=users, max_len=LENGTH)
    seen = seen_items(Histories.from_events(ev, cat, users=users), mode)
    out = {}
    for r, u in enumerate(users):
        lo, hi = last.offsets[r], last.offsets[r + 1]
        seq = [(cat.item_ids[i], EVENT_NAMES[e], int(t)) for i, e, t in zip(last.item[lo:hi], last.etype[lo:hi], last.t[lo:hi], strict=True)]
        out[u] = (seq, sorted(cat.item_ids[seen[r]]))
    return out


def _spark_batch(spark, log: pd.DataFrame, mode: str, settings):
    events = spark.createDataFrame(log[["event_id", "ts", "user_id", "event_type", "item_id", "category"]], SCHEMA)
    users = new_id_rows(events, None, "user_id")
    items = new_id_rows(events.where("item_id IS NOT NULL"), None, "item_id")
    seqs = recent_sequences(events, LENGTH, items, users)
    inter = interactions(events, settings.event_weights, settings.decay_half_life_days, users, items)
    return users, seqs, inter, user_inputs(users, seqs, inter, mode)


def test_training_batch_and_microbatch_read_the_same_sequences_and_exclusions(spark, settings):
    log = _tied_log()
    assert log.duplicated(["user_id", "item_id", "event_type", "ts"]).sum() > 100, "many rows equal but for their id"
    assert log.duplicated(["user_id", "ts"]).mean() > 0.7, "most events tie on time"
    users = sorted(log["user_id"].unique())
    # the last batch read 70% of the log; the micro-batches since hold the rest, and a tenth
    # of the batch's events landed in a micro-batch while the batch was reading the lake
    in_batch = np.random.default_rng(1).random(len(log)) < 0.7
    overlap = in_batch & (np.random.default_rng(2).random(len(log)) < 0.1)
    batch, recent = log.loc[in_batch], log.loc[~in_batch | overlap]
    _, seqs, inter, _ = _spark_batch(spark, batch, "all", settings)
    seqs.write.parquet(str(settings.features_dir / "sequences"))
    inter.write.parquet(str(settings.features_dir / "interactions"))
    write_recent(settings, "mb-1", recent.loc[recent["item_id"].notna()])

    for mode in ("all", "purchased"):
        trained = _training(log, users, mode)
        inputs = _spark_batch(spark, log, mode, settings)[3]
        # score_arrow reads what Spark gives (list types compare without their child's name)
        assert [(f.name, f.type) for f in inputs.toArrow().schema] == [(f.name, f.type) for f in scoring_schema()]
        batch_frame = inputs.toPandas()
        served = _as_lists(batch_frame)
        micro = _as_lists(scoring_inputs(settings.model_copy(update={"exclude_seen": mode, "sequence_length": LENGTH}),
                                         users))
        assert set(served) == set(users) == set(micro)
        for u in users:
            assert served[u][0] == trained[u][0] == micro[u][0], f"{u}: sequences differ ({mode})"
            assert served[u][1] == trained[u][1] == micro[u][1], f"{u}: exclusions differ ({mode})"
        assert sum(len(s) for s, _ in trained.values()) > 30 * LENGTH * 0.8 and any(x for _, x in trained.values())
