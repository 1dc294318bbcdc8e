"""publish_tables: Parquet tables from the scoring job -> one atomic version (on SQLite)."""

from __future__ import annotations

import logging
import sqlite3

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from freshrec.client import RecsClient
from freshrec.serving import NothingPublished, PublishError, StoreUnavailable, open_store
from freshrec.serving.publish import publish_tables, write_recs_tables


def lists(version: str, users: int, length: int = 4) -> dict:
    return {
        "users": [(f"u{i}", [(f"{version}:{i}:{k}", 1.0 - k / 10) for k in range(length)]) for i in range(users)],
        "popular": [(None, [(f"{version}:top{k}", 50.0 - k) for k in range(length)]), ("shoes", [(f"{version}:shoe", 3.0)])],
        "similar": {"i1": [(f"{version}:sim", 0.7)]},
        "queries": [("red shoes", [(f"{version}:red", 0.4)])],
    }


@pytest.fixture
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path / 'serving.db'}")
    yield s
    s.close()


def rows_of(store, version: str) -> int:
    with sqlite3.connect(store.path) as conn:
        return sum(conn.execute(f"SELECT count(*) FROM {t} WHERE version = ?", (version,)).fetchone()[0]
                   for t in ("user_recs", "similar_items", "popular_items", "query_items"))


def test_publish_from_parquet(store, tmp_path):
    recs = write_recs_tables(tmp_path / "recs1", rows_per_file=7, **lists("v1", 25))
    assert len(list((recs / "user_topn").glob("*.parquet"))) == 4
    result = publish_tables(store, "v1", recs, {"model": {"name": "freshrec", "version": "3", "alias": "champion"}}, batch_rows=6)
    assert {k: result[k] for k in ("version", "users", "similar", "popular", "queries", "pruned")} == \
        {"version": "v1", "users": 25, "similar": 1, "popular": 2, "queries": 1, "pruned": []}
    record = store.versions()[0]
    assert record["state"] == "live" and record["meta"]["model"]["alias"] == "champion"
    assert record["meta"]["recs_dir"] == str(recs.resolve())
    client = RecsClient(store)
    assert client.recs("u24", 2, details=False)["items"] == [{"item_id": "v1:24:0", "score": 1.0}, {"item_id": "v1:24:1", "score": 0.9}]
    assert client.popular("shoes", details=False)["items"] == [{"item_id": "v1:shoe", "score": 3.0}]
    assert client.similar("i1")["items"][0]["item_id"] == "v1:sim"
    assert client.query_items("RED Shoes")["items"][0]["item_id"] == "v1:red"


def test_publish_prunes_to_keep(store, tmp_path):
    results = []
    for i in range(1, 5):
        recs = write_recs_tables(tmp_path / f"recs{i}", **lists(f"v{i}", 3))
        results.append(publish_tables(store, f"v{i}", recs, keep=2, prune_grace_s=0))
    assert [r["pruned"] for r in results] == [[], [], ["v1"], ["v2"]]
    assert [r["state"] for r in store.versions()] == ["live", "complete", "retired", "retired"]
    assert rows_of(store, "v1") == 0 and rows_of(store, "v2") == 0 and rows_of(store, "v3") > 0
    # by default a version live seconds ago is kept, so a reader that resolved it can finish
    result = publish_tables(store, "v5", write_recs_tables(tmp_path / "recs5", **lists("v5", 3)), keep=1)
    assert result["pruned"] == [] and rows_of(store, "v4") > 0


def test_keep_below_one_is_refused_before_anything_is_published(store, tmp_path):
    """FRESHREC_KEEP_VERSIONS=0 used to publish, then fail every prune silently, forever."""
    publish_tables(store, "v1", write_recs_tables(tmp_path / "recs1", **lists("v1", 3)))
    for keep in (0, -1):
        with pytest.raises(ValueError, match=r"keep \(FRESHREC_KEEP_VERSIONS\) must be an integer >= 1"):
            publish_tables(store, "v2", write_recs_tables(tmp_path / "recs2", **lists("v2", 3)), keep=keep)
    assert store.live_version() == "v1" and [r["version"] for r in store.versions()] == ["v1"]


