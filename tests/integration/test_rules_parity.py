"""The Python rules (jobs/rules.py) and Spark's parse_raw (jobs/clean.py) judge one corpus of
good and bad lines alike: the same verdicts, the same reasons (codes and messages), and for a
valid row the same typed fields and derived event id."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from freshrec.jobs.clean import parse_raw
from freshrec.jobs.rules import REASON_CODES, reason_codes, validate_row

from tests.integration.test_clean import MALFORMED, VALID

pytestmark = pytest.mark.integration

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
BASE = '"user_id": "u", "event_type": "view", "item_id": "i"'

# Lines whose reading depends on how Spark types JSON numbers, parses JSON and casts text.
EDGES = [
    '{"user_id": null, "ts": "2024-01-01", "event_type": "view", "item_id": "i"}',
    '{"user_id": {"b": 1, "a": [1, 2]}, "ts": "2024-01-01", "event_type": "view", "item_id": [1, "x"]}',
    '{"user_id": 12345678901, "ts": 1e5, "event_type": "view", "item_id": 1e20, "price": 1e400}',
    '{"user_id": "u", "ts": "2024-01-01T10:00:00.123456789+02:00", "event_type": "view", "item_id": "i", '
    '"price": " 5 ", "quantity": " 2 "}',
    '\t{"user_id": "u", "ts": "2024-01-01", "event_type": "view", "item_id": "i"}',
    '{"user_id": "u", "user_id": "v", "ts": "2024-01-01", "event_type": "view", "item_id": "i"}',
    '{"user_id": "u", "ts": "2024-1-1 1:2:3", "event_type": "view", "item_id": "i", "price": "1d", "quantity": "1.0000001"}',
    '{"user_id": "u", "ts": "2024-01-01T10:00Z", "event_type": "view", "item_id": "i", "price": "inf", "quantity": "1e3"}',
    '{"user_id": "u", "ts": "2024", "event_type": "view", "item_id": "i", "price": "0x10", "quantity": "+3"}',
    '{"user_id": "u", "ts": "2024-01-01 10:00:00 UTC", "event_type": "view", "item_id": "i", "price": "1_0"}',
    '{"user_id": "u", "ts": "2024-01-01T10:00:00 Europe/Paris", "event_type": "view", "item_id": "i", "price": true}',
    '{"user_id": "u", "ts": "02/12/2026 16:33:19", "event_type": "click", "item_id": "i"}',
    '{"user_id": "u", "ts": "1700000000", "event_type": "view", "item_id": "i", "price": {"a": 1}}',
    '{"user_id": "u", "ts": "-12.5", "event_type": "view", "item_id": "i"}',
    '{"user_id": "u", "ts": 1700000000000.4567, "event_type": "view", "item_id": "i"}',
    *[f'{{{BASE}, "ts": "{ts}"}}' for ts in (
        "2024-01-01T", "2024-01-01T10", "2024-02-30", "2024-01-01T10:00:00+0530", "2024-01-01T10:00:00-7",
        "2024-01-01T10:00:00GMT+01:00", "+2024-01-01", "2024-01-01T10:00:00.5", "1e3", "2024-01-01 10:00:00.",
        "20240101", "2024-06-02T12:00:00Z", "2024-06-03T12:00:01Z", "1989-12-31T23:59:59.999999Z")],
    '{"user_id": "u", "ts": "  2024-01-01  ", "event_type": " VIEW ", "item_id": "i", "price": -0.0}',
    '{"user_id": "u", "ts": "2024-01-01", "event_type": "view", "item_id": "i", "price": NaN, "quantity": 2.5}',
    '{"user_id": "u", "ts": "2024-01-01", "event_type": "view", "item_id": "i", "x": [NaN]}',
    '{"user_id": "u", "ts": "2024-01-01", "event_type": "view", "item_id": "i", "price": 1.0E2, "quantity": 3.000}',
    '{"user_id": "u", "ts": "2024-01-01", "event_type": "search", "query": "Red", "session_id": 5}',
    '{"ts": "", "event_type": "", "price": "", "quantity": 2147483648}',
    '5', '"str"', 'null', '[1]', '{"a": 1} x', '{"a": 1}{"b": 2}', '', '{',
    '{"user_id": "a\\u0000b", "ts": "2024-01-01", "event_type": "view", "item_id": "' + "x" * 300 + '", "event_id": "\\u007f"}',
    '{"user_id": "  \\u001f  ", "ts": "2024-01-01", "event_type": "view", "item_id": "i", "session_id": "' + "s" * 257 + '"}',
    # recommendation_id: kept as it is, an id by the id rules
    '{"user_id": "u", "ts": "2024-01-01", "event_type": "purchase", "item_id": "i", "recommendation_id": " r-123 "}',
    '{"user_id": "u", "ts": "2024-01-01", "event_type": "view", "item_id": "i", "recommendation_id": 42}',
    '{"user_id": "u", "ts": "2024-01-01", "event_type": "view", "item_id": "i", "recommendation_id": ["r"]}',
    '{"user_id": "u", "ts": "2024-01-01", "event_type": "view", "item_id": "i", "recommendation_id": "r\\n1"}',
    '{"user_id": "u", "ts": "2024-01-01", "event_type": "view", "item_id": "i", "recommendation_id": "' + "r" * 300 + '"}',
    # an id's type is looked up only where its text could be another type's (parse_raw's _id_type)
    '{"user_id": true, "ts": "2024-01-01", "event_type": "view", "item_id": -7, "session_id": false}',
    '{"user_id": "true", "ts": "2024-01-01", "event_type": "view", "item_id": "-7", "session_id": "[s"}',
    '{"user_id": "{u}", "ts": "2024-01-01", "event_type": "view", "item_id": "", "event_id": "0.5"}',
    '{"user_id": -0.5, "ts": "2024-01-01", "event_type": "view", "item_id": "i", "event_id": null}',
    '{"user_id": "u", "ts": "2024-01-01", "event_type": "view", "item_id": "i", "category": null}',
    '{"user_id": "u", "ts": "2024-01-01", "event_type": "view", "item_id": "i", "query": "null"}',
]
CORPUS = [line for line, _ in MALFORMED] + VALID + EDGES
FIELDS = ("event_id", "user_id", "session_id", "event_type", "item_id", "query", "category", "price", "quantity",
          "recommendation_id")


def _spark_verdicts(spark) -> list[dict]:
    # each line's place rides in source_file, which parse_raw keeps
    df = spark.createDataFrame([(str(n), line) for n, line in enumerate(CORPUS)], "source_file string, raw string")
    rows = {int(r["source_file"]): r.asDict() for r in parse_raw(df, NOW, "1990-01-01T00:00:00Z", 24.0).collect()}
    return [rows[n] for n in range(len(CORPUS))]


def test_the_corpus_covers_every_reason_code():
    codes = {code for line in CORPUS for code in reason_codes(validate_row(line, NOW)[1])}
    assert codes == set(REASON_CODES)
    assert sum(validate_row(line, NOW)[0] is not None for line in CORPUS) >= 20


def test_python_and_spark_give_the_same_verdicts(spark):
    spark_rows = _spark_verdicts(spark)
    for line, expected in zip(CORPUS, spark_rows, strict=True):
        row, reasons = validate_row(line, NOW)
        assert ("; ".join(reasons) or None) == expected["reason"], line
        if row is None:
            continue
        for name in FIELDS:
            got, want = row[name], expected[name]
            assert got == want or (isinstance(got, float) and got != got and want != want), (line, name)
        assert row["ts"].replace(tzinfo=None) == expected["ts"], line


def test_rows_from_an_importer_are_judged_as_the_lines_they_land_as():
    row = {"ts": "2024-05-01T10:00:00", "user_id": "u", "event_type": "view", "item_id": 7, "price": 2.5, "quantity": None}
    assert validate_row(row, NOW) == validate_row(json.dumps({k: v for k, v in row.items() if v is not None}), NOW)
    assert validate_row({**row, "event_type": "click"}, NOW)[1][0].startswith("unknown_event_type: 'click'")


@pytest.mark.parametrize("key", [b"k", "a secret with ünïcode".encode(), b"x" * 100])
def test_pseudonyms_are_the_same_in_spark_and_python(spark, key):
    """FRESHREC_PSEUDONYMISE: Spark's HMAC spelled out with sha2 equals Python's hmac, for keys
    shorter and longer than a SHA-256 block, and ids in any script."""
    import hashlib
    import hmac

    from freshrec.jobs.rules import pseudonym

    ids = ["42", "user@example.com", "Jöhn Dœ", "\u4e2d\u6587-\U0001f600", " padded "]
    lines = [json.dumps({"user_id": u, "ts": "2024-01-01", "event_type": "view", "item_id": "i"}) for u in ids]
    df = spark.createDataFrame([(str(n), line) for n, line in enumerate(lines)], "source_file string, raw string")
    got = {int(r["source_file"]): r["user_id"] for r in parse_raw(df, NOW, "1990-01-01T00:00:00Z", 24.0,
                                                                    pseudonym_key=key).collect()}
    for n, (line, user) in enumerate(zip(lines, ids, strict=True)):
        clean, _ = validate_row(line, NOW, pseudonym_key=key)
        expected = "p-" + hmac.new(key, user.strip(" ").encode(), hashlib.sha256).hexdigest()[:32]
        assert got[n] == clean["user_id"] == pseudonym(user.strip(" "), key) == expected
