"""MLflow side effects: runs, metrics, plots, the logged and registered model, aliases.

Everything goes through an explicit tracking URI (Settings.tracking_uri, a sqlite:/// file under
FRESHREC_HOME by default); the process-wide MLflow tracking and registry URIs are set only for
the duration of a call and restored afterwards. Runs live in experiment ``freshrec`` with the tag
``freshrec.kind`` = ``model`` or ``baseline``; the model is registered as ``freshrec``. The
experiment keeps its artifacts (plots, logged models, so the registered versions too) under
``$FRESHREC_HOME/mlartifacts`` unless ``mlflow_artifact_root`` or a tracking server says where.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from freshrec.models.evaluate import EvalResult, catalogue_popularity
from freshrec.models.gate import CHALLENGER, CHAMPION
from freshrec.models.metrics import per_user_metrics, popularity_rank
from freshrec.models.split import EvalSet

log = logging.getLogger(__name__)

EXPERIMENT = "freshrec"
REGISTERED_MODEL = "freshrec"
KIND_TAG = "freshrec.kind"
CURVE_KS = (1, 2, 5, 10, 20, 50, 100)
CURVES_PLOT = "plots/metric_at_k.png"  # NDCG@K and recall@K of the model and every baseline, on the model's run
ARTIFACTS_DIR = "mlartifacts"  # under FRESHREC_HOME
# The experiment's kind, in the tag MLflow's own kind selector writes. The UI of MLflow 3.17.2
# opens an experiment on its last used view whatever the tag says, the (empty) GenAI overview at
# first; UI_TRAINING_VIEW in a URL opens the training runs instead.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"
UI_TRAINING_VIEW = "workflowType=machine_learning"
SERVER_SCHEMES = ("http", "https", "databricks")  # a tracking server chooses its own artifact root
_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def artifact_location(settings) -> str | None:
    """Where a new ``freshrec`` experiment keeps its artifacts: ``mlflow_artifact_root`` (a URI,
    or a path made absolute), else ``$FRESHREC_HOME/mlartifacts``; None (the server's root)
    behind a tracking server. MLflow's own default for a database store is ./mlruns of
    whatever directory the process runs in."""
    root = settings.mlflow_artifact_root
    if root:
        return root if "://" in root else Path(root).resolve().as_uri()
    if is_server(settings.tracking_uri):
        return None
    return (settings.home / ARTIFACTS_DIR).resolve().as_uri()


def is_server(uri: str) -> bool:
    return uri.split(":", 1)[0].lower() in SERVER_SCHEMES


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Raise UserError at once when a tracking server does not answer, instead of MLflow's own
    retries (minutes) ending in a stack of HTTP errors. Any HTTP answer counts as reachable."""
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit, urlunsplit

    from freshrec.errors import UserError

    if uri.split(":", 1)[0].lower() not in ("http", "https"):
        return
    parts = urlsplit(uri)
    shown = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))  # no credentials in messages
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return  # it answered
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"MLflow tracking server {shown} is unreachable ({reason}): nothing was trained or "
                        "registered, and the live version keeps serving; start the server or fix "
                        "FRESHREC_MLFLOW_TRACKING_URI, then rerun") from None


def run_url(ui: str, experiment: str, run_id: str, artifact: str | None = None) -> str:
    """The MLflow UI at ``ui`` on a run, or on one of its artifacts, in the training runs view."""
    page = f"{ui.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}" + (f"/artifacts/{artifact}" if artifact else "")
    return f"{page}?{UI_TRAINING_VIEW}"


