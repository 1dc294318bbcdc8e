"""freshrec status: the interface keys, an empty home, and runs/counts read back from the ledger."""

from __future__ import annotations

import json

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


def test_live_version_model_and_gate_decision(tmp_path):
    from freshrec.serving import open_store

    settings = Settings(home=tmp_path / "home")
    settings.ensure_dirs()
    source = {"kind": "baseline", "name": "popularity", "alias": None}
    with open_store(settings.serving) as store:
        with store.begin_version("batch-1-abc", {"model": source}) as writer:
            writer.write_user_recs([("u1", [("i1", 1.0)])])
            writer.write_popular(None, [("i1", 1.0)])
            writer.commit()
    gate = {"batch_id": "batch-1", "decided_at": "2026-01-01T00:00:00+00:00", "model": {"version": "4"},
            "decision": {"promote": False, "reason": "candidate ndcg_at_10=0.1 does not beat the best baseline"}}
    (settings.reports_dir / "gate.json").write_text(json.dumps(gate))
    status = collect_status(settings)
    assert status["live_version"] == "batch-1-abc"
    assert status["model"]["kind"] == "baseline" and status["model"]["name"] == "popularity"
    assert status["model"]["gate"]["promoted"] is False and status["model"]["gate"]["candidate_version"] == "4"
    text = format_status(status)
    assert "baseline popularity" in text and "v4 not promoted" in text and "does not beat" in text
