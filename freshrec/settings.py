"""One typed settings object for the whole pipeline.

Every field can be set by an environment variable ``FRESHREC_<FIELD>`` (upper case) or by a
``freshrec.toml`` in the working directory (or the file named by ``FRESHREC_CONFIG``).
Environment variables win over the file, the file wins over the defaults. Settings are
passed into every step explicitly: nothing reads them from a global.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

EXCLUDE_SEEN_CHOICES = ("all", "purchased", "none")


class SettingsError(ValueError):
    """A configuration value is missing or malformed."""


def _default_event_weights() -> dict[str, float]:
    return {"view": 1.0, "search": 0.0, "add_to_cart": 3.0, "remove_from_cart": -1.0, "purchase": 5.0}


@dataclass(frozen=True)
class Settings:
    home: Path = Path(".freshrec")
    serving_url: str = ""  # default derived from home
    spark_master: str = "local[*]"
    spark_driver_memory: str = "4g"
    spark_shuffle_partitions: int = 8
    spark_pool_slots: int = 0  # Spark tasks Airflow runs at once; 0 sizes the pool for the machine
    mlflow_tracking_uri: str = ""  # default derived from home; MLFLOW_TRACKING_URI wins
    top_n: int = 100
    keep_versions: int = 5  # published versions kept for rollback
    exclude_seen: str = "purchased"
    microbatch_minutes: int = 5
    watch_seconds: float = 15.0  # processing-time trigger of `freshrec run incremental --watch`
    # cleaning
    max_future_skew_hours: float = 24.0
    min_event_ts: str = "1990-01-01T00:00:00Z"
    max_quarantine_ratio: float = 0.2
    # matrices
    event_weights: dict[str, float] = field(default_factory=_default_event_weights)
    decay_half_life_days: float = 30.0
    sequence_length: int = 50
    trending_window_days: float = 7.0

    # -- derived paths -------------------------------------------------------------------
    @property
    def landing_dir(self) -> Path:
        return self.home / "landing"

    @property
    def landing_events_dir(self) -> Path:
        return self.landing_dir / "events"

    @property
    def landing_items_dir(self) -> Path:
        return self.landing_dir / "items"

    @property
    def lake_dir(self) -> Path:
        return self.home / "lake"

    @property
    def events_path(self) -> Path:
        return self.lake_dir / "events"

    @property
    def quarantine_path(self) -> Path:
        return self.lake_dir / "quarantine"

    @property
    def features_dir(self) -> Path:
        return self.home / "features"

    @property
    def checkpoints_dir(self) -> Path:
        return self.home / "checkpoints"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def recs_dir(self) -> Path:
        """recs/<version>/: the scoring step's Parquet tables behind each published version."""
        return self.home / "recs"

    @property
    def state_db(self) -> Path:
        """Small SQLite ledger: per-file counts, run records. Never the source of truth for data."""
        return self.home / "state.db"

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or self.mlflow_tracking_uri or f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def serving(self) -> str:
        return self.serving_url or f"sqlite:///{(self.home / 'serving.db').resolve()}"

    def ensure_dirs(self) -> None:
        for path in (self.landing_events_dir, self.landing_items_dir, self.lake_dir, self.features_dir,
                     self.checkpoints_dir, self.reports_dir, self.airflow_home):
            path.mkdir(parents=True, exist_ok=True)

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    # -- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, config_file: Path | None = None) -> "Settings":
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        path = config_file or Path(env.get("FRESHREC_CONFIG", "freshrec.toml"))
        if path.is_file():
            with path.open("rb") as fh:
                values.update(tomllib.load(fh))
        for f in fields(cls):
            key = f"FRESHREC_{f.name.upper()}"
            if key in env and env[key] != "":
                values[f.name] = env[key]
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise SettingsError(f"unknown setting(s) in {path}: {', '.join(sorted(unknown))}")
        return cls(**{name: _coerce(name, value) for name, value in values.items()})

    def __post_init__(self) -> None:
        if self.exclude_seen not in EXCLUDE_SEEN_CHOICES:
            raise SettingsError(f"FRESHREC_EXCLUDE_SEEN must be one of {', '.join(EXCLUDE_SEEN_CHOICES)}, got {self.exclude_seen!r}")
        for name in ("top_n", "microbatch_minutes", "sequence_length", "spark_shuffle_partitions"):
            if getattr(self, name) < 1:
                raise SettingsError(f"FRESHREC_{name.upper()} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.max_quarantine_ratio <= 1.0:
            raise SettingsError(f"FRESHREC_MAX_QUARANTINE_RATIO must be in [0, 1], got {self.max_quarantine_ratio}")
        if self.spark_pool_slots < 0:
            raise SettingsError(f"FRESHREC_SPARK_POOL_SLOTS must be >= 0 (0: sized for the machine), got {self.spark_pool_slots}")
        if not 0 < self.watch_seconds < float("inf"):
            raise SettingsError(f"FRESHREC_WATCH_SECONDS must be > 0, got {self.watch_seconds}")
        if self.decay_half_life_days <= 0:
            raise SettingsError("FRESHREC_DECAY_HALF_LIFE_DAYS must be > 0")


def _coerce(name: str, value: Any) -> Any:
    typ = {f.name: f.type for f in fields(Settings)}[name]
    try:
        if typ == "Path":
            return Path(value)
        if typ == "int":
            return int(value)
        if typ == "float":
            return float(value)
        if typ == "dict[str, float]":
            if isinstance(value, str):  # "view=1,purchase=5"
                pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
                value = {k.strip(): v for k, v in pairs}
            merged = _default_event_weights()
            merged.update({str(k): float(v) for k, v in dict(value).items()})
            return merged
        return str(value)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"FRESHREC_{name.upper()}: cannot read {value!r} as {typ}") from exc


def _env_value(value: Any) -> str:
    if isinstance(value, dict):  # event_weights: "view=1.0,purchase=5.0" (what Settings.load parses)
        return ",".join(f"{k}={float(v)!r}" for k, v in value.items())
    if isinstance(value, Path):
        return str(value.resolve())
    return str(value)


def settings_to_env(settings: Settings) -> dict[str, str]:
    """``FRESHREC_*`` variables that make ``Settings.load()`` rebuild ``settings`` elsewhere.

    Every field is exported (not only the non-default ones) so a ``freshrec.toml`` in the task's
    working directory cannot make a task disagree with its caller. Paths are made absolute:
    tasks may run with another working directory. Empty strings are skipped, since
    ``Settings.load`` treats them as unset anyway.
    """
    env: dict[str, str] = {}
    for f in fields(Settings):
        value = _env_value(getattr(settings, f.name))
        if value != "":
            env[f"FRESHREC_{f.name.upper()}"] = value
    return env
