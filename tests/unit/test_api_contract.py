"""Schemathesis against the read API's own /openapi.json (a fixed seed, bounded examples): no
5xx, no status the document does not list, every body in its documented shape, a 405 with
Allow for methods an operation lacks. A published SQLite store answers, so personal, fallback
and error paths are all reached."""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings

from freshrec.api import create_app
from freshrec.serving import open_store


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
APP = create_app(store=_STORE)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_keeps_its_own_contract(case):
    case.call_and_validate()


def test_the_document_lists_only_statuses_the_api_returns():
    from fastapi.testclient import TestClient

    with TestClient(APP) as http:
        doc = http.get("/openapi.json").json()
    statuses = {code for ops in doc["paths"].values() for op in ops.values() for code in op["responses"]}
    assert statuses <= {"200", "400", "503"}, statuses
    assert "HTTPValidationError" not in doc.get("components", {}).get("schemas", {})
    user = doc["paths"]["/v1/users/{user_id}/recommendations"]["get"]["parameters"][0]
    assert user["name"] == "user_id" and user["schema"]["maxLength"] == 256 and "pattern" in user["schema"]
