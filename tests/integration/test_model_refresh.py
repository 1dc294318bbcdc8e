"""The online refresh step (freshrec.refresh) on a real pipeline: Spark features, MLflow registry,
the serving store. A full batch trains the champion; refreshes then learn from the events after
its training window, register versions with their lineage, publish what the gate promotes, and
decline with a reason where they must."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from freshrec.landing import atomic_write_jsonl
from freshrec.settings import Settings
from tests.integration.test_models_planted import planted_log

pytestmark = pytest.mark.integration


def _versions(settings) -> list[str]:
    from freshrec.models import tracking

    with tracking.tracking(settings) as client:
        return sorted(str(v.version) for v in client.search_model_versions(f"name = '{tracking.REGISTERED_MODEL}'"))


def _champion(settings) -> str | None:
    from freshrec.models import tracking

    with tracking.tracking(settings) as client:
        return tracking.champion_version(client)


def _live(settings) -> dict:
    from freshrec.serving import open_store

    with open_store(settings.serving) as store:
        return store.status()


@pytest.fixture(scope="module", params=["two_stage", "seqrec"])
def batch(request, tmp_path_factory, spark):
    """A full batch through the steps the batch DAG wires, training each model kind, on a log of
    shoppers with planted tastes (test_models_planted), seen items excluded."""
    from freshrec.steps import clean_step, evaluate_step, gate_step, matrices_step, publish_step, score_step, train_step

    settings = Settings(home=tmp_path_factory.mktemp("refresh") / "home", spark_master="local[2]", spark_shuffle_partitions=4,
                        spark_driver_memory="2g", exclude_seen="all", min_test_users=50, eval_cutoffs=1,
                        model_kind=request.param, model_epochs=2, model_dim=16,
                        refresh_holdout_days=7.0, refresh_trees=20, refresh_steps=60)
    settings.ensure_dirs()
    log = planted_log()
    rows = [{"event_id": f"p{i}", "ts": ts.isoformat(), "user_id": u, "item_id": it, "event_type": "purchase", "category": c,
             "price": 1.0} for i, (u, it, c, ts) in enumerate(zip(log.user_id, log.item_id, log.category, log.ts, strict=True))]
    atomic_write_jsonl(settings.landing_events_dir, "planted.jsonl", rows)
    cleaned = clean_step(settings, "b1")
    matrices_step(settings)
    trained = train_step(settings, "b1", until=cleaned["until"])
    evaluated = evaluate_step(settings, trained, "b1", until=cleaned["until"])
    gate = gate_step(settings, trained, evaluated, "b1")
    publish_step(settings, score_step(settings, "b1", gate))
    return settings, trained, gate


def test_without_a_champion_model_a_refresh_declines(batch):
    from freshrec.refresh import refresh_step

    settings, trained, gate = batch
    assert gate["publish"]["kind"] == "baseline" and _champion(settings) is None  # the planted log's gate: category popularity
    before = _versions(settings)
    out = refresh_step(settings)
    assert out["refreshed"] is False and out["declined"] == "no champion model to refresh: the last batch published a baseline"
    assert _versions(settings) == before
    from freshrec.status import collect_status, format_status

    status = collect_status(settings)
    assert status["model"]["refresh"]["declined"] == out["declined"] and status["model"]["refresh"]["at"] == out["at"]
    assert f"last refresh  {out['at']} declined: no champion model" in format_status(status)


@pytest.fixture(scope="module")
def promoted(batch):
    """The batch's model made champion by hand, as an ML engineer may do in the MLflow UI."""
    from freshrec.models import tracking

    settings, trained, _ = batch
    with tracking.tracking(settings) as client:
        client.set_registered_model_alias(tracking.REGISTERED_MODEL, "champion", trained["version"])
    return settings, trained["version"]


