"""The paired bootstrap over users: coverage, calibration, determinism, and the mean over cutoffs."""

from __future__ import annotations

import numpy as np
import pytest
from freshrec.models import stats
from freshrec.models.stats import mean_over_cutoffs, paired_bootstrap


def pair(n, diff, seed, sd=0.3):
    """Per-user metrics of two recommenders: a shared per-user level plus noise, a - b ~ diff."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(0, 1, n)
    b = level + rng.normal(0, sd, n)
    return b + diff + rng.normal(0, sd, n), b


def test_identical_arrays_give_zero_and_no_evidence():
    a, _ = pair(500, 0.0, 1)
    r = paired_bootstrap(a, a.copy(), n_resamples=200)
    assert (r.estimate, r.lo, r.hi, r.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert not r.excludes_zero
    assert r.n_users == (500,)


def test_large_difference_excludes_zero_and_estimate_is_the_mean_difference():
    a, b = pair(2000, 0.1, 2)
    r = paired_bootstrap(a, b, n_resamples=1000, seed=0)
    assert r.estimate == pytest.approx(float(np.mean(a - b)), abs=1e-12)
    assert r.lo > 0 and r.excludes_zero
    assert r.lo < r.estimate < r.hi
    assert r.p_value == 0.0  # no resample crosses zero: the difference is ~15 standard errors


def test_interval_has_the_normal_width_and_is_symmetric_ish():
    a, b = pair(2000, 0.05, 3)
    r = paired_bootstrap(a, b, n_resamples=2000, seed=1)
    se = np.std(a - b, ddof=1) / np.sqrt(len(a))
    assert r.hi - r.lo == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert 0.8 < (r.hi - r.estimate) / (r.estimate - r.lo) < 1.25


def test_coverage_of_the_true_difference_and_calibrated_p_values():
    true_diff = 0.03
    covered, null_rejections = 0, 0
    for i in range(200):
        a, b = pair(300, true_diff, 100 + i)
        r = paired_bootstrap(a, b, n_resamples=300, seed=i)
        covered += r.lo <= true_diff <= r.hi
        a0, b0 = pair(300, 0.0, 1000 + i)
        null_rejections += paired_bootstrap(a0, b0, n_resamples=300, seed=i).p_value < 0.05
    assert 0.88 <= covered / 200 <= 0.99
    assert null_rejections / 200 <= 0.12


def test_deterministic_under_a_seed_and_seed_matters():
    a, b = pair(800, 0.01, 4)
    r1, r2 = paired_bootstrap(a, b, seed=7), paired_bootstrap(a, b, seed=7)
    assert r1 == r2
    assert paired_bootstrap(a, b, seed=8).lo != r1.lo


def test_memory_blocks_do_not_change_the_result(monkeypatch):
    a, b = pair(1000, 0.02, 5)
    whole = paired_bootstrap(a, b, n_resamples=400, seed=3)
    monkeypatch.setattr(stats, "_BLOCK_ELEMENTS", 1000 * 7)  # 7 resamples per block
    assert paired_bootstrap(a, b, n_resamples=400, seed=3) == whole


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="aligned"):
        paired_bootstrap(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap(np.array([0.1, np.nan]), np.zeros(2))
    with pytest.raises(ValueError, match="non-empty"):
        paired_bootstrap(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError):
        paired_bootstrap(np.zeros(3), np.zeros(3), confidence=1.0)
    with pytest.raises(ValueError, match="cutoffs"):
        mean_over_cutoffs([np.zeros(3)], [np.zeros(3), np.zeros(3)])


def test_one_cutoff_is_the_paired_bootstrap():
    a, b = pair(600, 0.02, 6)
    assert mean_over_cutoffs([a], [b], n_resamples=500, seed=2) == paired_bootstrap(a, b, n_resamples=500, seed=2)


def test_mean_over_cutoffs_weights_cutoffs_equally_and_narrows_the_interval():
    # unequal sizes and means: the pooled user mean (30 / 1100 = 0.027) is not the mean of cutoff means (0.2)
    sizes, diffs = (1000, 50, 50), (0.0, 0.3, 0.3)
    a_list, b_list = zip(*(pair(n, d, 10 + i, sd=0.01) for i, (n, d) in enumerate(zip(sizes, diffs, strict=True))),
                         strict=True)
    r = mean_over_cutoffs(list(a_list), list(b_list), n_resamples=500)
    expected = np.mean([np.mean(a - b) for a, b in zip(a_list, b_list, strict=True)])
    assert r.estimate == pytest.approx(expected, abs=1e-12)
    assert r.estimate == pytest.approx(0.2, abs=0.005)
    assert r.n_users == sizes
    # three equal cutoffs: the mean's interval is about 1/sqrt(3) as wide as one cutoff's
    cuts = [pair(1000, 0.02, 20 + i) for i in range(3)]
    one = paired_bootstrap(*cuts[0], n_resamples=2000)
    three = mean_over_cutoffs([c[0] for c in cuts], [c[1] for c in cuts], n_resamples=2000)
    assert (three.hi - three.lo) / (one.hi - one.lo) == pytest.approx(1 / np.sqrt(3), rel=0.15)


def test_mean_over_cutoffs_of_one_metric():
    values = [np.full(10, 0.25), np.full(30, 0.75)]
    r = mean_over_cutoffs(values, n_resamples=100)
    assert (r.estimate, r.lo, r.hi) == (0.5, 0.5, 0.5)
    assert r.p_value == 0.0
