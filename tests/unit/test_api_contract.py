"""Schemathesis against the read API's own /openapi.json (a fixed seed, bounded examples): no
5xx, no status the document does not list, every body in its documented shape, a 405 with
Allow for methods an operation lacks. A published SQLite store answers, so personal, fallback
and error paths are all reached; POST /v1/events writes to a home of its own."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings

from freshrec.api import create_app
from freshrec.serving import open_store
from freshrec.settings import Settings


def _published_store(path):
    store = open_store(f"sqlite:///{path}")
    with store.begin_version("v1", {"model": {"name": "freshrec", "version": "1"}}) as w:
        w.write_user_recs([("42", [(f"i{k}", 1.0 - k / 100) for k in range(30)]), ("a/b", [("x", 1.0)]), ("0", [("i1", 0.5)])])
        w.write_similar([("9", [("s", 0.5)]), ("0", [("i2", 0.4)])])
        w.write_popular(None, [(f"p{k}", 100.0 - k) for k in range(20)])
        w.write_popular("shoes", [("shoe", 2.0)])
        w.write_query_items([("red shoes", [("red", 0.3)]), ("0", [("zero", 0.1)])])
        w.write_item_details([("i0", "shoes", 19.5), ("p0", "hats", None)])
        w.commit()
    return store


# schemathesis reads the document when the module loads: the app is built then, on a store in
# a directory removed when the interpreter exits
_DIR = tempfile.TemporaryDirectory(prefix="freshrec-contract-")
_STORE = _published_store(Path(_DIR.name) / "serving.db")
# with a home of its own and writes open (--insecure-local), so POST /v1/events is exercised in full
APP = create_app(Settings(home=Path(_DIR.name) / "home"), store=_STORE, insecure_local=True)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx, value):
    """NDJSON bodies of POST /v1/events: a generated string is sent as its UTF-8 bytes."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text.encode("utf-8") if isinstance(text, str) else text


@schema.parametrize()
@settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_keeps_its_own_contract(case):
    case.call_and_validate()


def test_the_document_lists_only_statuses_the_api_returns():
    from fastapi.testclient import TestClient

    with TestClient(APP) as http:
        doc = http.get("/openapi.json").json()
    statuses = {code for ops in doc["paths"].values() for op in ops.values() for code in op["responses"]}
    assert statuses <= {"200", "400", "401", "413", "503"}, statuses
    events = doc["paths"]["/v1/events"]["post"]
    assert set(events["responses"]) == {"200", "400", "401", "413", "503"}
    body = events["requestBody"]["content"]
    assert body["application/json"]["example"][0]["event_type"] == "view" and "application/x-ndjson" in body
    assert "HTTPValidationError" not in doc.get("components", {}).get("schemas", {})
    user = doc["paths"]["/v1/users/{user_id}/recommendations"]["get"]["parameters"][0]
    assert user["name"] == "user_id" and user["schema"]["maxLength"] == 256 and "pattern" in user["schema"]
