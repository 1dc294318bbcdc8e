"""The ``freshrec`` command line. Heavy imports live inside the command functions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from freshrec.errors import UserError
from freshrec.settings import Settings, SettingsError

IMPORT_FORMATS = ("events", "retailrocket", "otto", "tafeng", "movielens", "csv")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, never a traceback
        self.exit(2, f"freshrec: error: {message} (see `{self.prog} --help`)\n")


def _number(parse, minimum: float, strict: bool, what: str):
    """An argparse type: `parse(text)` must give a finite value >= minimum (> minimum when strict)."""
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return convert


_positive_int = _number(int, 1, False, "a positive integer")
_nonneg_int = _number(int, 0, False, "a non-negative integer")
_positive_float = _number(float, 0, True, "a positive number of seconds")


def _logical_date(text: str):
    from datetime import datetime, timezone

    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO date such as 2026-03-01 or 2026-03-01T02:00:00Z, got {text!r}") from None
    value = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if value > datetime.now(timezone.utc):
        raise argparse.ArgumentTypeError(f"{text!r} is in the future")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number (1-65535), got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (1-65535), got {text!r}")
    return value


def _list_options(p: argparse.ArgumentParser) -> None:
    """The options of the commands that print a list (recs, similar, popular)."""
    p.add_argument("-n", type=_positive_int, default=10, help="how many items (default 10)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-details", dest="details", action="store_false",
                   help="leave out each item's category and price (one store read less)")


def _import_epilog() -> str:
    from freshrec.importers import CHECK_ROWS
    from freshrec.schemas import EVENT_TYPES

    return (f"event types: {', '.join(EVENT_TYPES)} (any letter case; csv: --event-map maps other names onto them)\n"
            "timestamps: ISO-8601 (2026-02-12, 2026-02-12T16:33:19Z, 2026-02-12 16:33:19+01:00; no offset is UTC)\n"
            "  or epoch milliseconds; csv: --ts-format '%m/%d/%Y %H:%M:%S' (any strptime format), epoch_s, epoch_ms\n"
            f"The first {CHECK_ROWS:,} rows of each source are checked against these rules before anything is written:\n"
            "the reasons rows would be quarantined are listed with one example each, and when more than half\n"
            "would be, nothing is written (exit 2) unless --force. Rules: docs/events.md")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="freshrec", description="Batch-plus-incremental recommendations for e-commerce.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("import", help="import a source into the landing zone as canonical events",
                       epilog=_import_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("format", choices=IMPORT_FORMATS)
    p.add_argument("sources", nargs="+", type=Path, metavar="SRC")
    p.add_argument("--rows-per-file", type=_positive_int, default=500_000, help="split large sources into landing files of this many rows")
    p.add_argument("--min-rating", type=float, default=None, help="movielens: keep ratings >= this value")
    g = p.add_argument_group("csv column mapping (format csv)")
    for col in ("user", "item", "ts", "event", "session", "category", "price", "quantity", "query", "event-id"):
        g.add_argument(f"--{col}-col", default=None, help=f"source column holding {col.replace('-', '_')}")
    g.add_argument("--event-map", default=None, help="source=canonical pairs, e.g. 'click=view,buy=purchase'")
    g.add_argument("--default-event", default=None, help="event type for every row when there is no event column")
    g.add_argument("--ts-format", default=None, help="strptime format of the timestamp column (default: ISO-8601 or epoch ms)")
    g.add_argument("--delimiter", default=",")
    p.add_argument("--force", action="store_true",
                   help="import even when most of the first rows would be quarantined (the check still reports them)")

    p = sub.add_parser("generate", help="write a realistic synthetic event log into the landing zone")
    p.add_argument("--events", type=_positive_int, required=True)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--users", type=_positive_int, default=None)
    p.add_argument("--items", type=_positive_int, default=None)
    p.add_argument("--days", type=_positive_int, default=30)
    p.add_argument("--start", default=None, help="ISO date of the first event (default: --days before now)")
    p.add_argument("--dirty", action="store_true", help="mix in malformed rows and re-sends")
    p.add_argument("--rows-per-file", type=_positive_int, default=1_000_000)
    p.add_argument("--prefix", default="synthetic", help="landing file name prefix")

    p = sub.add_parser("run", help="run a DAG in-process through Airflow (dag.test)")
    p.add_argument("dag", choices=("batch", "incremental", "refresh"),
                   help="batch: the full pipeline; incremental: one micro-batch; refresh: the online model refresh")
    p.add_argument("--watch", action="store_true",
                   help="incremental only: keep running, picking up new landing files every --every seconds (Ctrl-C stops)")
    p.add_argument("--logical-date", type=_logical_date, default=None, metavar="DATE",
                   help="run the data interval of this date (ISO, UTC), as `airflow dags test DAG DATE`: "
                        "re-runs or backfills a past interval (default: now)")
    p.add_argument("--every", type=_positive_float, default=None, metavar="SECONDS",
                   help="with --watch: the processing-time trigger (default FRESHREC_WATCH_SECONDS, 15)")

    p = sub.add_parser("forget", help="erase a user everywhere (landing, lake, quarantine, features, recs, serving store); "
                                      "audited by a salted hash of the id")
    p.add_argument("user_id", metavar="USER_ID")
    p.add_argument("--reason", default=None, help="why (kept in the audit table; the id itself is never stored there)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("status", help="live version, model, freshness, last runs, counts")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("quarantine", help="the rows the clean job set aside: reason, source file, the line as it landed")
    p.add_argument("--reason", default=None, metavar="CODE", help="only rows that broke this rule (e.g. invalid_ts)")
    p.add_argument("--file", default=None, metavar="F", help="only rows from this landing file (its name)")
    p.add_argument("--limit", type=_positive_int, default=20, metavar="N", help="show at most N rows (default 20)")
    p.add_argument("--files", action="store_true",
                   help="the landing files set aside whole (corrupt gzip, not UTF-8, a bad header, ...) instead of rows")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("recs", help="a user's recommendations from the live version (unknown users get popular items)")
    p.add_argument("user_id", nargs="?", default=None, metavar="USER_ID")
    p.add_argument("--users-file", type=Path, default=None, metavar="FILE", help="one user id per line; one JSON object per line out")
    _list_options(p)

    p = sub.add_parser("similar", help="items similar to an item, from the live version")
    p.add_argument("item_id", metavar="ITEM_ID")
    _list_options(p)

    p = sub.add_parser("popular", help="popular items, overall or in one category, from the live version")
    p.add_argument("--category", default=None, metavar="C")
    _list_options(p)

    p = sub.add_parser("rollback", help="make the previous (or the given) published version live again")
    p.add_argument("--to", default=None, metavar="VERSION")

    p = sub.add_parser("serve", help="run the HTTP API: the published lists, and POST /v1/events with the real-time path")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--insecure-local", action="store_true",
                   help="accept events without an API key (loopback addresses only; set FRESHREC_API_KEYS otherwise)")

    p = sub.add_parser("send", help="send a JSONL or CSV file of events to a running `freshrec serve` (POST /v1/events)")
    p.add_argument("file", type=Path, metavar="FILE", help="events: .jsonl or .csv, optionally .gz")
    p.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    p.add_argument("--key", default=None, metavar="K", help="an API key (default: $FRESHREC_API_KEY)")
    p.add_argument("--batch-size", type=int, default=1000, metavar="N", help="events per request (1..10000, default 1000)")
    p.add_argument("--json", action="store_true", help="print the totals and every rejected event as JSON")

    p = sub.add_parser("experiment", help="online experiments: champion against challenger on live traffic (docs/experiments.md)")
    xsub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    x = xsub.add_parser("create", help="start an experiment; its variants are published now (needs a published version)")
    x.add_argument("name", metavar="NAME")
    x.add_argument("--variants", default="control=champion,treatment=challenger",
                   help="two NAME=WHAT pairs, control first; WHAT: champion, challenger, version:N or a baseline "
                        "(default control=champion,treatment=challenger)")
    x.add_argument("--split", default="50,50", help="the variants' shares of the users (A/B; default 50,50)")
    x.add_argument("--mode", choices=("ab", "interleave"), default="ab")
    x.add_argument("--metric", default="purchase_conversion",
                   help="what the decision is made on: purchase_conversion (default), click_through, add_to_cart_rate, "
                        "revenue_per_user")
    x.add_argument("--traffic", type=float, default=100.0, metavar="PCT",
                   help="percent of users in the experiment; the others get the live version (default 100)")
    x.add_argument("--no-publish", dest="publish", action="store_false",
                   help="only record it: the next batch publishes the variants")
    x = xsub.add_parser("list", help="every experiment, newest first")
    x.add_argument("--json", action="store_true")
    x = xsub.add_parser("stop", help="stop an experiment: everyone gets the live version again")
    x.add_argument("name", metavar="NAME")
    x = xsub.add_parser("report", help="attribute the events, compute the statistics, and print the report")
    x.add_argument("name", metavar="NAME")
    x.add_argument("--json", action="store_true")
    x.add_argument("--no-mlflow", dest="mlflow", action="store_false", help="do not log this report to MLflow")
    x = xsub.add_parser("promote", help="move alias champion to the winning variant's model and make its lists live")
    x.add_argument("name", metavar="NAME")
    x.add_argument("--variant", default=None, help="promote this variant whatever the report says")

    p = sub.add_parser("stack", help="the production-shaped stack on this machine: Spark master and workers, Airflow on "
                                      "PostgreSQL with Celery, MLflow server, the API on Redis (docs/deploy.md)")
    ssub = p.add_subparsers(dest="stack_command", required=True, metavar="{up,down,status,env}")
    x = ssub.add_parser("up", help="start every service that is not running, each healthy before the next")
    x.add_argument("--timeout", type=_positive_float, default=300.0, help="seconds to wait for health (default 300)")
    x.add_argument("--only", default=None, metavar="GROUPS",
                   help="start only these comma-separated groups: spark, mlflow, airflow (brings the rest), freshrec")
    ssub.add_parser("down", help="stop every service of the stack")
    x = ssub.add_parser("status", help="each service: healthy, unhealthy (and why) or stopped; exit 3 unless all are healthy")
    x.add_argument("--json", action="store_true", help="one JSON object")
    ssub.add_parser("env", help="print export lines that point this shell's freshrec, airflow and mlflow at the stack")

    p = sub.add_parser("airflow", help="run the Airflow UI and scheduler on this machine (airflow standalone, SQLite)")
    p.add_argument("--host", default="127.0.0.1", help="address the UI/API server binds to (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8080, help="UI/API port (default 8080)")
    p.add_argument("--require-login", action="store_true",
                   help="log in as admin with a generated password instead of everyone being admin")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.load()
        return _dispatch(args, settings)
    except (UserError, SettingsError) as exc:
        print(f"freshrec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("freshrec: interrupted", file=sys.stderr)
        return 130


def _stack(args: argparse.Namespace, settings: Settings) -> int:
    from freshrec import stack

    if args.stack_command == "up":
        print(f"freshrec stack {settings.stack_name} under {stack.stack_dir(settings)}:", flush=True)
        only = [g.strip() for g in args.only.split(",") if g.strip()] if args.only else stack.GROUPS
        plan = stack.stack_up(settings, timeout_s=args.timeout, say=lambda line: print(line, flush=True), only=only)
        urls = [f"{label} {url}" for group, label, url in (("airflow", "Airflow", plan.airflow_url), ("mlflow", "MLflow", plan.mlflow_url),
                                                           ("spark", "Spark", plan.spark_ui), ("freshrec", "API", plan.api_url))
                if group in only or "airflow" in only]
        print(f"up: {', '.join(urls)}; `freshrec stack env` points this shell at it")
        return 0
    if args.stack_command == "down":
        stopped = stack.stack_down(settings)
        print(f"down: {stopped} service(s) stopped")
        return 0
    if args.stack_command == "env":
        print("\n".join(stack.stack_env_lines(settings)))
        return 0
    rows = stack.stack_status(settings)
    if args.json:
        print(json.dumps({"stack": settings.stack_name, "services": rows}, indent=2))
    else:
        for row in rows:
            detail = (row["url"] or "") if row["state"] == "healthy" else (row["why"] or "")
            print(f"{row['service']:<22} {row['state']:<10} {row['pid'] or '-':>8}  {detail}")
    return 0 if all(row["state"] == "healthy" for row in rows) else 3


def _home_hint(settings: Settings) -> str | None:
    """One line when the home holds nothing yet but a home nearby does (e.g. the demo's
    .freshrec/demo beside an empty .freshrec): where the data is, and how to point at it."""
    home = settings.home.resolve()
    if (home / "state.db").is_file():
        return None
    nearby = {p.parent for base in (home, home.parent) for p in base.glob("*/state.db") if p.parent != home}
    if not nearby:
        return None
    found = sorted(nearby, key=lambda p: -(p / "state.db").stat().st_mtime)[0]
    return (f"freshrec: note: {home} holds no data yet; {found} does: FRESHREC_HOME={found} freshrec {{cmd}}, "
            f"or home = \"{found}\" in freshrec.toml")


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command not in ("import", "generate", "airflow", "send", "stack") and (hint := _home_hint(settings)):
        print(hint.format(cmd=args.command), file=sys.stderr)
    if args.command == "stack":
        return _stack(args, settings)
    if args.command == "import":
        from dataclasses import fields

        from freshrec.importers import ImportOptions, import_sources

        options = ImportOptions(**{f.name: getattr(args, f.name) for f in fields(ImportOptions)})
        results = import_sources(settings, args.format, args.sources, options)
        total = sum(n for _, n in results)
        print(f"imported {total:,} rows into {len(results)} landing file(s) under {settings.landing_events_dir}")
        return 0
    if args.command == "generate":
        from dataclasses import fields

        from freshrec.generate import GenerateOptions, generate_to_landing

        written = generate_to_landing(settings, GenerateOptions(**{f.name: getattr(args, f.name) for f in fields(GenerateOptions)}))
        print(f"generated {written:,} rows under {settings.landing_events_dir}")
        return 0
    if args.command == "run":
        if args.every is not None and not args.watch:
            raise UserError("--every applies with --watch only")
        if args.watch:
            return _watch(args, settings)
        from freshrec.airflow.local import run_dag

        if args.logical_date is not None and args.dag != "batch":
            raise UserError(f"--logical-date applies to `freshrec run batch` only (`run {args.dag}` takes whatever is new)")
        ok = run_dag(settings, "freshrec_model_refresh" if args.dag == "refresh" else f"freshrec_{args.dag}",
                     logical_date=args.logical_date)
        return 0 if ok else 1
    if args.command == "forget":
        from freshrec.privacy import forget_user

        done = forget_user(settings, args.user_id, args.reason)
        if args.json:
            print(json.dumps(done))
        else:
            where = ", ".join(f"{place} {n:,}" for place, n in done["removed"].items())
            print(f"forgotten: subject {done['subject'][:16]}... ({where}) in {done['seconds']:.1f} s")
        return 0
    if args.command == "status":
        from freshrec.status import collect_status, format_status

        status = collect_status(settings)
        print(json.dumps(status, indent=2, default=str) if args.json else format_status(status))
        return 0
    if args.command == "quarantine":
        from freshrec.quarantine import format_files, format_rows, quarantined, quarantined_files

        if args.files:
            files = quarantined_files(settings, args.reason, args.file)
            print(json.dumps(files, default=str) if args.json else format_files(files))
            return 0
        found = quarantined(settings.quarantine_path, args.reason, args.file, args.limit)
        print(json.dumps(found, default=str) if args.json else format_rows(found, args.limit))
        return 0
    if args.command == "send":
        return _send(args)
    if args.command == "airflow":
        from freshrec.airflow.standalone import run_standalone

        return run_standalone(settings, host=args.host, port=args.port, require_login=args.require_login)
    if args.command == "experiment":
        return _experiment(args, settings)
    if args.command in ("recs", "similar", "popular", "rollback", "serve"):
        return _serving_command(args, settings)
    raise AssertionError(f"unhandled command {args.command}")


def _experiment(args: argparse.Namespace, settings: Settings) -> int:
    from freshrec.experiments import ExperimentStore, parse_split, parse_variants, publish_variants_step

    store = ExperimentStore(settings.state_db)
    if args.action == "create":
        if not 0 < args.traffic <= 100:
            raise UserError(f"--traffic is a percent in (0, 100], got {args.traffic:g}")
        exp = store.create(args.name, parse_variants(args.variants), parse_split(args.split), args.mode,
                           args.traffic / 100.0, args.metric)
        print(f"experiment {exp.name} created ({exp.mode}): " + ", ".join(f"{v}={s}" for v, s in exp.variants.items()))
        if args.publish:
            try:
                done = publish_variants_step(settings, exp.name)
            except BaseException:
                store.discard(exp.name)  # nothing half-made stays: the name is free for a retry
                raise
            if done.get("skipped"):
                print(f"not published yet: {done['skipped']}")
            else:
                print("serving: " + ", ".join(f"{v} from version {ver}" for v, ver in done["versions"][exp.name].items()))
        return 0
    if args.action == "list":
        found = [e.summary() for e in store.all()]
        if args.json:
            print(json.dumps(found, default=str))
            return 0
        for e in found:
            verdict = (e.get("report") or {}).get("decision", {}).get("verdict", "no report yet")
            print(f"{e['name']:<20} {e['state']:<8} {e['mode']:<10} "
                  + ", ".join(f"{v}={s}" for v, s in e["variants"].items()) + f"  started {e['created_at']}  {verdict}")
        if not found:
            print("no experiments (create one with `freshrec experiment create NAME`)")
        return 0
    if args.action == "stop":
        exp = store.stop(args.name)
        print(f"experiment {exp.name} stopped at {exp.stopped_at}; everyone gets the live version")
        return 0
    from freshrec.experiment_report import format_report, promote, report_step

    if args.action == "report":
        report = report_step(settings, args.name, mlflow=args.mlflow)[args.name]
        print(json.dumps(report, default=str) if args.json else format_report(report))
        return 0
    done = promote(settings, args.name, args.variant)
    print(f"experiment {done['experiment']}: {done['winner']} promoted; champion {done['champion']['before']} -> "
          f"{done['champion']['after']}; live version {done['live_version']}\n  {done['reason']}")
    return 0


def _watch(args: argparse.Namespace, settings: Settings) -> int:
    """``freshrec run incremental --watch``: the incremental DAG's code on a processing-time
    trigger, one line per micro-batch, until Ctrl-C or SIGTERM (the micro-batch in progress
    finishes first; a second signal stops at once)."""
    import signal
    import threading

    from freshrec.incremental import incremental_step

    if args.dag != "incremental":
        raise UserError("--watch applies to `freshrec run incremental` only")
    stop = threading.Event()

    def line(mb: dict) -> None:
        for q in mb.get("quarantined_files", []):
            print(f"{mb['batch_id']}: landing file {q['name']} quarantined ({q['code']}): {q['message']}", flush=True)
        if not mb.get("files"):
            return
        print(f"{mb['batch_id']}: {mb['files']} file(s), {mb['rows']:,} rows ({mb.get('quarantined', 0):,} quarantined, "
              f"{mb.get('duplicates', 0):,} duplicates), {mb['users']:,} users re-scored; landing -> served "
              f"p50 {mb.get('landing_to_served_p50_s')} s, p95 {mb.get('landing_to_served_p95_s')} s", flush=True)

    def on_signal(*_: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        print("freshrec: stopping after the micro-batch in progress (again to stop at once)", file=sys.stderr, flush=True)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    every = args.every or settings.watch_seconds
    print(f"freshrec: watching {settings.landing_events_dir} every {every:g} s (Ctrl-C stops)", file=sys.stderr, flush=True)
    summary = incremental_step(settings, watch_seconds=every, on_batch=line, stop=stop)
    print(f"stopped after {summary['microbatches']} micro-batch(es), {summary['rows']:,} rows", file=sys.stderr)
    return 0


def _send(args: argparse.Namespace) -> int:
    import os

    from freshrec.sender import file_events, progress_printer, send_events, summary_text

    total = sum(1 for _ in file_events(args.file))
    show = None if args.json else progress_printer(total, sys.stderr)
    totals = send_events(args.url, file_events(args.file), api_key=args.key or os.environ.get("FRESHREC_API_KEY"),
                         batch_size=args.batch_size, on_batch=show)
    if show is not None and sys.stderr.isatty():
        print(file=sys.stderr)
    print(json.dumps(totals) if args.json else summary_text(totals))
    return 0


def _serving_command(args: argparse.Namespace, settings: Settings) -> int:
    """recs, similar, popular, rollback, serve. Serving errors (nothing published yet, an
    unreachable store, an unknown version) are UserErrors: one line, exit 2."""
    if args.command == "serve":
        from freshrec.api import serve, urls
        from freshrec.serving import redacted

        print(f"freshrec: serving {redacted(settings.serving)} on http://{args.host}:{args.port} (Ctrl-C stops)", file=sys.stderr)
        for name, url in urls(args.host, args.port).items():
            print(f"  {name:<10} {url}", file=sys.stderr)
        sys.stderr.flush()
        writes = (f"{len(settings.api_key_list)} API key(s)" if settings.api_key_list else
                  "no key needed (--insecure-local)" if args.insecure_local else "off (set FRESHREC_API_KEYS)")
        print(f"  {'events':<10} POST http://{args.host}:{args.port}/v1/events  writes: {writes}", file=sys.stderr)
        serve(settings, host=args.host, port=args.port, insecure_local=args.insecure_local)
        return 0
    from freshrec.client import RecsClient, format_list

    with RecsClient.for_settings(settings) as client:
        if args.command == "rollback":
            before = client.store.live_version()
            after = client.store.rollback(args.to)
            print(f"live version: {before} -> {after}")
            return 0
        if args.command == "recs":
            if (args.user_id is None) == (args.users_file is None):
                raise UserError("give either USER_ID or --users-file FILE")
            if args.users_file is not None:
                return _recs_for_file(client, args.users_file, args.n, args.json, args.details)
            result = client.recs(args.user_id, args.n, details=args.details)
            title = f"user {result['user_id']}"
        elif args.command == "similar":
            result = client.similar(args.item_id, args.n, details=args.details)
            title = f"similar to {result['item_id']}"
        else:
            result = client.popular(args.category, args.n, details=args.details)
            title = f"popular in {args.category}" if args.category else "popular"
        print(json.dumps(result) if args.json else format_list(title, result))
        return 0


def _recs_for_file(client, path: Path, n: int, as_json: bool, details: bool) -> int:
    from freshrec.client import format_list

    if not path.is_file():
        raise UserError(f"users file not found: {path}")
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                user_id = line.strip()
                if not user_id:
                    continue
                result = client.recs(user_id, n, details=details)
                print(json.dumps(result) if as_json else format_list(f"user {user_id}", result))
        sys.stdout.flush()
    except BrokenPipeError:  # `... | head`: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except UnicodeDecodeError as exc:
        raise UserError(f"users file {path} is not UTF-8 text: {exc.reason}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
