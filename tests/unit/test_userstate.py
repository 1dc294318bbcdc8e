"""features/user_state.db: the batch's per-user state by key (freshrec.userstate), no Spark."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from freshrec.userstate import build_user_state, ensure_user_state, forget_user_state, state_path, user_state

USERS = 1_203  # more than two chunks of bound parameters


def _features(settings, shift: int = 0) -> None:
    """features/sequences and features/interactions as Spark writes them (nanosecond timestamps,
    list columns), in two files each."""
    t0 = pd.Timestamp("2024-05-01").value
    for part in range(2):
        users = [f"u{i}" for i in range(part, USERS, 2)]
        n = [1 + i % 3 for i in range(part, USERS, 2)]
        seq = pa.table({
            "user_id": users, "user_idx": list(range(len(users))),
            "event_ids": [[f"e{u}-{k}" for k in range(m)] for u, m in zip(users, n, strict=True)],
            "item_ids": [[f"i{(k + shift) % 7}" for k in range(m)] for m in n],
            "item_idx": [list(range(m)) for m in n],
            "event_types": [["view", "purchase", "add_to_cart"][:m] for m in n],
            "ts": pa.array([[t0 + k * 1_500_000 for k in range(m)] for m in n], pa.list_(pa.timestamp("ns"))),
        })
        inter = pa.table({"user_id": [u for u, m in zip(users, n, strict=True) for _ in range(m)],
                          "item_id": [f"i{(k + shift) % 7}" for m in n for k in range(m)],
                          "n_events": [1 for m in n for _ in range(m)],
                          "n_purchase": [int(k == 1) for m in n for k in range(m)]})
        for name, table in (("sequences", seq), ("interactions", inter)):
            (settings.features_dir / name).mkdir(parents=True, exist_ok=True)
            pq.write_table(table, settings.features_dir / name / f"part-{part}.parquet")


def test_a_users_state_is_read_by_key_as_the_batch_wrote_it(settings):
    _features(settings)
    assert not state_path(settings).exists()
    ensure_user_state(settings)  # a home whose batch predates the file gets it on first use
    asked = ["u0", "u1", "u2", "u1202", "nobody", *[f"u{i}" for i in range(100, 700)]]
    events, seen = user_state(settings, asked)

    assert set(events["user_id"]) == set(asked) - {"nobody"}
    u2 = events.loc[events["user_id"] == "u2"]  # three events, in the batch's order
    assert list(u2["item_id"]) == ["i0", "i1", "i2"] and list(u2["event_type"]) == ["view", "purchase", "add_to_cart"]
    assert list(u2["event_id"]) == ["eu2-0", "eu2-1", "eu2-2"]
    assert str(events["ts"].dtype) == "datetime64[ns, UTC]"
    assert list(u2["ts"]) == [pd.Timestamp("2024-05-01", tz="UTC") + pd.Timedelta(k * 1_500, "us") for k in range(3)]
    assert list(seen.columns) == ["user_id", "item_id", "n_events", "n_purchase"]
    assert sorted(map(tuple, seen.loc[seen["user_id"] == "u2"].to_numpy().tolist())) == [
        ("u2", "i0", 1, 0), ("u2", "i1", 1, 1), ("u2", "i2", 1, 0)]
    assert len(seen) == len(events) and set(seen["user_id"]) == set(events["user_id"])


def test_a_rebuild_replaces_the_state_whole_and_forget_erases_a_user(settings):
    _features(settings)
    assert build_user_state(settings) == {"sequences": USERS, "seen": sum(1 + i % 3 for i in range(USERS))}
    _features(settings, shift=3)  # the next batch
    build_user_state(settings)
    events, _ = user_state(settings, ["u2"])
    assert list(events["item_id"]) == ["i3", "i4", "i5"]
    assert [p.name for p in settings.features_dir.iterdir() if p.name.startswith(".")] == []  # no temporary left

    assert forget_user_state(settings, "u2") == 1
    assert forget_user_state(settings, "u2") == 0
    events, seen = user_state(settings, ["u2", "u5"])
    assert set(events["user_id"]) == set(seen["user_id"]) == {"u5"}
    assert b"\"eu2-0\"" not in state_path(settings).read_bytes()  # vacuumed: no free page keeps the rows
    with sqlite3.connect(state_path(settings)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_file_of_an_older_layout_is_rebuilt_on_first_use(settings):
    _features(settings)
    with sqlite3.connect(state_path(settings)) as conn:  # a file some earlier freshrec wrote
        conn.execute("CREATE TABLE sequences (user_id TEXT PRIMARY KEY, event_ids TEXT)")
    ensure_user_state(settings)
    events, _ = user_state(settings, ["u2"])
    assert list(events["item_id"]) == ["i0", "i1", "i2"]


def test_no_batch_yet_means_no_state(settings):
    ensure_user_state(settings)
    events, seen = user_state(settings, ["u1"])
    assert not state_path(settings).exists() and events.empty and seen.empty
