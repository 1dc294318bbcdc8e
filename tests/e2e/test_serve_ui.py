"""The pages of `freshrec serve` in a real headless Chromium (Playwright), with the network cut.

A small home is published the way the batch publishes (``publish_tables`` with the item details
of features/item_stats), with the gate's decision, the ledger, a quarantined batch and Data Docs
built by ``freshrec.quality`` on a tiny batch (Spark). `freshrec serve` runs on it in a
subprocess. Every page is loaded in a browser context that aborts, and records, each request
that does not go to 127.0.0.1: the overview page, the preview of a user's list, the Swagger UI
of /docs and the Data Docs (served, and opened as a file) must render with none attempted.

Chromium comes from Debian (`apt-get install -y chromium`), never from `playwright install`.
Run it alone with

    .venv/bin/python -m pytest -m e2e tests/e2e/test_serve_ui.py

With FRESHREC_SCREENSHOTS=DIR it also saves overview.png (with user u3's list previewed) and
docs-offline.png under DIR.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from freshrec.settings import Settings
from tests.e2e.test_airflow_ui import _free_port
from tests.integration.test_quality import CLEAN_COUNTS, GOOD_ROWS, SCHEMA
from tests.unit.test_serving_api import GATE, pipeline_state

pytestmark = pytest.mark.e2e

UI_TIMEOUT_MS = 30_000
STARTUP_TIMEOUT_S = 60
VERSION = "batch-20261203T020000Z-3f2a9c1d"
CATEGORIES = ("shoes", "hats", "socks", "bags")
ITEMS = {f"item-{k}": (CATEGORIES[k % 4], None if k % 5 == 0 else round(9.5 + k, 2)) for k in range(40)}
USERS = {f"u{u}": [(f"item-{(u * 7 + r * 3) % 40}", round(1.0 - r / 20, 3)) for r in range(10)] for u in range(20)}


# --------------------------------------------------------------------------------------------
# a published home and `freshrec serve` on it
# --------------------------------------------------------------------------------------------
def _publish(settings: Settings) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from freshrec.serving import open_store
    from freshrec.serving.publish import publish_tables, write_recs_tables

    stats = settings.features_dir / "item_stats"
    stats.mkdir(parents=True)
    pq.write_table(pa.table({"item_id": list(ITEMS), "category": [c for c, _ in ITEMS.values()],
                             "price": [p for _, p in ITEMS.values()]}), stats / "part-00000.parquet")
    ranked = sorted(ITEMS, key=lambda i: int(i.split("-")[1]))
    popular = {None: [(i, 100.0 - n) for n, i in enumerate(ranked[:20])]}
    popular.update({c: [(i, 50.0 - n) for n, i in enumerate(i for i in ranked if ITEMS[i][0] == c)] for c in CATEGORIES})
    recs = write_recs_tables(settings.recs_dir / VERSION, users=USERS, popular=popular,
                             similar={i: [(j, 0.5) for j in ranked[:5] if j != i] for i in ranked})
    with open_store(settings.serving) as store:
        publish_tables(store, VERSION, recs, {"batch_id": GATE["batch_id"], "model": GATE["publish"]}, details=stats)


def _data_docs(spark, settings: Settings) -> None:
    from freshrec.quality import validate_events

    validate_events(spark.createDataFrame(GOOD_ROWS, SCHEMA), settings, "batch-e2e", CLEAN_COUNTS)


@dataclass
class Server:
    url: str
    settings: Settings
    banner: str


@pytest.fixture(scope="module")
def server(tmp_path_factory, spark) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serve-ui")
    settings = Settings(home=(root / "home").resolve())
    _publish(settings)
    pipeline_state(settings, microbatches=12)
    _data_docs(spark, settings)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_")}
    env.update(FRESHREC_HOME=str(settings.home), FRESHREC_CONFIG=str(root / "no-freshrec.toml"), PYTHONUNBUFFERED="1")
    exe = Path(sys.executable).parent / "freshrec"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "freshrec.cli"]
    log = root / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*cmd, "serve", "--port", str(port)], env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"freshrec serve exited with {proc.returncode}:\n{log.read_text()}"
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"freshrec serve did not answer within {STARTUP_TIMEOUT_S}s:\n{log.read_text()}"
            time.sleep(0.2)
        yield Server(url, settings, log.read_text())
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --------------------------------------------------------------------------------------------
# a browser with the network cut
# --------------------------------------------------------------------------------------------
@dataclass
class Offline:
    page: object
    attempted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def screenshot(self, name: str) -> None:
        folder = os.environ.get("FRESHREC_SCREENSHOTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(folder) / name), full_page=True)


@pytest.fixture
def offline(browser) -> Iterator[Offline]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    seen = Offline(context.new_page())

    def route(r) -> None:
        url = urlsplit(r.request.url)
        if url.scheme in ("data", "blob", "file") or url.hostname == "127.0.0.1":
            r.continue_()
        else:
            seen.attempted.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    seen.page.on("requestfailed", lambda r: seen.failed.append(r.url))
    seen.page.on("pageerror", lambda e: seen.errors.append(str(e)))
    try:
        yield seen
    finally:
        context.close()
    assert seen.attempted == [], f"requests off this machine: {seen.attempted}"
    assert seen.failed == [] and seen.errors == [], (seen.failed, seen.errors)


# --------------------------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------------------------
def test_serve_prints_where_its_pages_are(server):
    for path in ("/", "/docs", "/metrics", "/data-docs/", "/v1/"):
        assert f"{server.url}{path}" in server.banner, server.banner
    assert httpx.get(f"{server.url}/").status_code == 200  # no longer a 404


def test_overview_page(server, offline):
    from playwright.sync_api import expect

    page = offline.page
    page.goto(f"{server.url}/")
    expect(page.locator("#live .big")).to_have_text(VERSION)
    expect(page.locator("#live")).to_contain_text(f"users{len(USERS)}")
    expect(page.locator("#recommender .big")).to_have_text("baseline ease")
    expect(page.locator("#recommender")).to_contain_text(GATE["decision"]["reason"])
    expect(page.locator("#versus tr.serving")).to_contain_text("ease")
    expect(page.locator("#versus")).to_contain_text("0.23272")  # the candidate's ndcg@10, as in gate.json
    expect(page.locator("#counts")).to_contain_text("read120")
    expect(page.locator("#reasons tr").first).to_contain_text("not a JSON object2")
    expect(page.locator("#freshness-chart polyline")).to_have_count(2)
    expect(page.locator("#freshness-chart circle")).to_have_count(24)


def test_preview_shows_a_users_list_with_categories(server, offline):
    from playwright.sync_api import expect

    page = offline.page
    page.goto(f"{server.url}/")
    page.get_by_label("user id").fill("u3")
    page.get_by_role("button", name="show list").click()
    page.wait_for_url("**/?user=u3")
    expect(page.locator("#preview-source")).to_have_text("personal list")
    rows = page.locator("#preview-items tr")
    expect(rows).to_have_count(len(USERS["u3"]) + 1)
    shown = [rows.nth(k + 1).locator("td").all_inner_texts() for k in range(len(USERS["u3"]))]
    assert [(r[1], r[2]) for r in shown] == [(item, ITEMS[item][0]) for item, _ in USERS["u3"]]
    assert {r[3] for r in shown if ITEMS[r[1]][1] is None} <= {"-"}
    offline.screenshot("overview.png")  # the whole page, with this preview
    page.get_by_label("user id").fill("someone new")
    page.get_by_role("button", name="show list").click()
    expect(page.locator("#preview-source")).to_contain_text("fallback")
    expect(page.locator("#preview-items tr").nth(1)).to_contain_text("item-0shoes")


def test_docs_render_with_the_network_cut(server, offline):
    from playwright.sync_api import expect

    page = offline.page
    page.goto(f"{server.url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("freshrec read API")
    operation = page.locator(".opblock-summary-path", has_text="/v1/users/{user_id}/recommendations")
    expect(operation).to_be_visible()
    offline.screenshot("docs-offline.png")
    operation.click()  # and it answers, from this server
    page.get_by_role("button", name="Try it out").click()
    page.get_by_placeholder("user_id").fill("u3")
    page.get_by_role("button", name="Execute").click()
    expect(page.locator(".live-responses-table")).to_contain_text("category")


def _data_docs_styled(offline: Offline, url: str) -> None:
    from playwright.sync_api import expect

    page = offline.page
    page.goto(url)
    expect(page.get_by_text("batch-e2e").first).to_be_visible()
    expect(page.locator(".bootstrap-table").first).to_be_visible()  # bootstrap-table ran (jQuery, bootstrap)
    assert "apple-system" in page.evaluate("getComputedStyle(document.body).fontFamily")  # bootstrap's CSS applies
    icon = page.locator(".fa-check-circle").first
    expect(icon).to_be_visible()
    assert "Font Awesome" in icon.evaluate("e => getComputedStyle(e, '::before').fontFamily")


def test_data_docs_render_styled_with_the_network_cut(server, offline):
    _data_docs_styled(offline, f"{server.url}/data-docs/")
    index = server.settings.reports_dir / "data_docs" / "index.html"
    _data_docs_styled(offline, index.as_uri())  # as the quality gate's message points at it
