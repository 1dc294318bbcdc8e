"""The read commands of the CLI, run as a user runs them: `.venv/bin/freshrec` in a subprocess
with FRESHREC_HOME pointing at a home whose serving store the test published."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from freshrec.serving import open_store
from freshrec.settings import Settings

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent / "freshrec"


def run(args: list[str], home: Path) -> subprocess.CompletedProcess:
    cmd = [str(BIN), *args] if BIN.exists() else [sys.executable, "-m", "freshrec.cli", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_")}
    env["FRESHREC_HOME"] = str(home)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def one_line_error(result: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("freshrec")
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def publish(home: Path, version: str) -> None:
    store = open_store(Settings(home=home).serving)
    with store.begin_version(version, {"model": {"name": "freshrec", "version": "2"}}) as w:
        w.write_user_recs((f"u{i}", [(f"{version}:u{i}:{k}", 1.0 - k / 100) for k in range(30)]) for i in range(5))
        w.write_similar([("i1", [(f"{version}:sim{k}", 0.5) for k in range(3)])])
        w.write_popular(None, [(f"{version}:top{k}", 90.0 - k) for k in range(30)])
        w.write_popular("shoes", [(f"{version}:shoe", 4.0)])
        w.write_item_details([(f"{version}:shoe", "shoes", 59.9), (f"{version}:u1:0", "socks", None)])
        w.commit(expected_users=5)
    store.close()


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("cli") / "home"
    publish(home, "v1")
    publish(home, "v2")
    return home


def test_nothing_published_yet(tmp_path):
    for args in (["recs", "u1"], ["recs", "u1", "--json"], ["similar", "i1"], ["popular"], ["rollback"]):
        one_line_error(run(args, tmp_path / "empty"), "nothing published yet", "freshrec run batch")
    assert not (tmp_path / "empty").exists()


def test_recs_json_shape(home):
    r = run(["recs", "u3", "-n", "4", "--json"], home)
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert list(body) == ["user_id", "version", "source", "updated_at", "experiment", "variant", "recommendation_id", "items"]
    assert (body["user_id"], body["version"], body["source"]) == ("u3", "v2", "personal")
    assert [i["item_id"] for i in body["items"]] == [f"v2:u3:{k}" for k in range(4)]
    unknown = json.loads(run(["recs", "stranger", "--json"], home).stdout)
    assert unknown["source"] == "fallback" and len(unknown["items"]) == 10
    assert unknown["items"][0] == {"item_id": "v2:top0", "score": 90.0, "category": None, "price": None}


def test_recs_text(home):
    r = run(["recs", "u1", "-n", "2"], home)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert "user u1" in lines[0] and "v2" in lines[0] and "personal" in lines[0]
    assert len(lines) == 3 and "v2:u1:0" in lines[1] and "v2:u1:1" in lines[2]


def test_recs_for_a_users_file(home, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("u0\nstranger\n\n  u4  \n", encoding="utf-8")
    r = run(["recs", "--users-file", str(users), "-n", "10", "--json"], home)
    assert r.returncode == 0, r.stderr
    objects = [json.loads(line) for line in r.stdout.strip().splitlines()]
    assert [(o["user_id"], o["source"]) for o in objects] == [("u0", "personal"), ("stranger", "fallback"), ("u4", "personal")]
    assert all(len(o["items"]) == 10 and o["version"] == "v2" for o in objects)


def test_similar_and_popular(home):
    sim = json.loads(run(["similar", "i1", "-n", "2", "--json"], home).stdout)
    assert sim["item_id"] == "i1" and [i["item_id"] for i in sim["items"]] == ["v2:sim0", "v2:sim1"]
    assert json.loads(run(["similar", "nope", "--json"], home).stdout)["source"] == "fallback"
    pop = json.loads(run(["popular", "-n", "3", "--json"], home).stdout)
    assert pop["category"] is None and len(pop["items"]) == 3 and pop["source"] == "popular"
    shoes = json.loads(run(["popular", "--category", "shoes", "--json"], home).stdout)
    assert shoes["items"] == [{"item_id": "v2:shoe", "score": 4.0, "category": "shoes", "price": 59.9}]
    text = run(["popular", "--category", "shoes"], home)
    assert text.returncode == 0 and "v2:shoe" in text.stdout


def test_items_carry_details_unless_no_details(home, tmp_path):
    text = run(["recs", "u1", "-n", "2"], home).stdout.splitlines()
    assert text[1].split() == ["1", "v2:u1:0", "1", "socks", "-"] and text[2].split() == ["2", "v2:u1:1", "0.99", "-", "-"]
    assert run(["popular", "--category", "shoes"], home).stdout.splitlines()[1].split() == ["1", "v2:shoe", "4", "shoes", "59.90"]
    assert run(["recs", "u1", "-n", "2", "--no-details"], home).stdout.splitlines()[1].split() == ["1", "v2:u1:0", "1"]
    for args in (["recs", "u1"], ["similar", "i1"], ["popular"], ["popular", "--category", "shoes"]):
        bare = json.loads(run([*args, "-n", "2", "--json", "--no-details"], home).stdout)["items"]
        assert bare and all(set(i) == {"item_id", "score"} for i in bare), args
    users = tmp_path / "users.txt"
    users.write_text("u1\nstranger\n", encoding="utf-8")
    lines = run(["recs", "--users-file", str(users), "-n", "1", "--json", "--no-details"], home).stdout.splitlines()
    assert [json.loads(line)["items"][0] for line in lines] == [{"item_id": "v2:u1:0", "score": 1.0},
                                                                {"item_id": "v2:top0", "score": 90.0}]


def test_rollback(tmp_path):
    home = tmp_path / "home"
    publish(home, "v1")
    publish(home, "v2")
    r = run(["rollback"], home)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "live version: v2 -> v1"
    assert json.loads(run(["recs", "u1", "--json"], home).stdout)["version"] == "v1"
    one_line_error(run(["rollback"], home), "no earlier complete version")
    assert run(["rollback", "--to", "v2"], home).stdout.strip() == "live version: v1 -> v2"
    one_line_error(run(["rollback", "--to", "v9"], home), "cannot roll back to v9")
    one_line_error(run(["rollback", "--to", "bad version"], home), "malformed version id")


@pytest.mark.parametrize("args, needles", [
    (["recs"], ["USER_ID", "--users-file"]),
    (["recs", "u1", "--users-file", "x.txt"], ["either"]),
    (["recs", "u1", "-n", "0"], ["positive integer"]),
    (["recs", "u1", "-n", "ten"], ["positive integer", "ten"]),
    (["recs", "--users-file", "/does/not/exist.txt", "--json"], ["not found", "exist.txt"]),
    (["similar"], ["required"]),
    (["similar", "i1", "-n", "-3"], ["positive integer"]),
    (["popular", "-n", "x"], ["positive integer"]),
    (["popular", "--bogus"], ["unrecognized"]),
    (["serve", "--port", "70000"], ["port", "70000"]),
    (["serve", "--port", "http"], ["port"]),
    (["rollback", "--to"], ["expected one argument"]),
])
def test_bad_arguments_exit_2_with_one_line(home, args, needles):
    one_line_error(run(args, home), *needles)


def test_store_unreachable_is_one_line(tmp_path):
    env_home = tmp_path / "home"
    cmd = [str(BIN), "recs", "u1"] if BIN.exists() else [sys.executable, "-m", "freshrec.cli", "recs", "u1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_")}
    env.update(FRESHREC_HOME=str(env_home), FRESHREC_SERVING_URL="redis://127.0.0.1:1/0")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    one_line_error(result, "unavailable")


def test_serve_answers_http(home):
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(BIN), "serve", "--port", str(port)] if BIN.exists() else [sys.executable, "-m", "freshrec.cli", "serve", "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_")}
    env["FRESHREC_HOME"] = str(home)
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.communicate()
                assert time.monotonic() < deadline, "freshrec serve did not start"
                time.sleep(0.2)
        assert health.status_code == 200 and health.json()["live_version"] == "v2"
        body = httpx.get(f"http://127.0.0.1:{port}/v1/users/u2/recommendations?n=3", timeout=5).json()
        assert body["source"] == "personal" and [i["item_id"] for i in body["items"]] == [f"v2:u2:{k}" for k in range(3)]
        assert httpx.get(f"http://127.0.0.1:{port}/v1/users/u2/recommendations?n=0", timeout=5).status_code == 400
    finally:
        server.terminate()
        server.wait(timeout=30)
