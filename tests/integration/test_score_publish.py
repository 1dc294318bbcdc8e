"""train -> evaluate -> gate -> score -> publish through the steps (real Spark, MLflow, SQLite
serving store) on a synthetic log: every user gets a list, exclusions and availability hold,
reruns add nothing, and a failed publish leaves the last good version serving."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pytest

from freshrec.client import RecsClient
from freshrec.generate import GenerateOptions, generate_to_landing
from freshrec.landing import atomic_write_jsonl
from freshrec.serving import PublishError, open_store
from freshrec.steps import clean_step, evaluate_step, gate_step, matrices_step, publish_step, score_step, train_step

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def published(tmp_path_factory, spark):
    from freshrec.settings import Settings

    home = tmp_path_factory.mktemp("publish") / "home"
    settings = Settings(home=home, spark_master="local[2]", spark_shuffle_partitions=4, top_n=20, exclude_seen="purchased",
                        model_epochs=1, model_dim=16)
    settings.ensure_dirs()
    generate_to_landing(settings, GenerateOptions(events=30_000, seed=11, users=600, items=400, days=30, start="2026-01-01"))
    # the catalogue marks two items unavailable
    atomic_write_jsonl(settings.landing_items_dir, "items.jsonl",
                       [{"item_id": i, "available": False} for i in _top_items(settings, 2)])
    clean_step(settings, "batch-1")
    matrices_step(settings)
    trained = train_step(settings, "batch-1")
    evaluated = evaluate_step(settings, trained, "batch-1")
    gate = gate_step(settings, trained, evaluated, "batch-1")
    scored = score_step(settings, "batch-1", gate)
    result = publish_step(settings, scored)
    yield SimpleNamespace(settings=settings, trained=trained, evaluated=evaluated, gate=gate, scored=scored, result=result)


def _top_items(settings, k):
    events = pd.concat(pd.read_json(p, lines=True) for p in sorted(settings.landing_events_dir.glob("*.jsonl")))
    return events["item_id"].dropna().astype(str).value_counts().index[:k].tolist()


def _features(settings, name):
    return pd.read_parquet(settings.features_dir / name)


def test_gate_decision_is_recorded_and_shown_by_status(published):
    from freshrec.status import collect_status

    gate = json.loads((published.settings.reports_dir / "gate.json").read_text())
    assert gate["publish"] == published.gate["publish"]
    assert gate["decision"]["reason"]
    status = collect_status(published.settings)
    assert status["live_version"] == published.scored["version"]
    assert status["model"]["gate"]["reason"] == gate["decision"]["reason"]
    if published.gate["promoted"]:
        assert status["model"] == status["model"] | {"name": "freshrec", "alias": "champion",
                                                     "version": published.trained["version"]}
    else:
        assert status["model"]["kind"] in ("baseline", "model")


def test_every_known_user_gets_a_list_without_seen_purchases_or_unavailable_items(published):
    s = published.settings
    users = _features(s, "user_index")["user_id"].tolist()
    inter = _features(s, "interactions")
    purchased = inter.loc[inter["n_purchase"] > 0].groupby("user_id")["item_id"].apply(set).to_dict()
    unavailable = set(_top_items(s, 2))
    client = RecsClient(s.serving)
    assert published.result["users"] == len(users)
    for user in users:
        recs = client.recs(user, n=20)
        assert recs["source"] == "personal", user
        items = [r["item_id"] for r in recs["items"]]
        assert len(items) == 20, user
        assert not set(items) & purchased.get(user, set()), f"{user} was shown an item they bought"
        assert not set(items) & unavailable
    assert client.recs("nobody-ever", n=5)["source"] == "fallback"


def test_similar_popular_and_query_lists(published):
    s = published.settings
    client = RecsClient(s.serving)
    unavailable = set(_top_items(s, 2))
    stats = _features(s, "item_stats")
    for item in stats["item_id"].head(50):
        similar = [r["item_id"] for r in client.similar(item, n=10)["items"]]
        assert len(similar) == 10 and item not in similar and not set(similar) & unavailable
    overall = [r["item_id"] for r in client.popular(n=5)["items"]]
    expected = stats.loc[stats["available"]].sort_values("pop_rank")["item_id"].head(5).tolist()
    assert overall == expected
    category = stats["category"].dropna().iloc[0]
    in_cat = client.popular(category=category, n=5)["items"]
    assert in_cat and set(stats.loc[stats["category"] == category, "item_id"]) >= {r["item_id"] for r in in_cat}
    queries = pd.read_parquet(s.recs_dir / published.scored["version"] / "query_items")
    assert len(queries) > 0, "the synthetic log has frequent searches"
    q = queries["query"].iloc[0]
    assert [r["item_id"] for r in client.query_items(q, n=100)["items"]] == list(queries["items"].iloc[0])


def test_rerun_of_score_and_publish_changes_nothing(published):
    s = published.settings
    with open_store(s.serving) as store:
        before = [(v["version"], v["state"]) for v in store.versions()]
    assert train_step(s, "batch-1")["version"] == published.trained["version"], "a rerun reuses the registered version"
    scored = score_step(s, "batch-1", published.gate)
    assert scored["version"] == published.scored["version"]
    assert publish_step(s, scored)["skipped"] is True
    with open_store(s.serving) as store:
        assert [(v["version"], v["state"]) for v in store.versions()] == before


def test_score_binds_the_model_to_a_bounded_sample_of_a_lake_ten_times_larger(published):
    """With FRESHREC_TRAIN_MAX_EVENTS a tenth of the lake, the score step reads at most that many
    events into the driver, and still lists every known user and every item."""
    import pyarrow.dataset as ds

    cap = 2500
    s = published.settings.model_copy(update={"train_max_events": cap})
    lake = ds.dataset(str(s.events_path), format="parquet", partitioning="hive").count_rows()
    assert lake >= 10 * cap
    scored = score_step(s, "batch-bounded", published.gate)
    assert 0 < scored["events_read"] <= cap
    assert scored["users"] == published.scored["users"] and scored["items"] == published.scored["items"]
    recs = pd.read_parquet(f"{scored['recs_dir']}/user_topn")
    assert len(recs) == scored["users"] and recs["items"].map(len).min() > 0
    assert len(pd.read_parquet(f"{scored['recs_dir']}/similar")) == scored["items"]


def test_failed_publish_leaves_the_last_good_version_serving(published, tmp_path):
    s = published.settings
    broken = tmp_path / "broken"
    (broken / "user_topn").mkdir(parents=True)
    (broken / "user_topn" / "part-0.parquet").write_text("not parquet")
    (broken / "popular").mkdir()
    with pytest.raises(PublishError):
        publish_step(s, {**published.scored, "version": "batch-2-broken", "recs_dir": str(broken)})
    assert RecsClient(s.serving).status()["live_version"] == published.scored["version"]


def test_a_score_whose_lists_miss_users_fails_and_writes_no_list_table(published, monkeypatch):
    """A Spark job that lost a task's lists (here: one user short) must not land a user_topn
    table that serves some users nothing."""
    import freshrec.jobs.score

    real = freshrec.jobs.score.write_user_lists
    monkeypatch.setattr(freshrec.jobs.score, "write_user_lists", lambda *a, **k: real(*a, **k) - 1)
    s = published.settings
    with pytest.raises(RuntimeError, match="lists written for"):
        score_step(s, "batch-short", published.gate)
    assert not list(s.recs_dir.glob("batch-short-*/user_topn"))


def test_recs_users_file_gives_a_list_for_every_user(published, tmp_path):
    s = published.settings
    users = _features(s, "user_index")["user_id"].head(25).tolist() + ["never-seen"]
    users_file = tmp_path / "users.txt"
    users_file.write_text("\n".join(users) + "\n")
    env = {"FRESHREC_HOME": str(s.home), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "freshrec.cli", "recs", "--users-file", str(users_file), "-n", "10", "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert [r["user_id"] for r in rows] == users
    assert all(len(r["items"]) == 10 for r in rows)
    assert rows[-1]["source"] == "fallback" and rows[0]["source"] == "personal"


def test_refresh_rescores_only_the_users_who_acted(published):
    """The incremental path's re-score: no retraining, upserted into the live version."""
    from freshrec.lake import write_recent
    from freshrec.rescore import refresh_users_step

    s = published.settings
    client = RecsClient(s.serving)
    users = _features(s, "user_index")["user_id"].tolist()
    acting, bystander = users[0], users[1]
    before = {u: client.recs(u, n=20)["items"] for u in (acting, bystander)}
    stats = _features(s, "item_stats").sort_values("pop_rank")
    bought = stats["item_id"].iloc[10]
    now = pd.Timestamp(pd.read_parquet(s.features_dir / "sequences")["last_ts"].max(), tz="UTC")
    rows = [(acting, stats["item_id"].iloc[-1], "view"), (acting, bought, "purchase"),
            ("brand-new-shopper", bought, "view"), ("brand-new-shopper", stats["item_id"].iloc[-2], "add_to_cart")]
    new = pd.DataFrame([{"event_id": f"e{i}", "ts": now + pd.Timedelta(minutes=i + 1), "user_id": u, "item_id": item,
                         "event_type": et, "category": None, "session_id": None, "query": None} for i, (u, item, et) in enumerate(rows)])
    write_recent(s, "mb-test", new)  # what a micro-batch keeps for its users
    result = refresh_users_step(s, sorted(set(new["user_id"])))
    assert result["version"] == published.scored["version"] and result["users"] == 2

    fresh = client.recs("brand-new-shopper", n=20)
    assert fresh["source"] == "personal" and len(fresh["items"]) == 20
    acted = [r["item_id"] for r in client.recs(acting, n=20)["items"]]
    assert bought not in acted, "a purchase in the micro-batch is excluded at once (EXCLUDE_SEEN=purchased)"
    assert acted != [r["item_id"] for r in before[acting]]
    assert client.recs(bystander, n=20)["items"] == before[bystander], "users who did not act are untouched"


