"""The synthetic generator: deterministic, exact counts, a realistic funnel, drift, dirty rows."""

from __future__ import annotations

import collections
import dataclasses
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from freshrec.cli import build_parser
from freshrec.errors import UserError
from freshrec.generate import (
    DIRTY_KINDS,
    RAW_KEY,
    GenerateOptions,
    _build_world,
    event_line,
    generate_events,
    generate_to_landing,
    parse_start,
)
from freshrec.schemas import EVENT_FIELDS, EVENT_TYPES

START = "2024-03-01"


@pytest.fixture(scope="module")
def clean_rows() -> list[dict]:
    return list(generate_events(120_000, seed=11, start=START))


@pytest.fixture(scope="module")
def dirty_rows() -> list[dict]:
    return list(generate_events(100_000, seed=5, start=START, dirty=True))


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_deterministic_for_seed_and_start():
    a = list(generate_events(3_000, seed=3, start=START, dirty=True))
    b = list(generate_events(3_000, seed=3, start=START, dirty=True))
    c = list(generate_events(3_000, seed=4, start=START, dirty=True))
    assert a == b
    assert a != c


@pytest.mark.parametrize("n", [1, 7, 999, 100_001])
@pytest.mark.parametrize("dirty", [False, True])
def test_exact_counts(n, dirty):
    rows = list(generate_events(n, seed=1, start=START, dirty=dirty))
    assert len(rows) == n
    if not dirty:
        assert [r["event_id"] for r in rows] == [f"syn-1-{i}" for i in range(n)]


def test_rows_are_canonical(clean_rows):
    for r in clean_rows[:5000]:
        assert set(r) <= set(EVENT_FIELDS)
        assert r["event_type"] in EVENT_TYPES
        assert r["ts"].endswith("Z") and _ts(r["ts"])
        if r["event_type"] == "search":
            assert r["query"] and "item_id" not in r
        else:
            assert r["item_id"].startswith("i") and r["category"] and r["price"] > 0
        if r["event_type"] in ("add_to_cart", "purchase"):
            assert r["quantity"] >= 1


def test_funnel_ratios(clean_rows):
    c = collections.Counter(r["event_type"] for r in clean_rows)
    assert set(c) == set(EVENT_TYPES)
    assert 0.07 < c["add_to_cart"] / c["view"] < 0.14
    assert 0.02 < c["purchase"] / c["view"] < 0.045
    assert 0 < c["remove_from_cart"] < c["add_to_cart"]
    assert 0.02 < c["search"] / len(clean_rows) < 0.10


def test_sessions_in_time_order_and_funnel_order(clean_rows):
    by_session: dict[str, list[dict]] = collections.defaultdict(list)
    for r in clean_rows:
        by_session[r["session_id"]].append(r)
    assert len(by_session) > 1000
    for events in by_session.values():
        times = [r["ts"] for r in events]
        assert times == sorted(times)
        assert len({r["user_id"] for r in events}) == 1
        carted: set[str] = set()
        for r in events:
            if r["event_type"] == "add_to_cart":
                carted.add(r["item_id"])
            elif r["event_type"] in ("purchase", "remove_from_cart"):
                assert r["item_id"] in carted
    # the log as a whole runs forward in time across the span
    first = _ts(clean_rows[0]["ts"])
    last = _ts(clean_rows[-1]["ts"])
    assert first < _ts("2024-03-02T00:00:00Z") and last > _ts("2024-03-29T00:00:00Z")


def test_returning_users_and_repeat_purchases(clean_rows):
    sessions_per_user = collections.Counter()
    seen = set()
    for r in clean_rows:
        if (r["user_id"], r["session_id"]) not in seen:
            seen.add((r["user_id"], r["session_id"]))
            sessions_per_user[r["user_id"]] += 1
    assert max(sessions_per_user.values()) >= 5
    buys = collections.Counter((r["user_id"], r["item_id"]) for r in clean_rows if r["event_type"] == "purchase")
    assert sum(1 for n in buys.values() if n > 1) >= 20


def test_category_affinity(clean_rows):
    cats_per_user: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in clean_rows:
        if r["event_type"] == "view":
            cats_per_user[r["user_id"]][r["category"]] += 1
    heavy = [c for c in cats_per_user.values() if sum(c.values()) >= 30]
    assert heavy
    top3_share = np.mean([sum(n for _, n in c.most_common(3)) / sum(c.values()) for c in heavy])
    assert top3_share > 0.5


