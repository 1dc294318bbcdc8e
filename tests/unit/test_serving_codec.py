"""Pure pieces of the serving store: value encoding, keys, version ids, URLs."""

from __future__ import annotations

import json

import pytest

from freshrec.serving import ServingError, StoreUnavailable, VersionError, normalise_query, open_store
from freshrec.serving.base import (
    PublishError,
    check_version_id,
    decode_list,
    decode_packed,
    encode_list,
    encode_packed,
    is_packed,
    packed_codes,
    split_row,
)
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


def test_a_packed_list_keeps_order_codes_and_scores_to_the_step_of_its_range():
    scores = [round(1.0 - k / 200, 6) for k in range(100)]
    raw = encode_packed(list(range(7, 107)), scores, "2025-01-01T00:00:00.123Z")
    assert len(raw) == 27 + 100 * 6 and is_packed(raw) and not is_packed(encode_list(["a"], [1.0], "t").encode())
    assert packed_codes(raw, 3) == [7, 8, 9] and len(packed_codes(raw, 1000)) == 100
    value = decode_packed(raw, 3, ["a", "b", "c"])
    assert value == {"items": ["a", "b", "c"], "scores": [1.0, 0.995, 0.99], "updated_at": "2025-01-01T00:00:00.123Z"}
    assert decode_list(value, 2)[0] == [{"item_id": "a", "score": 1.0}, {"item_id": "b", "score": 0.995}]
    odd = [0.123456789 * k for k in range(50)]  # not round: within 1/10,000 of the range
    back = decode_packed(encode_packed(list(range(50)), odd, "2025-01-01T00:00:00.000Z"), 50, [str(k) for k in range(50)])
    assert max(abs(a - b) for a, b in zip(back["scores"], odd, strict=True)) <= (odd[-1] - odd[0]) / 10_000
    assert decode_packed(encode_packed([3], [0.9], "2025-01-01T00:00:00.000Z"), 10, ["x"])["scores"] == [0.9]
    assert decode_packed(encode_packed([], [], "2025-01-01T00:00:00.000Z"), 10, [])["items"] == []


def test_a_packed_list_refuses_what_it_cannot_hold():
    with pytest.raises(PublishError, match="ISO timestamp"):
        encode_packed([1], [1.0], "yesterday")
    with pytest.raises(PublishError, match="finite"):
        encode_packed([1], [float("nan")], "2025-01-01T00:00:00.000Z")
    with pytest.raises(Exception, match="item table"):
        decode_packed(encode_packed([1, 2], [1.0, 0.5], "2025-01-01T00:00:00.000Z"), 2, ["only-one"])


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
    packed = open_store("redis://h/0?encoding=packed&prefix=p")
    assert (packed.encoding, packed.prefix, packed.url) == ("packed", "p", "redis://h/0")
    assert packed.display_url.endswith("(encoding packed)") and open_store("redis://h/0").encoding == "json"
    with pytest.raises(ServingError, match="json or packed"):
        open_store("redis://h/0?encoding=zip")
    for url in ("sqlite:///x.db?encoding=packed", "postgresql://h/db?encoding=packed"):
        with pytest.raises(ServingError, match="for Redis"):
            open_store(url)


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
