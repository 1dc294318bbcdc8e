"""The overview page of ``freshrec serve`` (``GET /``): one server-rendered HTML page with its
CSS inline and no script, so it needs nothing but this server.

It shows what serves (the live version, the recommender in its meta, the last gate decision),
how the model did against the baselines (the numbers of ``reports/gate.json``, the ones logged to
MLflow), what the pipeline counted (the ledger, and lake/quarantine grouped by reason), how fresh
the last micro-batches were (an inline SVG), and previews a user's list with item details
(``/?user=ID``). Every part degrades to a note when its source is missing; the page never fails
because one of them is.
"""

from __future__ import annotations

import json
import re
import sqlite3
from html import escape
from pathlib import Path
from typing import Any

from freshrec.client import RecsClient
from freshrec.ledger import COUNT_KEYS, Ledger
from freshrec.serving import ServingError, ServingStore
from freshrec.settings import Settings
from freshrec.status import FRESHNESS_WINDOW

PREVIEW_N = 10
TOP_REASONS = 10
METRIC_RE = re.compile(r"^(.+)_at_(\d+)$")
CHART_W, CHART_H, CHART_PAD = 640, 170, 40


# -- what the page shows ---------------------------------------------------------------------

def collect(store: ServingStore, client: RecsClient, settings: Settings | None, user: str | None) -> dict[str, Any]:
    """Everything the page shows (blocking reads: the store, the ledger, gate.json, the quarantine)."""
    try:
        live = store.status()
    except ServingError as exc:
        live = {"live_version": None, "error": str(exc)}
    data: dict[str, Any] = {"live": live, "gate": None, "counts": None, "microbatches": [], "reasons": [], "notes": []}
    if settings is not None:
        data["gate"] = _read_gate(settings.reports_dir / "gate.json", data["notes"])
        _read_ledger(settings.state_db, data)
        try:
            data["reasons"] = quarantine_reasons(settings.quarantine_path)
        except (OSError, ValueError) as exc:  # pyarrow's errors are both
            data["notes"].append(f"cannot read the quarantine at {settings.quarantine_path}: {exc}")
    if user is not None and user.strip():
        try:
            data["preview"] = client.recs(user.strip(), PREVIEW_N)
        except ServingError as exc:
            data["preview"] = {"user_id": user.strip(), "error": str(exc)}
    return data


def _read_gate(path: Path, notes: list[str]) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        notes.append(f"cannot read {path}: {exc}")
        return None


def _read_ledger(state_db: Path, data: dict[str, Any]) -> None:
    if not state_db.is_file():  # looking never creates a ledger
        return
    ledger = Ledger(state_db)
    try:
        data["counts"] = ledger.totals()
        data["microbatches"] = [m for m in ledger.recent_microbatches(FRESHNESS_WINDOW) if m.get("files")]
    except (sqlite3.Error, ValueError) as exc:
        data["notes"].append(f"cannot read {state_db}: {exc}")


def quarantine_reasons(path: Path) -> list[tuple[str, int]]:
    """Quarantined rows per reason, most first: one read of the ``reason`` column of
    lake/quarantine (all micro-batches and batches)."""
    import pyarrow.dataset as ds

    if not path.is_dir():
        return []
    dataset = ds.dataset(str(path), format="parquet")
    if "reason" not in dataset.schema.names:  # no file yet
        return []
    counted = dataset.to_table(columns=["reason"]).group_by("reason").aggregate([("reason", "count")])
    pairs = zip(counted["reason"].to_pylist(), counted["reason_count"].to_pylist(), strict=True)
    return sorted(((str(r), int(n)) for r, n in pairs), key=lambda p: (-p[1], p[0]))


