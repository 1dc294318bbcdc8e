"""The issue's acceptance check on Ta-Feng with EXCLUDE_SEEN=none: the split protocol, and a
model that the gate promotes because it beats every baseline on the held-out window.

Slow (the whole training step on 817k purchases, several minutes on one CPU thread);
deselect with ``-m "not tafeng"``. bench/train.py prints the same figures as JSON.
"""

from __future__ import annotations

import pytest

from freshrec.settings import Settings
from models.datasets import load_tafeng
from models.pipeline import TrainingConfig, prepare_window, train_and_gate

pytestmark = [pytest.mark.integration, pytest.mark.tafeng]


@pytest.fixture(scope="module")
def tafeng_events(tafeng_zip):
    return load_tafeng(tafeng_zip)


def test_split_protocol_on_tafeng(tafeng_events):
    es = prepare_window(tafeng_events, TrainingConfig(), "none")
    assert len(es.catalogue) == 23132
    assert len(es) == 11880 and int(es.is_new.sum()) == 1941
    assert es.target_event_types == ("purchase", "add_to_cart")
    assert (es.histories.t < es.cutoff).all()


def test_the_model_beats_every_baseline_and_is_promoted(tafeng_events, tmp_path):
    settings = Settings(home=tmp_path / "home", exclude_seen="none", sequence_length=200)
    settings.ensure_dirs()
    report = train_and_gate(settings, tafeng_events, TrainingConfig.from_settings(settings, env={}))
    model = report.model["metrics"]["ndcg_at_10"]
    baselines = {name: b["metrics"]["ndcg_at_10"] for name, b in report.baselines.items()}
    assert set(baselines) == {"popularity", "category_popularity", "trending", "cooccurrence_knn", "repeat_buy"}
    assert all(model > value for value in baselines.values()), (model, baselines)
    assert report.decision.promote and report.publish["kind"] == "model"