def test_a_batch_switch_while_rescoring_never_lands_the_old_versions_lists(published, monkeypatch):
    """A micro-batch scores its users with the live version's recommender; if a batch publish
    switches the live pointer before the upsert commits, the old lists are not written into the
    new version: the users are re-scored with the new version's recommender and unavailable items."""
    import shutil

    import freshrec.jobs.score

    from freshrec.lake import write_recent
    from freshrec.rescore import refresh_users_step
    from freshrec.serving.publish import publish_tables

    s = published.settings
    known = _features(s, "user_index")["user_id"].tolist()[2:4]
    items = _features(s, "item_stats").sort_values("pop_rank")["item_id"].tolist()
    now = pd.Timestamp(pd.read_parquet(s.features_dir / "sequences")["last_ts"].max(), tz="UTC")
    rows = [(known[0], items[20], "view"), (known[1], items[21], "purchase"), ("race-newcomer", items[22], "view")]
    write_recent(s, "mb-race", pd.DataFrame([
        {"event_id": f"race-{i}", "ts": now + pd.Timedelta(minutes=i + 1), "user_id": u, "item_id": item,
         "event_type": et, "category": None} for i, (u, item, et) in enumerate(rows)]))
    users = sorted({u for u, _, _ in rows})
    with open_store(s.serving) as store:
        old = store.live_version()
        old_lists = {u: store.get_user_recs(u, n=s.top_n) for u in users}
    new = f"{old}-race"
    original = freshrec.jobs.score.score_frame
    scored_by_old: dict[str, list[str]] = {}

    def score_then_switch(rec, frame, *args, **kwargs):
        out = original(rec, frame, *args, **kwargs)
        if not scored_by_old:  # a batch publishes a new version while these lists are on their way
            scored_by_old.update(zip(out["user_id"], out["items"], strict=True))
            shutil.copytree(s.recs_dir / old, s.recs_dir / new)
            # the new version marks the old lists' top items unavailable: its lists must differ
            blocked = sorted({i for lst in scored_by_old.values() for i in lst[:3]})
            (s.recs_dir / new / "unavailable.json").write_text(json.dumps(blocked))
            with open_store(s.serving) as store:
                checksum = store.version_info(old)["meta"]["recommender_sha256"]  # the same recommender.pkl
                publish_tables(store, new, s.recs_dir / new, {"batch_id": "race", "recommender_sha256": checksum}, keep=10)
        return out

    monkeypatch.setattr(freshrec.jobs.score, "score_frame", score_then_switch)
    raced = refresh_users_step(s, users)
    monkeypatch.setattr(freshrec.jobs.score, "score_frame", original)
    assert raced["version"] == new and raced["users"] == len(users)
    blocked = set(json.loads((s.recs_dir / new / "unavailable.json").read_text()))
    with open_store(s.serving) as store:
        in_new = {u: [r["item_id"] for r in store.get_user_recs(u, n=s.top_n)["items"]] for u in users}
        assert {u: store.get_user_recs(u, n=s.top_n, version=old) for u in users} == old_lists, \
            "nothing is written into the version that is no longer live"
    for u in users:
        assert in_new[u] != scored_by_old[u], f"{u}: the old version's list landed in the new version"
        assert not blocked & set(in_new[u]), f"{u}: the new version's unavailable items must not appear"
    clean = refresh_users_step(s, users)  # no race: what the new version gives these users
    assert clean["version"] == new
    with open_store(s.serving) as store:
        assert {u: [r["item_id"] for r in store.get_user_recs(u, n=s.top_n)["items"]] for u in users} == in_new


