"""`make demo`: the whole story on a seeded synthetic shop, in a fresh home.

1. a synthetic log (60 days, with malformed rows) lands, and the freshrec_batch DAG runs:
   clean -> validate -> matrices -> train -> evaluate -> gate -> score -> publish;
2. three micro-batches of new events land, and the freshrec_incremental DAG runs after each:
   one shopper looks at a category they never touched, puts an item in the cart, buys it; a
   newcomer arrives; a producer re-sends an event and sends some broken rows;
3. the real-time loop: `freshrec serve` takes a new shopper's events over HTTP (POST
   /v1/events), and their list changes in about a second; a purchase leaves it as fast;
4. the shopper's list before and after, and the measured freshness;
5. an A/B experiment of the live lists against the popularity list: simulated shoppers with
   known tastes are served through the API, act, and the report attributes what they did;
6. where to look next.

Uses FRESHREC_HOME when set, else ./.freshrec/demo (wiped first, so the demo is repeatable), and
then leaves a freshrec.toml here naming that home (unless there is one), so that ``freshrec
status`` and ``freshrec recs`` run here afterwards see the demo's data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

from freshrec.fileio import atomic_write_text
from freshrec.settings import Settings

HISTORY_EVENTS = 200_000
HISTORY_USERS = 1_000
HISTORY_ITEMS = 1_000
HISTORY_DAYS = 60
MICROBATCH_EVENTS = 2_000
NEWCOMER = "demo-newcomer"


def _terminal():
    """A rich console for the demo's own lines; a DAG run draws its progress on stderr."""
    from rich.console import Console

    return Console(file=sys.stdout, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _step(console, text: str) -> Iterator[None]:
    started = time.monotonic()
    with console.status(f"{text} ..."):
        yield
    console.print(f"[green]done[/] {text} ({time.monotonic() - started:.0f}s)")


def _point_here(home: Path) -> str | None:
    """Leave a freshrec.toml in the working directory naming the demo's home, so that
    ``freshrec status`` and ``recs`` run here afterwards see its data; never replaces a
    user's file. The line that says what was done, or None when nothing was."""
    config = Path("freshrec.toml")
    try:
        relative = home.relative_to(Path.cwd().resolve())
    except ValueError:
        relative = home
    if config.exists():
        import tomllib

        try:
            named = tomllib.loads(config.read_text(encoding="utf-8")).get("home")
        except (OSError, ValueError):
            return None
        return f"{config.resolve()} names this home already" if named and Path(named).resolve() == home else None
    atomic_write_text(config, f'# written by `make demo`: freshrec commands run here use the demo\'s home\nhome = "{relative}"\n')
    return f"wrote {config.resolve()} (home = \"{relative}\"): `freshrec status` and `freshrec recs` here use the demo's data"


def main() -> int:
    default_home = "FRESHREC_HOME" not in os.environ
    home = Path(os.environ.get("FRESHREC_HOME") or ".freshrec/demo").resolve()
    if default_home and home.exists():
        shutil.rmtree(home)
    os.environ["FRESHREC_HOME"] = str(home)
    settings = Settings.load()
    settings.ensure_dirs()
    console = _terminal()
    now = datetime.now(timezone.utc)
    if not _nightly_batch(console, settings, now):
        return 1
    story = _Story(settings)
    before = story.top(story.shopper)
    console.print(f"\nshopper [bold]{story.shopper}[/] (most purchases) has bought from {', '.join(sorted(story.bought_cats))}; "
                  f"their list now:")
    story.show(console, before, set())
    freshness = _microbatches(console, settings, story, before, now)
    if freshness is None:
        return 1
    if not _realtime(console, settings, story, now):
        return 1
    _what_changed(console, settings, story, before, freshness)
    if not _experiment(console, settings):
        return 1
    note = _point_here(home) if default_home else None
    _look_around(console, settings, home, story.shopper, note)
    return 0


def _nightly_batch(console, settings: Settings, now: datetime) -> bool:
    """Part 1: a synthetic history lands and the batch DAG runs; False when it failed."""
    from freshrec.airflow.local import run_dag
    from freshrec.generate import GenerateOptions, generate_to_landing
    from freshrec.status import collect_status

    console.rule("1. the nightly batch")
    with _step(console, f"generating a synthetic shop: {HISTORY_EVENTS:,} events over {HISTORY_DAYS} days, some malformed"):
        n = generate_to_landing(settings, GenerateOptions(
            events=HISTORY_EVENTS, seed=7, users=HISTORY_USERS, items=HISTORY_ITEMS, days=HISTORY_DAYS,
            start=(now - timedelta(days=HISTORY_DAYS)).isoformat(), dirty=True, rows_per_file=100_000, prefix="demo"))
    console.print(f"    {n:,} rows in {settings.landing_events_dir}")
    console.print("running freshrec_batch through Airflow: clean -> validate -> matrices -> train -> evaluate -> "
                  "gate -> score -> publish")
    if not run_dag(settings, "freshrec_batch"):
        console.print("[red]the batch run failed; see the task lines above[/]")
        return False
    status = collect_status(settings)
    gate = (status.get("model") or {}).get("gate") or {}
    console.print(f"    live version {status['live_version']}; gate: {gate.get('reason', '-')}")
    return True


def _microbatches(console, settings: Settings, story: "_Story", before: list[tuple[str, float]],
                  now: datetime) -> list[dict[str, Any]] | None:
    """Part 2: three micro-batches land and the incremental DAG runs after each; the freshness
    of each, or None when a run failed."""
    from freshrec.airflow.local import run_dag
    from freshrec.generate import generate_window
    from freshrec.landing import atomic_write_jsonl
    from freshrec.status import collect_status

    console.rule("2. three micro-batches, minutes apart")
    freshness = []
    for k, (title, rows) in enumerate(story.microbatches(now), start=1):
        traffic = generate_window(MICROBATCH_EVENTS, 1000 + k, now - timedelta(minutes=4 - k), 60,
                                  n_users=HISTORY_USERS, n_items=HISTORY_ITEMS)
        atomic_write_jsonl(settings.landing_events_dir, f"demo-microbatch-{k}.jsonl", traffic + rows)
        console.print(f"[bold]micro-batch {k}[/]: {title} (+ {len(traffic):,} events of other shoppers)")
        if not run_dag(settings, "freshrec_incremental"):
            console.print("[red]the incremental run failed; see the task line above[/]")
            return None
        mb = collect_status(settings)["freshness"]
        freshness.append(mb)
        console.print(f"    landing -> served p50 {mb['landing_to_served_p50_s']} s, p95 {mb['landing_to_served_p95_s']} s")
        if k == 1:
            story.show(console, story.top(story.shopper), {i for i, _ in before}, "    the shopper's list now:")
        if k == 2:
            console.print(f"    the bought item {story.cart} left the shopper's list: "
                          f"{story.cart not in {i for i, _ in story.top(story.shopper, 100)}}")
            newcomer = story.client.recs(NEWCOMER, 5)
            console.print(f"    {NEWCOMER} (never seen before) gets a {newcomer['source']} list: "
                          + ", ".join(f"{r['item_id']} ({story.category.get(r['item_id'], '?')})" for r in newcomer["items"]))
    return freshness


REALTIME_SHOPPER = "demo-live-shopper"


def _realtime(console, settings: Settings, story: "_Story", now: datetime) -> bool:
    """Part 3: a shopper sends events to the running API and their list follows within a second;
    then the micro-batch takes the API's segment into the lake. False when a run failed."""
    from freshrec.airflow.local import run_dag
    from freshrec.client import RecsClient
    from freshrec.status import collect_status

    console.rule("3. the real-time loop: events over HTTP")
    shopper, items = REALTIME_SHOPPER, story.discovered

    run = f"{now:%Y%m%dT%H%M%S}"  # a demo run again on the same home sends new events, not duplicates

    def ev(eid: str, seconds_ago: float, etype: str, item: str, **extra: Any) -> dict[str, Any]:
        ts = (now - timedelta(seconds=seconds_ago)).isoformat(timespec="seconds").replace("+00:00", "Z")
        return {"event_id": f"{eid}-{run}", "ts": ts, "user_id": shopper, "session_id": "demo-live", "event_type": etype,
                "item_id": item, **extra}

    def changed(before: list[str], what: str) -> list[str]:
        started = time.monotonic()
        while time.monotonic() - started < 10:
            now_items = [i for i, _ in story.top(shopper, 100)]
            if now_items != before:
                console.print(f"    {what}: the list changed {time.monotonic() - started:.2f} s after the POST returned")
                return now_items
            time.sleep(0.02)
        console.print(f"    {what}: the list did not change within 10 s")
        return before

    with _api(settings) as url:
        console.print(f"freshrec serve is up at {url} (writes open to this machine only: --insecure-local)")
        fallback = [i for i, _ in story.top(shopper, 100)]
        console.print(f"{shopper} is new: {story.client.recs(shopper, 1)['source']} list")
        sent = RecsClient.send_events([ev("live-1", 30, "view", items[0]), ev("live-2", 20, "view", items[1]),
                                       ev("live-3", 10, "view", items[2])], url=url)
        console.print(f"POST /v1/events: three views of {story.new_category} -> {sent['accepted']} accepted")
        after = changed(fallback, "views")
        story.show(console, story.top(shopper), set(fallback), "    their list now (+ new):")
        target = after[0]
        RecsClient.send_events([ev("live-4", 5, "purchase", target, quantity=1)], url=url)
        console.print(f"POST /v1/events: {shopper} buys {target}")
        changed(after, "purchase")
        console.print(f"    {target} left the list: {target not in [i for i, _ in story.top(shopper, 100)]}")
        again = RecsClient.send_events([ev("live-4", 5, "purchase", target, quantity=1)], url=url)
        console.print(f"    the same purchase sent again: {again['accepted']} accepted, {again['duplicates']} duplicate")
    realtime = collect_status(settings).get("realtime") or {}
    console.print(f"event -> served: p50 {realtime.get('event_to_served_p50_s')} s, p95 {realtime.get('event_to_served_p95_s')} s "
                  f"over {realtime.get('events')} events")
    console.print("the micro-batch takes the API's segment file into the lake like any landing file:")
    if not run_dag(settings, "freshrec_incremental"):
        console.print("[red]the incremental run failed; see the task line above[/]")
        return False
    mb = collect_status(settings)["freshness"]
    console.print(f"    micro-batch {mb.get('last_microbatch_id')}: {mb.get('rows')} rows, {mb.get('users')} users re-scored")
    return True


@contextlib.contextmanager
def _api(settings: Settings) -> Iterator[str]:
    """`freshrec serve --insecure-local` in a thread, its real-time worker ready: its URL. A
    graceful stop on exit moves the open event and impression segments into the landing zone."""
    import threading

    import uvicorn

    from freshrec.api import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(settings, insecure_local=True), host="127.0.0.1", port=0,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    server.config.app.state.ingest.scorer.wait_ready()  # its worker has the live recommender loaded
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


EXPERIMENT_SHOPPERS = 600


def _experiment(console, settings: Settings) -> bool:
    """Part 5: an A/B test of the live model against the popularity list. Simulated shoppers,
    each liking the categories they bought or viewed most, are served through the API, act on
    what they see, and their events come back with the lists' recommendation_id; a micro-batch
    takes them in and the report attributes them. False when a run failed."""
    import numpy as np
    import pandas as pd

    from freshrec.airflow.local import run_dag
    from freshrec.experiment_report import format_report, report_step
    from freshrec.experiments import ExperimentStore, publish_variants_step
    from freshrec.serving import open_store
    from freshrec.shoppers import ShopperConfig, shop_through_api

    console.rule("5. an experiment: the live lists against the popularity list")
    with open_store(settings.serving) as store:
        live = store.status()["meta"].get("model") or {}
    control = f"version:{live['version']}" if live.get("kind") == "model" else f"baseline:{live.get('name')}"
    treatment = "baseline:trending" if control == "baseline:popularity" else "baseline:popularity"
    name = f"demo-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
    experiments = ExperimentStore(settings.state_db)
    for running in experiments.running():  # a demo run again on the same home
        experiments.stop(running.name)
    experiments.create(name, {"control": control, "treatment": treatment}, [50, 50])
    with _step(console, f"`freshrec experiment create {name} --variants control={control},treatment={treatment}` "
                        "(publishes the treatment's lists beside the live ones)"):
        versions = publish_variants_step(settings, name)["versions"][name]
    console.print(f"    control from version {versions['control']}, treatment from version {versions['treatment']}")
    events = pd.read_parquet(settings.events_path, columns=["user_id", "category"]).dropna()
    top = events.groupby(["user_id", "category"]).size().rename("n").reset_index()
    top = top.sort_values(["user_id", "n"], ascending=[True, False], kind="mergesort").groupby("user_id").head(2)
    likes = top.groupby("user_id")["category"].agg(set).to_dict()
    users = sorted(likes)[:EXPERIMENT_SHOPPERS]
    with _api(settings) as url:
        counts = shop_through_api(url, users, likes, np.random.default_rng(11), ShopperConfig(view_p=0.3, noise_p=0.02))
    console.print(f"{len(users)} simulated shoppers, each liking their two most visited categories, were served through "
                  f"the API and acted: " + "; ".join(f"{v}: {c['users']} users, {c['views']} views, {c['carts']} carts, "
                                                     f"{c['purchases']} purchases" for v, c in sorted(counts.items())))
    if not run_dag(settings, "freshrec_incremental"):
        console.print("[red]the incremental run failed; see the task line above[/]")
        return False
    console.print(format_report(report_step(settings, name)[name]), soft_wrap=True)
    console.print(f"(`freshrec experiment report {name}` prints this again; `freshrec experiment stop {name}` ends it)")
    return True


def _what_changed(console, settings: Settings, story: "_Story", before: list[tuple[str, float]],
                  freshness: list[dict[str, Any]]) -> None:
    """Part 4: the shopper's list before and after, the counts, the freshness."""
    from freshrec.status import collect_status

    console.rule("4. what changed")
    console.print(f"shopper [bold]{story.shopper}[/], before the micro-batches:")
    story.show(console, before, set())
    console.print("after them (new entries marked +):")
    story.show(console, story.top(story.shopper), {i for i, _ in before})
    c = collect_status(settings)["counts"]
    console.print(f"counts: read {c['read']:,} = clean {c['clean']:,} + quarantined {c['quarantined']:,} + "
                  f"duplicates {c['duplicates']:,}")
    console.print("freshness per micro-batch (landing -> served, p50 / p95): "
                  + "; ".join(f"{m['landing_to_served_p50_s']} / {m['landing_to_served_p95_s']} s" for m in freshness)
                  + f"  (work per micro-batch: {', '.join(str(m['seconds']) + ' s' for m in freshness)})")
    story.client.close()


def _look_around(console, settings: Settings, home: Path, shopper: str, note: str | None) -> None:
    """Part 5: where everything is and the commands to look at it."""
    from freshrec.status import collect_status

    bin_dir = Path(sys.executable).parent
    # with the freshrec.toml just written, commands run here need no FRESHREC_HOME
    env = "" if note else f"FRESHREC_HOME={home} "
    console.rule("6. look around")
    console.print(f"Everything lives under {home}.")
    if note:
        console.print(note)
    console.print(f"  status:   {env}{bin_dir / 'freshrec'} status")
    console.print(f"  a list:   {env}{bin_dir / 'freshrec'} recs {shopper} -n 10")
    console.print(f"  quarantine: {env}{bin_dir / 'freshrec'} quarantine --limit 5   (the broken rows and why)")
    console.print(f"  Airflow:  {env}make airflow     then http://127.0.0.1:8080 (the DAGs, their runs)")
    _print_mlflow(console, f"{bin_dir / 'mlflow'} ui --backend-store-uri {settings.tracking_uri}",
                  collect_status(settings).get("model") or {})
    console.print(f"  Data Docs: {settings.reports_dir / 'data_docs' / 'index.html'}")
    console.print(f"  fresher:  {env}{bin_dir / 'freshrec'} run incremental --watch   (every 15 s)")


def _print_mlflow(console, ui_command: str, live: dict[str, Any]) -> None:
    """How to open MLflow on the run of what is live and on the plot to look at (freshrec status)."""
    console.print(f"  MLflow:   {ui_command}     then")
    console.print(f"            {live.get('run_url', 'http://127.0.0.1:5000')}   (the run of the live {live.get('kind') or 'model'})")
    if live.get("plot"):
        console.print(f"            {live['plot']['url']}   (NDCG@K and recall@K: the model against every baseline)")


class _Story:
    """The demo's shopper, the category they discover, and the micro-batches that tell it."""

    def __init__(self, settings: Settings) -> None:
        import pandas as pd

        from freshrec.client import RecsClient

        self.client = RecsClient.for_settings(settings)
        stats = pd.read_parquet(settings.features_dir / "item_stats", columns=["item_id", "category", "popularity"])
        self.category = dict(zip(stats["item_id"].astype(str), stats["category"].fillna("?"), strict=True))
        inter = pd.read_parquet(settings.features_dir / "interactions", columns=["user_id", "item_id", "n_purchase"])
        per_user = inter.groupby("user_id")["n_purchase"].sum().sort_values(kind="mergesort")
        self.shopper = str(per_user.index[-1])
        touched = set(inter.loc[inter["user_id"] == self.shopper, "item_id"].astype(str))
        bought = inter.loc[(inter["user_id"] == self.shopper) & (inter["n_purchase"] > 0), "item_id"].astype(str)
        self.bought_cats = {self.category.get(i, "?") for i in bought}
        touched_cats = {self.category.get(i, "?") for i in touched}
        # the most popular category the shopper never touched, and its best sellers
        fresh = stats[~stats["category"].isin(touched_cats) & stats["category"].notna()]
        self.new_category = str(fresh.groupby("category")["popularity"].sum().idxmax())
        self.discovered = fresh.loc[fresh["category"] == self.new_category].nlargest(3, "popularity")["item_id"].astype(str).tolist()
        self.cart = self.discovered[0]

    def top(self, user: str, n: int = 5) -> list[tuple[str, float]]:
        return [(r["item_id"], r["score"]) for r in self.client.recs(user, n)["items"]]

    def show(self, console, items: list[tuple[str, float]], before: set[str], title: str | None = None) -> None:
        if title:
            console.print(title)
        for rank, (item, score) in enumerate(items, start=1):
            mark = "+" if before and item not in before else " "
            console.print(f"    {mark} {rank}. {item:<8} {self.category.get(item, '?'):<14} score {score:.3f}")

    def microbatches(self, now: datetime) -> list[tuple[str, list[dict[str, Any]]]]:
        def ev(eid: str, minutes_ago: float, user: str, etype: str, item: str | None = None, **extra: Any) -> dict[str, Any]:
            ts = (now - timedelta(minutes=minutes_ago)).isoformat(timespec="seconds").replace("+00:00", "Z")
            return {"event_id": eid, "ts": ts, "user_id": user, "session_id": f"demo-{user}", "event_type": etype,
                    "item_id": item, **extra}

        s, items = self.shopper, self.discovered
        purchase = ev("demo-4", 2.0, s, "purchase", self.cart, quantity=1)
        return [
            (f"shopper {s} browses {self.new_category} ({', '.join(items)}) and puts {self.cart} in the cart",
             [ev("demo-1", 3.0, s, "view", items[0]), ev("demo-2", 2.9, s, "view", items[1]),
              ev("demo-3", 2.8, s, "view", items[2]), ev("demo-3b", 2.7, s, "add_to_cart", self.cart)]),
            (f"shopper {s} buys {self.cart}; {NEWCOMER} arrives and looks at {', '.join(items[:2])}",
             [purchase, ev("demo-5", 1.9, NEWCOMER, "view", items[0]), ev("demo-6", 1.8, NEWCOMER, "view", items[1])]),
            ("a producer re-sends the purchase and sends three broken rows (quarantined with a reason)",
             [purchase, {"event_id": "demo-bad-1", "ts": "yesterday", "user_id": s, "event_type": "view", "item_id": items[0]},
              ev("demo-bad-2", 0.5, s, "teleport", items[0]), ev("demo-bad-3", 0.5, "", "view", items[1])]),
        ]


if __name__ == "__main__":
    sys.exit(main())
