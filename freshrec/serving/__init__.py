"""Serving store adapters behind one interface (see base.py and docs/serving.md).

    store = open_store("sqlite:///path/serving.db")        # or redis://host:6379/0, postgresql://...
    with store.begin_version("v1", {"model": {...}}) as w:
        w.write_user_recs([("u1", [("i9", 0.87), ("i3", 0.5)])])
        w.write_popular(None, [("i9", 120.0)])
        w.commit()
    store.get_user_recs("u1", n=10)
"""

from __future__ import annotations

from freshrec.serving.base import (
    MAX_N,
    NOTHING_PUBLISHED,
    LiveVersionChanged,
    NothingPublished,
    PublishError,
    ServingError,
    ServingStore,
    StoreUnavailable,
    VersionError,
    VersionWriter,
    normalise_query,
    parse_url,
    redacted,
)

__all__ = ["open_store", "ServingStore", "VersionWriter", "ServingError", "NothingPublished", "PublishError",
           "StoreUnavailable", "VersionError", "LiveVersionChanged", "NOTHING_PUBLISHED", "MAX_N", "normalise_query", "redacted"]

SCHEMES = ("sqlite", "redis", "rediss", "postgresql", "postgres")


def open_store(url: str) -> ServingStore:
    """The store named by ``url``: ``sqlite:///relative.db`` or ``sqlite:////abs/path.db``,
    ``redis://host:port/db[?prefix=P][&encoding=packed]``, ``postgresql://user@host:port/db[?schema=S]``.
    Opening connects to nothing; the first read or write does."""
    parsed = parse_url(url)
    scheme = parsed.drivername.lower()
    if "encoding" in parsed.query and scheme not in ("redis", "rediss"):
        raise ServingError(f"?encoding= is for Redis URLs (json or packed); {scheme} stores lists as JSON")
    if scheme == "sqlite":
        if parsed.host or not parsed.database:
            raise ServingError(f"a SQLite serving URL looks like sqlite:///path/serving.db, got {redacted(parsed)!r}")
        from freshrec.serving.sqlite import SqliteStore

        return SqliteStore(parsed.database)
    if scheme in ("redis", "rediss"):
        from freshrec.serving.redis import RedisStore

        return RedisStore(parsed)
    if scheme in ("postgresql", "postgres"):
        from freshrec.serving.postgres import PostgresStore

        return PostgresStore(parsed)
    raise ServingError(f"unsupported serving URL {redacted(parsed)!r}: use one of {', '.join(s + '://' for s in SCHEMES)}")
