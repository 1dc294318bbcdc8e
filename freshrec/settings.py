"""One typed settings object for the whole pipeline.

``Settings.load()`` reads every field from an environment variable ``FRESHREC_<FIELD>`` (upper
case) or from a ``freshrec.toml`` in the working directory (or the file named by
``FRESHREC_CONFIG``). Environment variables win over the file, the file wins over the defaults.
Building ``Settings(...)`` directly reads neither, so what a test or a task builds does not
depend on the shell it runs in. Settings are passed into every step explicitly: nothing reads
them from a global. The fields are described in docs/settings.md.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, get_args

from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

ENV_PREFIX = "FRESHREC_"
ExcludeSeen = Literal["all", "purchased", "none"]
EXCLUDE_SEEN_CHOICES: tuple[str, ...] = get_args(ExcludeSeen)

# Tasks may run in another working directory: a home is pinned to one place when it is read.
AbsolutePath = Annotated[Path, AfterValidator(lambda path: path.resolve())]
AtLeastOne = Annotated[int, Field(ge=1)]
AtLeastZero = Annotated[int, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
Port = Annotated[int, Field(ge=1, le=65535)]


class SettingsError(ValueError):
    """A configuration value is missing or malformed."""


def _default_event_weights() -> dict[str, float]:
    return {"view": 1.0, "search": 0.0, "add_to_cart": 3.0, "remove_from_cart": -1.0, "purchase": 5.0}


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return f"{ENV_PREFIX}{field.upper()}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid", coerce_numbers_to_str=True)

    home: AbsolutePath = Path(".freshrec")  # root of all local state (landing zone, lake, features, ledger, reports); made absolute when read
    serving_url: str = ""  # serving store (sqlite:///..., postgresql://..., redis://...); empty: sqlite:///$FRESHREC_HOME/serving.db
    spark_master: str = "local[*]"  # any Spark master URL
    spark_driver_memory: str = "4g"  # spark.driver.memory of every Spark session
    spark_shuffle_partitions: AtLeastOne = 8  # spark.sql.shuffle.partitions
    spark_pool_slots: AtLeastZero = 0  # Spark tasks Airflow runs at once (pool freshrec_spark); 0 sizes the pool for the machine
    mlflow_tracking_uri: str = ""  # MLflow tracking store; empty: sqlite:///$FRESHREC_HOME/mlflow.db; MLFLOW_TRACKING_URI wins over both
    mlflow_artifact_root: str = ""  # artifact location (a URI or an absolute path) of the MLflow experiment freshrec creates; empty: $FRESHREC_HOME/mlartifacts, or the tracking server's own root
    airflow_db_url: str = ""  # Airflow metadata DB (a SQLAlchemy URL, e.g. postgresql+psycopg://...); empty: SQLite under $FRESHREC_HOME/airflow
    stack_name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,40}$")] = "freshrec"  # `freshrec stack`: prefix of its databases (NAME_airflow, NAME_mlflow) and its Celery queue
    stack_postgres_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"  # `freshrec stack`: the PostgreSQL server that holds Airflow's and MLflow's databases (created when missing)
    stack_broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"  # `freshrec stack`: the Celery broker (RabbitMQ)
    stack_serving_url: str = "redis://127.0.0.1:6379/0"  # `freshrec stack`: the serving store the stack's DAGs publish to and its API reads
    stack_spark_port: Port = 7077  # `freshrec stack`: Spark master; its web UI is on stack_spark_ui_port, worker i's on stack_spark_ui_port + i
    stack_spark_ui_port: Port = 8090
    stack_spark_workers: AtLeastOne = 2  # `freshrec stack`: Spark workers...
    stack_spark_worker_cores: AtLeastOne = 1  # ...each with this many cores...
    stack_spark_worker_memory: str = "2g"  # ...and this much memory for its executors
    stack_airflow_port: Port = 8080  # `freshrec stack`: Airflow's api-server (UI, REST API, execution API); internal ports follow it (see docs/deploy.md)
    stack_celery_concurrency: AtLeastOne = 2  # `freshrec stack`: task processes of the Celery worker
    stack_mlflow_port: Port = 5000  # `freshrec stack`: MLflow tracking server
    stack_api_port: Port = 8000  # `freshrec stack`: `freshrec serve`
    top_n: AtLeastOne = 100  # length of each published list
    keep_versions: AtLeastOne = 5  # published versions kept for rollback, the live one included
    exclude_seen: ExcludeSeen = "purchased"  # items kept out of a user's own list: all they interacted with, the purchased ones, or none (repeat-buy domains)
    batch_schedule: Annotated[str, Field(pattern=r"^(manual|\S+( \S+){4})$")] = "0 2 * * *"  # freshrec_batch's cron (UTC; each run covers the interval before it), or manual: only triggered runs
    microbatch_minutes: AtLeastOne = 5  # schedule of the incremental DAG
    experiment_report_minutes: AtLeastZero = 10  # a micro-batch refreshes a running experiment's report when it is older than this (0: every micro-batch)
    watch_seconds: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 15.0  # processing-time trigger of `freshrec run incremental --watch`
    max_future_skew_hours: float = 24.0  # cleaning: events stamped more than this after processing time are quarantined
    min_event_ts: str = "1990-01-01T00:00:00Z"  # cleaning: events stamped before this are quarantined
    max_id_length: Annotated[int, Field(ge=1, le=65_536)] = 256  # cleaning: longest user, item, session or event id, in characters; longer ids are quarantined
    max_line_bytes: Annotated[int, Field(ge=1024)] = 1_048_576  # cleaning: a landing file with a longer line is quarantined whole
    landing_settle_seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 2.0  # intake: a landing file modified more recently than this may still be being written; a later run takes it
    query_min_users: AtLeastOne = 5  # publishing: a search query gets a public item list only once this many distinct users searched it
    pseudonymise: bool = False  # cleaning: replace every user id by a keyed hash (HMAC-SHA256 with pseudonym_key) before it reaches the lake; recs and the API take the clear id
    pseudonym_key: str = ""  # cleaning: the secret key of pseudonymise (required when it is on); changing it makes every user new
    uniform_answers: bool = False  # serving: the API answers a known and an unknown user in the same shape (source "list", updated_at null), so an answer does not tell who is a customer
    api_keys: str = ""  # serving: comma-separated keys that may write (POST /v1/events, header "Authorization: Bearer KEY"); empty: writes are refused unless `freshrec serve --insecure-local`
    api_segment_events: AtLeastOne = 1000  # event API: a segment of accepted events moves into landing/events after this many events...
    api_segment_seconds: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 5.0  # ...or this many seconds after its first event
    realtime_batch_ms: Annotated[float, Field(ge=0, le=10_000, allow_inf_nan=False)] = 150.0  # event API: users of accepted events are re-scored in batches this many milliseconds apart
    max_quarantine_ratio: Annotated[float, Field(ge=0, le=1)] = 0.2  # a batch with a larger share of quarantined rows fails the quality gate
    event_weights: dict[str, float] = Field(default_factory=_default_event_weights)  # interaction weight per event type, merged over the defaults; environment form view=1,purchase=5
    decay_half_life_days: Positive = 30.0  # half-life of the time decay of interaction weights
    sequence_length: AtLeastOne = 50  # most recent events kept per user (features/sequences) and read by the model
    trending_window_days: float = 7.0  # window of the trending list and of the model's trend feature
    train_window_days: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0  # training and refresh: read only the last this many days of the lake (0: all of it)
    train_max_events: AtLeastZero = 10_000_000  # training and refresh: at most this many events reach the driver; a larger window is sampled by user in Spark (0: no cap)
    eval_window_days: Positive = 14.0  # training: the held-out test window (and the model's validation window before it)
    gate_tolerance: Annotated[float, Field(allow_inf_nan=False)] = 0.01  # training: fraction of the champion's metric a new model may trail it by; negative demands a gain
    ease_max_items: AtLeastZero = 10_000  # training: the EASE baseline runs only on catalogues up to this many items (dense items x items inverse)
    model_kind: Literal["two_stage", "seqrec"] = "two_stage"  # training: the candidate model: candidates + LightGBM ranker, or the sequence model alone
    eval_protocol: Literal["auto", "time", "random"] = "auto"  # training: time = rolling origin, random = per-user holdout (ratings data), auto = chosen from the log
    eval_cutoffs: AtLeastOne = 3  # training: rolling-origin windows the gate averages over (time protocol)
    min_test_users: AtLeastOne = 200  # training: test users each window needs before the gate may promote
    model_epochs: AtLeastZero = 4  # training: epochs of the sequence model
    model_seed: int = 0  # training: random seed of the split sampling and the sequence model
    model_dim: AtLeastOne = 64  # training: embedding size of the sequence model
    model_refresh_minutes: AtLeastOne = 60  # online refresh: schedule of the freshrec_model_refresh DAG
    max_refreshes: AtLeastZero = 24  # online refresh: refreshes in a row on top of one full batch's model; then it waits for the next batch
    refresh_steps: AtLeastOne = 200  # online refresh: optimizer steps of the sequence model (minibatches)
    refresh_trees: AtLeastOne = 50  # online refresh: boosting rounds added to the two-stage ranker
    refresh_replay_share: Annotated[float, Field(ge=0, le=0.95)] = 0.5  # online refresh: share of the examples drawn from before the new events (guards against forgetting)
    refresh_holdout_days: Positive = 1.0  # online refresh: the newest slice of the new events, held out to compare the refreshed model with the live one
    refresh_max_item_growth: Positive = 0.2  # online refresh: declines once the catalogue has grown by more than this share since the full batch's model
    refresh_tolerance: Annotated[float, Field(allow_inf_nan=False)] = 0.0  # online refresh: fraction of the live model's metric on the held-out slice a refreshed model may trail it by

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError("; ".join(_problem(error) for error in exc.errors())) from None

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   **_: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        # Building Settings directly takes only its arguments (deterministic in tests and tasks);
        # load() adds the environment and the file.
        return (init_settings,)

    @field_validator("event_weights", mode="before")
    @classmethod
    def _merge_over_default_weights(cls, value: Any) -> dict[str, float]:
        try:
            pairs = dict(p.split("=", 1) for p in value.split(",") if p.strip()) if isinstance(value, str) else dict(value)
            return {**_default_event_weights(), **{str(k).strip(): float(v) for k, v in pairs.items()}}
        except (TypeError, ValueError):
            raise ValueError(f"cannot read {value!r} as event weights (event_type=weight,...)") from None

    @field_validator("batch_schedule")
    @classmethod
    def _cron_or_manual(cls, value: str) -> str:
        from croniter import croniter  # Airflow's own cron parser

        if value != "manual" and not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression (minute hour day month weekday) or manual")
        return value

    @model_validator(mode="after")
    def _pseudonym_needs_a_key(self) -> "Settings":
        if self.pseudonymise and not self.pseudonym_key:
            raise ValueError("pseudonymise is on but pseudonym_key is empty: set FRESHREC_PSEUDONYM_KEY to a secret")
        return self

    @property
    def api_key_list(self) -> list[str]:
        """The keys that may write to the event API (FRESHREC_API_KEYS)."""
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    @property
    def pseudonym_key_bytes(self) -> bytes | None:
        """The key user ids are hashed with at ingest, or None when ids stay as they are."""
        return self.pseudonym_key.encode("utf-8") if self.pseudonymise else None

    def user_key(self, user_id: str) -> str:
        """How ``user_id`` (as a shop knows it) is stored in the lake, the features and the store."""
        from freshrec.jobs.rules import pseudonym

        key = self.pseudonym_key_bytes
        return pseudonym(str(user_id).strip(" "), key) if key else str(user_id)

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
                     self.reports_dir, self.airflow_home):
            path.mkdir(parents=True, exist_ok=True)

    def replace(self, **changes: Any) -> "Settings":
        """A copy with ``changes``, validated like any other settings."""
        return type(self)(**{**dict(self), **changes})

    # -- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, config_file: Path | None = None) -> "Settings":
        """``env`` (default ``os.environ``) over the TOML file over the defaults."""
        env = os.environ if env is None else env
        path = Path(config_file or env.get("FRESHREC_CONFIG") or "freshrec.toml")
        try:
            from_file = TomlConfigSettingsSource(cls, toml_file=path)()
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"cannot read {path}: {exc}") from None
        unknown = sorted(set(from_file) - set(cls.model_fields))
        if unknown:
            raise SettingsError(f"unknown setting(s) in {path}: {', '.join(unknown)}")
        return cls(**{**from_file, **_EnvSource(cls, env)()})


class _EnvSource(PydanticBaseSettingsSource):
    """The ``FRESHREC_<FIELD>`` variables of one mapping (``os.environ`` or a task's environment);
    an empty variable counts as unset. Values stay strings: the fields' validation reads them."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]):
        super().__init__(settings_cls)
        self.env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.env.get(env_name(field_name)) or None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found = (self.get_field_value(field, name) for name, field in self.settings_cls.model_fields.items())
        return {name: value for value, name, _ in found if value is not None}


_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"}
_BOUND_WORDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _problem(error: Mapping[str, Any]) -> str:
    """One validation error in the words of the variable a user sets."""
    field = str(error["loc"][0]) if error["loc"] else ""
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        return f"unknown setting {field!r}"
    if error["type"] == "literal_error":
        return f"{env_name(field)} must be one of {error['ctx']['expected']}, got {value!r}"
    if error["type"] == "value_error":
        return f"{env_name(field)}: {error['ctx']['error']}" if field else str(error["ctx"]["error"])
    if error["type"] == "string_pattern_mismatch":
        return f"{env_name(field)} must match {error['ctx']['pattern']}, got {value!r}"
    info = Settings.model_fields[field]
    if error["type"] in _BOUND_ERRORS:
        bounds = [f"{word} {getattr(m, key)}" for m in info.metadata for key, word in _BOUND_WORDS if getattr(m, key, None) is not None]
        return f"{env_name(field)} must be {' and '.join(bounds) or 'a finite number'}, got {value!r}"
    return f"{env_name(field)}: cannot read {value!r} as {getattr(info.annotation, '__name__', info.annotation)}"


def _env_value(value: Any) -> str:
    if isinstance(value, dict):  # event_weights: "view=1.0,purchase=5.0" (what Settings.load parses)
        return ",".join(f"{k}={float(v)!r}" for k, v in value.items())
    return str(value)


def settings_to_env(settings: Settings) -> dict[str, str]:
    """``FRESHREC_*`` variables that make ``Settings.load()`` rebuild ``settings`` elsewhere.

    Every field is exported (not only the non-default ones) so a ``freshrec.toml`` in the task's
    working directory cannot make a task disagree with its caller. Paths are absolute already:
    tasks may run with another working directory. Empty strings are skipped, since
    ``Settings.load`` treats them as unset anyway.
    """
    env: dict[str, str] = {}
    for name in Settings.model_fields:
        value = _env_value(getattr(settings, name))
        if value != "":
            env[env_name(name)] = value
    return env
