"""Sending events to a running ``freshrec serve`` (``POST /v1/events``): ``freshrec send FILE``
and ``RecsClient.send_events``.

Events go in batches of at most 1,000 (the API takes up to 10,000 events and 5 MB per request).
A JSONL file's lines are sent as they are, as NDJSON, so each number keeps its text; a CSV
file's rows are sent as JSON objects of their non-empty cells, as the clean step reads a CSV
landing file. A batch that fails (no answer, a 5xx) is sent again, up to ``attempts`` times: a
re-sent event is counted as a duplicate, never twice. A 4xx (a bad key, an over-size batch) stops
the send with its message.
"""

from __future__ import annotations

import csv
import gzip
import io
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from freshrec.errors import UserError
from freshrec.fileio import json_line

BATCH = 1_000


def file_events(path: Path) -> Iterator[str]:
    """The events of a JSONL or CSV file (optionally gzip'd), each as one JSON text."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        if ".csv" in path.name.lower():
            for row in csv.DictReader(fh):
                yield json_line({k: v for k, v in row.items() if k and v not in (None, "")})
        else:
            for line in fh:
                if line.strip():
                    yield line.rstrip("\r\n")


def _texts(events: Iterable[str | Mapping[str, Any]]) -> Iterator[str]:
    for event in events:
        yield event if isinstance(event, str) else json_line(event)


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def send_events(url: str, events: Iterable[str | Mapping[str, Any]], api_key: str | None = None, batch_size: int = BATCH,
                on_batch: Callable[[dict[str, Any]], None] | None = None, attempts: int = 3,
                timeout: float = 60.0) -> dict[str, Any]:
    """POST ``events`` (dicts, or JSON texts) to ``url`` (the server's base URL) in batches;
    returns ``{"sent", "accepted", "duplicates", "rejected": [{"index", "reason", "message"}]}``,
    each rejected index counted from the first event sent."""
    import httpx

    if not 1 <= batch_size <= 10_000:
        raise UserError(f"batch size must be 1..10000, got {batch_size}")
    endpoint = url.rstrip("/") + "/v1/events"
    headers = {"Content-Type": "application/x-ndjson"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    totals: dict[str, Any] = {"sent": 0, "accepted": 0, "duplicates": 0, "rejected": []}
    with httpx.Client(timeout=timeout) as http:
        for batch in _batches(_texts(events), batch_size):
            body = ("\n".join(batch) + "\n").encode("utf-8")
            answer = _post(http, endpoint, body, headers, attempts)
            totals["accepted"] += answer["accepted"]
            totals["duplicates"] += answer["duplicates"]
            totals["rejected"] += [{**r, "index": r["index"] + totals["sent"]} for r in answer["rejected"]]
            totals["sent"] += len(batch)
            if on_batch is not None:
                on_batch(totals)
    return totals


def _post(http, endpoint: str, body: bytes, headers: dict[str, str], attempts: int) -> dict[str, Any]:
    import httpx

    for attempt in range(1, attempts + 1):
        try:
            resp = http.post(endpoint, content=body, headers=headers)
        except httpx.HTTPError as exc:
            problem = f"no answer from {endpoint}: {exc}"
        else:
            if resp.status_code == 200:
                return resp.json()
            problem = f"{endpoint} answered {resp.status_code}: {_error_text(resp)}"
            if resp.status_code < 500:
                raise UserError(problem)
        if attempt < attempts:
            time.sleep(min(2 ** attempt, 10))
    raise UserError(problem + f" (after {attempts} tries)")


def _error_text(resp) -> str:
    try:
        return str(resp.json().get("error"))
    except (ValueError, AttributeError):
        return resp.text[:200]


def progress_printer(total: int | None, stream: io.TextIOBase) -> Callable[[dict[str, Any]], None]:
    """A one-line progress display for ``on_batch`` (redrawn in place on a terminal)."""
    tty = stream.isatty()

    def show(totals: dict[str, Any]) -> None:
        done = totals["sent"]
        bar = ""
        if total:
            filled = int(30 * done / total)
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {done:,}/{total:,} "
        line = (f"{bar}sent {done:,}: {totals['accepted']:,} accepted, {totals['duplicates']:,} duplicates, "
                f"{len(totals['rejected']):,} rejected")
        stream.write(("\r" + line) if tty else line + "\n")
        stream.flush()

    return show


def summary_text(totals: dict[str, Any], limit: int = 10) -> str:
    lines = [f"sent {totals['sent']:,} events: {totals['accepted']:,} accepted, {totals['duplicates']:,} duplicates, "
             f"{len(totals['rejected']):,} rejected"]
    for r in totals["rejected"][:limit]:
        lines.append(f"  event {r['index']}: {r['message']}")
    if len(totals["rejected"]) > limit:
        lines.append(f"  ... and {len(totals['rejected']) - limit:,} more (--json lists them all)")
    return "\n".join(lines)


__all__ = ["send_events", "file_events", "progress_printer", "summary_text"]
