"""The promotion gate: a pure decision, and the MLflow side effect that applies it.

A new model version always gets the alias ``challenger``. It becomes ``champion`` only when

- every evaluation window (each cutoff of the rolling origin, or the random holdout) has at
  least the minimum number of test users: below it the gate says the evidence is too thin;
- its gate metric (``ndcg_at_10`` by default), the mean over the windows, is strictly above the
  best baseline's mean over the same windows;
- the lower bound of the 95% paired-bootstrap interval of (candidate - best baseline) on that
  mean is above 0 (stats.mean_over_cutoffs: users resampled within each window), so a win
  that one lucky set of users could explain is not enough; and
- on the newest window (where the champion, trained on earlier data, can be compared without
  having seen its test events) it is at least the current champion's minus ``tolerance`` (a
  fraction of the champion's value: 0.01 lets a retrained model trail by 1% of noise; a
  negative value demands a gain).

What to publish: the new version when promoted; otherwise the current champion; and when no
model has ever passed (no champion), the best baseline.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    publish: str  # "candidate", "champion" or "baseline"
    reason: str
    metric: str
    candidate: float | None  # None: the candidate's metric is missing
    best_baseline: str
    best_baseline_value: float
    champion: float | None
    tolerance: float
    # candidate - best baseline: {"estimate", "lo", "hi", "p_value", "confidence"}; None: not computed
    difference: dict[str, float] | None = None
    evidence: str | None = None  # the test users per window, and whether that is enough

    def as_tags(self) -> dict[str, str]:
        return {
            "freshrec.gate.promoted": str(self.promote).lower(),
            "freshrec.gate.publish": self.publish if self.publish != "baseline" else f"baseline:{self.best_baseline}",
            "freshrec.gate.reason": self.reason,
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(candidate: float | None, baselines: dict[str, float], champion: float | None, tolerance: float = 0.01,
           metric: str = "ndcg_at_10", *, difference: dict[str, float] | None = None, thin: str | None = None,
           evidence: str | None = None, latest: float | None = None) -> GateDecision:
    """Promote or not (see the module docstring).

    ``candidate`` and ``baselines`` (name -> value) are the gate metric's means over the
    evaluation windows; ``difference`` the bootstrap interval of candidate - best baseline
    (None: no interval rule); ``thin`` the reason the evidence is too thin (None: enough);
    ``champion`` and ``latest`` the champion's and the candidate's value on the newest window
    (``latest`` defaults to ``candidate``).
    """
    if not baselines:
        raise ValueError("the gate needs at least one baseline evaluated on the same window")
    best_name = max(sorted(baselines), key=lambda name: baselines[name])
    best = float(baselines[best_name])
    fallback = "champion" if champion is not None else "baseline"
    common = dict(metric=metric, candidate=None if candidate is None else float(candidate), best_baseline=best_name,
                  best_baseline_value=best, champion=None if champion is None else float(champion), tolerance=tolerance,
                  difference=difference, evidence=thin or evidence)
    if candidate is None:
        return GateDecision(False, fallback, f"candidate {metric} is missing", **common)
    if not math.isfinite(candidate):
        return GateDecision(False, fallback, f"candidate {metric} is not a number", **common)
    if thin is not None:
        return GateDecision(False, fallback, f"the evidence is too thin to promote: {thin}", **common)
    if candidate <= best:
        return GateDecision(False, fallback, f"candidate {metric}={candidate:.5f} does not beat the best baseline "
                                             f"{best_name}={best:.5f}", **common)
    beats = f"candidate {metric}={candidate:.5f} beats the best baseline {best_name}={best:.5f}"
    if difference is not None:
        interval = (f"{difference.get('confidence', 0.95):.0%} interval of the difference "
                    f"[{difference['lo']:+.5f}, {difference['hi']:+.5f}]")
        if not difference["lo"] > 0:
            return GateDecision(False, fallback, f"{beats}, but the {interval} does not exclude 0", **common)
        beats = f"{beats} ({interval})"
    if champion is not None and math.isfinite(champion):
        now = float(candidate if latest is None else latest)
        floor = champion - tolerance * abs(champion)
        if now < floor:
            return GateDecision(False, fallback, f"{beats}, but on the newest window its {now:.5f} is below the "
                                                 f"champion's {champion:.5f} minus tolerance {tolerance:g} ({floor:.5f})", **common)
        return GateDecision(True, "candidate", f"{beats} and on the newest window is within tolerance {tolerance:g} of "
                                               f"the champion's {champion:.5f} or above", **common)
    return GateDecision(True, "candidate", f"{beats}; there was no champion", **common)


def apply_decision(client, decision: GateDecision, model_name: str, version: str | None, run_id: str | None,
                   move_alias: bool = True) -> None:
    """Tag the run and the version with the decision and move ``champion`` when promoted
    (``move_alias`` False: the caller moves it later, e.g. after publishing the version)."""
    if run_id is not None:
        for key, value in decision.as_tags().items():
            client.set_tag(run_id, key, value[:5000])
        client.log_metric(run_id, f"gate_best_baseline_{decision.metric}", decision.best_baseline_value)
        if decision.champion is not None:
            client.log_metric(run_id, f"gate_champion_{decision.metric}", decision.champion)
        for key in ("estimate", "lo", "hi", "p_value"):
            if decision.difference is not None and decision.difference.get(key) is not None:
                client.log_metric(run_id, f"gate_difference_{key}", decision.difference[key])
    if version is not None:
        client.set_model_version_tag(model_name, version, "freshrec.gate.promoted", str(decision.promote).lower())
        client.set_model_version_tag(model_name, version, "freshrec.gate.reason", decision.reason[:5000])
        if decision.promote and move_alias:
            client.set_registered_model_alias(model_name, CHAMPION, version)