def test_a_failed_prune_is_logged_and_reported(store, tmp_path, monkeypatch, caplog):
    def unavailable(*args, **kwargs):
        raise StoreUnavailable("serving store is unavailable: gone")

    monkeypatch.setattr(store, "prune", unavailable)
    with caplog.at_level(logging.ERROR, logger="freshrec.serving.publish"):
        result = publish_tables(store, "v1", write_recs_tables(tmp_path / "recs", **lists("v1", 3)))
    assert store.live_version() == "v1"  # the switch happened before the prune
    assert result["pruned"] == [] and result["prune_error"] == "serving store is unavailable: gone"
    assert "pruning failed: serving store is unavailable: gone" in caplog.text


def test_failing_publish_never_becomes_live(store, tmp_path):
    publish_tables(store, "v1", write_recs_tables(tmp_path / "good", **lists("v1", 10)))
    bad = write_recs_tables(tmp_path / "bad", **lists("v2", 10))
    # a second file whose lists are broken (items and scores differ in length) in its last row
    table = pa.table({"user_id": ["x1", "x2"], "items": [["a"], ["a", "b"]], "scores": [[1.0], [1.0]]},
                     schema=pa.schema([("user_id", pa.string()), ("items", pa.list_(pa.string())), ("scores", pa.list_(pa.float64()))]))
    pq.write_table(table, bad / "user_topn" / "part-99999.parquet")
    with pytest.raises(PublishError, match="differ in length"):
        publish_tables(store, "v2", bad, batch_rows=3)
    assert store.live_version() == "v1"
    assert {r["version"]: r["state"] for r in store.versions()}["v2"] == "aborted"
    assert rows_of(store, "v2") == 0
    assert store.get_user_recs("u1")["version"] == "v1"


def test_duplicate_users_in_the_tables_fail_the_publish(store, tmp_path):
    data = lists("v1", 5)
    data["users"] = data["users"] + [data["users"][0]]
    with pytest.raises(PublishError, match="duplicate"):
        publish_tables(store, "v1", write_recs_tables(tmp_path / "dup", **data))
    assert store.live_version() is None and rows_of(store, "v1") == 0


def test_missing_or_malformed_tables(store, tmp_path):
    with pytest.raises(PublishError, match="user_topn, popular missing"):
        publish_tables(store, "v1", tmp_path / "nothing-here")
    recs = write_recs_tables(tmp_path / "no-overall", **{**lists("v1", 3), "popular": [("shoes", [("s", 1.0)])]})
    with pytest.raises(PublishError, match="no overall popular list"):
        publish_tables(store, "v1", recs)
    pq.write_table(pa.table({"user": ["u"], "items": [["a"]], "scores": [[1.0]]}), tmp_path / "cols.parquet")
    (tmp_path / "cols").mkdir()
    (tmp_path / "cols.parquet").rename(tmp_path / "cols" / "user_topn.parquet")
    write_recs_tables(tmp_path / "tmp", popular=[(None, [("p", 1.0)])])
    (tmp_path / "tmp" / "popular").rename(tmp_path / "cols" / "popular")
    with pytest.raises(PublishError, match="lacks column"):
        publish_tables(store, "v1", tmp_path / "cols")
    assert store.live_version() is None
    with pytest.raises(NothingPublished):
        store.get_user_recs("u0")


def test_optional_tables_may_be_absent(store, tmp_path):
    recs = write_recs_tables(tmp_path / "r", users=[("u1", [("a", 1.0)])], popular=[(None, [("p", 1.0)])])
    for name in ("similar", "query_items"):
        for f in (recs / name).iterdir():
            f.unlink()
        (recs / name).rmdir()
    result = publish_tables(store, "v1", recs)
    assert (result["users"], result["similar"], result["queries"]) == (1, 0, 0)


def test_reading_before_any_publish_creates_nothing(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'sub' / 'serving.db'}")
    assert store.live_version() is None and store.versions() == []
    with pytest.raises(NothingPublished):
        RecsClient(store).recs("u1")
    assert not (tmp_path / "sub").exists()