@contextlib.contextmanager
def tracking(settings) -> Iterator[Any]:
    """An MlflowClient on ``settings.tracking_uri``, with the fluent API's tracking and registry
    URIs pointed there too, restored on exit; experiment ``freshrec`` exists on entry.

    mlflow.set_tracking_uri and set_registry_uri also export MLFLOW_TRACKING_URI and
    MLFLOW_REGISTRY_URI (Settings.tracking_uri reads the first): both are restored, so one store
    never leaks into the next call. The registry is set too so that log_model registers, and
    models:/ URIs load, in this store even where MLFLOW_REGISTRY_URI names another.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = settings.tracking_uri
    check_reachable(uri)
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    previous_env = {name: os.environ.get(name) for name in _URI_VARIABLES}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        ensure_experiment(client, settings)
        yield client
    finally:
        if previous is not None:
            mlflow.set_tracking_uri(previous)
        mlflow.set_registry_uri(previous_env["MLFLOW_REGISTRY_URI"] or "")  # "": the variable or the tracking URI again
        for name, value in previous_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def ensure_experiment(client, settings) -> str:
    """The id of experiment ``freshrec``, created with :func:`artifact_location` and tagged as
    model development. An existing experiment keeps its artifact location (MLflow cannot move
    it); it is only tagged."""
    from mlflow.exceptions import MlflowException

    wanted = artifact_location(settings)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        try:
            return client.create_experiment(EXPERIMENT, artifact_location=wanted,
                                            tags={EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT})
        except MlflowException as exc:  # another task created it between the two calls
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(EXPERIMENT)
    if exp.tags.get(EXPERIMENT_KIND_TAG) != MODEL_DEVELOPMENT:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)
    if wanted is not None and exp.artifact_location.rstrip("/") != wanted.rstrip("/"):
        log.info("MLflow experiment %s (id %s) keeps its artifacts in %s, not %s: it was created before, "
                 "and an experiment's artifact location cannot change", EXPERIMENT, exp.experiment_id,
                 exp.artifact_location, wanted)
    return exp.experiment_id


def experiment_id(client) -> str:
    """The id of experiment ``freshrec`` (:func:`tracking` creates it on entry)."""
    return client.get_experiment_by_name(EXPERIMENT).experiment_id


def start_run(client, kind: str, name: str, params: dict[str, Any], tags: dict[str, str] | None = None) -> str:
    """A new run in experiment ``freshrec`` with its kind tag and params; returns the run id."""
    from mlflow.entities import Param

    run = client.create_run(experiment_id(client), run_name=name, tags={KIND_TAG: kind, **(tags or {})})
    run_id = run.info.run_id
    items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100])
    return run_id


def log_metrics(client, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    rows = [Metric(k, float(v), now, step) for k, v in sorted(metrics.items()) if v is not None and np.isfinite(v)]
    for start in range(0, len(rows), 500):
        client.log_batch(run_id, metrics=rows[start:start + 500])


def log_curve(client, run_id: str, rows: list[dict[str, float]]) -> None:
    """A learning curve (one dict of metrics per step) in batches."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, step) for step, row in enumerate(rows) for k, v in sorted(row.items())
               if v is not None and np.isfinite(v)]
    for start in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[start:start + 500])


def log_plots(client, run_id: str, eval_set: EvalSet, results: dict[str, EvalResult], focus: str) -> None:
    """metric@K curves of every result, and the popularity of ``focus``'s lists vs consumed items."""
    folder, name = CURVES_PLOT.split("/")
    with tempfile.TemporaryDirectory() as tmp:
        curves = Path(tmp) / name
        plot_metric_curves(eval_set, results, curves, focus)
        client.log_artifact(run_id, str(curves), folder)
        if focus in results:
            pop = Path(tmp) / "popularity_recommended_vs_consumed.png"
            plot_popularity(eval_set, results[focus].recs, pop, label=focus)
            client.log_artifact(run_id, str(pop), folder)


