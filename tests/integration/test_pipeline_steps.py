"""clean_step + matrices_step on the real samples: counts reconcile and reruns are idempotent
(Ta-Feng's rows are accounted for in test_tafeng_pipeline.py)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from freshrec.importers import import_sources
from freshrec.ledger import Ledger
from freshrec.steps import clean_step, matrices_step
from tests.conftest import SAMPLES

pytestmark = pytest.mark.integration


def _import(settings, fmt, path):
    return import_sources(settings, fmt, [path])


def _table(settings, *parts) -> pd.DataFrame:
    path = settings.home.joinpath(*parts)
    return pd.read_parquet(path)


def _snapshot(settings) -> dict:
    events = _table(settings, "lake", "events").sort_values("event_id").reset_index(drop=True)
    inter = _table(settings, "features", "interactions").sort_values(["user_idx", "item_idx"]).reset_index(drop=True)
    users = _table(settings, "features", "user_index").sort_values("user_idx").reset_index(drop=True)
    return {"events": events, "interactions": inter, "users": users}


def test_samples_reconcile_and_rerun_is_idempotent(spark, settings):
    _import(settings, "retailrocket", SAMPLES / "retailrocket_sample_events.csv")
    _import(settings, "otto", SAMPLES / "otto_sample_train.jsonl")
    first = clean_step(settings, "run-1")
    assert first["read"] == 2771 + 862
    assert first["read"] == first["clean"] + first["quarantined"] + first["duplicates"]
    matrices_step(settings)
    before = _snapshot(settings)
    assert before["events"]["event_id"].is_unique
    assert len(before["events"]) == first["clean"]

    second = clean_step(settings, "run-2")
    matrices_step(settings)
    after = _snapshot(settings)
    assert {k: second[k] for k in ("read", "clean", "quarantined", "duplicates")} == \
        {k: first[k] for k in ("read", "clean", "quarantined", "duplicates")}
    assert Ledger(settings.state_db).totals() == {k: first[k] for k in ("read", "clean", "quarantined", "duplicates")}
    for name in before:
        pd.testing.assert_frame_equal(before[name], after[name], check_like=True)


def test_reimport_counts_duplicates_not_double(spark, settings):
    _import(settings, "otto", SAMPLES / "otto_sample_train.jsonl")
    once = clean_step(settings, "a")
    _import(settings, "otto", SAMPLES / "otto_sample_train.jsonl")
    twice = clean_step(settings, "b")
    assert twice["read"] == 2 * once["read"]
    assert twice["clean"] == once["clean"]
    assert twice["duplicates"] == once["duplicates"] + once["clean"]
    totals = Ledger(settings.state_db).totals()
    assert totals["read"] == totals["clean"] + totals["quarantined"] + totals["duplicates"]


def test_mixed_bad_file_quarantines_and_new_ids_append(spark, settings):
    _import(settings, "otto", SAMPLES / "otto_sample_train.jsonl")
    clean_step(settings, "a")
    matrices_step(settings)
    users_before = _table(settings, "features", "user_index")
    bad = settings.landing_events_dir / "late.jsonl"
    bad.write_text("\n".join([
        json.dumps({"ts": "2022-08-29T00:00:00Z", "user_id": "newcomer", "event_type": "view", "item_id": "1"}),
        '{"ts": "2022-08-29T00:00:00Z", "user_id": "x", "event_type": "vie',
        json.dumps({"ts": "2022-08-29T00:00:00Z", "user_id": "x", "event_type": "teleport", "item_id": "1"}),
    ]) + "\n")
    counts = clean_step(settings, "b")
    matrices_step(settings)
    assert Ledger(settings.state_db).file_counts()["late.jsonl"] == {"read": 3, "clean": 1, "quarantined": 2, "duplicates": 0}
    quarantine = _table(settings, "lake", "quarantine")
    assert set(quarantine[quarantine.source_file == "late.jsonl"].reason.str.split(":").str[0]) == {"malformed_json", "unknown_event_type"}
    assert counts["read"] == counts["clean"] + counts["quarantined"] + counts["duplicates"]
    users_after = _table(settings, "features", "user_index")
    merged = users_before.merge(users_after, on="user_id", suffixes=("_b", "_a"))
    assert (merged.user_idx_b == merged.user_idx_a).all()  # old users keep their index
    assert users_after.set_index("user_id").loc["newcomer", "user_idx"] == len(users_before)


def test_all_rows_quarantined_fails_the_gate_not_spark(spark, settings):
    from freshrec.errors import QualityGateError
    from freshrec.steps import validate_step

    (settings.landing_events_dir / "bad.jsonl").write_text('{"user_id": "u"}\n[1]\n')
    assert clean_step(settings, "bad")["quarantined"] == 2
    with pytest.raises(QualityGateError, match="all 2 of 2 rows read were quarantined"):
        validate_step(settings, "bad")


def test_until_is_the_rebuilds_newest_event_even_if_a_microbatch_appends_right_after(spark, settings, monkeypatch):
    """``until`` (train and evaluate read the lake up to it) is taken while clean holds the lake
    lock: a micro-batch appending as soon as the lock is free does not move it."""
    import contextlib

    import freshrec.lake

    _import(settings, "otto", SAMPLES / "otto_sample_train.jsonl")
    locked = freshrec.lake.lake_lock

    @contextlib.contextmanager
    def lock_then_append(s, holder):
        with locked(s, holder):
            yield
        # the micro-batch that was waiting for the lock appends a newer event
        late = _table(s, "lake", "events").nlargest(1, "ts").assign(event_id="late", ts=pd.Timestamp("2030-01-01"))
        part = s.events_path / "event_date=2030-01-01"
        part.mkdir()
        late.drop(columns=["event_date"]).to_parquet(part / "inc-mb-00000.parquet", index=False)

    monkeypatch.setattr(freshrec.lake, "lake_lock", lock_then_append)
    out = clean_step(settings, "a")
    newest = pd.read_parquet(settings.events_path).query("event_id != 'late'")["ts"].max()
    assert pd.Timestamp(out["until"]) == pd.Timestamp(newest, tz="UTC") + pd.Timedelta(microseconds=1)
