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


INTERVAL = {"estimate": 0.02, "lo": 0.005, "hi": 0.035, "p_value": 0.01, "confidence": 0.95}


def test_a_win_the_bootstrap_interval_does_not_separate_from_zero_is_not_promoted():
    d = decide(0.12, BASELINES, champion=None, difference={**INTERVAL, "lo": -0.001})
    assert not d.promote and d.publish == "baseline"
    assert "does not exclude 0" in d.reason and "[-0.00100, +0.03500]" in d.reason
    promoted = decide(0.12, BASELINES, champion=None, difference=INTERVAL)
    assert promoted.promote and "95% interval" in promoted.reason and promoted.difference == INTERVAL


def test_thin_evidence_blocks_promotion_whatever_the_numbers():
    thin = "thin evidence: 87 test users (3 new, 84 returning) at the cutoff 1998-04-08 UTC, fewer than the 200 needed"
    d = decide(0.5, BASELINES, champion=None, difference=INTERVAL, thin=thin)
    assert not d.promote and d.publish == "baseline" and "too thin" in d.reason and "87 test users" in d.reason
    assert d.evidence == thin
    assert not decide(0.5, BASELINES, champion=0.1, difference=INTERVAL, thin=thin).promote


def test_the_champion_is_compared_on_the_newest_window():
    # the mean over cutoffs beats the baselines, but on the newest window the candidate trails the champion
    d = decide(0.15, BASELINES, champion=0.2, tolerance=0.01, difference=INTERVAL, latest=0.18)
    assert not d.promote and d.publish == "champion" and "newest window" in d.reason
    assert decide(0.15, BASELINES, champion=0.2, tolerance=0.01, difference=INTERVAL, latest=0.199).promote