# -- HTML ------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f6f9;color:#1d2733}
header{background:#1d2733;color:#fff;padding:12px 24px;display:flex;gap:24px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:18px;margin:0}header a{color:#9cc7ff;text-decoration:none}
main{padding:16px 24px;display:grid;gap:16px;grid-template-columns:repeat(auto-fit,minmax(320px,1fr))}
section{background:#fff;border-radius:8px;padding:14px 18px;box-shadow:0 1px 3px #0002}
section.wide{grid-column:1/-1}h2{font-size:13px;text-transform:uppercase;letter-spacing:.05em;color:#5b6b7c;margin:0 0 8px}
.big{font-size:20px;font-weight:600;word-break:break-all}.muted{color:#6b7a8a}.warn{color:#a3330f}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:3px 8px 3px 0;vertical-align:top}
th{color:#5b6b7c;font-weight:500}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.bar{background:#dbe7f6;height:10px;border-radius:2px}.bar>div{background:#3b7dd8;height:10px;border-radius:2px}
.serving .bar>div{background:#2a9d58}.tag{font-size:11px;padding:1px 6px;border-radius:8px;background:#e6ecf2;margin-left:4px}
.ok{background:#d7f2e1}.no{background:#fbe3d9}form{display:flex;gap:8px;margin-bottom:8px}
input{flex:1;padding:6px 8px;border:1px solid #c5d0db;border-radius:4px;font:inherit}
button{padding:6px 14px;border:0;border-radius:4px;background:#3b7dd8;color:#fff;font:inherit;cursor:pointer}
.split{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}.split>*{flex:1 1 320px}
svg{max-width:720px}svg text{font-size:11px;fill:#5b6b7c}.p50{stroke:#3b7dd8}.p95{stroke:#e07b39}
"""


def render(data: dict[str, Any], links: dict[str, str]) -> str:
    """The page: ``links`` are the other pages of this server (label -> URL)."""
    live = data["live"]
    nav = " ".join(f'<a href="{escape(url)}">{escape(label)}</a>' for label, url in links.items())
    sections = [_live_section(live), _recommender_section(live, data["gate"]), _counts_section(data),
                _freshness_section(data["microbatches"]), _models_section(live, data["gate"]),
                _preview_section(data.get("preview"))]
    notes = "".join(f'<p class="warn">{escape(n)}</p>' for n in data["notes"])
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>freshrec overview</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>'
            f'<body><header><h1>freshrec</h1>{nav}</header><main>{"".join(sections)}'
            f'{f"<section class=wide>{notes}</section>" if notes else ""}</main></body></html>')


def _section(title: str, body: str, wide: bool = False, ident: str = "") -> str:
    attrs = (' class="wide"' if wide else "") + (f' id="{ident}"' if ident else "")
    return f"<section{attrs}><h2>{escape(title)}</h2>{body}</section>"


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{escape(k)}</th><td>{escape(_text(v))}</td></tr>" for k, v in pairs) + "</table>"


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.5f}" if abs(value) < 1000 and not value.is_integer() else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _live_section(live: dict[str, Any]) -> str:
    if live.get("error"):
        return _section("live version", f'<p class="warn">{escape(live["error"])}</p>', ident="live")
    if not live.get("live_version"):
        return _section("live version", '<p class="big">none</p><p class="muted">nothing published yet; '
                                        "run <code>freshrec run batch</code></p>", ident="live")
    counts = live.get("counts") or {}
    meta = live.get("meta") or {}
    body = (f'<p class="big">{escape(live["live_version"])}</p>'
            + _rows([("live since", live.get("live_at")), ("batch", meta.get("batch_id")), ("store", live.get("store")),
                     *((name, counts.get(name)) for name in ("users", "similar", "popular", "queries", "items"))]))
    return _section("live version", body, ident="live")


def recommender_text(meta: dict[str, Any]) -> str:
    """What serves, from the live version's meta ``model``: a model version or a baseline."""
    source = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    if source.get("kind") == "model":
        alias = f" ({source['alias']})" if source.get("alias") else ""
        return f"model {source.get('name')} v{source.get('version')}{alias}"
    if source.get("kind") == "baseline":
        return f"baseline {source.get('name')}"
    return "-"


def _recommender_section(live: dict[str, Any], gate: dict[str, Any] | None) -> str:
    body = f'<p class="big">{escape(recommender_text(live.get("meta") or {}))}</p>'
    if gate:
        decision = gate.get("decision") or {}
        verdict = ('<span class="tag ok">promoted</span>' if decision.get("promote")
                   else '<span class="tag no">not promoted</span>')
        candidate = (gate.get("model") or {}).get("version")
        body += (f"<p>last gate, candidate v{escape(_text(candidate))} {verdict}<br>"
                 f'<span class="muted">{escape(_text(gate.get("decided_at")))}, batch {escape(_text(gate.get("batch_id")))}'
                 f"</span></p><p>{escape(_text(decision.get('reason')))}</p>")
    else:
        body += '<p class="muted">no gate decision yet (reports/gate.json)</p>'
    return _section("recommender", body, ident="recommender")


def _counts_section(data: dict[str, Any]) -> str:
    counts = data["counts"]
    if counts is None:
        return _section("events", '<p class="muted">no ledger yet (state.db): nothing processed</p>', ident="counts")
    read = counts.get("read") or 0
    body = _rows([(key, counts.get(key, 0)) for key in COUNT_KEYS]
                 + [("quarantined share", f"{counts.get('quarantined', 0) / read:.2%}" if read else None)])
    reasons = data["reasons"]
    if reasons:
        shown = reasons[:TOP_REASONS]
        rest = sum(n for _, n in reasons[TOP_REASONS:])
        rows = "".join(f'<tr><td>{escape(r)}</td><td class="num">{n:,}</td></tr>' for r, n in shown)
        if rest:
            rows += f'<tr><td class="muted">{len(reasons) - TOP_REASONS} other reasons</td><td class="num">{rest:,}</td></tr>'
        body += f'<h2 style="margin-top:12px">quarantine by reason</h2><table id="reasons">{rows}</table>'
    return _section("events", body, ident="counts")


def _models_section(live: dict[str, Any], gate: dict[str, Any] | None) -> str:
    """The candidate against the baselines on ndcg@10 (what gate.json keeps of each baseline),
    then every metric of the candidate."""
    if not gate or not (gate.get("model") or {}).get("metrics"):
        return _section("model and baselines", '<p class="muted">no evaluated model yet</p>', wide=True, ident="models")
    metrics = gate["model"]["metrics"]
    serving = (live.get("meta") or {}).get("model")
    serving = serving if isinstance(serving, dict) else {}
    rows = [(f"model v{gate['model'].get('version')}", "model", _number(metrics.get("ndcg_at_10")))]
    rows += [(name, "baseline", _number(value)) for name, value in (gate.get("baselines") or {}).items()]
    top = max((v for _, _, v in rows if v is not None), default=0) or 1
    table = "".join(_model_row(name, kind, value, top, _serves(serving, kind, name, gate))
                    for name, kind, value in sorted(rows, key=lambda r: -1 if r[2] is None else -r[2]))
    body = ('<table id="versus"><tr><th>recommender</th><th class="num">ndcg@10</th><th style="width:45%"></th></tr>'
            f"{table}</table>{_metrics_table(metrics)}")
    return _section("model and baselines (same evaluation window, as logged to MLflow)", body, wide=True, ident="models")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _serves(serving: dict[str, Any], kind: str, name: str, gate: dict[str, Any]) -> bool:
    if serving.get("kind") != kind:
        return False
    return str(serving.get("version")) == str(gate["model"].get("version")) if kind == "model" else serving.get("name") == name


def _model_row(name: str, kind: str, value: float | None, top: float, serves: bool) -> str:
    width = 0.0 if value is None else max(0.0, value / top * 100)
    tag = '<span class="tag ok">serving</span>' if serves else ""
    return (f'<tr{" class=serving" if serves else ""}><td>{escape(name)} <span class="muted">{kind}</span>{tag}</td>'
            f'<td class="num">{escape(_text(value))}</td>'
            f'<td><div class="bar"><div style="width:{width:.1f}%"></div></div></td></tr>')


def _metrics_table(metrics: dict[str, Any]) -> str:
    by_name: dict[str, dict[int, Any]] = {}
    other = []
    for key, value in metrics.items():
        match = METRIC_RE.match(key)
        if match:
            by_name.setdefault(match.group(1), {})[int(match.group(2))] = value
        else:
            other.append((key, value))
    ks = sorted({k for values in by_name.values() for k in values})
    head = "".join(f'<th class="num">@{k}</th>' for k in ks)
    rows = "".join(f"<tr><td>{escape(name)}</td>" + "".join(f'<td class="num">{escape(_text(values.get(k)))}</td>' for k in ks)
                   + "</tr>" for name, values in by_name.items())
    extra = "".join(f'<tr><td>{escape(k)}</td><td class="num">{escape(_text(v))}</td></tr>' for k, v in other)
    return (f'<h2 style="margin-top:12px">the model\'s metrics</h2>'
            f'<table id="metrics"><tr><th>metric</th>{head}</tr>{rows}{extra}</table>')


def _freshness_section(batches: list[dict[str, Any]]) -> str:
    if not batches:
        return _section("freshness", '<p class="muted">no micro-batch has found new files yet</p>', ident="freshness")
    last = batches[0]
    text = _rows([("last micro-batch", f"{last.get('batch_id')} at {last.get('finished_at')}"),
                  ("landing to served", f"p50 {_seconds(last.get('landing_to_served_p50_s'))}, "
                                        f"p95 {_seconds(last.get('landing_to_served_p95_s'))}"),
                  ("newest event to served", f"p50 {_seconds(last.get('event_to_served_p50_s'))}, "
                                             f"p95 {_seconds(last.get('event_to_served_p95_s'))}"),
                  ("rows, users", f"{_text(last.get('rows'))}, {_text(last.get('users'))}")])
    return _section("freshness", f'<div class="split"><div>{text}</div>{chart(list(reversed(batches)))}</div>', wide=True,
                    ident="freshness")


def _price(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{value:.1f} s"


def chart(batches: list[dict[str, Any]]) -> str:
    """Landing-to-served p50 and p95 of ``batches`` (oldest first) as an inline SVG."""
    series = {q: [b.get(f"landing_to_served_{q}_s") for b in batches] for q in ("p50", "p95")}
    top = max((v for values in series.values() for v in values if v is not None), default=0) or 1.0
    step = (CHART_W - 2 * CHART_PAD) / max(len(batches) - 1, 1)

    def x(i: int) -> str:
        return f"{CHART_PAD + i * step:.1f}"

    def y(v: float) -> str:
        return f"{CHART_H - CHART_PAD - v / top * (CHART_H - 2 * CHART_PAD):.1f}"

    base = CHART_H - CHART_PAD
    parts = [f'<line x1="{CHART_PAD}" y1="{base}" x2="{CHART_W - CHART_PAD}" y2="{base}" stroke="#c5d0db"/>',
             f'<text x="4" y="{CHART_PAD + 4}">{top:.1f} s</text><text x="4" y="{base + 4}">0 s</text>',
             f'<text x="{CHART_PAD}" y="{CHART_H - 12}">{len(batches)} micro-batches, oldest left;</text>'
             f'<text x="{CHART_PAD + 230}" y="{CHART_H - 12}" class="p50" style="fill:#3b7dd8">p50</text>'
             f'<text x="{CHART_PAD + 265}" y="{CHART_H - 12}" style="fill:#e07b39">p95</text>'
             f'<text x="{CHART_PAD + 300}" y="{CHART_H - 12}">landing to served</text>']
    for q, values in series.items():
        points = [(i, v) for i, v in enumerate(values) if v is not None]
        line = " ".join(f"{x(i)},{y(v)}" for i, v in points)
        parts.append(f'<polyline class="{q}" fill="none" stroke-width="2" points="{line}"/>')
        parts += [f'<circle class="{q}" cx="{x(i)}" cy="{y(v)}" r="3" fill="#fff">'
                  f'<title>{escape(str(batches[i].get("batch_id")))}: {q} {v:.1f} s</title></circle>' for i, v in points]
    return (f'<svg id="freshness-chart" viewBox="0 0 {CHART_W} {CHART_H}" width="100%" role="img" '
            f'aria-label="landing to served seconds, last micro-batches">{"".join(parts)}</svg>')


def _preview_section(preview: dict[str, Any] | None) -> str:
    title = "preview a user's list"
    form = ('<form method="get" action="./"><input name="user" placeholder="a user id, e.g. from lake/events" '
            f'value="{escape((preview or {}).get("user_id") or "")}" aria-label="user id"><button>show list</button></form>')
    if preview is None:
        return _section(title, form, wide=True, ident="preview")
    if preview.get("error"):
        return _section(title, f'{form}<p class="warn">{escape(preview["error"])}</p>', wide=True, ident="preview")
    note = "personal list" if preview.get("source") == "personal" else "unknown user: the overall popular list (fallback)"
    rows = "".join(f'<tr><td class="num">{rank}</td><td>{escape(str(i["item_id"]))}</td>'
                   f'<td>{escape(_text(i.get("category")))}</td><td class="num">{_price(i.get("price"))}</td>'
                   f'<td class="num">{i["score"]:.4g}</td></tr>' for rank, i in enumerate(preview.get("items") or [], 1))
    table = (f'<p><b>{escape(str(preview.get("user_id")))}</b>: <span id="preview-source">{note}</span>, '
             f'version {escape(_text(preview.get("version")))}</p><table id="preview-items"><tr><th class="num">#</th>'
             f'<th>item</th><th>category</th><th class="num">price</th><th class="num">score</th></tr>{rows}</table>')
    return _section(title, form + table, wide=True, ident="preview")
