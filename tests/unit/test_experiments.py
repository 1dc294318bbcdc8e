"""Experiments as data (freshrec.experiments) and their report (freshrec.experiment_report),
without Spark or a server: parsing, the state DB's table, assignment and traffic, and reports
built from impression and event frames."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from freshrec.cli import main
from freshrec.errors import UserError
from freshrec.experiment_report import build_report, format_report
from freshrec.experiments import ExperimentRouter, ExperimentStore, normalise_spec, parse_split, parse_variants
from freshrec.settings import Settings


def test_variants_splits_and_specs_are_parsed_or_refused_with_a_reason():
    assert parse_variants("control=champion, treatment=v7") == {"control": "champion", "treatment": "version:7"}
    assert parse_variants("a=3,b=Popularity") == {"a": "version:3", "b": "baseline:popularity"}
    assert normalise_spec("baseline:ease") == "baseline:ease" and normalise_spec("challenger") == "challenger"
    for bad, reason in [("control=champion", "exactly two"), ("a=champion,a=challenger", "named twice"),
                        ("a=champion,b=champion", "same thing"), ("a=nope,b=champion", "unknown variant"),
                        ("a:champion,b=challenger", "NAME=WHAT"), ("interleaved=champion,b=challenger", "variant name")]:
        with pytest.raises(UserError, match=reason):
            parse_variants(bad)
    assert parse_split("90,10") == [90.0, 10.0]
    for bad in ("50", "50,50,0", "a,b", "0,100", "-1,2"):
        with pytest.raises(UserError, match="split"):
            parse_split(bad)


def test_the_table_keeps_one_running_experiment_and_survives_a_new_connection(tmp_path):
    store = ExperimentStore(tmp_path / "state.db")
    made = store.create("e1", {"control": "champion", "treatment": "challenger"}, [50, 50])
    with pytest.raises(UserError, match="is running"):
        store.create("e2", {"control": "champion", "treatment": "challenger"}, [50, 50])
    with pytest.raises(UserError, match="exists already"):
        store.create("e1", {"control": "champion", "treatment": "challenger"}, [50, 50])
    for kwargs, reason in [({"mode": "split"}, "mode"), ({"metric": "clicks"}, "metric"), ({"traffic": 0.0}, "traffic")]:
        with pytest.raises(UserError, match=reason):
            ExperimentStore(tmp_path / "other.db").create("e3", {"a": "champion", "b": "challenger"}, [1, 1], **kwargs)
    again = ExperimentStore(tmp_path / "state.db").get("e1")  # another process, the same experiment and salt
    assert again.salt == made.salt and again.state == "running" and not again.ready
    store.set_versions("e1", {"control": "v1", "treatment": "x1"}, {"control": {"kind": "model", "version": "1"}})
    assert store.get("e1").ready and store.get("e1").versions == {"control": "v1", "treatment": "x1"}
    assert store.stop("e1").state == "stopped" and store.stop("e1").stopped_at is not None
    store.create("e2", {"control": "champion", "treatment": "baseline:popularity"}, [90, 10], mode="interleave")
    assert [e.name for e in store.all()] == ["e2", "e1"] and [e.name for e in store.running()] == ["e2"]
    with pytest.raises(UserError, match="no experiment"):
        store.get("nope")


def test_the_router_assigns_stably_within_the_traffic_and_sees_a_stop(tmp_path):
    settings = Settings(home=tmp_path)
    store = ExperimentStore(settings.state_db)
    store.create("e", {"control": "champion", "treatment": "challenger"}, [50, 50], traffic=0.2)
    router = ExperimentRouter(settings, ttl_s=0.0)
    assert router.current() is None  # not published yet: nobody is in it
    store.set_versions("e", {"control": "v1", "treatment": "x1"}, {})
    exp = router.current()
    variants = [exp.variant_of(f"u{i}") for i in range(4000)]
    inside = [v for v in variants if v is not None]
    assert abs(len(inside) / 4000 - 0.2) < 0.03 and abs(inside.count("treatment") / len(inside) - 0.5) < 0.06
    assert variants == [ExperimentRouter(settings, ttl_s=0.0).current().variant_of(f"u{i}") for i in range(4000)]
    store.stop("e")
    assert router.current() is None


def _exp(tmp_path, mode="ab"):
    store = ExperimentStore(tmp_path / "state.db")
    store.create("e", {"control": "version:1", "treatment": "baseline:popularity"}, [50, 50], mode=mode)
    store.set_versions("e", {"control": "v1", "treatment": "x1"}, {})
    # a fixed salt: the reports' tests draw users' variants from it, and a random one let the
    # split fail the sample-ratio check now and then
    return dataclasses.replace(store.get("e"), salt="5a17f1xed0000000")


def _impressions(rows):
    return pd.DataFrame([{"recommendation_id": r, "served_at": pd.Timestamp(t, tz="UTC"), "version": "v", "kind": "user",
                          "key": u, "source": "personal", "item_ids": items, "experiment": "e", "variant": v,
                          "teams": teams} for r, t, u, v, items, teams in rows])


def _events(rows):
    return pd.DataFrame([{"event_id": e, "ts": pd.Timestamp(t, tz="UTC"), "user_id": u, "item_id": i, "event_type": et,
                          "price": p, "quantity": 1, "recommendation_id": r} for e, t, u, i, et, p, r in rows])


def test_an_ab_report_credits_events_and_computes_every_metric(tmp_path):
    exp = _exp(tmp_path)
    imp = _impressions([("r1", "2026-03-01 10:00", "a", "control", ["i1", "i2"], None),
                        ("r2", "2026-03-01 10:00", "b", "treatment", ["i3", "i4"], None),
                        ("r3", "2026-03-01 10:05", "c", "treatment", ["i3", "i5"], None)])
    events = _events([("e1", "2026-03-01 10:01", "a", "i2", "view", None, None),  # by impression
                      ("e2", "2026-03-01 10:02", "b", "i9", "purchase", 5.0, "r2"),  # explicit, even off the list
                      ("e3", "2026-03-01 10:03", "b", "i1", "view", None, "r1"),  # names another user's list: not credited
                      ("e4", "2026-03-02 12:00", "c", "i5", "purchase", 9.0, None)])  # past the 24 h window
    report = build_report(exp, imp, events, datetime(2026, 3, 3, tzinfo=timezone.utc))
    assert report["exposed_users"] == 3 and report["users"] == {"control": 1, "treatment": 2}
    assert report["credited_events"] == {"impression": 1, "explicit": 1}
    assert report["per_variant"]["treatment"]["revenue"] == 5.0 and report["per_variant"]["control"]["views"] == 1
    conversion = next(c for c in report["comparisons"] if c["metric"] == "purchase_conversion")
    assert (conversion["control"], conversion["treatment"]) == (0.0, 0.5)
    assert report["decision"]["verdict"] == "keep-running" and report["timeline"]
    # the contract's headline (docs/experiments.md): per variant users, value and interval; winner, p values
    assert report["variants"]["control"]["spec"] == "version:1" and report["variants"]["treatment"]["users"] == 2
    assert report["variants"]["treatment"]["value"] == 0.5 and len(report["variants"]["treatment"]["ci"]) == 2
    assert report["winner"] is None and report["p_value"] == conversion["always_valid_p"]
    assert report["srm_p_value"] == report["srm"]["p_value"]
    text = format_report(report)
    assert "purchase_conversion" in text and "decision: keep-running" in text


def test_a_skewed_assignment_stops_the_report_on_a_sample_ratio_mismatch(tmp_path):
    exp = _exp(tmp_path)
    rows = [(f"r{i}", "2026-03-01 10:00", f"u{i}", "treatment" if i % 4 else "control", ["i1"], None) for i in range(400)]
    report = build_report(exp, _impressions(rows), _events([]))
    assert report["srm"]["mismatch"] and report["decision"]["verdict"] == "stop-srm"
    assert "sample ratio mismatch" in report["decision"]["reason"] and "MISMATCH" in format_report(report)


def test_a_true_lift_in_an_ab_report_names_the_winner(tmp_path):
    exp = _exp(tmp_path)
    rng = np.random.default_rng(3)
    from freshrec.experiment_stats import assign

    rows, buys = [], []
    for i in range(3000):
        variant = assign(exp.salt, f"u{i}", ["control", "treatment"], [50, 50])
        rows.append((f"r{i}", "2026-03-01 10:00", f"u{i}", variant, ["i1", "i2"], None))
        if rng.random() < (0.08 if variant == "control" else 0.16):
            buys.append((f"e{i}", "2026-03-01 11:00", f"u{i}", "i1", "purchase", 10.0, f"r{i}"))
    report = build_report(exp, _impressions(rows), _events(buys))
    assert report["decision"]["winner"] == "treatment" and report["decision"]["verdict"] == "winner"
    assert not report["srm"]["mismatch"]


def test_an_interleaved_report_counts_each_teams_wins(tmp_path):
    exp = _exp(tmp_path, mode="interleave")
    rows = [(f"r{i}", "2026-03-01 10:00", f"u{i}", "interleaved", ["a", "b"], ["control", "treatment"]) for i in range(40)]
    buys = [(f"e{i}", "2026-03-01 10:30", f"u{i}", "b" if i % 10 else "a", "purchase", 1.0, None) for i in range(40)]
    report = build_report(exp, _impressions(rows), _events(buys))
    assert report["preference"]["wins"] == {"control": 4, "treatment": 36}
    assert report["decision"]["winner"] == "treatment" and "share" in format_report(report)
    assert report["winner"] == "treatment" and report["variants"]["treatment"]["value"] == 0.9
    low, high = report["variants"]["control"]["ci"]
    assert low < 0.1 < high and report["srm_p_value"] is None


def test_the_cli_refuses_bad_experiments_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FRESHREC_HOME", str(tmp_path))
    assert main(["experiment", "create", "e", "--variants", "a=champion,b=nothing"]) == 2
    assert "unknown variant 'nothing'" in capsys.readouterr().err
    assert main(["experiment", "create", "e", "--traffic", "150"]) == 2
    assert "--traffic" in capsys.readouterr().err
    assert main(["experiment", "report", "nope"]) == 2
    assert "no experiment 'nope'" in capsys.readouterr().err
    assert main(["experiment", "list"]) == 0 and "no experiments" in capsys.readouterr().out
    assert main(["experiment", "create", "e"]) == 0  # nothing published yet: recorded, the first batch publishes it
    assert "not published yet" in capsys.readouterr().out
    assert main(["experiment", "stop", "e"]) == 0
    assert main(["experiment", "create", "e", "--no-publish"]) == 2 and "exists already" in capsys.readouterr().err
    assert main(["experiment", "create", "f", "--no-publish"]) == 0
    assert main(["experiment", "list", "--json"]) == 0 and '"name": "f"' in capsys.readouterr().out
    assert main(["experiment", "stop", "f"]) == 0 and "stopped" in capsys.readouterr().out