def test_a_query_list_needs_searches_from_several_users(spark):
    """One person searching ten times publishes nothing; five people searching once do."""
    from freshrec.jobs.score import query_items
    from pyspark.sql import functions as F

    rows = []
    for n in range(10):  # one shopper, ten searches for "my secret", each followed by a view
        rows += [(f"a{n}", "loner", "s1", "search", None, "my secret", f"2024-05-01 10:{n:02d}:00"),
                 (f"b{n}", "loner", "s1", "view", "i-secret", None, f"2024-05-01 10:{n:02d}:30")]
    for u in range(5):  # five shoppers, one search each
        rows += [(f"c{u}", f"u{u}", f"s{u}", "search", None, "shoes", "2024-05-01 11:00:00"),
                 (f"d{u}", f"u{u}", f"s{u}", "view", "i-shoe", None, "2024-05-01 11:01:00")]
    events = spark.createDataFrame(rows, "event_id string, user_id string, session_id string, event_type string, "
                                         "item_id string, query string, ts string").withColumn("ts", F.to_timestamp("ts"))
    weights = {"view": 1.0, "search": 0.0}
    got = {r["query"]: list(r["items"]) for r in query_items(events, weights, 10, 5).collect()}
    assert got == {"shoes": ["i-shoe"]}
    assert set(r["query"] for r in query_items(events, weights, 10, 1).collect()) == {"shoes", "my secret"}


