"""The HTTP read API, its docs page and its overview page through FastAPI's TestClient, on a
SQLite store."""

from __future__ import annotations

import re
import sqlite3

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from freshrec.api import create_app, urls
from freshrec.serving import open_store


def publish(store, version: str) -> None:
    with store.begin_version(version, {"model": {"name": "freshrec", "version": "1"}}) as w:
        w.write_user_recs([("42", [(f"{version}:i{k}", 1.0 - k / 100) for k in range(30)]), ("a/b", [("x", 1.0)])])
        w.write_similar([("9", [(f"{version}:s", 0.5)])])
        w.write_popular(None, [(f"{version}:p{k}", 100.0 - k) for k in range(20)])
        w.write_popular("shoes", [(f"{version}:shoe", 2.0)])
        w.write_query_items([("red shoes", [(f"{version}:red", 0.3)])])
        w.write_item_details([(f"{version}:i0", "shoes", 19.5), (f"{version}:p0", "hats", None), (f"{version}:s", None, 3.25)])
        w.commit()


def unknown(item_id: str, score: float) -> dict:
    """An item as answered when its details are unknown."""
    return {"item_id": item_id, "score": score, "category": None, "price": None}


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a /metrics answer (label order and number format are the
    exposition format's choice), None when absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


@pytest.fixture
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path / 'serving.db'}")
    yield s
    s.close()


@pytest.fixture
def client(store):
    with TestClient(create_app(store=store)) as c:
        yield c


def test_before_any_publish(client):
    health = client.get("/healthz")
    assert health.status_code == 503 and health.json()["status"] == "unavailable"
    r = client.get("/v1/users/42/recommendations")
    assert r.status_code == 503 and r.json() == {"error": "nothing published yet; run `freshrec run batch`"}
    assert "freshrec_serving_live_version_info{" not in client.get("/metrics").text


def test_recommendations_shape_and_n(client, store):
    publish(store, "v1")
    r = client.get("/v1/users/42/recommendations", params={"n": 3})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == ["user_id", "version", "source", "updated_at", "experiment", "variant", "recommendation_id", "items"]
    assert body["user_id"] == "42" and body["version"] == "v1" and body["source"] == "personal"
    assert body["items"] == [{"item_id": "v1:i0", "score": 1.0, "category": "shoes", "price": 19.5},
                             unknown("v1:i1", 0.99), unknown("v1:i2", 0.98)]
    assert len(client.get("/v1/users/42/recommendations").json()["items"]) == 10  # default n
    assert len(client.get("/v1/users/42/recommendations?n=1000").json()["items"]) == 30
    assert client.get("/v1/users/a/b/recommendations").json()["items"] == [unknown("x", 1.0)]


def test_unknown_keys_fall_back_to_popular(client, store):
    publish(store, "v1")
    body = client.get("/v1/users/nobody/recommendations?n=2").json()
    assert body["source"] == "fallback" and body["user_id"] == "nobody"
    assert [i["item_id"] for i in body["items"]] == ["v1:p0", "v1:p1"]
    assert client.get("/v1/items/unknown/similar").json()["source"] == "fallback"
    assert client.get("/v1/popular?category=hats").json()["source"] == "fallback"
    assert client.get("/v1/queries/nothing/items").json()["source"] == "fallback"


def test_other_endpoints(client, store):
    publish(store, "v1")
    similar = client.get("/v1/items/9/similar").json()
    assert similar.pop("recommendation_id").startswith("r-")
    assert similar == {"item_id": "9", "version": "v1", "source": "similar",
                                                        "updated_at": client.get("/v1/items/9/similar").json()["updated_at"],
                                                        "items": [{"item_id": "v1:s", "score": 0.5, "category": None,
                                                                   "price": 3.25}]}
    popular = client.get("/v1/popular?n=2").json()
    assert popular["category"] is None and popular["source"] == "popular" and len(popular["items"]) == 2
    shoes = client.get("/v1/popular", params={"category": "shoes"}).json()
    assert shoes["category"] == "shoes" and shoes["items"] == [unknown("v1:shoe", 2.0)]
    query = client.get("/v1/queries/Red%20%20Shoes/items").json()
    assert query["query"] == "red shoes" and query["items"][0]["item_id"] == "v1:red"
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok", "live_version": "v1"}


@pytest.mark.parametrize("query", ["n=0", "n=-1", "n=1001", "n=abc", "n=1.5", "n="])
def test_bad_parameters_get_a_compact_400(client, store, query):
    publish(store, "v1")
    for path in ("/v1/users/42/recommendations", "/v1/items/9/similar", "/v1/popular", "/v1/queries/q/items"):
        r = client.get(f"{path}?{query}")
        assert r.status_code == 400, (path, query, r.text)
        body = r.json()
        assert list(body) == ["error"] and body["error"].startswith("n: ")


