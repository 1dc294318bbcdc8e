"""The Spark and numpy ranking metrics give the same numbers on random data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from freshrec.models.data import Ragged
from freshrec.models.metrics import ranking_metrics
from freshrec.models.metrics_spark import spark_ranking_metrics

pytestmark = pytest.mark.integration


def random_case(seed: int, n_users: int = 150, n_items: int = 400, k: int = 100):
    rng = np.random.default_rng(seed)
    recs = np.stack([rng.permutation(n_items)[:k] for _ in range(n_users)])
    recs[rng.random(n_users) < 0.05] = -1  # some users get no list at all
    short = rng.random(n_users) < 0.1
    recs[short, k // 2:] = -1  # and some a short one
    rows, items = [], []
    for u in range(n_users):
        n = rng.integers(1, 25)
        # mostly catalogue items, a few never recommendable (ids past the catalogue)
        chosen = rng.choice(n_items + 50, size=n, replace=False)
        rows += [u] * n
        items += chosen.tolist()
    targets = Ragged.from_pairs(np.array(rows), np.array(items), n_users)
    return recs, targets, n_items


def to_frames(spark, recs, targets):
    rec_rows = [(f"u{u}", f"i{item}", rank + 1) for u in range(recs.shape[0]) for rank, item in enumerate(recs[u]) if item >= 0]
    tgt_rows = [(f"u{u}", f"i{item}") for u in range(len(targets)) for item in targets[u]]
    return (spark.createDataFrame(pd.DataFrame(rec_rows, columns=["user_id", "item_id", "rank"])),
            spark.createDataFrame(pd.DataFrame(tgt_rows, columns=["user_id", "item_id"])))


@pytest.mark.parametrize("seed", [0, 1])
def test_spark_and_numpy_agree(spark, seed):
    recs, targets, n_items = random_case(seed)
    ks = (1, 10, 20, 100)
    expected = ranking_metrics(recs, targets, ks, n_items)
    got = spark_ranking_metrics(*to_frames(spark, recs, targets), ks=ks, n_items=n_items)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name
    assert 0 < expected["ndcg_at_10"] < 1  # the case is not degenerate
