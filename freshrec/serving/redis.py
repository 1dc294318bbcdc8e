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

With ``?encoding=packed`` in the URL a list is written packed instead (base.encode_packed: a
27-byte header, uint32 item codes, 16-bit scores; about 760 bytes of Redis memory per 100-item
list against 3.2 KB as JSON), its item ids coded in one item table for every version:

    P:items:code                 hash: item id -> code (assigned once, never changed or reused)
    P:items:id                   hash: code -> item id
    P:items:seq                  counter giving the next code

Reads take either encoding, whatever the URL says, so a store can move from one to the other
version by version.

A read runs one Lua script that GETs the pointer and then the key of that version, atomically,
so it cannot mix versions nor miss a version deleted between the two steps. The pointer switch
and the version-state changes go in one MULTI/EXEC guarded by WATCH. Lua reads touch keys that
are not declared in KEYS, which standalone Redis (and Valkey) allow; Redis Cluster does not.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Callable, Sequence

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from freshrec.serving.base import (
    DETAILS,
    MAX_N,
    PublishError,
    ServingError,
    ServingStore,
    VersionError,
    _Conflict,
    check_live,
    checked_list,
    decode_packed,
    encode_packed,
    is_packed,
    packed_codes,
    store_url,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
UNLINK_CHUNK = 500

# KEYS[1]: the pointer; ARGV: key prefix, key suffix, n, the item table (code -> id). A packed
# value (first byte 1) comes back with the ids of its first n item codes (uint32 after the
# 27-byte header), looked up in the same atomic step.
_READ_LUA = """
local v = redis.call('GET', KEYS[1])
if not v then return false end
local raw = redis.call('GET', ARGV[1] .. v .. ARGV[2])
if raw and string.byte(raw, 1) == 1 then
  local n = math.min(struct.unpack('<H', raw, 2), tonumber(ARGV[3]))
  if n > 0 then
    local codes = {}
    for k = 1, n do codes[k] = struct.unpack('<I4', raw, 28 + 4 * (k - 1)) end
    return {v, raw, redis.call('HMGET', ARGV[4], unpack(codes))}
  end
end
return {v, raw}
"""

# KEYS: item id -> code, code -> item id, the counter; ARGV: item ids. Their codes, new ones
# assigned in order (atomic: two writers never give one id two codes).
_CODES_LUA = """
local out = {}
for i, id in ipairs(ARGV) do
  local c = redis.call('HGET', KEYS[1], id)
  if not c then
    c = redis.call('INCR', KEYS[3]) - 1
    redis.call('HSET', KEYS[1], id, c)
    redis.call('HSET', KEYS[2], c, id)
  end
  out[i] = tonumber(c)
end
return out
"""
ENCODING_RE = re.compile(r"^(json|packed)$")


class RedisStore(ServingStore):
    _connection_errors = (RedisConnectionError, RedisTimeoutError)

    def __init__(self, url: str | URL, prefix: str | None = None, encoding: str | None = None) -> None:
        url, self.encoding, _ = store_url(url, "encoding", encoding, "json", ENCODING_RE, "use json or packed")
        self.url, prefix, self.display_url = store_url(url, "prefix", prefix, "freshrec", PREFIX_RE,
                                                       "use letters, digits, '.', '_' and '-'")
        if self.encoding != "json":
            self.display_url += f" (encoding {self.encoding})"
        self.prefix = prefix
        self.k_item_code, self.k_item_id, self.k_item_seq = f"{prefix}:items:code", f"{prefix}:items:id", f"{prefix}:items:seq"
        self._codes: dict[str, int] = {}  # item id -> code: codes never change, so the cache never goes stale
        self.r = redis.Redis.from_url(self.url, socket_connect_timeout=5, socket_timeout=30)
        self.k_live = f"{prefix}:live"
        self.k_versions = f"{prefix}:versions"
        self.k_seq = f"{prefix}:seq"
        self._vprefix = f"{prefix}:v:"
        self._script = self.r.register_script(_READ_LUA)
        self._assign = self.r.register_script(_CODES_LUA)

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

    def _encode(self, items: Sequence[Any], scores: Sequence[Any], updated_at: str) -> str | bytes:
        if self.encoding == "json":
            return super()._encode(items, scores, updated_at)
        items, scores = checked_list(items, scores)
        missing = list(dict.fromkeys(i for i in items if i not in self._codes))
        if missing:
            with self._guard():
                self._codes.update(zip(missing, self._assign(keys=[self.k_item_code, self.k_item_id, self.k_item_seq],
                                                             args=missing), strict=True))
        return encode_packed([self._codes[i] for i in items], scores, updated_at)

    # -- primitives ----------------------------------------------------------------------
    def _read(self, kind: str, key: str, version: str | None, n: int = MAX_N) -> tuple[str | None, Any]:
        if version is None:
            found = self._script(keys=[self.k_live], args=[self._vprefix, f":{kind}:{key}", n, self.k_item_id])
            if not found:
                return None, None
            v, raw = found[0].decode(), found[1]
            ids = found[2] if len(found) > 2 else []
        else:
            v, raw = version, self.r.get(self.key(version, kind, key))
            codes = packed_codes(raw, n) if is_packed(raw) else []
            ids = self.r.hmget(self.k_item_id, codes) if codes else []
        if is_packed(raw):
            return v, decode_packed(raw, n, [i for i in ids if i is not None])
        return v, raw

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
        self._codes.clear()
        return self._unlink_matching(f"{self.prefix}:*")
