"""How sure a difference between two recommenders is: the paired bootstrap over users.

Two recommenders evaluated on the same EvalSet give two aligned per-user arrays (for example
``per_user_metrics(...)["ndcg_at_10"]`` of each). Resampling *users* with replacement and
recomputing the mean of ``a - b`` gives the spread of that mean that a different draw of
users would have produced; the percentile interval of the resampled means is the confidence
interval, and the share of resamples on the far side of zero (doubled) is a two-sided
p-value-like number. Pairing matters: both recommenders are scored on the same users, so the
user-to-user variation that both share cancels in ``a - b``.

``mean_over_cutoffs`` does the same for several cutoffs (protocols.rolling_cutoffs): users are
resampled within each cutoff and the cutoff means are averaged with equal weight. It treats the
cutoffs as independent draws; a user who is tested at several cutoffs makes them slightly
dependent, so that interval is, if anything, a little narrow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Resamples are drawn in blocks of at most this many user indices, so 100k users x 1000
# resamples never holds a (1000, 100k) index matrix in memory at once.
_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class BootstrapResult:
    estimate: float  # mean of a - b (or of a); over cutoffs: the mean of the cutoff means
    lo: float  # percentile interval of the resampled estimates
    hi: float
    p_value: float  # 2 x the share of resamples on the other side of 0 from the estimate, at most 1
    confidence: float
    n_resamples: int
    n_users: tuple[int, ...]  # per cutoff (one entry for paired_bootstrap)

    @property
    def excludes_zero(self) -> bool:
        return self.lo > 0.0 or self.hi < 0.0


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_resamples: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> BootstrapResult:
    """Mean of ``a - b`` over users with its bootstrap interval and p-value-like share.

    ``a`` and ``b`` are per-user values of the same users in the same order (NaN is refused:
    drop users without a value first). Deterministic for a given seed.
    """
    return mean_over_cutoffs([a], [b], n_resamples=n_resamples, seed=seed, confidence=confidence)


def mean_over_cutoffs(a: Sequence[np.ndarray], b: Sequence[np.ndarray] | None = None, n_resamples: int = 1000,
                      seed: int = 0, confidence: float = 0.95) -> BootstrapResult:
    """The mean over cutoffs of each cutoff's mean of ``a[i] - b[i]`` (or of ``a[i]`` when ``b``
    is None), with a bootstrap interval that resamples users within each cutoff."""
    if b is not None and len(b) != len(a):
        raise ValueError(f"{len(a)} cutoffs in a but {len(b)} in b")
    if not a:
        raise ValueError("no cutoffs to combine")
    if n_resamples < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"need n_resamples >= 1 and 0 < confidence < 1, got {n_resamples}, {confidence}")
    groups = [_differences(a[i], None if b is None else b[i], i) for i in range(len(a))]
    rng = np.random.default_rng(seed)
    boot = np.mean([_resampled_means(d, n_resamples, rng) for d in groups], axis=0)
    estimate = float(np.mean([d.mean() for d in groups]))
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(boot, [tail, 1.0 - tail])
    below, above = float(np.mean(boot <= 0.0)), float(np.mean(boot >= 0.0))
    return BootstrapResult(estimate=estimate, lo=float(lo), hi=float(hi), p_value=min(1.0, 2.0 * min(below, above)),
                           confidence=confidence, n_resamples=n_resamples, n_users=tuple(len(d) for d in groups))


def _differences(a: np.ndarray, b: np.ndarray | None, cutoff: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if b is not None and np.shape(b) != a.shape:
        raise ValueError(f"cutoff {cutoff}: a has shape {a.shape} but b has {np.shape(b)}; the arrays must be aligned per user")
    d = a if b is None else a - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError(f"cutoff {cutoff}: need a non-empty 1-d array of per-user values, got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"cutoff {cutoff}: per-user values must be finite (drop users without a value first)")
    return d


def _resampled_means(d: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``n_resamples`` means of ``d`` over users drawn with replacement."""
    n = len(d)
    block = max(1, _BLOCK_ELEMENTS // n)
    out = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, block):
        stop = min(n_resamples, start + block)
        out[start:stop] = d[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return out
