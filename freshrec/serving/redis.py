"""Redis serving store: one string key per list, namespaced by version, and a pointer key.

Keys (``P`` is the prefix, ``freshrec`` by default; ``?prefix=`` in the URL changes it):

    P:live                       the live version id (a plain string; switched with one SET)
    P:versions                   hash: version id -> JSON version record
    P:seq                        counter giving each version its sequence number
    P:v:{version}:user:{user_id}        -> {"items": [...], "scores": [...], "updated_at": "..."}
    P:v:{version}:similar:{item_id}
    P:v:{version}:popular:{category}    (the overall list under the empty category: "P:v:V:popular:")
    P:v:{version}:query:{normalised query}
    P:v:{version}:details:{item_id}     -> {"category": "...", "price": 9.5} (what is known)

A read runs one Lua script that GETs the pointer and then the key of that version, atomically,
so it cannot mix versions nor miss a version deleted between the two steps. The pointer switch
and the version-state changes go in one MULTI/EXEC guarded by WATCH. Lua reads touch keys that
are not declared in KEYS, which standalone Redis (and Valkey) allow; Redis Cluster does not.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Callable

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from freshrec.serving.base import (
    DETAILS,
    PublishError,
    ServingError,
    ServingStore,
    VersionError,
    _Conflict,
    check_live,
    store_url,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
UNLINK_CHUNK = 500

_READ_LUA = """
local v = redis.call('GET', KEYS[1])
if not v then return false end
return {v, redis.call('GET', ARGV[1] .. v .. ARGV[2])}
"""


class RedisStore(ServingStore):
    _connection_errors = (RedisConnectionError, RedisTimeoutError)

    def __init__(self, url: str | URL, prefix: str | None = None) -> None:
        self.url, prefix, self.display_url = store_url(url, "prefix", prefix, "freshrec", PREFIX_RE,
                                                       "use letters, digits, '.', '_' and '-'")
        self.prefix = prefix
        self.r = redis.Redis.from_url(self.url, socket_connect_timeout=5, socket_timeout=30)
        self.k_live = f"{prefix}:live"
        self.k_versions = f"{prefix}:versions"
        self.k_seq = f"{prefix}:seq"
        self._vprefix = f"{prefix}:v:"
        self._script = self.r.register_script(_READ_LUA)

    def key(self, version: str, kind: str, key: str) -> str:
        return f"{self._vprefix}{version}:{kind}:{key}"

    def close(self) -> None:
        self.r.close()

    def _atomic(self, body: Callable[[Any], Any], *watch: str) -> Any:
        """Run ``body(pipe)`` under WATCH of ``watch``; ``body`` calls multi() and execute()."""
        with self.r.pipeline() as pipe:
            for _ in range(200):
                try:
                    pipe.watch(*watch)
                    return body(pipe)
                except WatchError:
                    continue
        raise ServingError("the serving store is too busy (a WATCH kept failing); try again")

    # -- primitives ----------------------------------------------------------------------
    def _read(self, kind: str, key: str, version: str | None) -> tuple[str | None, Any]:
        if version is None:
            found = self._script(keys=[self.k_live], args=[self._vprefix, f":{kind}:{key}"])
            if not found:
                return None, None
            return found[0].decode(), found[1]
        return version, self.r.get(self.key(version, kind, key))

    def _read_details(self, version: str, item_ids: list[str]) -> list[Any]:
        return self.r.mget([self.key(version, DETAILS, i) for i in item_ids])

    def _live(self) -> str | None:
        value = self.r.get(self.k_live)
        return value.decode() if value else None

    def _records(self) -> list[dict[str, Any]]:
        return [json.loads(v) for v in self.r.hvals(self.k_versions)]

    def _record(self, version: str) -> dict[str, Any] | None:
        raw = self.r.hget(self.k_versions, version)
        return json.loads(raw) if raw else None

    def _create_version(self, version: str, meta: dict[str, Any], created_at: str) -> None:
        seq = int(self.r.incr(self.k_seq))
        record = {"version": version, "seq": seq, "state": "writing", "created_at": created_at, "committed_at": None,
                  "live_at": None, "replaced_at": None, "meta": meta, "counts": {}}

        def body(pipe: Any) -> None:
            raw = pipe.hget(self.k_versions, version)
            if raw and json.loads(raw)["state"] not in ("retired", "aborted"):
                raise VersionError(f"version {version} already exists (state: {json.loads(raw)['state']})")
            pipe.multi()
            pipe.hset(self.k_versions, version, json.dumps(record))
            pipe.execute()

        self._atomic(body, self.k_versions)

    def _record_in(self, client: Any, version: str, state: str) -> dict[str, Any]:
        """The record of ``version`` read through ``client`` (the store, or a pipeline in WATCH
        mode), which must be in ``state``."""
        raw = client.hget(self.k_versions, version)
        record = json.loads(raw) if raw else None
        if record is None or record["state"] != state:
            raise VersionError(f"version {version} is {'unknown' if record is None else record['state']}, expected {state}")
        return record

    def _write_rows(self, version: str, kind: str, rows: list[tuple[str, str]]) -> None:
        self._record_in(self.r, version, "writing")
        with self.r.pipeline(transaction=False) as pipe:
            for k, v in rows:
                pipe.set(self.key(version, kind, k), v, nx=True)
            results = pipe.execute()
        if not all(results):
            dup = next(k for (k, _), ok in zip(rows, results, strict=True) if not ok)
            raise PublishError(f"duplicate key {dup!r} in the {kind} lists of version {version}")

    def _point_live(self, pipe: Any, record: dict[str, Any], now: str) -> None:
        """Queue on ``pipe`` (in WATCH mode, before multi()) the switch of the pointer to
        ``record``'s version, with both records' new states."""
        version = record["version"]
        old = pipe.get(self.k_live)
        old = old.decode() if old else None
        old_record = json.loads(pipe.hget(self.k_versions, old) or "null") if old else None
        pipe.multi()
        if old_record:
            old_record.update(state="complete", replaced_at=now)
            pipe.hset(self.k_versions, old, json.dumps(old_record))
        record.update(state="live", live_at=now)
        pipe.hset(self.k_versions, version, json.dumps(record))
        pipe.set(self.k_live, version)

    def _finish(self, version: str, counts: dict[str, int], activate: bool, now: str) -> None:
        def body(pipe: Any) -> None:
            record = self._record_in(pipe, version, "writing")
            record.update(state="complete", committed_at=now, counts=counts)
            if activate:
                self._point_live(pipe, record, now)
            else:
                pipe.multi()
                pipe.hset(self.k_versions, version, json.dumps(record))
            pipe.execute()

        self._atomic(body, self.k_live, self.k_versions)

    def _switch(self, target: str, expected_live: str | None, now: str) -> None:
        def body(pipe: Any) -> None:
            live = pipe.get(self.k_live)
            if (live.decode() if live else None) != expected_live:
                raise _Conflict()
            self._point_live(pipe, self._record_in(pipe, target, "complete"), now)
            pipe.execute()

        self._atomic(body, self.k_live, self.k_versions)

    def _retire(self, version: str, state: str, from_state: str) -> bool:
        def body(pipe: Any) -> bool:
            live = pipe.get(self.k_live)
            raw = pipe.hget(self.k_versions, version)
            record = json.loads(raw) if raw else None
            if record is None or record["state"] != from_state or (live and live.decode() == version):
                pipe.unwatch()
                return False
            record["state"] = state
            pipe.multi()
            pipe.hset(self.k_versions, version, json.dumps(record))
            pipe.execute()
            return True

        return self._atomic(body, self.k_live, self.k_versions)

    def _drop_data(self, version: str) -> None:
        self._unlink_matching(f"{self._vprefix}{version}:*")

    def _unlink_matching(self, pattern: str) -> int:
        """UNLINK every key matching ``pattern``, found with SCAN, in chunks; returns how many."""
        removed = 0
        batch: list[bytes] = []
        for key in self.r.scan_iter(match=pattern, count=2000):
            batch.append(key)
            if len(batch) >= UNLINK_CHUNK:
                removed += self.r.unlink(*batch)
                batch = []
        if batch:
            removed += self.r.unlink(*batch)
        return removed

    def _delete_key(self, kind: str, key: str) -> int:
        keys = [self.key(r["version"], kind, key) for r in self._records()]
        return int(self.r.unlink(*keys)) if keys else 0

    def _upsert_into(self, kind: str, rows: list[tuple[str, str]], version: str) -> None:
        def body(pipe: Any) -> None:
            raw = pipe.hget(self.k_versions, version)
            state = json.loads(raw)["state"] if raw else None
            if state not in ("complete", "live"):
                pipe.unwatch()
                raise VersionError(f"version {version} is {state or 'unknown'}: its lists cannot be refreshed")
            pipe.multi()
            for k, v in rows:
                pipe.set(self.key(version, kind, k), v)
            pipe.execute()

        self._atomic(body, self.k_versions)

    def _upsert(self, kind: str, rows: list[tuple[str, str]], expected_version: str | None) -> str:
        def body(pipe: Any) -> str:
            live = pipe.get(self.k_live)
            version = check_live(live.decode() if live else None, expected_version)
            pipe.multi()
            for k, v in rows:
                pipe.set(self.key(version, kind, k), v)
            pipe.execute()
            return version

        return self._atomic(body, self.k_live)

    # -- test and bench helper -----------------------------------------------------------
    def destroy(self) -> int:
        """Delete every key under this store's prefix (tests, benchmarks)."""
        return self._unlink_matching(f"{self.prefix}:*")
