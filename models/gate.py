"""The promotion gate: a pure decision, and the MLflow side effect that applies it.

A new model version always gets the alias ``challenger``. It becomes ``champion`` only when, on
the same held-out window, its gate metric (``ndcg_at_10`` by default)

- is strictly above the best baseline's, and
- is at least the current champion's minus ``tolerance`` (a fraction of the champion's value:
  0.01 lets a retrained model trail by 1% of noise; a negative value demands a gain).

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

    def as_tags(self) -> dict[str, str]:
        return {
            "freshrec.gate.promoted": str(self.promote).lower(),
            "freshrec.gate.publish": self.publish if self.publish != "baseline" else f"baseline:{self.best_baseline}",
            "freshrec.gate.reason": self.reason,
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(candidate: float | None, baselines: dict[str, float], champion: float | None, tolerance: float = 0.01,
           metric: str = "ndcg_at_10") -> GateDecision:
    """Promote or not (see the module docstring). ``baselines``: name -> metric on the window."""
    if not baselines:
        raise ValueError("the gate needs at least one baseline evaluated on the same window")
    best_name = max(sorted(baselines), key=lambda name: baselines[name])
    best = float(baselines[best_name])
    fallback = "champion" if champion is not None else "baseline"
    common = dict(metric=metric, candidate=None if candidate is None else float(candidate), best_baseline=best_name,
                  best_baseline_value=best, champion=None if champion is None else float(champion), tolerance=tolerance)
    if candidate is None:
        return GateDecision(False, fallback, f"candidate {metric} is missing", **common)
    if not math.isfinite(candidate):
        return GateDecision(False, fallback, f"candidate {metric} is not a number", **common)
    if candidate <= best:
        return GateDecision(False, fallback, f"candidate {metric}={candidate:.5f} does not beat the best baseline "
                                             f"{best_name}={best:.5f}", **common)
    if champion is not None and math.isfinite(champion):
        floor = champion - tolerance * abs(champion)
        if candidate < floor:
            return GateDecision(False, fallback, f"candidate {metric}={candidate:.5f} is below the champion's "
                                                 f"{champion:.5f} minus tolerance {tolerance:g} ({floor:.5f})", **common)
        return GateDecision(True, "candidate", f"candidate {metric}={candidate:.5f} beats the best baseline {best_name}="
                                               f"{best:.5f} and is within tolerance {tolerance:g} of the champion's "
                                               f"{champion:.5f} or above", **common)
    return GateDecision(True, "candidate", f"candidate {metric}={candidate:.5f} beats the best baseline {best_name}="
                                           f"{best:.5f}; there was no champion", **common)


def apply_decision(client, decision: GateDecision, model_name: str, version: str | None, run_id: str | None) -> None:
    """Tag the run and the version with the decision and move ``champion`` when promoted."""
    if run_id is not None:
        for key, value in decision.as_tags().items():
            client.set_tag(run_id, key, value[:5000])
        client.log_metric(run_id, f"gate_best_baseline_{decision.metric}", decision.best_baseline_value)
        if decision.champion is not None:
            client.log_metric(run_id, f"gate_champion_{decision.metric}", decision.champion)
    if version is not None:
        client.set_model_version_tag(model_name, version, "freshrec.gate.promoted", str(decision.promote).lower())
        client.set_model_version_tag(model_name, version, "freshrec.gate.reason", decision.reason[:5000])
        if decision.promote:
            client.set_registered_model_alias(model_name, CHAMPION, version)
