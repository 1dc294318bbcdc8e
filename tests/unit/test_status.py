"""freshrec status: the interface keys, an empty home, and runs/counts read back from the ledger."""

from __future__ import annotations

import json

import pytest

from freshrec.cli import main
from freshrec.ledger import Ledger
from freshrec.settings import Settings
from freshrec.status import collect_status, format_status

INTERFACE_KEYS = {"live_version", "model", "counts", "freshness", "last_runs"}


def test_empty_home_gives_zero_counts_and_no_runs(tmp_path):
    settings = Settings(home=tmp_path / "never-created")
    status = collect_status(settings)
    assert INTERFACE_KEYS <= set(status)
    assert status["counts"] == {"read": 0, "clean": 0, "quarantined": 0, "duplicates": 0}
    assert status["last_runs"] == []
    assert status["freshness"] == {"last_microbatch_at": None, "landing_to_served_p50_s": None, "landing_to_served_p95_s": None}
    assert status["live_version"] is None and status["model"] is None
    assert status["home"] == str((tmp_path / "never-created").resolve())
    assert not (tmp_path / "never-created").exists(), "looking at the status must not create state"
    text = format_status(status)
    assert "read 0" in text and "none yet" in text


def test_status_json_from_the_cli_has_the_interface_keys(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FRESHREC_HOME", str(tmp_path / "home"))
    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert INTERFACE_KEYS <= set(status)
    assert set(status["counts"]) == {"read", "clean", "quarantined", "duplicates"}
    assert set(status["freshness"]) == {"last_microbatch_at", "landing_to_served_p50_s", "landing_to_served_p95_s"}


def test_counts_and_last_runs_come_from_the_ledger(tmp_path):
    settings = Settings(home=tmp_path / "home")
    ledger = Ledger(settings.state_db)
    ledger.record_file_counts([
        {"source_file": "a.jsonl", "read": 10, "clean": 7, "quarantined": 2, "duplicates": 1},
        {"source_file": "b.jsonl", "read": 5, "clean": 5, "quarantined": 0, "duplicates": 0},
    ], batch_id="b1")
    ledger.record_run("freshrec_batch:manual__2026-03-01T02:00:00+00:00", kind="freshrec_batch", state="success",
                      started_at="2026-03-01T02:00:00+00:00", finished_at="2026-03-01T02:03:00+00:00")
    ledger.record_run("freshrec_batch:manual__2026-03-02T02:00:00+00:00", kind="freshrec_batch", state="failed",
                      started_at="2026-03-02T02:00:00+00:00", finished_at="2026-03-02T02:01:00+00:00",
                      detail={"failed_task": "validate", "error": "QualityGateError: too many bad rows"})

    status = collect_status(settings)
    assert status["counts"] == {"read": 15, "clean": 12, "quarantined": 2, "duplicates": 1}
    runs = status["last_runs"]
    assert [r["run_id"] for r in runs] == ["manual__2026-03-02T02:00:00+00:00", "manual__2026-03-01T02:00:00+00:00"]
    assert {"dag_id", "run_id", "state", "finished_at"} <= set(runs[0])
    assert runs[0]["dag_id"] == "freshrec_batch" and runs[0]["state"] == "failed"
    assert runs[0]["failed_task"] == "validate" and "too many bad rows" in runs[0]["error"]
    assert runs[1]["state"] == "success" and runs[1]["finished_at"] == "2026-03-01T02:03:00+00:00"

    text = format_status(status)
    assert "read 15" in text and "quarantined 2" in text
    assert "manual__2026-03-02T02:00:00+00:00" in text and "validate: QualityGateError" in text
    json.dumps(status)  # the --json output must serialise without a default=


def test_unreadable_ledger_is_a_warning_not_a_traceback(tmp_path):
    settings = Settings(home=tmp_path / "home")
    settings.home.mkdir()
    settings.state_db.write_bytes(b"this is not a sqlite database" * 10)
    status = collect_status(settings)
    assert status["counts"] == {"read": 0, "clean": 0, "quarantined": 0, "duplicates": 0}
    assert status["warnings"] and "state.db" in status["warnings"][0]
    assert "warning:" in format_status(status)


def publish(settings: Settings, source: dict, gate_model: dict | None = None) -> None:
    """A live serving version scored with ``source``, and a gate decision on ``gate_model``."""
    from freshrec.serving import open_store

    settings.ensure_dirs()
    with open_store(settings.serving) as store:
        with store.begin_version("batch-1-abc", {"model": source}) as writer:
            writer.write_user_recs([("u1", [("i1", 1.0)])])
            writer.write_popular(None, [("i1", 1.0)])
            writer.commit()
    gate = {"batch_id": "batch-1", "decided_at": "2026-01-01T00:00:00+00:00", "model": gate_model or {"version": "4"},
            "decision": {"promote": False, "reason": "candidate ndcg_at_10=0.1 does not beat the best baseline"}}
    (settings.reports_dir / "gate.json").write_text(json.dumps(gate))


def test_live_version_model_and_gate_decision(tmp_path):
    settings = Settings(home=tmp_path / "home")
    publish(settings, {"kind": "baseline", "name": "popularity", "alias": None})
    status = collect_status(settings)
    assert status["live_version"] == "batch-1-abc"
    assert status["model"]["kind"] == "baseline" and status["model"]["name"] == "popularity"
    assert status["model"]["gate"]["promoted"] is False and status["model"]["gate"]["candidate_version"] == "4"
    text = format_status(status)
    assert "baseline popularity" in text and "v4 not promoted" in text and "does not beat" in text
    assert "mlflow" not in text  # no run to point at, and no MLflow store was opened or created
    assert not (settings.home / "mlflow.db").exists()


@pytest.fixture()
def mlflow_runs(tmp_path, monkeypatch):
    """A store with experiment freshrec: a model run whose version 3 is champion, a baseline run."""
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = Settings(home=tmp_path / "home")
    settings.home.mkdir()
    client = MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)
    exp = client.create_experiment("freshrec", artifact_location=(settings.home / "mlartifacts").as_uri())
    model_run, baseline_run = (client.create_run(exp).info.run_id for _ in range(2))
    client.create_registered_model("freshrec")
    for _ in range(3):
        client.create_model_version("freshrec", source=(settings.home / "mlartifacts" / "m").as_uri(), run_id=model_run)
    return settings, exp, model_run, baseline_run


