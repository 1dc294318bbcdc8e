"""The clean job on real Spark: every malformed row is quarantined with a reason, every valid
row is kept, counts reconcile, and a rerun changes nothing."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from freshrec.jobs.clean import clean_raw

pytestmark = pytest.mark.integration

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
BASE = {"ts": "2024-05-01T10:00:00Z", "user_id": "u1", "event_type": "view", "item_id": "i1"}


def row(**changes):
    out = dict(BASE)
    for k, v in changes.items():
        if v is ...:
            out.pop(k, None)
        else:
            out[k] = v
    return json.dumps(out)


# (raw line, expected reason code)
MALFORMED = [
    ('{"ts": "2024-05-01T10:00:00Z", "user_id": "u1", "event_ty', "malformed_json"),
    ('{"ts": 1, "user_id": ', "malformed_json"),
    ("[1, 2, 3]", "not_an_object"),
    ('"just a string"', "not_an_object"),
    ("42", "not_an_object"),
    (row(user_id=...), "missing_user_id"),
    (row(user_id=""), "missing_user_id"),
    (row(user_id="   "), "missing_user_id"),
    (row(user_id=None), "missing_user_id"),
    (row(ts=...), "missing_ts"),
    (row(event_type=...), "missing_event_type"),
    (row(event_type="click"), "unknown_event_type"),
    (row(ts="yesterday"), "invalid_ts"),
    (row(ts="2023-02-30T10:00:00Z"), "invalid_ts"),
    (row(ts="2024-13-01T00:00:00"), "invalid_ts"),
    (row(ts="2999-01-01T00:00:00Z"), "future_ts"),
    (row(ts=0), "ts_out_of_range"),
    (row(price=-1.0), "invalid_price"),
    ('{"ts": "2024-05-01T10:00:00Z", "user_id": "u1", "event_type": "view", "item_id": "i1", "price": NaN}', "invalid_price"),
    ('{"ts": "2024-05-01T10:00:00Z", "user_id": "u1", "event_type": "view", "item_id": "i1", "price": Infinity}', "invalid_price"),
    (row(price="Infinity"), "invalid_price"),
    (row(price="cheap"), "invalid_price"),
    (row(quantity=0), "invalid_quantity"),
    (row(quantity=1.5), "invalid_quantity"),
    (row(quantity=-3), "invalid_quantity"),
    (row(user_id={"id": 1}), "invalid_id_type"),
    (row(user_id=[1]), "invalid_id_type"),
    (row(item_id=True), "invalid_id_type"),
    (row(item_id=1.5), "invalid_id_type"),
    (row(item_id=...), "missing_item_id"),
    (row(event_type="purchase", item_id=""), "missing_item_id"),
    (row(event_type="search", item_id=...), "missing_query"),
    (row(event_type="search", item_id=..., query="  "), "missing_query"),
    (row(user_id="u\u0000x"), "invalid_id_chars"),
    (row(item_id="i\nj"), "invalid_id_chars"),
    (row(session_id="s\u0085"), "invalid_id_chars"),
    (row(user_id="u" * 257), "id_too_long"),
    (row(item_id="\u00e9" * 300), "id_too_long"),
]

VALID = [
    row(event_id="e-plain"),
    row(event_id="e-numeric-ids", user_id=42, item_id=7),
    row(event_id="e-extra", extra_field="ignored", nested={"a": 1}),
    row(event_id="e-offset", ts="2024-05-01T12:00:00+02:00"),
    row(event_id="e-naive", ts="2024-05-01 10:00:00"),
    row(event_id="e-epoch", ts=1714557600000),
    row(event_id="e-epoch-str", ts="1714557600000"),
    row(event_id="e-search", event_type="search", item_id=..., query="  Red Shoes "),
    row(event_id="e-qty", event_type="purchase", quantity=2, price=9.99),
    row(event_id="e-qty-float", event_type="purchase", quantity=3.0, price="4.5"),
    row(event_id="e-upper", event_type="ADD_TO_CART"),
    row(event_id="e-trim", user_id="  u2  ", item_id=" i9 "),
    row(event_id="e-remove", event_type="remove_from_cart"),
    row(event_id="e-free", price=0),
    row(user_id="u-noid"),  # event id derived from content
    row(event_id="e-nulls", session_id=None, category=None, price=None, recommendation_id=None),  # JSON null = absent
    row(event_id="e-long-id", user_id="\u00e9" * 256, item_id="\u2603-\U0001f600"),  # 256 characters, more bytes
]


def _raw(spark, lines, source_file="batch.jsonl"):
    return spark.createDataFrame([(source_file, line) for line in lines], "source_file string, raw string")


def test_every_malformed_row_is_quarantined_with_its_reason(spark):
    assert len({code for _, code in MALFORMED}) >= 14 and len(MALFORMED) >= 20
    result = clean_raw(_raw(spark, [r for r, _ in MALFORMED] + VALID), now=NOW)
    quarantined = {r["raw"]: r["reason"] for r in result.quarantine.collect()}
    for line, code in MALFORMED:
        assert line in quarantined, f"not quarantined: {line}"
        assert quarantined[line].startswith(code) or f"; {code}" in quarantined[line], (line, quarantined[line])
        assert ": " in quarantined[line]  # a human explanation follows the code
    clean = {r["event_id"]: r for r in result.clean.collect()}
    assert len(clean) == len(VALID)
    (counts,) = [r.asDict() for r in result.per_file.collect()]
    assert counts == {"source_file": "batch.jsonl", "read": len(MALFORMED) + len(VALID), "clean": len(VALID),
                      "quarantined": len(MALFORMED), "duplicates": 0}
    result.release()


def test_values_are_typed_and_normalised(spark):
    result = clean_raw(_raw(spark, VALID), now=NOW)
    clean = {r["event_id"]: r for r in result.clean.collect()}
    ts = datetime(2024, 5, 1, 10, 0)  # session time zone is UTC; Spark returns naive local datetimes
    assert clean["e-offset"]["ts"] == ts
    assert clean["e-naive"]["ts"] == ts
    assert clean["e-epoch"]["ts"] == ts and clean["e-epoch-str"]["ts"] == ts
    assert clean["e-numeric-ids"]["user_id"] == "42" and clean["e-numeric-ids"]["item_id"] == "7"
    assert clean["e-search"]["query"] == "red shoes" and clean["e-search"]["item_id"] is None
    assert clean["e-qty"]["quantity"] == 2 and clean["e-qty"]["price"] == pytest.approx(9.99)
    assert clean["e-qty-float"]["quantity"] == 3 and clean["e-qty-float"]["price"] == 4.5
    assert clean["e-upper"]["event_type"] == "add_to_cart"
    assert clean["e-trim"]["user_id"] == "u2" and clean["e-trim"]["item_id"] == "i9"
    assert str(clean["e-plain"]["event_date"]) == "2024-05-01"
    derived = [k for k in clean if k.startswith("d-")]
    assert len(derived) == 1
    result.release()


def test_duplicates_are_counted_not_kept_and_reconcile(spark):
    lines = [row(event_id="a"), row(event_id="b"), row(user_id="x")]
    raw = _raw(spark, lines, "f1.jsonl").unionByName(_raw(spark, lines + [row(event_id="a", item_id="other")], "f2.jsonl"))
    result = clean_raw(raw, now=NOW)
    clean = result.clean.collect()
    assert sorted(r["event_id"][:2] for r in clean) == ["a", "b", "d-"]
    assert {r["event_id"]: r["source_file"] for r in clean}["a"] == "f1.jsonl"  # first file wins
    counts = {r["source_file"]: r.asDict() for r in result.per_file.collect()}
    assert counts["f1.jsonl"]["clean"] == 3 and counts["f1.jsonl"]["duplicates"] == 0
    assert counts["f2.jsonl"]["clean"] == 0 and counts["f2.jsonl"]["duplicates"] == 4
    for c in counts.values():
        assert c["read"] == c["clean"] + c["quarantined"] + c["duplicates"]
    result.release()


def test_known_event_ids_make_duplicates(spark):
    known = spark.createDataFrame([("a",)], "event_id string")
    result = clean_raw(_raw(spark, [row(event_id="a"), row(event_id="b")]), now=NOW, known_event_ids=known)
    assert [r["event_id"] for r in result.clean.collect()] == ["b"]
    assert result.per_file.first()["duplicates"] == 1
    result.release()


def test_the_jvm_compiles_the_clean_jobs_huge_generated_methods(spark):
    """parse_raw's generated code has methods over HotSpot's 8,000-byte limit; without
    -XX:-DontCompileHugeMethods they stay interpreted and clean runs about 2x slower."""
    from freshrec.spark import JIT_HUGE_METHODS

    args = list(spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    assert JIT_HUGE_METHODS in args
    assert JIT_HUGE_METHODS in spark.conf.get("spark.executor.extraJavaOptions")
