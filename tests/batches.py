"""The nightly batch's steps in one call, for tests that need a published home without Airflow."""

from __future__ import annotations

from typing import Any

from freshrec.settings import Settings
from freshrec.steps import clean_step, evaluate_step, gate_step, matrices_step, publish_step, score_step, train_step


def run_batch(settings: Settings, batch_id: str, publish_model: bool = False) -> dict[str, Any]:
    """clean -> matrices -> train -> evaluate -> gate -> score -> publish, as the batch DAG runs
    them. ``publish_model``: publish the trained model whatever the gate decided (for tests of
    what serves a personal model, on logs too small for it to beat every baseline)."""
    from freshrec.models import tracking

    cleaned = clean_step(settings, batch_id)
    matrices_step(settings)
    trained = train_step(settings, batch_id, until=cleaned["until"])
    gate = gate_step(settings, trained, evaluate_step(settings, trained, batch_id, until=cleaned["until"]), batch_id)
    if publish_model:
        gate = {**gate, "publish": {"kind": "model", "name": tracking.REGISTERED_MODEL, "version": str(trained["version"])}}
    return publish_step(settings, score_step(settings, batch_id, gate))