def test_the_score_jobs_tasks_write_score_frames_lists_and_the_driver_keeps_one_file_a_task(spark, tmp_path):
    """write_user_lists: Spark tasks write their partitions' lists themselves; the table holds
    exactly score_frame's lists, one file per task under the name the driver gives it, no
    earlier or stray attempt file survives, and no users still give a table with its schema."""
    import numpy as np
    from freshrec.jobs.score import ATTEMPT_PREFIX, score_frame, write_user_lists
    from freshrec.models.baselines import CooccurrenceKNN
    from freshrec.models.data import Catalogue, Histories

    rng = np.random.default_rng(4)
    log = pd.DataFrame({"user_id": [f"u{u}" for u in rng.integers(0, 60, 600)],
                        "item_id": [f"i{i}" for i in rng.integers(0, 40, 600)], "event_type": "view",
                        "ts": pd.to_datetime(rng.integers(0, 10_000, 600), unit="s", utc=True), "price": 1.0})
    log["category"] = log["item_id"].str[-1]
    catalogue = Catalogue.from_events(log)
    rec = CooccurrenceKNN().fit(Histories.from_events(log, catalogue), catalogue)
    ordered = log.sort_values("ts", kind="mergesort").groupby("user_id", sort=True)
    frame = pd.DataFrame({"user_id": list(ordered.groups),
                          "item_ids": [g["item_id"].tolist() for _, g in ordered],
                          "event_types": [g["event_type"].tolist() for _, g in ordered],
                          "t": [(g["ts"].astype("int64") // 10**9).tolist() for _, g in ordered],
                          "exclude": [g["item_id"].head(2).tolist() for _, g in ordered]})
    inputs = spark.createDataFrame(frame, "user_id string, item_ids array<string>, event_types array<string>, "
                                          "t array<long>, exclude array<string>").repartition(3)
    unavailable = catalogue.lookup(["i7"])
    out = tmp_path / "user_topn"
    out.mkdir()
    (out / "part-00042.parquet").write_bytes(b"an earlier run's file")
    (out / f"{ATTEMPT_PREFIX}00001-3.parquet").write_bytes(b"a failed attempt's file")

    assert write_user_lists(spark, inputs, rec, 5, 20_000, out, unavailable) == len(frame)
    assert sorted(p.name for p in out.iterdir()) == [f"part-{k:05d}.parquet" for k in range(3)]
    got = pd.read_parquet(out).sort_values("user_id").reset_index(drop=True)
    want = score_frame(rec, frame, 5, 20_000, unavailable)
    assert got["user_id"].tolist() == want["user_id"].tolist()
    assert [list(x) for x in got["items"]] == want["items"].tolist()
    assert [list(x) for x in got["scores"]] == want["scores"].tolist()
    assert all("i7" not in items for items in want["items"])

    assert write_user_lists(spark, inputs.limit(0), rec, 5, 20_000, out, unavailable) == 0
    empty = pd.read_parquet(out)
    assert empty.empty and list(empty.columns) == ["user_id", "items", "scores"]