def test_a_refresh_learns_the_new_events_registers_its_lineage_and_publishes(promoted):
    from freshrec.models import tracking

    from freshrec.refresh import DEPTH_TAG, FROM_TAG, KEY_TAG, PARENT_TAG, UNTIL_TAG, refresh_step

    settings, parent = promoted
    before = _versions(settings)
    out = refresh_step(settings)
    assert out["refreshed"] and not out["reused"] and out["parent_version"] == parent, out
    version = out["version"]
    assert _versions(settings) == sorted([*before, version])
    if settings.model_kind == "two_stage":  # more trees on the new labels, the earlier ones kept
        assert out["learned"]["fresh_groups"] > 0 and out["learned"]["trees_added"] == 20
    else:  # the sequence model's own loss on the new examples, with replay
        assert out["learned"]["fresh_examples"] > 0 and out["learned"]["replay_examples"] > 0 and out["learned"]["steps"] == 60
    # judged on the held-out week against the live model and the cheap baselines, and published
    assert out["promoted"], out["reason"]
    assert out["refreshed_value"] >= out["live_value"] * (1 - settings.refresh_tolerance)
    assert _champion(settings) == version
    live = _live(settings)
    assert live["meta"]["model"]["version"] == version and live["live_version"].startswith(f"refresh-v{version}-")
    # the lineage, on the version and on its run (the MLflow UI shows both)
    with tracking.tracking(settings) as client:
        mv = client.get_model_version(tracking.REGISTERED_MODEL, version)
        run = client.get_run(mv.run_id)
        cutoff = pd.Timestamp(client.get_run(client.get_model_version(tracking.REGISTERED_MODEL, parent).run_id).data.params["cutoff"])
    assert mv.tags[PARENT_TAG] == parent and mv.tags[DEPTH_TAG] == "1" and mv.tags["freshrec.gate.promoted"] == "true"
    assert pd.Timestamp(mv.tags[FROM_TAG]) == cutoff and pd.Timestamp(mv.tags[UNTIL_TAG]) > cutoff
    assert f"Refreshed from version {parent}" in mv.description
    assert run.data.tags[PARENT_TAG] == parent and run.data.tags[KEY_TAG] == mv.tags[KEY_TAG]
    assert f"version {parent}" in run.data.tags["mlflow.note.content"]
    assert run.data.metrics["ndcg_at_10"] == out["refreshed_value"] and run.data.metrics["live/ndcg_at_10"] == out["live_value"]
    from freshrec.status import collect_status

    assert collect_status(settings)["model"]["refresh"]["version"] == version


def test_a_refreshed_champion_waits_for_new_events(promoted):
    from freshrec.refresh import refresh_step

    settings, _ = promoted
    champion, before, live = _champion(settings), _versions(settings), _live(settings)["live_version"]
    out = refresh_step(settings)
    # the champion is now the refreshed version, whose own events end where the held-out slice starts
    assert out["refreshed"] is False and "nothing to learn from yet" in out["declined"], out
    assert (_champion(settings), _versions(settings), _live(settings)["live_version"]) == (champion, before, live)


def test_the_bound_on_refreshes_in_a_row_holds(promoted):
    from freshrec.refresh import refresh_step

    settings, _ = promoted
    before = _versions(settings)
    out = refresh_step(settings.replace(max_refreshes=1))
    assert out["refreshed"] is False and "FRESHREC_MAX_REFRESHES=1" in out["declined"] and "refresh 1 in a row" in out["declined"]
    assert _versions(settings) == before


def test_no_refresh_while_a_batch_trains(promoted):
    from freshrec.lake import model_lock
    from freshrec.refresh import refresh_step

    settings, _ = promoted
    with model_lock(settings, "a batch's train"):
        out = refresh_step(settings)
    assert out["refreshed"] is False and "full batch is training" in out["declined"]


def test_a_refresh_that_makes_the_model_worse_is_not_promoted_and_its_rerun_registers_nothing(promoted, monkeypatch):
    """A refresh broken after it learned (the ranker replaced by one fitted to random labels; the
    sequence model's item rows shuffled): registered, with its evidence, and not promoted; the
    champion and the live lists stay. Rerun on the same events, it finds that version and
    registers nothing new."""
    import torch
    from freshrec.models.ranker import FEATURES, TwoStageRanker
    from freshrec.models.seqrec import SeqRec
    from lightgbm import LGBMRanker

    from freshrec.refresh import refresh_step

    def break_ranker(model):
        rng = np.random.default_rng(0)
        model.model = LGBMRanker(n_estimators=20, min_child_samples=5, verbose=-1).fit(
            rng.random((2_000, len(FEATURES))), rng.integers(0, 2, 2_000), group=[20] * 100)

    def break_seqrec(model):
        with torch.no_grad():
            weight = model.net.item_emb.weight
            weight.copy_(weight[torch.randperm(len(weight), generator=torch.Generator().manual_seed(0))] * 20)

    for cls, breaker in ((TwoStageRanker, break_ranker), (SeqRec, break_seqrec)):
        def worse(self, *args, _real=cls.refresh, _breaker=breaker, **kwargs):
            out = _real(self, *args, **kwargs)
            _breaker(self)
            return out

        monkeypatch.setattr(cls, "refresh", worse)
    settings, _ = promoted
    settings = settings.replace(refresh_holdout_days=3.0)  # the champion's events end 7 days back: 4 to learn, 3 to judge
    champion, live = _champion(settings), _live(settings)["live_version"]
    out = refresh_step(settings)
    assert out["refreshed"] and out["parent_version"] == champion and not out["promoted"], out
    assert out["refreshed_value"] < out["live_value"] and out["reason"]
    assert (_champion(settings), _live(settings)["live_version"]) == (champion, live)

    versions = _versions(settings)
    again = refresh_step(settings)
    assert again["reused"] and again["version"] == out["version"] and not again["promoted"]
    assert _versions(settings) == versions and _champion(settings) == champion