def test_unknown_route_and_empty_id(client, store):
    publish(store, "v1")
    r = client.get("/v2/whatever")
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}
    r = client.get("/v1/users/%20/recommendations")
    assert r.status_code == 400 and "user_id" in r.json()["error"]
    assert client.post("/v1/popular").status_code == 405


def test_switch_is_visible_and_rollback_too(client, store):
    publish(store, "v1")
    publish(store, "v2")
    assert client.get("/v1/users/42/recommendations?n=1").json()["items"][0]["item_id"] == "v2:i0"
    store.rollback()
    assert client.get("/v1/users/42/recommendations?n=1").json()["items"][0]["item_id"] == "v1:i0"


def test_metrics_text(client, store):
    publish(store, "v1")
    client.get("/v1/users/42/recommendations")
    client.get("/v1/users/43/recommendations")
    client.get("/v1/users/42/recommendations?n=0")
    text = client.get("/metrics").text
    route = "/v1/users/{user_id}/recommendations"
    assert sample(text, "freshrec_http_requests_total", route=route, method="GET", status="200") == 2
    assert sample(text, "freshrec_http_requests_total", route=route, method="GET", status="400") == 1
    assert sample(text, "freshrec_http_request_duration_seconds_count", route=route) == 3
    assert sample(text, "freshrec_http_request_duration_seconds_bucket", route=route, le="+Inf") == 3
    assert sample(text, "freshrec_fallback_total", endpoint="recommendations") == 1
    assert sample(text, "freshrec_serving_live_version_info", version="v1") == 1
    assert sample(text, "freshrec_serving_up") == 1
    assert "# TYPE freshrec_http_request_duration_seconds histogram" in text
    assert "43" not in re.findall(r'route="([^"]*)"', text)  # user ids never become labels


def test_metrics_carry_the_freshness_of_the_newest_microbatch(tmp_path, store):
    from freshrec.ledger import Ledger
    from freshrec.settings import Settings

    settings = Settings(home=tmp_path / "home", serving_url=f"sqlite:///{tmp_path / 'serving.db'}")
    with TestClient(create_app(settings)) as c:
        assert "freshrec_microbatch" not in c.get("/metrics").text  # no micro-batch yet
        settings.home.mkdir()
        ledger = Ledger(settings.state_db)
        ledger.record_microbatch("s-000001", {"files": 2, "rows": 120, "users": 7, "landing_to_served_p50_s": 3.5,
                                              "landing_to_served_p95_s": 4.25, "event_to_served_p50_s": 9.0,
                                              "event_to_served_p95_s": 11.5, "seconds": 2.0})
        ledger.record_microbatch("s-000002", {"files": 0, "rows": 0, "users": 0})  # found nothing: not the newest that worked
        text = c.get("/metrics").text
    assert sample(text, "freshrec_microbatch_landing_to_served_seconds", quantile="0.5") == 3.5
    assert sample(text, "freshrec_microbatch_landing_to_served_seconds", quantile="0.95") == 4.25
    assert sample(text, "freshrec_microbatch_event_to_served_seconds", quantile="0.95") == 11.5
    assert sample(text, "freshrec_microbatch_rows") == 120 and sample(text, "freshrec_microbatch_users") == 7
    finished = sample(text, "freshrec_microbatch_last_timestamp_seconds")  # Unix seconds, to the millisecond
    assert 1e9 <= finished < 1e10 and finished == round(finished, 3)
    assert "# TYPE freshrec_microbatch_landing_to_served_seconds gauge" in text


def test_openapi_documents_the_read_api(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/users/{user_id}/recommendations", "/v1/items/{item_id}/similar", "/v1/popular",
            "/v1/queries/{query}/items", "/healthz", "/metrics"} <= set(spec["paths"])
    get = spec["paths"]["/v1/users/{user_id}/recommendations"]["get"]
    assert {"200", "400", "503"} <= set(get["responses"])
    assert {p["name"] for p in get["parameters"]} == {"user_id", "n", "details"}


def test_create_app_from_settings(settings):
    store = open_store(settings.serving)
    publish(store, "v7")
    with TestClient(create_app(settings)) as c:
        assert c.get("/healthz").json()["live_version"] == "v7"
    store.close()


# -- item details --------------------------------------------------------------------------

