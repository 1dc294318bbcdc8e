"""Settings: where values come from, how they are checked, and how they travel to a task."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
from freshrec.models.pipeline import TrainingConfig
from freshrec.models.seqrec import SeqRecConfig

from freshrec.settings import Settings, SettingsError, settings_to_env

DEFAULT_WEIGHTS = {"view": 1.0, "search": 0.0, "add_to_cart": 3.0, "remove_from_cart": -1.0, "purchase": 5.0}


@pytest.fixture(autouse=True)
def clean_dir(tmp_path, monkeypatch):
    """No freshrec.toml and no FRESHREC_* variable unless a test puts one there."""
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("FRESHREC_") or k == "MLFLOW_TRACKING_URI"]:
        monkeypatch.delenv(key)


@pytest.mark.parametrize("changes", [
    {},
    {"home": Path("relative/home")},
    {"home": Path("/abs/../abs/home"), "serving_url": "redis://r:6379/0", "mlflow_tracking_uri": "http://mlflow:5000"},
    {"event_weights": {"view": 0.1 + 0.2, "click": 2.5, "purchase": -1e-9}, "exclude_seen": "none", "top_n": 7},
    {"eval_window_days": 3.5, "gate_tolerance": -0.05, "ease_max_items": 0, "model_epochs": 0, "model_seed": -3,
     "model_dim": 16, "keep_versions": 1, "watch_seconds": 0.25, "max_quarantine_ratio": 1.0, "spark_pool_slots": 3},
])
def test_settings_round_trip_through_the_environment(changes):
    settings = Settings(**changes)
    env = settings_to_env(settings)
    assert all(key.startswith("FRESHREC_") and isinstance(value, str) for key, value in env.items())
    assert Settings.load(env=env) == settings


def test_environment_wins_over_the_file_which_wins_over_the_defaults(tmp_path):
    (tmp_path / "freshrec.toml").write_text('top_n = 20\nkeep_versions = 2\nmodel_epochs = 9\n')
    settings = Settings.load(env={"FRESHREC_TOP_N": "30", "FRESHREC_KEEP_VERSIONS": ""})
    assert (settings.top_n, settings.keep_versions, settings.model_epochs) == (30, 2, 9)  # an empty variable is unset
    assert settings.microbatch_minutes == Settings().microbatch_minutes


def test_the_file_can_be_named(tmp_path):
    other = tmp_path / "conf" / "other.toml"
    other.parent.mkdir()
    other.write_text('spark_master = "spark://m:7077"\n')
    (tmp_path / "freshrec.toml").write_text('spark_master = "local[1]"\n')
    assert Settings.load(env={"FRESHREC_CONFIG": str(other)}).spark_master == "spark://m:7077"
    assert Settings.load(env={}, config_file=other).spark_master == "spark://m:7077"
    assert Settings.load(env={}).spark_master == "local[1]"


def test_building_settings_directly_reads_neither_environment_nor_file(tmp_path, monkeypatch):
    (tmp_path / "freshrec.toml").write_text("top_n = 20\n")
    monkeypatch.setenv("FRESHREC_MODEL_EPOCHS", "1")
    monkeypatch.setenv("FRESHREC_SPARK_MASTER", "spark://stray:7077")
    direct = Settings(home=tmp_path / "h")
    assert (direct.top_n, direct.model_epochs, direct.spark_master) == (100, 4, "local[*]")
    loaded = Settings.load()
    assert (loaded.top_n, loaded.model_epochs, loaded.spark_master) == (20, 1, "spark://stray:7077")


def test_unknown_keys_in_the_file_are_named(tmp_path):
    (tmp_path / "freshrec.toml").write_text('top_n = 20\nbogus = 1\nmodel_epoch = 3\n')
    with pytest.raises(SettingsError, match=r"unknown setting\(s\) in freshrec.toml: bogus, model_epoch"):
        Settings.load(env={})


def test_a_malformed_file_is_a_settings_error(tmp_path):
    (tmp_path / "freshrec.toml").write_text("top_n = [\n")
    with pytest.raises(SettingsError, match="cannot read freshrec.toml"):
        Settings.load(env={})


def test_event_weights_merge_over_the_defaults_from_either_source(tmp_path):
    from_env = Settings.load(env={"FRESHREC_EVENT_WEIGHTS": "view=2, purchase=7,"}).event_weights
    assert from_env == {**DEFAULT_WEIGHTS, "view": 2.0, "purchase": 7.0}
    (tmp_path / "freshrec.toml").write_text("[event_weights]\nclick = 0.5\n")
    assert Settings.load(env={}).event_weights == {**DEFAULT_WEIGHTS, "click": 0.5}
    assert Settings(event_weights={"view": 4}).event_weights == {**DEFAULT_WEIGHTS, "view": 4.0}
    with pytest.raises(SettingsError, match="FRESHREC_EVENT_WEIGHTS: cannot read 'view'"):
        Settings.load(env={"FRESHREC_EVENT_WEIGHTS": "view"})


@pytest.mark.parametrize("env, message", [
    ({"FRESHREC_KEEP_VERSIONS": "0"}, "FRESHREC_KEEP_VERSIONS must be >= 1, got '0'"),
    ({"FRESHREC_TOP_N": "abc"}, "FRESHREC_TOP_N: cannot read 'abc' as int"),
    ({"FRESHREC_EXCLUDE_SEEN": "some"}, "FRESHREC_EXCLUDE_SEEN must be one of 'all', 'purchased' or 'none', got 'some'"),
    ({"FRESHREC_MAX_QUARANTINE_RATIO": "1.5"}, "FRESHREC_MAX_QUARANTINE_RATIO must be >= 0 and <= 1"),
    ({"FRESHREC_WATCH_SECONDS": "inf"}, "FRESHREC_WATCH_SECONDS must be > 0"),
    ({"FRESHREC_SPARK_POOL_SLOTS": "-1"}, "FRESHREC_SPARK_POOL_SLOTS must be >= 0"),
    ({"FRESHREC_DECAY_HALF_LIFE_DAYS": "0"}, "FRESHREC_DECAY_HALF_LIFE_DAYS must be > 0"),
    ({"FRESHREC_MODEL_DIM": "0"}, "FRESHREC_MODEL_DIM must be >= 1"),
])
def test_bad_values_are_one_clear_line(env, message):
    with pytest.raises(SettingsError) as info:
        Settings.load(env=env)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_settings_are_immutable_and_replace_validates(tmp_path):
    settings = Settings(home=tmp_path / "h", top_n=7)
    with pytest.raises(ValueError, match="frozen"):
        settings.top_n = 8
    assert settings.replace(top_n=8).top_n == 8 and settings.top_n == 7
    with pytest.raises(SettingsError, match="FRESHREC_KEEP_VERSIONS must be >= 1"):
        settings.replace(keep_versions=0)
    with pytest.raises(SettingsError, match="unknown setting 'nope'"):
        settings.replace(nope=1)
    assert pickle.loads(pickle.dumps(settings)) == settings


def test_paths_and_stores_derive_from_home(tmp_path, monkeypatch):
    settings = Settings(home=Path("h"))
    assert settings.home == tmp_path / "h" and settings.events_path == tmp_path / "h" / "lake" / "events"
    assert settings.serving == f"sqlite:///{tmp_path / 'h' / 'serving.db'}"
    assert settings.tracking_uri == f"sqlite:///{tmp_path / 'h' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://elsewhere:5000")
    assert settings.replace(mlflow_tracking_uri="http://mine:5000").tracking_uri == "http://elsewhere:5000"


def test_training_knobs_are_settings_with_the_training_defaults():
    config = TrainingConfig.from_settings(Settings())
    assert (config.window_days, config.gate_tolerance, config.ease_max_items) == (
        TrainingConfig.window_days, TrainingConfig.gate_tolerance, TrainingConfig.ease_max_items)
    assert (config.model.epochs, config.model.seed, config.model.dim, config.model.horizon_days) == (
        SeqRecConfig.epochs, SeqRecConfig.seed, SeqRecConfig.dim, TrainingConfig.window_days)


def test_training_knobs_come_from_the_settings_only(tmp_path, monkeypatch):
    monkeypatch.setenv("FRESHREC_MODEL_EPOCHS", "9")
    assert TrainingConfig.from_settings(Settings()).model.epochs == SeqRecConfig.epochs
    (tmp_path / "freshrec.toml").write_text("eval_window_days = 7\ngate_tolerance = 0.1\nease_max_items = 5\n"
                                            "model_seed = 3\nmodel_dim = 32\n")
    config = TrainingConfig.from_settings(Settings.load())
    assert (config.window_days, config.gate_tolerance, config.ease_max_items) == (7.0, 0.1, 5)
    assert (config.model.epochs, config.model.seed, config.model.dim, config.model.horizon_days) == (9, 3, 32, 7.0)


def test_docs_list_every_setting():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "settings.md").read_text(encoding="utf-8")
    assert [f for f in Settings.model_fields if f"`{f}`" not in doc or f"`FRESHREC_{f.upper()}`" not in doc] == []


def test_pseudonymise_needs_a_key():
    with pytest.raises(SettingsError, match="FRESHREC_PSEUDONYM_KEY"):
        Settings(pseudonymise=True)
    assert Settings(pseudonymise=True, pseudonym_key="k").user_key(" 42 ") == Settings(
        pseudonymise=True, pseudonym_key="k").user_key("42") != "42"
    assert Settings().user_key("42") == "42"
