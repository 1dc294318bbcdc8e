"""Online experiments: champion against challenger on live traffic (docs/experiments.md).

An experiment is a row of the state DB's ``experiments`` table (:class:`ExperimentStore`): its
name, mode (``ab`` or ``interleave``), two variants (a name and what it serves: a model alias,
a registered version of ``freshrec`` or a baseline), their split, the share of users in it
(traffic), the metric it is decided on and, once published, the serving version of each
variant. It lives as long as the state DB: a restart of anything changes nothing.

* **Publishing** (:func:`publish_variants_step`, the batch's ``experiments`` task, also run by
  ``freshrec experiment create``): a variant that serves what the live version serves is the
  live version; any other is scored by the batch's own ``score`` step and published beside it
  as a version of its own, complete but not live. Prune never removes a version a running
  experiment serves (:func:`protected_versions`); the micro-batch and the real-time path
  refresh the lists of every such version for the users who acted (``freshrec.rescore``).
* **Serving** (:class:`ExperimentRouter`, in ``RecsClient.recs``): a user inside the traffic is
  given their variant's list (A/B: ``experiment_stats.assign`` on (salt, user)), or the
  team-draft interleaving of both (``interleave``); the answer and its impression carry
  ``experiment`` and ``variant`` (and, interleaved, each item's team). A user outside the traffic,
  or unknown to the variants' versions, gets the live version as before.
* **Reporting** (:func:`report`, ``freshrec.experiment_report``).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sqlite3
import threading
import time
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from freshrec.errors import UserError
from freshrec.settings import Settings

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MODES = ("ab", "interleave")
ALIASES = ("champion", "challenger")
#: what a variant may name besides an alias or a version (models/baselines.py)
BASELINES = ("popularity", "category_popularity", "trending", "repeat_buy", "cooccurrence_knn", "user_knn", "ease")
DEFAULT_METRIC = "purchase_conversion"
#: the interleaved answer's variant: its items carry their team (the variant that gave each)
INTERLEAVED = "interleaved"

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Experiment:
    name: str
    mode: str
    variants: dict[str, str]  # variant name -> spec (champion, challenger, version:3, baseline:popularity), in order
    split: list[float]
    traffic: float
    metric: str
    salt: str
    state: str = "running"
    created_at: str = ""
    stopped_at: str | None = None
    versions: dict[str, str] = field(default_factory=dict)  # variant -> serving version
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant -> what it serves (the publish dict)
    run_id: str | None = None  # its MLflow run
    report: dict[str, Any] | None = None  # the last report
    decision: dict[str, Any] | None = None  # set by promote

    @property
    def control(self) -> str:
        return list(self.variants)[0]

    @property
    def treatment(self) -> str:
        return list(self.variants)[1]

    @property
    def ready(self) -> bool:
        """Every variant has a published version: serving may assign users."""
        return self.state == "running" and all(v in self.versions for v in self.variants)

    def in_traffic(self, user_key: str) -> bool:
        from freshrec.experiment_stats import unit_hash

        return self.traffic >= 1.0 or unit_hash(self.salt, "traffic", str(user_key)) < self.traffic

    def variant_of(self, user_key: str) -> str | None:
        """The A/B variant of ``user_key``, or None outside the traffic (interleave: INTERLEAVED)."""
        from freshrec.experiment_stats import assign

        if not self.in_traffic(user_key):
            return None
        if self.mode == "interleave":
            return INTERLEAVED
        return assign(self.salt, str(user_key), list(self.variants), self.split)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("salt")
        return out


# -- parsing what a user types -------------------------------------------------------------

def parse_variants(text: str) -> dict[str, str]:
    """``control=champion,treatment=challenger`` -> ordered {name: normalised spec}; exactly two."""
    variants: dict[str, str] = {}
    for part in (p.strip() for p in str(text).split(",") if p.strip()):
        name, sep, spec = part.partition("=")
        name, spec = name.strip(), spec.strip()
        if not sep or not name or not spec:
            raise UserError(f"malformed variant {part!r}: use NAME=WHAT, e.g. control=champion,treatment=challenger")
        if not NAME_RE.match(name) or name == INTERLEAVED:
            raise UserError(f"malformed variant name {name!r}: letters, digits, '_', '-', '.' (and not {INTERLEAVED!r})")
        if name in variants:
            raise UserError(f"variant {name!r} is named twice")
        variants[name] = normalise_spec(spec)
    if len(variants) != 2:
        raise UserError(f"an experiment compares exactly two variants (control first), got {len(variants)}")
    if len(set(variants.values())) == 1:
        raise UserError("both variants serve the same thing; an A/A test needs two names for one model: "
                        "use a version number for one of them (version:N)")
    return variants


def normalise_spec(spec: str) -> str:
    """``champion`` / ``challenger``; ``version:N`` (also ``vN`` or ``N``); ``baseline:NAME`` (also ``NAME``)."""
    text = spec.strip().lower()
    if text in ALIASES:
        return text
    number = re.fullmatch(r"(?:version:|v)?(\d+)", text)
    if number:
        return f"version:{int(number.group(1))}"
    name = text.removeprefix("baseline:")
    if name in BASELINES:
        return f"baseline:{name}"
    raise UserError(f"unknown variant {spec!r}: a model alias ({', '.join(ALIASES)}), a registered version "
                    f"(version:N) or a baseline ({', '.join(BASELINES)})")


def parse_split(text: str) -> list[float]:
    try:
        shares = [float(p) for p in str(text).split(",")]
    except ValueError:
        raise UserError(f"malformed split {text!r}: give two positive shares, e.g. 50,50") from None
    if len(shares) != 2 or not all(0 < s < float("inf") for s in shares):
        raise UserError(f"malformed split {text!r}: give two positive shares, e.g. 50,50 or 90,10")
    return shares


def resolve_source(settings: Settings, spec: str, client=None) -> dict[str, Any]:
    """What ``spec`` serves now, as the gate's publish dict (``{"kind": "model", "name", "version"}``
    or ``{"kind": "baseline", "name"}``); an alias nothing holds is a UserError."""
    from freshrec.models import tracking

    kind, _, value = spec.partition(":")
    if kind == "baseline":
        return {"kind": "baseline", "name": value}
    if client is None:
        with tracking.tracking(settings) as own:
            return resolve_source(settings, spec, own)
    from mlflow.exceptions import MlflowException

    try:
        if kind == "version":
            version = client.get_model_version(tracking.REGISTERED_MODEL, value).version
        else:
            version = client.get_model_version_by_alias(tracking.REGISTERED_MODEL, spec).version
    except MlflowException:
        what = f"version {value}" if kind == "version" else f"alias {spec}"
        raise UserError(f"no registered model {tracking.REGISTERED_MODEL} has {what}: run `freshrec run batch` first "
                        "or name another variant") from None
    return {"kind": "model", "name": tracking.REGISTERED_MODEL, "version": str(version)}


def same_source(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    if not a or not b or a.get("kind") != b.get("kind"):
        return False
    if a["kind"] == "model":
        return str(a.get("version")) == str(b.get("version"))
    return a.get("name") == b.get("name")


# -- the store -----------------------------------------------------------------------------

class ExperimentStore:
    """The experiments table of the state DB (SQLite, beside the ledger)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        from freshrec.ledger import Ledger

        return Ledger(self.path)._connect()  # the state DB's schema, experiments included

    @staticmethod
    def _row(row: tuple) -> Experiment:
        (name, mode, variants, split, traffic, metric, salt, state, created_at, stopped_at, versions, sources, run_id,
         report, decision) = row
        return Experiment(name, mode, json.loads(variants), json.loads(split), traffic, metric, salt, state, created_at,
                          stopped_at, json.loads(versions), json.loads(sources), run_id,
                          json.loads(report) if report else None, json.loads(decision) if decision else None)

    def create(self, name: str, variants: dict[str, str], split: list[float], mode: str = "ab", traffic: float = 1.0,
               metric: str = DEFAULT_METRIC) -> Experiment:
        from freshrec.experiment_stats import METRICS

        if not NAME_RE.match(name or ""):
            raise UserError(f"malformed experiment name {name!r}: letters, digits, '_', '-', '.' (at most 64)")
        if mode not in MODES:
            raise UserError(f"unknown mode {mode!r}: {' or '.join(MODES)}")
        if metric not in METRICS:
            raise UserError(f"unknown metric {metric!r}: one of {', '.join(METRICS)}")
        if not 0 < traffic <= 1:
            raise UserError(f"traffic must be a share in (0, 1], got {traffic}")
        exp = Experiment(name, mode, dict(variants), list(split), float(traffic), metric, secrets.token_hex(8),
                         created_at=_now())
        with closing(self._connect()) as conn, conn:
            conn.execute("BEGIN IMMEDIATE")
            if conn.execute("SELECT 1 FROM experiments WHERE name = ?", (name,)).fetchone():
                raise UserError(f"experiment {name!r} exists already (experiments keep their names: pick another)")
            running = conn.execute("SELECT name FROM experiments WHERE state = 'running'").fetchone()
            if running:
                raise UserError(f"experiment {running[0]!r} is running: one experiment at a time splits the users' "
                                f"lists; stop it first (`freshrec experiment stop {running[0]}`)")
            conn.execute("INSERT INTO experiments (name, mode, variants, split, traffic, metric, salt, state, created_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?)",
                         (name, mode, json.dumps(exp.variants), json.dumps(exp.split), exp.traffic, metric, exp.salt,
                          exp.created_at))
        return exp

    def get(self, name: str) -> Experiment:
        with closing(self._connect()) as conn:
            row = conn.execute("SELECT * FROM experiments WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UserError(f"no experiment {name!r} (see `freshrec experiment list`)")
        return self._row(row)

    def all(self) -> list[Experiment]:
        if not self.path.is_file():
            return []
        with closing(self._connect()) as conn:
            return [self._row(r) for r in conn.execute("SELECT * FROM experiments ORDER BY rowid DESC")]

    def running(self) -> list[Experiment]:
        return [e for e in self.all() if e.state == "running"]

    def _set(self, name: str, **values: Any) -> None:
        columns = ", ".join(f"{k} = ?" for k in values)
        encoded = [json.dumps(v) if isinstance(v, (dict, list)) else v for v in values.values()]
        with closing(self._connect()) as conn, conn:
            conn.execute(f"UPDATE experiments SET {columns} WHERE name = ?", (*encoded, name))  # noqa: S608 - our column names

    def stop(self, name: str) -> Experiment:
        exp = self.get(name)
        if exp.state == "running":
            self._set(name, state="stopped", stopped_at=_now())
        return self.get(name)

    def discard(self, name: str) -> None:
        """Remove an experiment that never served anyone (its create failed): the name is free again."""
        with closing(self._connect()) as conn, conn:
            conn.execute("DELETE FROM experiments WHERE name = ? AND report IS NULL", (name,))

    def set_versions(self, name: str, versions: dict[str, str], sources: dict[str, dict[str, Any]]) -> None:
        self._set(name, versions=versions, sources=sources)

    def set_report(self, name: str, report: dict[str, Any], run_id: str | None) -> None:
        self._set(name, report=report, run_id=run_id)

    def set_decision(self, name: str, decision: dict[str, Any]) -> None:
        self._set(name, decision=decision)


def protected_versions(settings: Settings) -> set[str]:
    """The serving versions running experiments serve: prune keeps them."""
    return {v for e in ExperimentStore(settings.state_db).running() for v in e.versions.values()}


class ExperimentRouter:
    """The running experiment serving reads consult, re-read from the state DB at most every
    ``ttl_s`` seconds (so a create or stop shows within that time on every server)."""

    def __init__(self, settings: Settings, ttl_s: float = 2.0) -> None:
        self.store = ExperimentStore(settings.state_db)
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._current: Experiment | None = None

    def current(self) -> Experiment | None:
        now = time.monotonic()
        if now - self._at >= self.ttl_s:
            with self._lock:
                if now - self._at >= self.ttl_s:
                    try:
                        running = [e for e in self.store.running() if e.ready]
                    except sqlite3.Error as exc:  # the live lists still serve
                        log.warning("experiments unreadable (%s); serving the live version", exc)
                        running = []
                    self._current = running[0] if running else None
                    self._at = now
        return self._current


# -- publishing the variants ---------------------------------------------------------------

def publish_variants_step(settings: Settings, name: str | None = None) -> dict[str, Any]:
    """For each running experiment (or ``name``): resolve what each variant serves; one that
    serves what the live version serves is the live version, any other is scored by the batch's
    ``score`` step from the same features and published beside it, not live. A variant already
    published for this live version and source is kept (a rerun scores nothing)."""
    from freshrec.models import tracking
    from freshrec.rescore import catch_up_users, refresh_versions
    from freshrec.serving import open_store
    from freshrec.serving.publish import publish_tables
    from freshrec.steps import score_step

    store_ = ExperimentStore(settings.state_db)
    todo = [store_.get(name)] if name else store_.running()
    todo = [e for e in todo if e.state == "running"]
    if not todo:
        return {"experiments": 0}
    with open_store(settings.serving) as store:
        live = store.status()
    if live["live_version"] is None:
        return {"experiments": len(todo), "skipped": "nothing published yet: variants are published with the first batch"}
    live_version, live_model = live["live_version"], live["meta"].get("model") or {}
    out: dict[str, Any] = {}
    with tracking.tracking(settings) as client:
        resolved = {e.name: {v: resolve_source(settings, spec, client) for v, spec in e.variants.items()} for e in todo}
    for exp in todo:
        versions: dict[str, str] = {}
        for variant, source in resolved[exp.name].items():
            if same_source(source, live_model):
                versions[variant] = live_version
                continue
            with open_store(settings.serving) as store:
                old = exp.versions.get(variant)
                record = store.version_info(old) if old else None
            if (record and record["state"] in ("complete", "live") and same_source(exp.sources.get(variant), source)
                    and record["meta"].get("variant_of") == live_version):
                versions[variant] = old
                continue
            scored = score_step(settings, live["meta"].get("batch_id") or live_version, {"publish": source})
            meta = {"batch_id": scored["batch_id"], "model": {**source, "alias": None}, "users": scored["users"],
                    "items": scored["items"], "recommender_sha256": scored["recommender_sha256"],
                    "experiment": exp.name, "variant": variant, "variant_of": live_version}
            with open_store(settings.serving) as store:
                record = store.version_info(scored["version"])
                if record is None or record["state"] not in ("complete", "live"):
                    publish_tables(store, scored["version"], scored["recs_dir"], meta, keep=settings.keep_versions,
                                   activate=False, details=settings.features_dir / "item_stats",
                                   protect=protected_versions(settings) | {scored["version"]})
            # as the live version's publish does: the users of the micro-batches since the batch
            refresh_versions(settings, [scored["version"]], *catch_up_users(settings))
            versions[variant] = scored["version"]
        store_.set_versions(exp.name, versions, resolved[exp.name])
        out[exp.name] = versions
        log.info("experiment %s: variants served by %s", exp.name, versions)
    return {"experiments": len(todo), "versions": out}

