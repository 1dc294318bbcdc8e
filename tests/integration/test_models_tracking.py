"""The training step against a real MLflow store (sqlite in a temporary FRESHREC_HOME):
runs, metric names, plots, the registered model and its aliases, and the promotion gate."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from freshrec.models import tracking
from freshrec.models.datasets import synthetic_latent, synthetic_sequential
from freshrec.models.pipeline import TrainingConfig, train_and_gate, train_model
from freshrec.models.seqrec import SeqRec, SeqRecConfig

from freshrec.settings import Settings

pytestmark = pytest.mark.integration

# a log where order matters (item chains) and users re-buy a few staples
EVENTS = synthetic_sequential(n_users=400, n_items=150, repeat_prob=0.2, seed=3)
# the sequence model on one window: these tests break its torch weights; the two-stage ranker and
# the rolling-origin gate have their own tests below
CONFIG = TrainingConfig(window_days=10, min_target_users=5, max_validation_users=200, model_kind="seqrec", protocol="time",
                        n_cutoffs=1, min_test_users=50,
                        model=SeqRecConfig(epochs=3, batch_size=128, dim=32, exclude_seen="none"))


def make_settings(tmp_path, name: str) -> Settings:
    s = Settings(home=tmp_path / name, exclude_seen="none")
    s.ensure_dirs()
    return s


class Capture:
    """A trainer that keeps the model it returns, optionally breaking it first."""

    def __init__(self, breaker=None):
        self.breaker = breaker
        self.model: SeqRec | None = None

    def __call__(self, eval_set, config, on_epoch=None):
        model = train_model(eval_set, config, on_epoch)
        if self.breaker is not None:
            self.breaker(model, eval_set, config)
        self.eval_set = eval_set
        self.model = model
        return model


def shuffle_weights(model, eval_set, config):
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.net.parameters():
            p.copy_(p.flatten()[torch.randperm(p.numel(), generator=gen)].view_as(p))


def random_weights(model, eval_set, config):
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))


def untrained(model, eval_set, config):
    """Replace the fitted network by a freshly initialised one (no epoch run)."""
    raw = SeqRec(dataclasses.replace(model.config, epochs=0)).fit(eval_set.train, eval_set.catalogue)
    model.net.load_state_dict(raw.net.state_dict())
    model.explore_offset = 0.0


@pytest.fixture(scope="module")
def promoted(tmp_path_factory):
    settings = make_settings(tmp_path_factory.mktemp("mlflow"), "home")
    capture = Capture()
    report = train_and_gate(settings, EVENTS, CONFIG, trainer=capture)
    return settings, report, capture


def test_a_good_model_is_tracked_registered_and_promoted(promoted):
    settings, report, capture = promoted
    assert report.decision.promote, report.decision.reason
    assert report.publish == {"kind": "model", "name": "freshrec", "version": "1", "run_id": report.model["run_id"]}
    with tracking.tracking(settings) as client:
        exp = client.get_experiment_by_name("freshrec")
        runs = client.search_runs([exp.experiment_id])
        kinds = sorted(r.data.tags["freshrec.kind"] for r in runs)
        assert kinds == ["baseline"] * len(report.baselines) + ["model"]
        assert {"popularity", "category_popularity", "trending", "cooccurrence_knn", "user_knn", "repeat_buy", "ease"} == set(report.baselines)
        run = client.get_run(report.model["run_id"])
        for name in ("ndcg_at_10", "recall_at_10", "recall_at_20", "map_at_10", "coverage_at_10", "precision_at_100",
                     "hit_rate_at_20", "novelty_at_10", "returning_users/ndcg_at_10", "train_seconds", "examples_per_second"):
            assert name in run.data.metrics, name
        assert run.data.tags["freshrec.gate.promoted"] == "true"
        assert run.data.params["exclude_seen"] == "none"
        epochs = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in epochs] == list(range(len(capture.model.history)))
        assert len(client.get_metric_history(run.info.run_id, "val_ndcg_at_10")) == len(epochs)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert artifacts == {"plots/metric_at_k.png", "plots/popularity_recommended_vs_consumed.png"}
        baseline_run = client.get_run(report.baselines["repeat_buy"]["run_id"])
        assert baseline_run.data.metrics["ndcg_at_10"] == pytest.approx(report.baselines["repeat_buy"]["metrics"]["ndcg_at_10"])
        assert str(client.get_model_version_by_alias("freshrec", "champion").version) == "1"
        assert str(client.get_model_version_by_alias("freshrec", "challenger").version) == "1"
        loaded = tracking.load_model_version("1")
    hist = capture.eval_set.histories
    assert np.array_equal(loaded.score(hist), capture.model.score(hist))


@pytest.mark.parametrize("breaker", [shuffle_weights, random_weights, untrained], ids=["shuffled", "random", "untrained"])
def test_a_broken_model_is_never_promoted(promoted, breaker):
    settings, first, _ = promoted
    report = train_and_gate(settings, EVENTS, CONFIG, trainer=Capture(breaker))
    assert not report.decision.promote, report.decision.reason
    assert report.model["metrics"]["ndcg_at_10"] < first.model["metrics"]["ndcg_at_10"]
    assert report.champion["version"] == "1"
    assert report.publish["kind"] == "model" and report.publish["version"] == "1"
    with tracking.tracking(settings) as client:
        assert str(client.get_model_version_by_alias("freshrec", "champion").version) == "1"
        assert str(client.get_model_version_by_alias("freshrec", "challenger").version) == report.model["version"]
        assert client.get_run(report.model["run_id"]).data.tags["freshrec.gate.promoted"] == "false"


def test_tolerance_decides_between_equal_models(promoted):
    settings, first, _ = promoted
    # the same seed retrains the same model: equal to the champion on the same window
    demanding = train_and_gate(settings, EVENTS, dataclasses.replace(CONFIG, gate_tolerance=-0.05))
    assert demanding.model["metrics"]["ndcg_at_10"] == pytest.approx(first.model["metrics"]["ndcg_at_10"])
    assert not demanding.decision.promote and "tolerance" in demanding.decision.reason
    lenient = train_and_gate(settings, EVENTS, dataclasses.replace(CONFIG, gate_tolerance=0.0))
    assert lenient.decision.promote
    with tracking.tracking(settings) as client:
        assert str(client.get_model_version_by_alias("freshrec", "champion").version) == lenient.model["version"]


@pytest.mark.parametrize("breaker", [shuffle_weights, random_weights], ids=["shuffled", "random"])
def test_without_any_champion_a_broken_model_falls_back_to_the_best_baseline(tmp_path, breaker):
    # MovieLens-like tastes, seen items excluded: only the catalogue ranking counts, and a
    # network with scrambled weights has nothing left to lean on
    settings = Settings(home=tmp_path / "fresh", exclude_seen="all")
    settings.ensure_dirs()
    events = synthetic_latent(n_users=300, n_items=200, seed=5)
    config = dataclasses.replace(CONFIG, model=dataclasses.replace(CONFIG.model, exclude_seen="all"))
    report = train_and_gate(settings, events, config, trainer=Capture(breaker))
    assert not report.decision.promote, report.decision.reason
    best = max(report.baselines, key=lambda name: report.baselines[name]["metrics"]["ndcg_at_10"])
    assert report.publish == {"kind": "baseline", "name": best, "run_id": report.baselines[best]["run_id"]}
    with tracking.tracking(settings) as client:
        assert tracking.champion_version(client) is None


def test_artifacts_land_under_freshrec_home_not_the_working_directory(tmp_path, monkeypatch):
    # MLflow's default artifact root for a database store is ./mlruns of the working directory,
    # and the fluent registry follows MLFLOW_REGISTRY_URI: neither may pull anything out of the home
    cwd, stray = tmp_path / "cwd", tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{stray / 'registry.db'}")
    settings = make_settings(tmp_path, "home")
    config = dataclasses.replace(CONFIG, model=dataclasses.replace(CONFIG.model, epochs=1))
    report = train_and_gate(settings, EVENTS, config)

    assert sorted(p.name for p in cwd.iterdir()) == []
    assert not stray.exists()
    artifacts = settings.home / "mlartifacts"
    with tracking.tracking(settings) as client:
        exp = client.get_experiment_by_name("freshrec")
        assert exp.artifact_location == artifacts.as_uri()
        assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
        download_uri = client.get_model_version_download_uri("freshrec", report.model["version"])
        assert download_uri.startswith(artifacts.as_uri() + "/models/")
        assert tracking.load_model_version(report.model["version"]) is not None
        for name, baseline in report.baselines.items():
            assert client.get_run(baseline["run_id"]).info.artifact_uri.startswith(artifacts.as_uri()), name
    assert (artifacts / report.model["run_id"] / "artifacts" / tracking.CURVES_PLOT).is_file()
    assert len(list(artifacts.glob("models/m-*/artifacts/MLmodel"))) == 1
    assert tracking.find_run(settings, version=report.model["version"]) == {
        "experiment_id": exp.experiment_id, "run_id": report.model["run_id"]}


def test_an_existing_experiment_keeps_its_artifact_location_and_is_tagged(tmp_path, caplog):
    from mlflow.tracking import MlflowClient

    settings = make_settings(tmp_path, "home")
    elsewhere = (tmp_path / "old-artifacts").as_uri()
    MlflowClient(settings.tracking_uri).create_experiment("freshrec", artifact_location=elsewhere)
    with caplog.at_level("INFO", logger="freshrec.models.tracking"), tracking.tracking(settings) as client:
        exp = client.get_experiment_by_name("freshrec")
    assert exp.artifact_location == elsewhere
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert elsewhere in caplog.text and "cannot change" in caplog.text


def test_where_a_new_experiment_keeps_its_artifacts(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    home = tmp_path / "home"
    assert tracking.artifact_location(Settings(home=home)) == (home / "mlartifacts").as_uri()
    assert tracking.artifact_location(Settings(home=home, mlflow_tracking_uri="postgresql://u@db/mlflow")) == \
        (home / "mlartifacts").as_uri()
    assert tracking.artifact_location(Settings(home=home, mlflow_tracking_uri="http://mlflow:5000")) is None
    assert tracking.artifact_location(Settings(home=home, mlflow_artifact_root="s3://bucket/freshrec")) == "s3://bucket/freshrec"
    assert tracking.artifact_location(Settings(home=home, mlflow_artifact_root=str(tmp_path / "a"))) == (tmp_path / "a").as_uri()
