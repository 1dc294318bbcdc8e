"""``freshrec quarantine`` and the per-reason counts of ``freshrec status``: the rows the clean
job set aside (lake/quarantine, docs/tables.md), read with pyarrow, no Spark.

A row's ``reason`` lists every rule it broke, ``code: message`` joined by ``; ``
(docs/events.md#quarantine): a row counts under each of its codes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from freshrec.errors import UserError
from freshrec.jobs.rules import REASON_CODES
from freshrec.settings import Settings

COLUMNS = ("source_file", "reason", "raw", "batch_id")


def _dataset(path: Path):
    import pyarrow.dataset as ds

    if not path.is_dir():
        return None
    dataset = ds.dataset(str(path), format="parquet", partitioning="hive")
    return dataset if "reason" in dataset.schema.names else None  # no file written yet


def codes_of(reason: str) -> list[str]:
    return [part.split(":", 1)[0].strip() for part in reason.split("; ")]


def reason_counts(path: Path) -> dict[str, int]:
    """Quarantined rows per reason code, most first; a row with several codes counts under each."""
    dataset = _dataset(path)
    if dataset is None:
        return {}
    # distinct reason texts are few next to the rows: count those, then split them
    counted = dataset.to_table(columns=["reason"]).group_by("reason").aggregate([("reason", "count")])
    out: dict[str, int] = {}
    for reason, n in zip(counted["reason"].to_pylist(), counted["reason_count"].to_pylist(), strict=True):
        for code in codes_of(str(reason)):
            out[code] = out.get(code, 0) + int(n)
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def quarantined(path: Path, reason: str | None = None, source_file: str | None = None,
                limit: int = 20) -> dict[str, Any]:
    """``{"total": rows matching, "rows": the first limit of them}``, each row with
    ``source_file``, ``batch_id``, ``codes``, ``reason`` and ``raw`` (the line as it landed)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    if reason is not None and reason not in REASON_CODES:
        raise UserError(f"--reason {reason!r} is not a reason code; expected one of {', '.join(REASON_CODES)}")
    dataset = _dataset(path)
    if dataset is None:
        return {"total": 0, "rows": []}
    where = None
    if reason is not None:
        where = pc.match_substring_regex(ds.field("reason"), f"(^|; ){reason}:")
    if source_file is not None:
        by_file = ds.field("source_file") == Path(source_file).name
        where = by_file if where is None else where & by_file
    total = dataset.count_rows(filter=where)
    columns = [c for c in COLUMNS if c in dataset.schema.names]
    table = dataset.scanner(columns=columns, filter=where).head(limit) if total else None
    rows = table.to_pylist() if table is not None else []
    for row in rows:
        row["codes"] = codes_of(row["reason"])
    return {"total": total, "rows": rows}


def quarantined_files(settings: Settings, reason: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
    """The landing files set aside whole (freshrec.intake), newest first: name, code, message,
    batch_id, path (where the file now is), quarantined_at, rows counted."""
    from freshrec.intake import FILE_REASON_CODES
    from freshrec.ledger import Ledger

    if reason is not None and reason not in FILE_REASON_CODES:
        raise UserError(f"--reason {reason!r} is not a file reason code; expected one of {', '.join(FILE_REASON_CODES)}")
    if not settings.state_db.is_file():
        return []
    out = []
    for file_name, state in Ledger(settings.state_db).landing_states().items():
        if state["state"] != "quarantined" or (reason and state["code"] != reason) or (name and file_name != Path(name).name):
            continue
        out.append({"name": file_name, "code": state["code"], "message": state["message"], "batch_id": state["batch_id"],
                    "path": state["path"], "quarantined_at": state["updated_at"], "bytes": state["size"]})
    return sorted(out, key=lambda f: (f["quarantined_at"], f["name"]), reverse=True)


def format_files(files: list[dict[str, Any]]) -> str:
    if not files:
        return "no landing file was quarantined whole"
    lines = []
    for f in files:
        lines.append(f"{f['name']}  [{f['batch_id']}]  {f['code']}: {f['message']}")
        lines.append(f"    now at {f['path']}")
    lines.append(f"{len(files):,} file(s); fix one and land it again under any name to have it read")
    return "\n".join(lines)


def format_rows(found: dict[str, Any], limit: int) -> str:
    """The text view: per row its file and reason, then the line as it landed."""
    if not found["total"]:
        return "no quarantined rows match"
    lines = []
    for row in found["rows"]:
        lines.append(f"{row['source_file']}  [{row.get('batch_id', '-')}]  {row['reason']}")
        lines.append(f"    {row['raw']}")
    shown = len(found["rows"])
    more = f" (--limit {limit}; more with a larger --limit, or --reason/--file)" if shown < found["total"] else ""
    lines.append(f"{shown:,} of {found['total']:,} quarantined row(s) shown{more}")
    return "\n".join(lines)
