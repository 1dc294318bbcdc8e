"""The events quality gate: the GX suite in expectations/events.json plus the quarantine ratio."""

from __future__ import annotations

import datetime as dt

import pytest

from freshrec.errors import QualityGateError
from freshrec.quality import validate_events

pytestmark = pytest.mark.integration

SCHEMA = (
    "event_id string, ts timestamp, user_id string, session_id string, event_type string, item_id string, "
    "query string, category string, price double, quantity int, source_file string, event_date date"
)
T0 = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
GOOD_ROWS = [
    ("e1", T0, "u1", "s1", "view", "i1", None, "dairy", 2.5, 1, "a.jsonl", T0.date()),
    ("e2", T0, "u1", "s1", "add_to_cart", "i1", None, "dairy", 2.5, 2, "a.jsonl", T0.date()),
    ("e3", T0, "u2", None, "purchase", "i2", None, None, None, None, "a.jsonl", T0.date()),  # unknown price/quantity
    ("e4", T0, "u2", None, "remove_from_cart", "i2", None, None, 0.0, 1, "a.jsonl", T0.date()),
    ("e5", T0, "u3", "s3", "search", None, "milk", None, None, None, "a.jsonl", T0.date()),  # search: no item
]
CLEAN_COUNTS = {"read": 5, "clean": 5, "quarantined": 0, "duplicates": 0}


def _frame(spark, rows):
    return spark.createDataFrame(rows, SCHEMA)


def _with(row_index: int, **changes):
    names = [f.split()[0] for f in SCHEMA.split(", ")]
    rows = [list(r) for r in GOOD_ROWS]
    for name, value in changes.items():
        rows[row_index][names.index(name)] = value
    return [tuple(r) for r in rows]


def test_good_batch_passes_and_writes_data_docs(spark, settings):
    summary = validate_events(_frame(spark, GOOD_ROWS), settings, "batch-good", CLEAN_COUNTS)

    assert summary["success"] is True
    assert summary["failed"] == []
    assert summary["evaluated"] == 36
    assert summary["quarantine_ratio"] == 0.0
    report = settings.reports_dir / "data_docs" / "index.html"
    assert summary["report"] == str(report.resolve())
    assert report.is_file()
    assert "batch-good" in report.read_text()
    # GX state stays under FRESHREC_HOME: the validation result of this run is kept for the index.
    assert list((settings.home / "gx" / "validations" / "events" / "batch-good").rglob("*.json"))


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (_with(1, event_id="e1"), "expect_column_values_to_be_unique(column=event_id)"),
        (_with(0, user_id=None), "expect_column_values_to_not_be_null(column=user_id)"),
        (_with(2, event_type="click"), "expect_column_values_to_be_in_set(column=event_type)"),
        (_with(0, item_id=None), "expect_column_values_to_not_be_null(column=item_id where event_type != search)"),
        (_with(4, query=None), "expect_column_values_to_not_be_null(column=query where event_type == search)"),
        (_with(1, price=-0.01), "expect_column_values_to_be_between(column=price)"),
        (_with(1, quantity=0), "expect_column_values_to_be_between(column=quantity)"),
        (_with(3, ts=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)), "expect_column_values_to_be_between(column=ts)"),
        (_with(3, ts=dt.datetime(1989, 12, 31, tzinfo=dt.timezone.utc)), "expect_column_values_to_be_between(column=ts)"),
    ],
    ids=["duplicate_event_id", "null_user_id", "bad_event_type", "null_item_on_view", "null_query_on_search",
         "negative_price", "zero_quantity", "ts_in_future", "ts_before_min"],
)
def test_contract_violation_fails_the_gate_and_names_the_expectation(spark, settings, rows, expected):
    with pytest.raises(QualityGateError) as info:
        validate_events(_frame(spark, rows), settings, "batch-bad", CLEAN_COUNTS)

    message = str(info.value)
    assert "1 problem(s)" in message, message  # exactly the broken rule, nothing else
    assert expected in message
    assert info.value.summary["failed"] == [expected]
    assert info.value.summary["evaluated"] == 36
    assert " unexpected of " in message  # the observed count is reported
    assert str((settings.reports_dir / "data_docs" / "index.html").resolve()) in message


def test_wrong_type_and_empty_batch_fail(spark, settings):
    empty = spark.createDataFrame([], SCHEMA.replace("quantity int", "quantity long"))
    with pytest.raises(QualityGateError) as info:
        validate_events(empty, settings, "batch-empty", {"read": 0, "clean": 0, "quarantined": 0, "duplicates": 0})

    message = str(info.value)
    assert "2 problem(s)" in message, message
    assert "expect_table_row_count_to_be_between(table): observed 0" in message
    assert "expect_column_values_to_be_of_type(column=quantity): observed 'LongType'" in message


def test_quarantine_ratio_above_threshold_fails(spark, settings):
    counts = {"read": 10, "clean": 5, "quarantined": 3, "duplicates": 2}
    with pytest.raises(QualityGateError) as info:
        validate_events(_frame(spark, GOOD_ROWS), settings.replace(max_quarantine_ratio=0.25), "batch-q", counts)

    message = str(info.value)
    assert "1 problem(s)" in message, message
    assert "quarantine ratio 0.3000" in message
    assert "threshold 0.25" in message
    assert "FRESHREC_MAX_QUARANTINE_RATIO" in message
    assert str(settings.quarantine_path) in message
    assert info.value.summary["failed"] == []  # the data itself honours the contract
    assert info.value.summary["quarantine_ratio"] == pytest.approx(0.3)


def test_quarantine_ratio_at_threshold_passes(spark, settings):
    counts = {"read": 10, "clean": 5, "quarantined": 2, "duplicates": 3}
    summary = validate_events(_frame(spark, GOOD_ROWS), settings.replace(max_quarantine_ratio=0.2), "batch-q", counts)

    assert summary["success"] is True
    assert summary["quarantine_ratio"] == pytest.approx(0.2)


def test_rerun_with_same_batch_id_replaces_the_earlier_result(spark, settings):
    with pytest.raises(QualityGateError):
        validate_events(_frame(spark, _with(0, user_id=None)), settings, "batch-7", CLEAN_COUNTS)
    first = validate_events(_frame(spark, GOOD_ROWS), settings, "batch-7", CLEAN_COUNTS)
    second = validate_events(_frame(spark, GOOD_ROWS), settings, "batch-7", CLEAN_COUNTS)
    validate_events(_frame(spark, GOOD_ROWS), settings, "batch-8", CLEAN_COUNTS)

    assert first == second
    results = settings.home / "gx" / "validations" / "events"
    assert len(list((results / "batch-7").rglob("*.json"))) == 1
    assert len(list((results / "batch-8").rglob("*.json"))) == 1
    pages = settings.reports_dir / "data_docs" / "validations" / "events"
    assert len(list((pages / "batch-7").rglob("*.html"))) == 1
    index = (settings.reports_dir / "data_docs" / "index.html").read_text()
    assert index.count("validations/events/batch-7/") == 1
    assert index.count("validations/events/batch-8/") == 1


def test_validation_leaves_the_callers_caching_alone(spark, settings):
    uncached = _frame(spark, GOOD_ROWS)
    validate_events(uncached, settings, "batch-c1", CLEAN_COUNTS)
    assert not uncached.is_cached

    cached = _frame(spark, GOOD_ROWS).cache()
    validate_events(cached, settings, "batch-c2", CLEAN_COUNTS)
    assert cached.is_cached
    cached.unpersist()
