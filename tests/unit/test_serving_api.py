"""The HTTP read API through FastAPI's TestClient, on a SQLite store."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from freshrec.api import create_app
from freshrec.serving import open_store


def publish(store, version: str) -> None:
    with store.begin_version(version, {"model": {"name": "freshrec", "version": "1"}}) as w:
        w.write_user_recs([("42", [(f"{version}:i{k}", 1.0 - k / 100) for k in range(30)]), ("a/b", [("x", 1.0)])])
        w.write_similar([("9", [(f"{version}:s", 0.5)])])
        w.write_popular(None, [(f"{version}:p{k}", 100.0 - k) for k in range(20)])
        w.write_popular("shoes", [(f"{version}:shoe", 2.0)])
        w.write_query_items([("red shoes", [(f"{version}:red", 0.3)])])
        w.commit()


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
    assert list(body) == ["user_id", "version", "source", "updated_at", "items"]
    assert body["user_id"] == "42" and body["version"] == "v1" and body["source"] == "personal"
    assert body["items"] == [{"item_id": "v1:i0", "score": 1.0}, {"item_id": "v1:i1", "score": 0.99},
                             {"item_id": "v1:i2", "score": 0.98}]
    assert len(client.get("/v1/users/42/recommendations").json()["items"]) == 10  # default n
    assert len(client.get("/v1/users/42/recommendations?n=1000").json()["items"]) == 30
    assert client.get("/v1/users/a/b/recommendations").json()["items"] == [{"item_id": "x", "score": 1.0}]


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
    assert client.get("/v1/items/9/similar").json() == {"item_id": "9", "version": "v1", "source": "similar",
                                                        "updated_at": client.get("/v1/items/9/similar").json()["updated_at"],
                                                        "items": [{"item_id": "v1:s", "score": 0.5}]}
    popular = client.get("/v1/popular?n=2").json()
    assert popular["category"] is None and popular["source"] == "popular" and len(popular["items"]) == 2
    shoes = client.get("/v1/popular", params={"category": "shoes"}).json()
    assert shoes["category"] == "shoes" and shoes["items"] == [{"item_id": "v1:shoe", "score": 2.0}]
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
    assert {p["name"] for p in get["parameters"]} == {"user_id", "n"}


def test_create_app_from_settings(settings):
    store = open_store(settings.serving)
    publish(store, "v7")
    with TestClient(create_app(settings)) as c:
        assert c.get("/healthz").json()["live_version"] == "v7"
    store.close()