def plot_metric_curves(eval_set: EvalSet, results: dict[str, EvalResult], path: Path, focus: str | None = None) -> None:
    """NDCG@K and recall@K at every K of CURVE_KS a list is long enough for, one line per
    result; ``focus`` (the model) drawn last, thick and black, so it reads against every baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, result in sorted(results.items(), key=lambda item: (item[0] == focus, item[0])):
        ks = tuple(k for k in CURVE_KS if k <= result.recs.shape[1])
        per_user = per_user_metrics(result.recs, eval_set.targets, ks)
        style = {"color": "black", "linewidth": 2.5, "zorder": 3} if name == focus else {}
        for ax, metric in zip(axes, ("ndcg", "recall"), strict=True):
            ax.plot(ks, [per_user[f"{metric}_at_{k}"].mean() for k in ks], marker="o", label=name, **style)
    for ax, metric in zip(axes, ("NDCG", "recall"), strict=True):
        ax.set_xscale("log")
        ax.set_xticks(CURVE_KS, [str(k) for k in CURVE_KS])
        ax.set_xlabel("K")
        ax.set_title(f"{metric}@K")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_popularity(eval_set: EvalSet, recs: np.ndarray, path: Path, label: str, k: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranks = popularity_rank(catalogue_popularity(eval_set))
    top = recs[:, :k]
    recommended = ranks[top[top >= 0]]
    consumed = ranks[eval_set.targets.values[eval_set.targets.values >= 0]]
    bins = np.unique(np.geomspace(1, max(len(ranks), 2), 30).astype(int))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(consumed, bins=bins, alpha=0.5, density=True, label="consumed (held-out window)")
    ax.hist(recommended, bins=bins, alpha=0.5, density=True, label=f"recommended top-{k} ({label})")
    ax.set_xscale("log")
    ax.set_xlabel("item popularity rank (1 = most popular)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def log_and_register_model(client, run_id: str, model, alias: str | None = CHALLENGER) -> str:
    """Log ``model`` into the run, registered as ``freshrec``; alias ``challenger`` (``alias``;
    None: none, as an online refresh registers).

    The sequence model (a torch module) goes through ``mlflow.pytorch`` with pickle
    serialization: a Python object with its vocabulary and item statistics beside the weights,
    which a pt2 export would reduce to a traced graph. Any other recommender (the two-stage
    ranker) is a pyfunc model, ``RecommenderModel``, whose ``predict`` takes events and returns
    top-k lists; ``load_model_version`` returns the recommender inside either.
    """
    import mlflow

    requirements = [f"mlflow=={mlflow.__version__}", "numpy", "scipy", "pandas"]
    with mlflow.start_run(run_id=run_id):
        if _is_torch(model):
            import torch

            info = mlflow.pytorch.log_model(
                model, name="model", serialization_format="pickle", registered_model_name=REGISTERED_MODEL,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", *requirements])
        else:
            import lightgbm
            from freshrec.models.pyfunc import RecommenderModel

            info = mlflow.pyfunc.log_model(
                name="model", python_model=RecommenderModel(model), registered_model_name=REGISTERED_MODEL,
                pip_requirements=[f"lightgbm=={lightgbm.__version__}", *requirements])
    version = str(info.registered_model_version)
    if alias is not None:
        client.set_registered_model_alias(REGISTERED_MODEL, alias, version)
    return version


def _is_torch(model) -> bool:
    import torch

    return isinstance(model, torch.nn.Module)


def champion_version(client) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION).version)
    except MlflowException:
        return None


def load_model_version(version: str, map_location: str = "cpu"):
    """The recommender of a registered version, whichever flavor logged it (call inside ``tracking``)."""
    import mlflow

    uri = f"models:/{REGISTERED_MODEL}/{version}"
    if "pytorch" in mlflow.models.get_model_info(uri).flavors:
        return mlflow.pytorch.load_model(uri, map_location=map_location)
    return mlflow.pyfunc.load_model(uri).unwrap_python_model().recommender


BATCH_TAG = "freshrec.batch_id"
WINDOW_TAG = "freshrec.window"


def batch_runs(client, kind: str, batch_id: str) -> list:
    """The runs of ``kind`` tagged with ``batch_id`` (not deleted)."""
    return client.search_runs([experiment_id(client)],
                              filter_string=f"tags.`{KIND_TAG}` = '{kind}' and tags.`{BATCH_TAG}` = '{batch_id}'",
                              max_results=1000)


def registered_for_batch(client, batch_id: str, window: dict[str, Any]) -> dict[str, Any] | None:
    """What a finished train of this batch on this window registered, for a rerun to reuse."""
    from mlflow.exceptions import MlflowException

    for run in batch_runs(client, "model", batch_id):
        if run.data.tags.get(WINDOW_TAG) != window_tag(window) or run.info.status == "FAILED":
            continue
        try:
            versions = client.search_model_versions(f"run_id = '{run.info.run_id}'")
        except MlflowException:
            continue
        if versions:
            m = run.data.metrics
            return {"run_id": run.info.run_id, "version": str(versions[0].version), "window": window,
                    "train_seconds": m.get("train_seconds", 0.0), "examples_per_second": m.get("examples_per_second", 0.0),
                    "best_epoch": int(m.get("best_epoch", -1)), "reused": True}
    return None


def window_tag(window: dict[str, Any]) -> str:
    return f"{window['cutoff']}/{window['window_days']}d/{window['exclude_seen']}"


def find_run(settings, run_id: str | None = None, version: str | None = None) -> dict[str, str] | None:
    """``experiment_id`` and ``run_id`` of ``run_id``, or of the run that logged registered
    ``version``; None when there is no local store to ask. Read only: no store, experiment or
    directory is created (unlike :func:`tracking`). MlflowException when the store lacks them."""
    from mlflow.tracking import MlflowClient

    uri = settings.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return None
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if run_id is None:
        run_id = client.get_model_version(REGISTERED_MODEL, str(version)).run_id
    return {"experiment_id": client.get_run(run_id).info.experiment_id, "run_id": run_id}
