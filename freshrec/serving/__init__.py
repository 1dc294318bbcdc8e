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
    NOTHING_PUBLISHED,
    LiveVersionChanged,
    NothingPublished,
    PublishError,
    ServingError,
    ServingStore,
    StoreUnavailable,
    VersionError,
    VersionWriter,
    new_version_id,
    normalise_query,
)

__all__ = ["open_store", "ServingStore", "VersionWriter", "ServingError", "NothingPublished", "PublishError",
           "StoreUnavailable", "VersionError", "LiveVersionChanged", "NOTHING_PUBLISHED", "new_version_id", "normalise_query"]

SCHEMES = ("sqlite", "redis", "rediss", "postgresql", "postgres")


def open_store(url: str) -> ServingStore:
    """The store named by ``url``: ``sqlite:///relative.db`` or ``sqlite:////abs/path.db``,
    ``redis://host:port/db[?prefix=P]``, ``postgresql://user@host:port/db[?schema=S]``.
    Opening connects to nothing; the first read or write does."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        if not url.startswith("sqlite:///"):
            raise ServingError(f"a SQLite serving URL looks like sqlite:///path/serving.db, got {url!r}")
        from freshrec.serving.sqlite import SqliteStore

        return SqliteStore(url[len("sqlite:///"):].split("?", 1)[0])
    if scheme in ("redis", "rediss"):
        from freshrec.serving.redis import RedisStore

        return RedisStore(url)
    if scheme in ("postgresql", "postgres"):
        from freshrec.serving.postgres import PostgresStore

        return PostgresStore(url)
    raise ServingError(f"unsupported serving URL {url!r}: use one of {', '.join(s + '://' for s in SCHEMES)}")