def test_details_false_leaves_the_details_out_everywhere(client, store):
    publish(store, "v1")
    for path in ("/v1/users/42/recommendations", "/v1/users/nobody/recommendations", "/v1/items/9/similar",
                 "/v1/popular", "/v1/popular?category=shoes", "/v1/queries/red%20shoes/items"):
        sep = "&" if "?" in path else "?"
        with_details = client.get(f"{path}{sep}n=3").json()["items"]
        assert with_details and all(set(i) == {"item_id", "score", "category", "price"} for i in with_details), path
        for off in ("false", "0", "no"):
            bare = client.get(f"{path}{sep}n=3&details={off}").json()["items"]
            assert bare == [{"item_id": i["item_id"], "score": i["score"]} for i in with_details], (path, off)
    assert client.get("/v1/popular?n=1").json()["items"] == [{"item_id": "v1:p0", "score": 100.0, "category": "hats",
                                                              "price": None}]
    r = client.get("/v1/popular?details=maybe")
    assert r.status_code == 400 and r.json()["error"].startswith("details: ")


def test_a_version_without_details_answers_null_details(client, store):
    with store.begin_version("v1") as w:
        w.write_user_recs([("42", [("a", 1.0)])])
        w.write_popular(None, [("a", 1.0)])
        w.commit()
    assert client.get("/v1/users/42/recommendations").json()["items"] == [unknown("a", 1.0)]
    with sqlite3.connect(store.path) as conn:  # a store last written before item details existed
        conn.execute("DROP TABLE item_details")
    assert client.get("/v1/users/42/recommendations").json()["items"] == [unknown("a", 1.0)]


# -- pages for people ------------------------------------------------------------------------

EXTERNAL = re.compile(r"""(?:src|href|action)=["']?(?:https?:)?//""")


def test_docs_are_swagger_ui_from_local_files(client):
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not EXTERNAL.search(page.text) and "cdn." not in page.text
    refs = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert {"/static/swagger-ui/swagger-ui-bundle.js", "/static/swagger-ui/swagger-ui.css"} <= set(refs)
    for ref in refs:
        asset = client.get(ref)
        assert asset.status_code == 200 and len(asset.content) > 500, ref
    assert "url: '/openapi.json'" in page.text
    assert client.get("/redoc").status_code == 404  # it would load from a CDN: not offered
    assert "/docs" not in client.get("/openapi.json").json()["paths"]
    text = client.get("/metrics").text
    assert sample(text, "freshrec_http_requests_total", route="/static/swagger-ui/{path}", method="GET",
                  status="200") == len(refs)


def test_urls_printed_at_start():
    shown = urls("0.0.0.0", 8001)
    assert shown["overview"] == "http://127.0.0.1:8001/" and shown["API docs"] == "http://127.0.0.1:8001/docs"
    assert shown["metrics"] == "http://127.0.0.1:8001/metrics" and shown["Data Docs"] == "http://127.0.0.1:8001/data-docs/"
    assert urls("::1", 80)["overview"] == "http://[::1]:80/" and urls("example.org", 80)["overview"] == "http://example.org:80/"


GATE = {"batch_id": "batch-20261203T020000Z", "decided_at": "2026-12-03T07:49:14+00:00",
        "decision": {"promote": False, "publish": "baseline", "metric": "ndcg_at_10",
                     "reason": "candidate ndcg_at_10=0.23272 does not beat the best baseline ease=0.25318"},
        "publish": {"kind": "baseline", "name": "ease"},
        "model": {"version": "4", "metrics": {"ndcg_at_10": 0.23271562178929092, "recall_at_10": 0.3310896312886583,
                                              "ndcg_at_20": 0.25959531462999197, "n_users": 308.0}},
        "baselines": {"popularity": 0.25300884323268313, "ease": 0.2531827074834556}}
QUARANTINE = [("a.jsonl", "{bad", "not a JSON object"), ("a.jsonl", "{}", "missing user_id; missing item_id"),
              ("b.jsonl", "{bad", "not a JSON object")]


