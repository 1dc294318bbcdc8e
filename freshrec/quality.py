"""Data-quality gate for a cleaned events batch: the Great Expectations suite in
expectations/events.json plus the quarantine-ratio check.

GX runs on its Spark datasource straight on the batch DataFrame, so nothing is collected to the
driver. The GX context is ephemeral and rebuilt from the JSON suite on every call, so reruns never
pile up datasources, suites or checkpoints. Only two things touch disk: validation results under
``<home>/gx/validations`` (they feed the Data Docs index, one entry per batch_id) and the Data
Docs HTML under ``<home>/reports/data_docs``.

GX's pages load their scripts, stylesheets and fonts from CDNs; after each build they are pointed
at copies freshrec ships (freshrec/static/data_docs, see its README), so the site renders offline.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freshrec.errors import QualityGateError
from freshrec.fileio import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from freshrec.settings import Settings

EXPECTATIONS_DIR = Path(__file__).resolve().parents[1] / "expectations"
EVENTS_SUITE = "events.json"
DOCS_SITE = "freshrec"
# The Data Docs index lists at most this many validation runs, newest first: building it reads
# every listed result, and micro-batches add one every few minutes.
DOCS_INDEX_LIMIT = 200
# SUMMARY: unexpected counts plus up to 20 example values per rule, for the error message and the
# report. BOOLEAN_ONLY skips one example-value scan per rule (1-3 s on 800k rows) but leaves a failure
# unexplained.
RESULT_FORMAT = "SUMMARY"

log = logging.getLogger(__name__)

VENDORED = Path(__file__).resolve().parent / "static" / "data_docs"
#: the folder of the vendored files in the Data Docs site's static/ (beside GX's fonts and images)
VENDOR = "vendor"
_ASSET_TAG = re.compile(r"<(?:script|link)\b[^>]*>")
_ASSET_URL = re.compile(r'\b(?:src|href)="(https?://[^"]+)"')
# Subresource-integrity attributes ask for a CORS fetch, which a page opened from file:// cannot make.
_SRI = re.compile(r'\s+(?:integrity|crossorigin)="[^"]*"')
# The GX logo, linked from GX's S3 bucket, is in the site's own static/images as well.
_GX_LOGO = re.compile(r"https://great-expectations-web-assets\.s3\.us-east-2\.amazonaws\.com/[\w.-]+\.png(?:\?[^\"')\s]*)?")


def quarantine_ratio(counts: dict[str, int]) -> float:
    read = int(counts.get("read", 0))
    return int(counts.get("quarantined", 0)) / read if read > 0 else 0.0


def validate_events(df: "DataFrame", settings: "Settings", batch_id: str, counts: dict[str, int]) -> dict:
    """Validate one cleaned batch against the lake/events contract; raise QualityGateError on failure.

    Returns {"success", "evaluated", "failed", "report", "quarantine_ratio"}.
    """
    ratio = quarantine_ratio(counts)
    now = dt.datetime.now(dt.timezone.utc)
    parameters = {
        "min_ts": _parse_utc(settings.min_event_ts),
        "max_ts": now + dt.timedelta(hours=settings.max_future_skew_hours),
    }
    result, report = _run_suite(df, settings, EXPECTATIONS_DIR / EVENTS_SUITE, batch_id, parameters, now)

    failures = [r for r in result.results if not r.success]
    summary = {
        "success": bool(result.success) and ratio <= settings.max_quarantine_ratio,
        "evaluated": len(result.results),
        "failed": [_expectation_name(r.expectation_config) for r in failures],
        "report": str(report),
        "quarantine_ratio": ratio,
    }

    problems = [f"{_expectation_name(r.expectation_config)}: {_observed(r)}" for r in failures]
    if ratio > settings.max_quarantine_ratio:
        problems.append(
            f"quarantine ratio {ratio:.4f} ({counts.get('quarantined', 0)} of {counts.get('read', 0)} rows read) "
            f"is above the threshold {settings.max_quarantine_ratio} (FRESHREC_MAX_QUARANTINE_RATIO); "
            f"see the reasons in the quarantine table {settings.quarantine_path} (batch_id={batch_id})"
        )
    if problems:
        error = QualityGateError(
            f"quality gate failed for batch {batch_id}: {len(problems)} problem(s): "
            + "; ".join(problems)
            + f". Data Docs report: {report}"
        )
        error.summary = summary  # type: ignore[attr-defined]  # for callers that record the run
        raise error
    return summary


# -- GX plumbing ---------------------------------------------------------------------------


def _run_suite(df: "DataFrame", settings: "Settings", suite_path: Path, batch_id: str,
               parameters: dict[str, Any], run_time: dt.datetime) -> tuple[Any, Path]:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.core.run_identifier import RunIdentifier

    results_dir = (settings.home / "gx" / "validations").resolve()
    docs_dir = (settings.reports_dir / "data_docs").resolve()
    context = _ephemeral_context(results_dir, docs_dir)

    suite_json = json.loads(suite_path.read_text())
    suite = gx.ExpectationSuite(**suite_json)
    # GX logs and drops an expectation it cannot parse; a contract must never shrink silently.
    if len(suite.expectations) != len(suite_json.get("expectations", [])):
        raise QualityGateError(
            f"{suite_path}: only {len(suite.expectations)} of {len(suite_json['expectations'])} "
            "expectations could be parsed by Great Expectations (see the log above)"
        )
    suite = context.suites.add(suite)

    asset = context.data_sources.add_spark(name="freshrec_spark").add_dataframe_asset(name=suite.name)
    batch_definition = asset.add_batch_definition_whole_dataframe("batch")
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{suite.name}_batch", data=batch_definition, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{suite.name}_gate",
            validation_definitions=[validation],
            actions=[UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])],
            result_format={"result_format": RESULT_FORMAT},
        )
    )

    # The run name is a folder name in both stores: GX rejects separators in it.
    run_name = batch_id.replace("/", "_").replace("\\", "_") or "_"
    _forget_run(context, results_dir, docs_dir, suite.name, run_name)
    was_cached = df.is_cached
    try:
        checkpoint_result = checkpoint.run(
            batch_parameters={"dataframe": df},
            expectation_parameters=parameters,
            run_id=RunIdentifier(run_name=run_name, run_time=run_time),
        )
    finally:
        # GX persists the batch for its many passes; give the memory back unless the caller cached it.
        if not was_cached:
            df.unpersist()
    (result,) = checkpoint_result.run_results.values()
    localize_data_docs(docs_dir)
    return result, docs_dir / "index.html"


def _ephemeral_context(results_dir: Path, docs_dir: Path) -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    defaults = InMemoryStoreBackendDefaults()
    stores = dict(defaults.stores)
    stores[defaults.validation_results_store_name] = {
        "class_name": "ValidationResultsStore",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(results_dir)},
    }
    config = DataContextConfig(
        store_backend_defaults=defaults,
        stores=stores,
        data_docs_sites={
            DOCS_SITE: {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder", "validation_results_limit": DOCS_INDEX_LIMIT},
            }
        },
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def localize_data_docs(docs_dir: Path) -> int:
    """Point every page of the Data Docs site at ``docs_dir``/static/vendor, where the vendored
    copies of the CDN files GX links are copied. Idempotent: a file is copied only when it
    differs, a page written only when it changes. Returns how many pages were rewritten."""
    manifest = json.loads((VENDORED / "manifest.json").read_text(encoding="utf-8"))
    for entry in manifest:
        data = (VENDORED / entry["file"]).read_bytes()
        target = docs_dir / "static" / VENDOR / entry["file"]
        if not target.is_file() or target.read_bytes() != data:
            atomic_write_bytes(target, data)
    local = {url: entry["file"] for entry in manifest for url in entry["replaces"]}
    rewritten, unknown = 0, set()
    for page in docs_dir.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        static = Path(os.path.relpath(docs_dir / "static", page.parent)).as_posix()
        new = _localized(text, local, static, unknown)
        if new != text:
            atomic_write_text(page, new)
            rewritten += 1
    if unknown:  # a GX upgrade linked something new: freshrec/static/README.md says how to add it
        log.warning("Data Docs still load %d file(s) from the network: %s", len(unknown), ", ".join(sorted(unknown)))
    return rewritten


def _localized(text: str, local: dict[str, str], static: str, unknown: set[str]) -> str:
    def tag(match: re.Match[str]) -> str:
        found = _ASSET_URL.search(match.group(0))
        if found is None:
            return match.group(0)
        if found.group(1) not in local:
            unknown.add(found.group(1))
            return match.group(0)
        return _SRI.sub("", match.group(0).replace(found.group(1), f"{static}/{VENDOR}/{local[found.group(1)]}"))

    return _GX_LOGO.sub(f"{static}/images/logo-long.png", _ASSET_TAG.sub(tag, text))


def _forget_run(context: Any, results_dir: Path, docs_dir: Path, suite_name: str, run_name: str) -> None:
    """A rerun of a batch replaces its earlier result and report page instead of adding another."""
    store = context.validation_results_store
    for key in store.list_keys():
        if key.run_id.run_name == run_name and key.expectation_suite_identifier.name == suite_name:
            store.remove_key(key)
    # The filesystem backends keep the emptied run folders and the rendered pages: drop them too.
    if run_name in (".", ".."):
        return  # never let rmtree climb out of the suite folder
    for stale in (results_dir / suite_name / run_name, docs_dir / "validations" / suite_name / run_name):
        if stale.is_dir():
            shutil.rmtree(stale)


# -- messages ------------------------------------------------------------------------------


def _parse_utc(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _expectation_name(config: Any) -> str:
    kwargs = config.kwargs
    where = f"column={kwargs['column']}" if kwargs.get("column") else "table"
    if kwargs.get("row_condition"):
        where += f" where {_condition_text(kwargs['row_condition'])}"
    return f"{config.type}({where})"


def _condition_text(condition: Any) -> str:
    from great_expectations.expectations.row_conditions import deserialize_row_condition

    try:
        return repr(deserialize_row_condition(condition))  # e.g. "event_type != search"
    except (TypeError, ValueError):
        return repr(condition)


def _observed(result: Any) -> str:
    config = result.expectation_config
    info = result.exception_info or {}
    if info.get("raised_exception"):
        return f"error: {info.get('exception_message')}"
    res = result.result or {}
    if "observed_value" in res:
        text = f"observed {res['observed_value']!r}"
    elif "unexpected_count" in res:
        examples = [str(v) for v in (res.get("partial_unexpected_list") or [])[:5]]
        text = (f"observed {res['unexpected_count']} unexpected of {res.get('element_count')} rows"
                f" ({res.get('unexpected_percent') or 0:.3g}%), e.g. [{', '.join(examples)}]")
    elif config.type == "expect_column_to_exist":
        return "observed: the column is missing from the batch"
    else:
        text = f"observed {res!r}"
    bounds = {k: config.kwargs.get(k) for k in ("min_value", "max_value") if config.kwargs.get(k) is not None}
    if bounds:
        text += f" (allowed {bounds.get('min_value', '-inf')} .. {bounds.get('max_value', '+inf')})"
    return text
