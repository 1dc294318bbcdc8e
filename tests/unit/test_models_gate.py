"""The promotion decision as a pure function."""

from __future__ import annotations

import pytest
from freshrec.models.gate import decide

BASELINES = {"popularity": 0.05, "repeat_buy": 0.10}


def test_no_champion_and_beats_the_best_baseline_promotes():
    d = decide(0.12, BASELINES, champion=None)
    assert d.promote and d.publish == "candidate"
    assert d.best_baseline == "repeat_buy"
    assert "no champion" in d.reason


def test_no_champion_and_no_win_publishes_the_best_baseline():
    d = decide(0.09, BASELINES, champion=None)
    assert not d.promote and d.publish == "baseline" and d.best_baseline == "repeat_buy"
    assert d.as_tags()["freshrec.gate.publish"] == "baseline:repeat_buy"
    # a tie with the best baseline is not a win
    assert not decide(0.10, BASELINES, champion=None).promote


def test_champion_kept_when_the_candidate_loses_to_a_baseline():
    d = decide(0.095, BASELINES, champion=0.2)
    assert not d.promote and d.publish == "champion"
    assert "best baseline" in d.reason


def test_tolerance_lets_a_candidate_trail_the_champion_slightly():
    assert decide(0.199, BASELINES, champion=0.2, tolerance=0.01).promote  # 0.5% behind, within 1%
    d = decide(0.197, BASELINES, champion=0.2, tolerance=0.01)  # 1.5% behind
    assert not d.promote and d.publish == "champion" and "tolerance" in d.reason
    assert not decide(0.201, BASELINES, champion=0.2, tolerance=-0.01).promote  # a negative tolerance demands a gain
    assert decide(0.203, BASELINES, champion=0.2, tolerance=-0.01).promote


def test_a_broken_candidate_is_never_promoted():
    assert not decide(float("nan"), BASELINES, champion=None).promote
    assert not decide(0.0, BASELINES, champion=None).promote
    assert not decide(float("nan"), BASELINES, champion=0.2).promote


def test_the_gate_needs_baselines():
    with pytest.raises(ValueError):
        decide(0.5, {}, champion=None)


def test_a_missing_candidate_metric_is_a_decision_not_a_crash():
    d = decide(None, BASELINES, champion=0.2, metric="ndcg_at_10")
    assert not d.promote and d.publish == "champion"
    assert "ndcg_at_10" in d.reason and "missing" in d.reason
    assert d.candidate is None