def pipeline_state(settings, microbatches: int = 3) -> None:
    """What the pipeline leaves under FRESHREC_HOME besides the serving store: the gate's
    decision, the ledger (counts and micro-batches) and a quarantined batch."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from freshrec.ledger import Ledger

    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    (settings.reports_dir / "gate.json").write_text(json.dumps(GATE))
    ledger = Ledger(settings.state_db)
    ledger.record_file_counts([{"source_file": "a.jsonl", "read": 120, "clean": 110, "quarantined": 8, "duplicates": 2}], "b1")
    for k in range(microbatches):
        ledger.record_microbatch(f"s-{k:06d}", {"files": 1, "rows": 10 + k, "users": 3 + k, "landing_to_served_p50_s": 2.0 + k,
                                                 "landing_to_served_p95_s": 4.5 + k, "event_to_served_p95_s": 9.0})
    folder = settings.quarantine_path / "batch_id=b1"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({name: [row[i] for row in QUARANTINE] for i, name in enumerate(("source_file", "raw", "reason"))}),
                   folder / "part-0.parquet")


def test_overview_page(tmp_path, store):
    from freshrec.settings import Settings

    settings = Settings(home=tmp_path / "home", serving_url=f"sqlite:///{tmp_path / 'serving.db'}")
    with TestClient(create_app(settings)) as c:
        empty = c.get("/")
        assert empty.status_code == 200 and empty.headers["content-type"].startswith("text/html")
        assert "nothing published yet" in empty.text and "no gate decision yet" in empty.text
        assert not settings.home.exists()  # looking creates nothing
        publish(store, "v1")
        pipeline_state(settings)
        page = c.get("/").text
        assert "v1" in page and "users</th><td>2" in page
        assert "candidate v4" in page and "not promoted" in page and "does not beat the best baseline ease=0.25318" in page
        assert "0.25318" in page and "0.25301" in page and "0.23272" in page  # model vs baselines, as in gate.json
        assert re.search(r"read</th><td>120<.*quarantined</th><td>8<", page)
        assert re.search(r"not a JSON object</td><td class=\"num\">2<", page)
        assert page.count("<polyline") == 2 and "s-000002" in page
        assert not EXTERNAL.search(page) and "<script" not in page
        preview = c.get("/", params={"user": "42"}).text
        assert "personal list" in preview and re.search(r"v1:i0</td><td>shoes</td><td class=\"num\">19.50<", preview)
        fallback = c.get("/", params={"user": "<b>nobody</b>"}).text
        assert "fallback" in fallback and "v1:p0</td><td>hats</td>" in fallback
        assert "<b>nobody</b>" not in fallback and "&lt;b&gt;nobody&lt;/b&gt;" in fallback  # escaped


def test_overview_names_the_serving_recommender(store, client):
    with store.begin_version("v1", {"model": {"kind": "model", "name": "freshrec", "version": "3", "alias": "champion"}}) as w:
        w.write_user_recs([("42", [("a", 1.0)])])
        w.write_popular(None, [("a", 1.0)])
        w.commit()
    assert "model freshrec v3 (champion)" in client.get("/").text


def test_http_hygiene(client, store):
    publish(store, "v1")
    r = client.post("/v1/popular")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    assert client.head("/healthz").status_code == 200
    r = client.get("/v1/popular", params={"n": "9" * 5000})
    assert r.status_code == 400 and len(r.text) < 300 and "9" * 201 not in r.text


def test_an_unreachable_store_answers_503_without_naming_its_host():
    app = create_app(store=open_store("redis://127.0.0.1:1/0?socket_timeout=0.5"))
    with TestClient(app) as c:
        for path in ("/v1/users/42/recommendations", "/v1/popular", "/healthz"):
            r = c.get(path)
            assert r.status_code == 503 and "127.0.0.1" not in r.text and "redis" not in r.text.lower(), r.text


def test_pseudonymised_ids_are_looked_up_by_the_clear_id(tmp_path, store):
    from freshrec.settings import Settings

    settings = Settings(home=tmp_path, pseudonymise=True, pseudonym_key="s3cret")
    hashed = settings.user_key("42")
    assert hashed.startswith("p-") and "42" not in hashed
    with store.begin_version("v1", {}) as w:
        w.write_user_recs([(hashed, [("i1", 1.0)])])
        w.write_popular(None, [("p", 1.0)])
        w.commit()
    with TestClient(create_app(settings, store=store)) as c:
        r = c.get("/v1/users/42/recommendations").json()
        assert r["source"] == "personal" and r["user_id"] == "42" and r["items"][0]["item_id"] == "i1"
        assert c.get(f"/v1/users/{hashed}/recommendations").json()["source"] == "fallback"


def test_uniform_answers_do_not_tell_a_customer_from_a_stranger(tmp_path, store):
    from freshrec.settings import Settings

    publish(store, "v1")
    with TestClient(create_app(Settings(home=tmp_path, uniform_answers=True), store=store)) as c:
        known, stranger = (c.get(f"/v1/users/{u}/recommendations?n=3&details=false").json() for u in ("42", "nobody"))
    assert set(known) == set(stranger) and known["source"] == stranger["source"] == "list"
    assert known["updated_at"] is None and stranger["updated_at"] is None
    assert known["items"] != stranger["items"]  # the lists themselves are still personal
