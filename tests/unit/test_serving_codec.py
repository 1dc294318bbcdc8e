"""Pure pieces of the serving store: value encoding, keys, version ids, URLs."""

from __future__ import annotations

import json

import pytest

from freshrec.serving import ServingError, StoreUnavailable, VersionError, normalise_query, open_store
from freshrec.serving.base import PublishError, check_version_id, decode_list, encode_list, split_row
from freshrec.serving.postgres import PostgresStore
from freshrec.serving.redis import RedisStore
from freshrec.serving.sqlite import SqliteStore


def test_encode_is_compact_json_with_parallel_arrays():
    raw = encode_list(["a", 7], [0.5, 1], "2025-01-01T00:00:00.000Z")
    assert raw == '{"items":["a","7"],"scores":[0.5,1.0],"updated_at":"2025-01-01T00:00:00.000Z"}'
    assert json.loads(raw)["items"] == ["a", "7"]


def test_decode_truncates_to_n_and_keeps_order():
    raw = encode_list([f"i{k}" for k in range(100)], [float(100 - k) for k in range(100)], "t")
    items, updated_at = decode_list(raw, 3)
    assert items == [{"item_id": "i0", "score": 100.0}, {"item_id": "i1", "score": 99.0}, {"item_id": "i2", "score": 98.0}]
    assert updated_at == "t"
    assert len(decode_list(raw, 1000)[0]) == 100
    assert decode_list(json.loads(raw), 2)[0][1] == {"item_id": "i1", "score": 99.0}  # jsonb arrives parsed


def test_encode_rejects_bad_lists():
    with pytest.raises(PublishError, match="differ in length"):
        encode_list(["a", "b"], [1.0], "t")
    with pytest.raises(PublishError, match="finite"):
        encode_list(["a"], [float("inf")], "t")
    with pytest.raises(PublishError, match="null item"):
        encode_list(["a", None], [1.0, 0.5], "t")
    with pytest.raises(PublishError, match="numbers"):
        encode_list(["a", "b"], [1.0, None], "t")


def test_rows_as_pairs_or_columns():
    assert split_row(("u", [("a", 1.0), ("b", 0.5)])) == ("u", ["a", "b"], [1.0, 0.5])
    assert split_row(("u", ["a"], [1.0])) == ("u", ["a"], [1.0])
    assert split_row(("u", None)) == ("u", [], [])
    with pytest.raises(PublishError):
        split_row(("u",))


def test_queries_are_normalised():
    assert normalise_query("  Red \t SHOES ") == "red shoes"
    assert normalise_query("") == ""


@pytest.mark.parametrize("bad", ["", "a b", "a/b", "a:b", "-lead", "x" * 129, None, 3])
def test_malformed_version_ids(bad):
    with pytest.raises(VersionError):
        check_version_id(bad)


def test_open_store_picks_the_backend_by_scheme(tmp_path):
    s = open_store(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(s, SqliteStore) and s.path == tmp_path / "x.db"
    assert not (tmp_path / "x.db").exists()  # opening creates nothing
    assert isinstance(open_store("sqlite:///rel.db"), SqliteStore)
    r = open_store("redis://127.0.0.1:1/0?prefix=abc")
    assert isinstance(r, RedisStore) and r.prefix == "abc" and r.k_live == "abc:live"
    assert r.key("v1", "user", "u:1") == "abc:v:v1:user:u:1"
    for url in ("postgresql://u@h:5432/db?schema=s1", "postgres://u@h/db?schema=s1"):
        p = open_store(url)
        assert isinstance(p, PostgresStore) and p.schema == "s1" and "schema" not in p.url
    with pytest.raises(ServingError, match="unsupported serving URL"):
        open_store("mysql://x")
    with pytest.raises(ServingError, match="sqlite:///"):
        open_store("sqlite://x.db")
    with pytest.raises(ServingError, match="prefix"):
        open_store("redis://h/0?prefix=bad*prefix")
    with pytest.raises(ServingError, match="schema"):
        open_store("postgresql://h/db?schema=Bad-Name")


def test_url_parameters_are_removed_and_passwords_hidden():
    r = open_store("redis://h:6379/3?prefix=p&socket_timeout=2")
    assert (r.url, r.prefix) == ("redis://h:6379/3?socket_timeout=2", "p")
    p = open_store("postgresql://u@h/db?sslmode=disable&schema=s")
    assert (p.url, p.schema) == ("postgresql://u@h/db?sslmode=disable", "s")
    assert "secret" not in open_store("redis://:secret@h:6379/0").display_url
    assert "secret" not in open_store("postgresql://u:secret@h/db").display_url
    # a password with URL-special characters reaches the client library intact
    assert open_store("rediss://u:p%40ss@h/1").r.connection_pool.connection_kwargs["password"] == "p@ss"


@pytest.mark.parametrize("url", ["redis://:s3cret@127.0.0.1:1/0", "postgresql://u:s3cret@127.0.0.1:1/db?schema=s"])
def test_an_unreachable_store_never_shows_its_password(url):
    store = open_store(url)
    assert store.display_url.count("***") == 1
    with pytest.raises(StoreUnavailable) as caught:
        store.get_user_recs("u1")
    assert "is unavailable" in str(caught.value) and "s3cret" not in str(caught.value)


@pytest.mark.parametrize("url", ["mysql://u:s3cret@h/db", "sqlite://u:s3cret@h/x.db", "postgresql//u:s3cret@h/db",
                                 "redis://:s3cret@h/0?prefix=bad*prefix"])
def test_url_errors_never_show_a_password(url):
    with pytest.raises(ServingError) as caught:
        open_store(url)
    assert "s3cret" not in str(caught.value)
