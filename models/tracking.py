"""MLflow side effects: runs, metrics, plots, the logged and registered model, aliases.

Everything goes through an explicit tracking URI (Settings.tracking_uri, a sqlite:/// file under
FRESHREC_HOME by default); the process-wide MLflow URI is set only for the duration of a call
and restored afterwards. Runs live in experiment ``freshrec`` with the tag ``freshrec.kind`` =
``model`` or ``baseline``; the model is registered as ``freshrec``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from freshrec.models.evaluate import EvalResult, catalogue_popularity
from freshrec.models.gate import CHALLENGER, CHAMPION
from freshrec.models.metrics import per_user_metrics, popularity_rank
from freshrec.models.split import EvalSet

EXPERIMENT = "freshrec"
REGISTERED_MODEL = "freshrec"
KIND_TAG = "freshrec.kind"
CURVE_KS = (1, 2, 5, 10, 20, 50, 100)


@contextlib.contextmanager
def tracking(uri: str) -> Iterator[Any]:
    """An MlflowClient on ``uri`` with the fluent API pointed there too, restored on exit.

    mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI, which Settings.tracking_uri
    reads first: the variable is restored too, so one store never leaks into the next call.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)  # the registry follows the tracking URI
    try:
        yield MlflowClient(tracking_uri=uri, registry_uri=uri)
    finally:
        if previous is not None:
            mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def experiment_id(client) -> str:
    exp = client.get_experiment_by_name(EXPERIMENT)
    return exp.experiment_id if exp is not None else client.create_experiment(EXPERIMENT)


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


def log_plots(client, run_id: str, eval_set: EvalSet, results: dict[str, EvalResult], focus: str) -> None:
    """metric@K curves of every result, and the popularity of ``focus``'s lists vs consumed items."""
    with tempfile.TemporaryDirectory() as tmp:
        curves = Path(tmp) / "metric_at_k.png"
        plot_metric_curves(eval_set, results, curves)
        client.log_artifact(run_id, str(curves), "plots")
        if focus in results:
            pop = Path(tmp) / "popularity_recommended_vs_consumed.png"
            plot_popularity(eval_set, results[focus].recs, pop, label=focus)
            client.log_artifact(run_id, str(pop), "plots")


def plot_metric_curves(eval_set: EvalSet, results: dict[str, EvalResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, result in sorted(results.items()):
        ks = tuple(k for k in CURVE_KS if k <= result.recs.shape[1])
        per_user = per_user_metrics(result.recs, eval_set.targets, ks)
        for ax, metric in zip(axes, ("ndcg", "recall"), strict=True):
            ax.plot(ks, [per_user[f"{metric}_at_{k}"].mean() for k in ks], marker="o", label=name)
    for ax, metric in zip(axes, ("NDCG", "recall"), strict=True):
        ax.set_xscale("log")
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


def log_and_register_model(client, run_id: str, model) -> str:
    """mlflow.pytorch.log_model into the run, registered as ``freshrec``; alias ``challenger``.

    Pickle serialization: the model is a Python object with its vocabulary and item statistics
    beside the weights; a pt2 export would keep only a traced graph.
    """
    import mlflow
    import torch

    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model, name="model", serialization_format="pickle", registered_model_name=REGISTERED_MODEL,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "numpy", "scipy"],
        )
    version = str(info.registered_model_version)
    client.set_registered_model_alias(REGISTERED_MODEL, CHALLENGER, version)
    return version


def champion_version(client) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION).version)
    except MlflowException:
        return None


def load_model_version(version: str, map_location: str = "cpu"):
    """The logged model of a registered version (call inside ``tracking``)."""
    import mlflow

    return mlflow.pytorch.load_model(f"models:/{REGISTERED_MODEL}/{version}", map_location=map_location)


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
