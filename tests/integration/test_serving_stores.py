"""The serving-store contract, run against every backend: SQLite always, Redis (JSON and packed lists) and PostgreSQL
when FRESHREC_TEST_REDIS_URL / FRESHREC_TEST_POSTGRES_URL are set (.ci/run sets both).

Each test gets its own SQLite file, Redis key prefix or PostgreSQL schema, removed afterwards."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from freshrec.client import RecsClient
from freshrec.serving import LiveVersionChanged, NothingPublished, PublishError, ServingStore, VersionError, open_store

pytestmark = pytest.mark.integration

TABLES = ("user_recs", "similar_items", "popular_items", "query_items", "item_details")

REDIS_URL = os.environ.get("FRESHREC_TEST_REDIS_URL")
POSTGRES_URL = os.environ.get("FRESHREC_TEST_POSTGRES_URL")


def _with_param(url: str, key: str, value: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{key}={value}"


@pytest.fixture(params=["sqlite", "redis", "redis-packed", "postgres"])
def store(request, tmp_path) -> ServingStore:
    tag = uuid.uuid4().hex[:12]
    if request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path / 'serving.db'}")
    elif request.param.startswith("redis"):
        if not REDIS_URL:
            pytest.skip("FRESHREC_TEST_REDIS_URL is not set")
        url = _with_param(REDIS_URL, "prefix", f"freshrec-test-{tag}")
        s = open_store(_with_param(url, "encoding", "packed") if request.param == "redis-packed" else url)
    else:
        if not POSTGRES_URL:
            pytest.skip("FRESHREC_TEST_POSTGRES_URL is not set")
        s = open_store(_with_param(POSTGRES_URL, "schema", f"freshrec_test_{tag}"))
    yield s
    if hasattr(s, "destroy"):
        s.destroy()
    s.close()


def stored_rows(store: ServingStore, version: str) -> int:
    """How many lists of ``version`` the backend still holds (looked at directly)."""
    kind = type(store).__name__
    if kind == "RedisStore":
        return sum(1 for _ in store.r.scan_iter(match=f"{store.prefix}:v:{version}:*", count=1000))
    if kind == "SqliteStore":
        import sqlite3

        with sqlite3.connect(store.path) as conn:
            return sum(conn.execute(f"SELECT count(*) FROM {t} WHERE version = ?", (version,)).fetchone()[0]
                       for t in TABLES)
    import psycopg

    with psycopg.connect(store.url) as conn:
        return sum(conn.execute(f"SELECT count(*) FROM {store.schema}.{t} WHERE version = %s", (version,)).fetchone()[0]
                   for t in TABLES)


def user_list(version: str, user: str, length: int = 5) -> list[tuple[str, float]]:
    return [(f"{version}:{user}:{k}", round(1.0 - k / 100, 4)) for k in range(length)]


def publish(store: ServingStore, version: str, users: int = 20, length: int = 5, **meta) -> dict:
    with store.begin_version(version, {"model": {"name": "freshrec", "version": "1"}, **meta}) as w:
        w.write_user_recs((f"u{i}", user_list(version, f"u{i}", length)) for i in range(users))
        w.write_similar([("i1", [(f"{version}:sim", 0.9)]), ("i2", [])])
        w.write_popular(None, [(f"{version}:top{k}", 100.0 - k) for k in range(length)])
        w.write_popular("shoes", [(f"{version}:shoe", 7.0)])
        w.write_query_items([("Red  Shoes ", [(f"{version}:red", 0.5)])])
        return w.commit(expected_users=users)


def test_nothing_published(store):
    assert store.live_version() is None
    assert store.versions() == []
    assert store.status()["live_version"] is None
    with pytest.raises(NothingPublished, match="nothing published yet"):
        store.get_user_recs("u1")
    with pytest.raises(NothingPublished):
        RecsClient(store).recs("u1")
    with pytest.raises(NothingPublished):
        store.rollback()
    with pytest.raises(NothingPublished):
        store.upsert_user_recs([("u1", [("x", 1.0)])])


def test_publish_and_read(store):
    record = publish(store, "v1", users=30, length=8, source="test")
    assert record["version"] == "v1" and record["state"] == "live"
    assert record["counts"] == {"users": 30, "similar": 2, "popular": 2, "queries": 1}
    assert record["meta"]["model"] == {"name": "freshrec", "version": "1"} and record["meta"]["source"] == "test"
    assert store.live_version() == "v1"

    got = store.get_user_recs("u7", n=3)
    assert set(got) == {"user_id", "version", "source", "updated_at", "items"}  # the client adds recommendation_id
    assert got["user_id"] == "u7" and got["version"] == "v1" and got["source"] == "personal"
    assert got["items"] == [{"item_id": "v1:u7:0", "score": 1.0}, {"item_id": "v1:u7:1", "score": 0.99},
                            {"item_id": "v1:u7:2", "score": 0.98}]
    assert got["updated_at"].endswith("Z")
    assert len(store.get_user_recs("u7", n=100)["items"]) == 8  # n beyond the list: the whole list
    assert store.get_user_recs("nobody") is None

    assert store.get_similar("i1")["items"] == [{"item_id": "v1:sim", "score": 0.9}]
    assert store.get_similar("i2")["items"] == []
    assert store.get_similar("i3") is None
    assert [i["item_id"] for i in store.get_popular(None, 2)["items"]] == ["v1:top0", "v1:top1"]
    assert store.get_popular("", 1)["category"] is None  # "" is the overall list too
    assert store.get_popular("shoes")["items"] == [{"item_id": "v1:shoe", "score": 7.0}]
    assert store.get_popular("hats") is None
    assert store.get_query_items("RED shoes")["query"] == "red shoes"
    assert store.get_query_items("red   SHOES")["items"][0]["item_id"] == "v1:red"
    assert store.get_query_items("blue") is None
    with pytest.raises(ValueError):
        store.get_user_recs("u1", n=0)


def test_client_fallback_for_unknown_keys(store):
    publish(store, "v1", length=6)
    client = RecsClient(store)
    known = client.recs("u1", n=4)
    assert known["source"] == "personal" and len(known["items"]) == 4
    unknown = client.recs("stranger", n=3)
    assert unknown.pop("recommendation_id").startswith("r-")
    assert unknown == {"user_id": "stranger", "version": "v1", "source": "fallback", "updated_at": unknown["updated_at"],
                       "experiment": None, "variant": None, "items": [{"item_id": f"v1:top{k}", "score": 100.0 - k, "category": None, "price": None}
                                 for k in range(3)]}
    assert client.similar("unknown-item")["source"] == "fallback"
    assert client.popular("hats")["source"] == "fallback"
    assert client.popular("shoes")["source"] == "popular"
    assert client.query_items("nothing like it")["source"] == "fallback"
    status = client.status()
    assert status["live_version"] == "v1" and status["counts"]["users"] == 20
    assert [v["version"] for v in status["versions"]] == ["v1"]


def test_ids_no_event_could_carry_get_400_never_500(store):
    """A NUL (PostgreSQL refuses it in text), a newline, an 8 KB id: a 400 with the rule broken,
    before any store is asked; the server stays up for the next request."""
    from fastapi.testclient import TestClient

    from freshrec.api import create_app

    publish(store, "v1", length=6)
    with TestClient(create_app(store=store), raise_server_exceptions=False) as http:
        for path in ("/v1/users/{}/recommendations", "/v1/items/{}/similar", "/v1/queries/{}/items"):
            for bad, rule in (("a%00b", "control character"), ("a%0Ab", "control character"), ("x" * 8192, "longer than")):
                r = http.get(path.format(bad))
                assert r.status_code == 400 and rule in r.json()["error"], (path, bad[:10], r.status_code, r.text[:200])
                assert len(r.text) < 300
        r = http.get("/v1/popular", params={"category": "sh\x00oes"})
        assert r.status_code == 400 and "control character" in r.json()["error"]
        assert http.get("/v1/users/u1/recommendations").json()["source"] == "personal"
        assert http.get("/v1/users/" + "y" * 256 + "/recommendations").json()["source"] == "fallback"  # at the limit: fine


def test_versions_and_rollback(store):
    for v in ("v1", "v2", "v3"):
        publish(store, v)
    assert [(r["version"], r["state"]) for r in store.versions()] == [("v3", "live"), ("v2", "complete"), ("v1", "complete")]
    assert store.rollback() == "v2"
    assert store.get_user_recs("u1")["items"][0]["item_id"] == "v2:u1:0"
    assert store.rollback() == "v1"
    with pytest.raises(VersionError, match="no earlier complete version"):
        store.rollback()
    assert store.rollback(to="v3") == "v3"
    assert store.rollback(to="v3") == "v3"  # already live: nothing to do
    assert store.versions()[0]["state"] == "live" and store.live_version() == "v3"
    with pytest.raises(VersionError, match="cannot roll back to v9"):
        store.rollback(to="v9")
    with pytest.raises(VersionError, match="malformed"):
        store.rollback(to="../etc")
    # reads of an explicit version
    assert store.get_user_recs("u1", version="v1")["items"][0]["item_id"] == "v1:u1:0"
    assert store.get_user_recs("nobody", version="v1") is None
    with pytest.raises(VersionError):
        store.get_user_recs("u1", version="v9")


def test_abort_leaves_live_unchanged_and_removes_data(store):
    publish(store, "v1")
    writer = store.begin_version("v2")
    writer.write_user_recs((f"u{i}", user_list("v2", f"u{i}")) for i in range(10))
    assert store.versions()[0]["state"] == "writing"
    assert stored_rows(store, "v2") == 10
    writer.abort()
    writer.abort()  # idempotent
    assert store.live_version() == "v1"
    assert store.get_user_recs("u1")["version"] == "v1"
    assert {r["version"]: r["state"] for r in store.versions()}["v2"] == "aborted"
    assert stored_rows(store, "v2") == 0
    with pytest.raises(VersionError):
        store.get_user_recs("u1", version="v2")
    with pytest.raises(PublishError):
        writer.commit()
    # an aborted id can be published again
    publish(store, "v2")
    assert store.live_version() == "v2"


def test_exception_mid_write_never_becomes_live(store):
    publish(store, "v1")

    def rows():
        for i in range(50):
            if i == 30:
                raise RuntimeError("scoring crashed")
            yield f"u{i}", user_list("v2", f"u{i}")

    with pytest.raises(RuntimeError, match="scoring crashed"):
        with store.begin_version("v2", batch_rows=7) as w:
            w.write_user_recs(rows())
            w.commit()
    assert store.live_version() == "v1"
    assert stored_rows(store, "v2") == 0
    assert store.get_user_recs("u3")["items"][0]["item_id"] == "v1:u3:0"


def test_incomplete_publish_is_refused(store):
    publish(store, "v1")
    w = store.begin_version("v2")
    w.write_user_recs([("u1", user_list("v2", "u1"))])
    w.write_popular(None, [("p", 1.0)])
    with pytest.raises(PublishError, match="1 user lists written, 5 expected"):
        w.commit(expected_users=5)
    assert store.live_version() == "v1" and stored_rows(store, "v2") == 0

    w = store.begin_version("v3")
    w.write_user_recs([("u1", user_list("v3", "u1"))])
    with pytest.raises(PublishError, match="no overall popular list"):
        w.commit()
    assert store.live_version() == "v1" and stored_rows(store, "v3") == 0


def test_duplicate_key_fails_the_publish(store):
    publish(store, "v1")
    with pytest.raises(PublishError, match="duplicate"):
        with store.begin_version("v2", batch_rows=2) as w:
            w.write_user_recs([("a", [("x", 1.0)]), ("b", [("x", 1.0)]), ("c", [("x", 1.0)]), ("a", [("y", 1.0)])])
            w.commit()
    assert store.live_version() == "v1" and stored_rows(store, "v2") == 0


def test_bad_rows_fail_the_publish(store):
    publish(store, "v1")
    for bad in ([("u1", ["a", "b"], [1.0])], [("u1", [("a", float("nan"))])], [(None, [("a", 1.0)])]):
        with pytest.raises(PublishError):
            with store.begin_version("v2") as w:
                w.write_user_recs(bad)
                w.commit()
        assert store.live_version() == "v1"


def test_begin_version_rules(store):
    publish(store, "v1")
    with pytest.raises(VersionError, match="already published"):
        store.begin_version("v1")
    with pytest.raises(VersionError, match="malformed"):
        store.begin_version("has space")
    # a retried task re-begins a version still being written: the first attempt is discarded
    first = store.begin_version("v2")
    first.write_user_recs([("u1", [("stale", 1.0)])])
    second = store.begin_version("v2")
    second.write_user_recs([("u1", [("fresh", 1.0)])])
    second.write_popular(None, [("p", 1.0)])
    second.commit()
    assert store.get_user_recs("u1")["items"] == [{"item_id": "fresh", "score": 1.0}]
    # a commit that does not activate leaves live alone
    w = store.begin_version("v3")
    w.write_popular(None, [("p3", 1.0)])
    assert w.commit(activate=False)["state"] == "complete"
    assert store.live_version() == "v2"
    assert store.rollback(to="v3") == "v3"


def test_upsert_touches_only_the_live_version(store):
    publish(store, "v1")
    publish(store, "v2")
    result = store.upsert_user_recs([("u1", [("fresh", 2.0), ("fresh2", 1.0)]), ("newcomer", ["n1"], [0.5])],
                                    updated_at="2030-01-01T00:00:00.000Z")
    assert result == {"version": "v2", "users": 2}
    got = store.get_user_recs("u1")
    assert got["items"] == [{"item_id": "fresh", "score": 2.0}, {"item_id": "fresh2", "score": 1.0}]
    assert got["updated_at"] == "2030-01-01T00:00:00.000Z"
    assert store.get_user_recs("newcomer")["items"] == [{"item_id": "n1", "score": 0.5}]
    assert store.get_user_recs("u1", version="v1")["items"][0]["item_id"] == "v1:u1:0"
    assert store.get_user_recs("newcomer", version="v1") is None
    assert store.get_user_recs("u2")["items"][0]["item_id"] == "v2:u2:0"
    # after a rollback, upserts go to the version now live
    store.rollback()
    assert store.upsert_user_recs([("u2", [("late", 1.0)])])["version"] == "v1"
    assert store.get_user_recs("u2", version="v2")["items"][0]["item_id"] == "v2:u2:0"
    assert store.upsert_user_recs([]) == {"version": "v1", "users": 0}


def test_upsert_with_an_expected_version_writes_only_into_it(store):
    with pytest.raises(NothingPublished):
        store.upsert_user_recs([("u1", [("x", 1.0)])], expected_version="v1")
    publish(store, "v1")
    publish(store, "v2")
    assert store.upsert_user_recs([("u1", [("fresh", 2.0)])], expected_version="v2") == {"version": "v2", "users": 1}
    assert store.upsert_lists("popular", [(None, [("hot", 9.0)])], expected_version="v2") == {"version": "v2", "rows": 1}
    store.rollback()  # v1 is live: lists computed for v2 must not land in it
    with pytest.raises(LiveVersionChanged, match="live version is v1, not v2") as caught:
        store.upsert_user_recs([("u1", [("stale", 1.0)]), ("newcomer", [("stale", 1.0)])], expected_version="v2")
    assert isinstance(caught.value, VersionError) and (caught.value.expected, caught.value.live) == ("v2", "v1")
    with pytest.raises(LiveVersionChanged):
        store.upsert_lists("popular", [(None, [("stale", 1.0)])], expected_version="v2")
    with pytest.raises(LiveVersionChanged):
        store.upsert_user_recs([], expected_version="v2")
    assert store.get_user_recs("u1")["items"][0]["item_id"] == "v1:u1:0"
    assert store.get_user_recs("newcomer") is None
    assert store.get_popular()["items"][0]["item_id"] == "v1:top0"
    assert store.get_user_recs("u1", version="v2")["items"] == [{"item_id": "fresh", "score": 2.0}]
    assert store.get_popular(version="v2")["items"] == [{"item_id": "hot", "score": 9.0}]
    assert store.upsert_user_recs([("u1", [("ok", 1.0)])], expected_version="v1")["version"] == "v1"
    with pytest.raises(VersionError, match="malformed"):
        store.upsert_user_recs([("u1", [("x", 1.0)])], expected_version="no such/version")


def test_prune_keeps_k_and_never_the_live_one(store):
    for v in ("v1", "v2", "v3", "v4"):
        publish(store, v, users=5)
    assert sorted(store.prune(keep=2, grace_s=0)) == ["v1", "v2"]
    states = {r["version"]: r["state"] for r in store.versions()}
    assert states == {"v4": "live", "v3": "complete", "v2": "retired", "v1": "retired"}
    assert stored_rows(store, "v1") == 0 and stored_rows(store, "v2") == 0 and stored_rows(store, "v3") > 0
    with pytest.raises(VersionError):
        store.rollback(to="v1")
    # roll back to v3, publish v5: v4 and v3 were both live seconds ago, so the grace period keeps
    # them (a serving layer may still be reading them); without it keep=1 leaves only v5
    assert store.rollback() == "v3"
    publish(store, "v5", users=5)
    assert store.prune(keep=1) == []
    assert sorted(store.prune(keep=1, grace_s=0)) == ["v3", "v4"]
    assert store.live_version() == "v5" and stored_rows(store, "v5") > 0
    # the live version survives even when it is not among the newest K
    publish(store, "v6", users=5)
    store.rollback()
    assert store.live_version() == "v5"
    assert store.prune(keep=1, grace_s=0) == []
    assert {r["version"] for r in store.versions() if r["state"] in ("live", "complete")} == {"v5", "v6"}
    assert store.get_user_recs("u1")["version"] == "v5"
    with pytest.raises(ValueError):
        store.prune(keep=0)


def test_an_experiment_version_is_refreshed_kept_by_prune_and_never_rolled_back_to(store):
    """A variant's version: complete beside the live one, written by upserts naming it, kept by a
    prune that protects it, skipped by a default rollback; once pruned it takes no upsert."""
    publish(store, "v1")
    with store.begin_version("x1", {"experiment": "e", "variant": "treatment"}) as w:
        w.write_user_recs((f"u{i}", user_list("x1", f"u{i}", 5)) for i in range(20))
        w.write_popular(None, [("x1:top", 1.0)])
        w.commit(expected_users=20, activate=False)
    publish(store, "v2")
    assert store.upsert_lists("user", [("u1", [("variant-fresh", 3.0)])], version="x1") == {"version": "x1", "rows": 1}
    assert store.get_user_recs("u1", version="x1")["items"] == [{"item_id": "variant-fresh", "score": 3.0}]
    assert store.get_user_recs("u1")["items"][0]["item_id"] == "v2:u1:0"  # the live version is untouched
    assert store.get_user_recs("u1", version="v1")["items"][0]["item_id"] == "v1:u1:0"
    assert store.rollback() == "v1"  # not x1, although it is newer
    store.rollback(to="v2")
    assert store.prune(keep=1, grace_s=0, protect={"x1"}) == ["v1"]
    assert store.version_info("x1")["state"] == "complete"
    assert store.prune(keep=1, grace_s=0) == ["x1"]
    with pytest.raises(VersionError, match="retired"):
        store.upsert_lists("user", [("u1", [("late", 1.0)])], version="x1")
    assert stored_rows(store, "x1") == 0


def test_prune_removes_stale_unfinished_publishes(store):
    publish(store, "v1")
    w = store.begin_version("v2")
    w.write_user_recs([("u1", [("x", 1.0)])])
    assert store.prune(keep=5) == []  # young: a publish may still be running
    time.sleep(0.05)
    assert store.prune(keep=5, stale_writing_s=0.01) == ["v2"]
    assert stored_rows(store, "v2") == 0 and store.live_version() == "v1"



def test_item_details_are_joined_on_read(store):
    with store.begin_version("v1", batch_rows=2) as w:
        w.write_user_recs([("u1", [("i1", 0.9), ("i2", 0.8), ("i3", 0.7), ("i/4", 0.6)])])
        w.write_similar([("i1", [("i2", 0.5)])])
        w.write_popular(None, [("i2", 9.0), ("i1", 8.0)])
        w.write_query_items([("shoes", [("i1", 1.0)])])
        written = w.write_item_details([("i1", "shoes", 59.9), ("i2", "hats", None), ("i3", None, 4),
                                        ("i/4", "a b", float("nan"))])
        record = w.commit()
    assert written == 4 and record["counts"] == {"users": 1, "similar": 1, "popular": 1, "queries": 1, "items": 4}
    got = store.get_user_recs("u1", details=True)["items"]
    assert got == [{"item_id": "i1", "score": 0.9, "category": "shoes", "price": 59.9},
                   {"item_id": "i2", "score": 0.8, "category": "hats", "price": None},
                   {"item_id": "i3", "score": 0.7, "category": None, "price": 4.0},
                   {"item_id": "i/4", "score": 0.6, "category": "a b", "price": None}]  # NaN: unknown
    assert store.get_user_recs("u1", n=1)["items"] == [{"item_id": "i1", "score": 0.9}]  # the store's default: no details
    assert store.get_similar("i1", details=True)["items"] == [{"item_id": "i2", "score": 0.5, "category": "hats", "price": None}]
    assert [i["category"] for i in store.get_popular(None, details=True)["items"]] == ["hats", "shoes"]
    assert store.get_query_items("Shoes", details=True)["items"][0]["price"] == 59.9

    client = RecsClient(store)
    assert client.recs("u1", n=1)["items"] == [{"item_id": "i1", "score": 0.9, "category": "shoes", "price": 59.9}]
    assert client.recs("u1", n=1, details=False)["items"] == [{"item_id": "i1", "score": 0.9}]
    assert client.recs("stranger", n=1)["items"] == [{"item_id": "i2", "score": 9.0, "category": "hats", "price": None}]
    assert client.similar("nope", n=1, details=False)["items"] == [{"item_id": "i2", "score": 9.0}]
    assert client.popular("nope", n=2)["items"][1]["category"] == "shoes"
    assert client.query_items("shoes")["items"][0]["category"] == "shoes"


def test_unknown_items_and_versions_without_details_read_as_null(store):
    publish(store, "v1", users=2, length=2)  # no details written
    got = RecsClient(store).recs("u0")
    assert got["items"] == [{"item_id": "v1:u0:0", "score": 1.0, "category": None, "price": None},
                            {"item_id": "v1:u0:1", "score": 0.99, "category": None, "price": None}]
    assert store.version_info("v1")["counts"] == {"users": 2, "similar": 2, "popular": 2, "queries": 1}
    with store.begin_version("v2") as w:
        w.write_user_recs([("u0", [("new", 1.0)])])
        w.write_popular(None, [("new", 1.0)])
        w.write_item_details([("other", "c", 1.0)])
        w.commit()
    store.upsert_user_recs([("u0", [("fresh", 2.0), ("new", 1.0)])])  # a micro-batch's item: no details yet
    assert [(i["item_id"], i["category"]) for i in RecsClient(store).recs("u0")["items"]] == [("fresh", None), ("new", None)]
    with pytest.raises(ValueError, match="unknown list kind"):
        store.upsert_lists("details", [("x", [("y", 1.0)])])


def test_details_go_with_their_version(store):
    publish(store, "v1", users=1, length=1)
    writer = store.begin_version("v2")
    writer.write_user_recs([("u0", [("a", 1.0)])])
    writer.write_item_details([("a", "c", 1.0)])
    assert stored_rows(store, "v2") == 2
    writer.abort()
    assert stored_rows(store, "v2") == 0
    w = store.begin_version("v3")
    w.write_item_details([("a", "c3", None)])
    with pytest.raises(PublishError, match="duplicate"):
        w.write_item_details([("a", "again", None)])
    w.abort()
    with pytest.raises(PublishError, match="price must be a number"):
        with store.begin_version("v4") as w:
            w.write_item_details([("a", "c", "cheap")])
    assert stored_rows(store, "v3") == 0 and stored_rows(store, "v4") == 0 and store.live_version() == "v1"


def test_publish_tables_stores_the_item_details(store, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from freshrec.serving.publish import publish_tables, write_recs_tables

    recs = write_recs_tables(tmp_path / "recs", users={"u1": [("i1", 0.9), ("i2", 0.8)]}, popular={None: [("i2", 5.0)]})
    stats = tmp_path / "item_stats"  # as the features step writes it: more columns than the details
    stats.mkdir()
    pq.write_table(pa.table({"item_id": ["i1", "i2"], "item_idx": [0, 1], "category": ["shoes", None],
                             "price": [59.9, None], "popularity": [1.0, 2.0]}), stats / "part-0.parquet")
    result = publish_tables(store, "v1", recs, details=stats)
    assert result["items"] == 2 and store.version_info("v1")["counts"]["items"] == 2
    assert RecsClient(store).recs("u1")["items"] == [{"item_id": "i1", "score": 0.9, "category": "shoes", "price": 59.9},
                                                     {"item_id": "i2", "score": 0.8, "category": None, "price": None}]
    only_category = tmp_path / "categories.parquet"
    pq.write_table(pa.table({"item_id": ["i2"], "category": ["hats"]}), only_category)
    publish_tables(store, "v2", recs, details=only_category)
    assert [(i["category"], i["price"]) for i in RecsClient(store).recs("u1")["items"]] == [(None, None), ("hats", None)]
    result = publish_tables(store, "v3", recs, details=tmp_path / "missing")  # no features yet: published without
    assert "items" not in result and store.live_version() == "v3"
    assert RecsClient(store).recs("u1")["items"][0]["category"] is None
    pq.write_table(pa.table({"id": ["i1"]}), tmp_path / "bad.parquet")
    with pytest.raises(PublishError, match="lack column item_id"):
        publish_tables(store, "v4", recs, details=tmp_path / "bad.parquet")
    assert store.live_version() == "v3" and store.version_info("v4") is None


def test_a_packed_100_item_list_costs_redis_at_most_800_bytes():
    """``?encoding=packed``: a batch-length version id, a 100-item list of 7-digit item ids and
    float scores takes at most 800 bytes of Redis memory (MEMORY USAGE), against about 3 KB as
    JSON; both read back the same items."""
    if not REDIS_URL:
        pytest.skip("FRESHREC_TEST_REDIS_URL is not set")
    version, items = "batch-20261206T020000Z-3f9a1c2b", [str(1_000_000 + 7919 * k) for k in range(100)]
    scores = [1.0 / (k + 1.5) for k in range(100)]
    used, lists = {}, {}
    for encoding in ("json", "packed"):
        url = _with_param(_with_param(REDIS_URL, "prefix", f"freshrec-test-{uuid.uuid4().hex[:12]}"), "encoding", encoding)
        with open_store(url) as s:
            try:
                with s.begin_version(version, {}) as w:
                    w.write_user_recs([("1234567", items, scores)])
                    w.write_popular(None, items[:10], scores[:10])
                    w.commit()
                used[encoding] = s.r.memory_usage(s.key(version, "user", "1234567"), samples=0)
                lists[encoding] = s.get_user_recs("1234567", n=100)["items"]
            finally:
                s.destroy()
    assert used["packed"] <= 800 < 2500 < used["json"], used
    assert [i["item_id"] for i in lists["packed"]] == items == [i["item_id"] for i in lists["json"]]
    assert max(abs(a["score"] - b) for a, b in zip(lists["packed"], scores, strict=True)) <= (scores[0] - scores[-1]) / 10_000
