"""The training step on the bundled real samples (RetailRocket, OTTO): tiny, sparse logs where
the model may well lose. What must hold: every baseline and the model are evaluated on the same
window, each is its own MLflow run, and the gate's decision is consistent with the numbers."""

from __future__ import annotations

import pytest
from freshrec.models import tracking
from freshrec.models.datasets import load_otto, load_retailrocket
from freshrec.models.pipeline import TrainingConfig, train_and_gate

from freshrec.settings import Settings
from tests.conftest import SAMPLES

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("loader", "path", "window_days"), [
    (load_retailrocket, SAMPLES / "retailrocket_sample_events.csv", 14),
    (load_otto, SAMPLES / "otto_sample_train.jsonl", 5),
], ids=["retailrocket", "otto"])
def test_gate_decides_consistently_on_a_real_sample(tmp_path, loader, path, window_days):
    settings = Settings(home=tmp_path / "home", exclude_seen="purchased")
    settings.ensure_dirs()
    config = TrainingConfig(window_days=window_days, min_target_users=5, max_validation_users=500, min_test_users=50)
    report = train_and_gate(settings, loader(path), config)

    metric = config.gate_metric
    assert report.window["n_users"] > 0
    assert {"popularity", "category_popularity", "trending", "cooccurrence_knn", "user_knn", "ease"} <= set(report.baselines)
    assert "repeat_buy" not in report.baselines, "repeat-buy only where seen items may be listed"
    best = max(b["metrics"][metric] for b in report.baselines.values())
    decision = report.decision
    thin = decision.evidence is not None and "thin evidence" in decision.evidence
    assert decision.promote == (report.model["metrics"][metric] > best and decision.difference["lo"] > 0 and not thin)
    if report.decision.promote:
        assert report.publish == report.publish | {"kind": "model", "version": report.model["version"]}
    else:
        assert report.publish["kind"] == "baseline" and report.publish["name"] == report.decision.best_baseline
    with tracking.tracking(settings) as client:
        runs = client.search_runs([tracking.experiment_id(client)])
        kinds = sorted(r.data.tags[tracking.KIND_TAG] for r in runs)
        assert kinds == ["baseline"] * len(report.baselines) + ["model"]
        assert all(metric in r.data.metrics for r in runs)