def _check_links(model: dict, settings: Settings, exp: str, run: str, plot_run: str) -> None:
    assert model["run_id"] == run and model["experiment_id"] == exp
    # the query opens MLflow 3.17's training runs view, not the GenAI overview it opens on by default
    assert model["run_url"] == f"http://127.0.0.1:5000/#/experiments/{exp}/runs/{run}?workflowType=machine_learning"
    assert model["plot"] == {"run_id": plot_run, "path": "plots/metric_at_k.png",
                             "url": f"http://127.0.0.1:5000/#/experiments/{exp}/runs/{plot_run}/artifacts/plots/metric_at_k.png"
                                    "?workflowType=machine_learning"}
    assert model["mlflow_ui"].endswith(f"mlflow ui --backend-store-uri {settings.tracking_uri}")


@pytest.mark.parametrize("with_run_id", [True, False], ids=["promoted-this-batch", "champion-kept"])
def test_status_names_the_mlflow_run_and_plot_of_the_live_model(mlflow_runs, with_run_id):
    settings, exp, model_run, _ = mlflow_runs
    source = {"kind": "model", "name": "freshrec", "version": "3", "alias": "champion"}
    publish(settings, {**source, "run_id": model_run} if with_run_id else source)
    status = collect_status(settings)
    _check_links(status["model"], settings, exp, model_run, model_run)
    assert "warnings" not in status
    text = format_status(status)
    assert f"{model_run} (experiment {exp})" in text
    assert f"plots/metric_at_k.png of run {model_run}" in text and "every baseline" in text
    # printed whole, not cut at the terminal's width: they are to be copied
    for line in (status["model"]["mlflow_ui"], status["model"]["run_url"], status["model"]["plot"]["url"]):
        assert line in text
    assert json.loads(json.dumps(status))["model"]["plot"]["path"] == "plots/metric_at_k.png"


def test_a_live_baseline_points_at_its_run_and_the_plot_of_the_gates_candidate(mlflow_runs):
    settings, exp, model_run, baseline_run = mlflow_runs
    publish(settings, {"kind": "baseline", "name": "popularity", "alias": None, "run_id": baseline_run},
            gate_model={"version": "3", "run_id": model_run})
    status = collect_status(settings)
    _check_links(status["model"], settings, exp, baseline_run, model_run)
    assert "baseline popularity" in format_status(status)


def test_a_run_missing_from_mlflow_is_a_warning(mlflow_runs):
    settings = mlflow_runs[0]
    publish(settings, {"kind": "model", "name": "freshrec", "version": "9", "alias": "champion"})
    status = collect_status(settings)
    assert status["model"]["version"] == "9" and "run_id" not in status["model"]
    assert any(w.startswith("MLflow:") for w in status["warnings"])