def test_search_queries_lead_to_their_category(clean_rows):
    hits = total = 0
    for prev, nxt in zip(clean_rows, clean_rows[1:], strict=False):
        if prev["event_type"] == "search" and nxt["session_id"] == prev["session_id"] and nxt["event_type"] == "view":
            total += 1
            words = set(nxt["category"].replace("/", " ").replace("-", " ").split())
            hits += bool(words & set(prev["query"].split()))
            assert prev["query"] == prev["query"].lower()
    assert total > 100 and hits / total > 0.8


def test_new_items_appear_later_and_never_before_release(clean_rows):
    world = _build_world(11, 120_000, None, None, 30, parse_start(START, 30))
    start = parse_start(START, 30)
    late_items = 0
    first_seen: dict[int, datetime] = {}
    for r in clean_rows:
        if "item_id" not in r:
            continue
        item = int(r["item_id"][1:])
        t = _ts(r["ts"])
        period = int((t.timestamp() - start) // world.period_s)
        assert period >= world.item_release[item], r
        first_seen.setdefault(item, t)
    late_items = sum(1 for t in first_seen.values() if t > _ts("2024-03-15T00:00:00Z"))
    released_late = int((world.item_release >= 14).sum())
    assert released_late > 0 and late_items > 0


def test_popularity_drifts_over_time(clean_rows):
    def top(day: int) -> set[str]:
        lo, hi = _ts(f"2024-03-{day:02d}T00:00:00Z"), _ts(f"2024-03-{day:02d}T00:00:00Z") + timedelta(days=3)
        c = collections.Counter(r["item_id"] for r in clean_rows if r["event_type"] == "view" and lo <= _ts(r["ts"]) < hi)
        return {i for i, _ in c.most_common(20)}
    early, late = top(2), top(24)
    assert len(early & late) < 15


def test_dirty_rows_cover_every_kind(dirty_rows):
    kinds = collections.Counter()
    for r in dirty_rows:
        if RAW_KEY in r:
            kinds["non_object_line" if r[RAW_KEY] == "[1,2]" else "truncated_json"] += 1
            continue
        if "user_id" not in r:
            kinds["missing_user_id"] += 1
        elif r["user_id"] == "":
            kinds["empty_user_id"] += 1
        elif isinstance(r["user_id"], dict):
            kinds["object_user_id"] += 1
        if r.get("event_type") not in EVENT_TYPES:
            kinds["unknown_event_type"] += 1
        ts = r.get("ts")
        if ts is None:
            kinds["null_ts"] += 1
        elif ts == "2023-02-30T10:00:00Z":
            kinds["impossible_date"] += 1
        elif ts.startswith("2099"):
            kinds["far_future_ts"] += 1
        elif not ts[:4].isdigit():
            kinds["unparseable_ts"] += 1
        price = r.get("price")
        if price == "NaN":
            kinds["nan_price"] += 1
        elif price == "Infinity":
            kinds["infinity_price"] += 1
        elif isinstance(price, float) and price < 0:
            kinds["negative_price"] += 1
        if r.get("quantity") == 0:
            kinds["zero_quantity"] += 1
        elif r.get("quantity") == 1.5:
            kinds["fractional_quantity"] += 1
        if r.get("event_type") == "search" and not r.get("query"):
            kinds["search_without_query"] += 1
        if r.get("event_type") in ("view", "add_to_cart", "remove_from_cart", "purchase") and "item_id" not in r:
            kinds["missing_item_id"] += 1
    assert set(kinds) == set(DIRTY_KINDS)
    assert 0.015 < sum(kinds.values()) / len(dirty_rows) < 0.03


def test_resends_are_exact_copies(dirty_rows):
    by_id: dict[str, list[dict]] = collections.defaultdict(list)
    for r in dirty_rows:
        if RAW_KEY not in r and isinstance(r.get("event_id"), str):
            by_id[r["event_id"]].append(r)
    dupes = [rows for rows in by_id.values() if len(rows) > 1]
    extra = sum(len(rows) - 1 for rows in dupes)
    assert 0.006 < extra / len(dirty_rows) < 0.014
    assert all(all(r == rows[0] for r in rows) for rows in dupes)


def test_users_and_items_parameters():
    rows = list(generate_events(5_000, seed=2, n_users=60, n_items=150, days=3, start="2024-01-01T12:00:00Z"))
    users = {r["user_id"] for r in rows}
    items = {r["item_id"] for r in rows if "item_id" in r}
    assert users <= {f"u{i}" for i in range(60)} and len(users) > 30
    assert items <= {f"i{i}" for i in range(150)}
    assert min(r["ts"] for r in rows) >= "2024-01-01T12:00:00Z"


def test_default_start_is_days_before_now():
    rows = list(generate_events(500, seed=1, days=2))
    now = datetime.now(timezone.utc)
    first = _ts(rows[0]["ts"])
    assert now - timedelta(days=2, hours=2) <= first <= now


@pytest.mark.parametrize("kwargs, message", [
    ({"n_events": 0}, "positive"),
    ({"n_events": 10, "start": "next tuesday"}, "--start"),
    ({"n_events": 10, "days": 0}, "--days"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(UserError, match=message):
        list(generate_events(seed=1, **kwargs))


def _gen_args(**kw) -> GenerateOptions:
    base = dict(events=2_500, seed=9, users=None, items=None, days=10, start=START, dirty=True, rows_per_file=1_000,
                prefix="synthetic")
    base.update(kw)
    return GenerateOptions(**base)


def test_generate_options_are_the_commands_flags_with_its_defaults():
    args = vars(build_parser().parse_args(["generate", "--events", "10"]))
    names = {f.name for f in dataclasses.fields(GenerateOptions)}
    assert names == set(args) - {"command"}
    assert GenerateOptions(**{name: args[name] for name in names}) == GenerateOptions(events=10)


def test_generate_to_landing_files_are_byte_identical(settings, tmp_path):
    n = generate_to_landing(settings, _gen_args())
    assert n == 2_500
    files = sorted(settings.landing_events_dir.iterdir())
    assert [p.name for p in files] == ["synthetic-9-00000.jsonl", "synthetic-9-00001.jsonl", "synthetic-9-00002.jsonl"]
    lines = [line for p in files for line in p.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 2_500
    expected = [event_line(r) for r in generate_events(2_500, seed=9, days=10, start=START, dirty=True)]
    parsed_equal = 0
    for got, want in zip(lines, expected, strict=True):
        if got != want:  # only a null ts row is written with the null kept
            assert json.loads(got) == {**json.loads(want), "ts": None}
        else:
            parsed_equal += 1
    assert parsed_equal >= 2_490
    assert any(line == "[1,2]" for line in lines)  # raw rows are written verbatim
    other = settings.replace(home=tmp_path / "other")
    generate_to_landing(other, _gen_args())
    assert [p.read_bytes() for p in files] == [p.read_bytes() for p in sorted(other.landing_events_dir.iterdir())]


def test_generate_to_landing_never_overwrites(settings):
    generate_to_landing(settings, _gen_args(events=10, dirty=False))
    with pytest.raises(UserError, match="already exist"):
        generate_to_landing(settings, _gen_args(events=10, dirty=False))
    assert generate_to_landing(settings, _gen_args(events=10, seed=10)) == 10
    assert generate_to_landing(settings, _gen_args(events=10, prefix="other")) == 10
    with pytest.raises(UserError, match="--prefix"):
        generate_to_landing(settings, _gen_args(prefix="../x"))
    assert not [p for p in settings.landing_events_dir.iterdir() if p.name.startswith(".")]


def test_generate_to_landing_failing_midway_keeps_whole_parts_and_no_temporary(settings, monkeypatch):
    import freshrec.generate

    def one_chunk_then_fail(*args):
        yield [f'{{"event_id":"e{i}"}}' for i in range(1_500)]
        raise RuntimeError("killed")

    monkeypatch.setattr(freshrec.generate, "_generate_lines", one_chunk_then_fail)
    with pytest.raises(RuntimeError, match="killed"):
        generate_to_landing(settings, _gen_args())
    assert [p.name for p in settings.landing_events_dir.iterdir()] == ["synthetic-9-00000.jsonl"]
    assert len((settings.landing_events_dir / "synthetic-9-00000.jsonl").read_text().splitlines()) == 1_000
