"""Re-scoring without retraining: the lists of the users who just acted, and the popular lists,
upserted into the live serving version (the micro-batch path and the publish step's catch-up).
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from typing import Any

from freshrec.errors import UserError
from freshrec.settings import Settings

log = logging.getLogger(__name__)


def catch_up_step(settings: Settings) -> dict[str, Any]:
    """Re-score the users of the micro-batches the live version was not built from (those that
    landed after the batch's ``matrices`` read the lake) and refresh the popular lists, so a
    batch publish never takes a fresh list away."""
    from freshrec.lake import read_recent

    users = sorted(read_recent(settings)["user_id"].astype(str).unique())
    if not users:
        return {"users": 0}
    refreshed = refresh_users_step(settings, users)
    popular = refresh_popular_step(settings)
    return {"users": refreshed.get("users", 0), "popular_lists": popular.get("lists", 0)}


def refresh_users_step(settings: Settings, users: list[str]) -> dict[str, Any]:
    """Re-score ``users`` with the live version's recommender, no retraining, and upsert their
    lists into the live version.

    A user's sequence is their features/sequences row plus their events in features/recent
    (the micro-batches since the last batch), the last FRESHREC_SEQUENCE_LENGTH kept
    (``jobs.history``); a user seen for the first time is scored from the recent events alone.
    Exclusions (FRESHREC_EXCLUDE_SEEN) and unavailable items hold as in the batch."""
    from freshrec.serving import open_store

    started = time.perf_counter()
    users = sorted({str(u) for u in users})
    with open_store(settings.serving) as store:
        version = store.live_version()
        if version is None or not users:
            return {"version": version, "users": 0, "skipped": "nothing published yet" if version is None else "no users"}
        scored = _score_users(settings, version, users)
        result = store.upsert_user_recs(
            (u, list(zip(items, scores, strict=True)))
            for u, items, scores in zip(scored["user_id"], scored["items"], scored["scores"], strict=True))
    result["seconds"] = round(time.perf_counter() - started, 3)
    log.info("refreshed %d users in version %s", result["users"], result["version"])
    return result


def scoring_inputs(settings: Settings, users: list[str]):
    """What ``score_frame`` reads for ``users`` (``jobs.history.scoring_frame``): their batch
    sequence and interactions plus their micro-batch events, read under the shared features lock."""
    import pandas as pd

    from freshrec.features import feature_rows
    from freshrec.jobs.history import COUNT_COLUMNS, SEQUENCE_COLUMNS, event_counts, scoring_frame, sequence_rows
    from freshrec.lake import features_lock, read_recent

    with features_lock(settings, "re-scoring", shared=True):
        recent = read_recent(settings, users)
        batch = sequence_rows(feature_rows(settings, "sequences", SEQUENCE_COLUMNS, users))
        seen = (feature_rows(settings, "interactions", COUNT_COLUMNS, users) if settings.exclude_seen != "none"
                else pd.DataFrame(columns=COUNT_COLUMNS))
    # a micro-batch that landed while the batch read the lake is in both: one row per event id
    events = pd.concat([part for part in (batch, recent) if len(part)] or [recent], ignore_index=True)
    counts = pd.concat([part for part in (seen, event_counts(recent)) if len(part)] or [seen], ignore_index=True)
    return scoring_frame(users, events, counts, settings.sequence_length, settings.exclude_seen)


def _score_users(settings: Settings, version: str, users: list[str]):
    """``users``' lists from the recommender and unavailable items of ``version``."""
    from freshrec.jobs.score import score_frame

    rec, blocked = _live_recommender(settings, version)
    frame = scoring_inputs(settings, users)
    newest = max((int(t.max()) for t in frame["t"] if len(t)), default=None)
    now = newest + 1 if newest is not None else int(time.time())
    unavailable = rec.catalogue.lookup(blocked)
    return score_frame(rec, frame, settings.top_n, now, unavailable[unavailable >= 0])


_RECOMMENDERS: dict[str, Any] = {}


def _live_recommender(settings: Settings, version: str):
    """The recommender (and the unavailable item ids) a published version was scored with;
    kept in memory per version, so a watching process loads it once."""
    recs_dir = settings.recs_dir / version
    key = str(recs_dir.resolve())
    if key not in _RECOMMENDERS:
        if not (recs_dir / "recommender.pkl").is_file():
            raise UserError(f"live version {version} has no recommender under {recs_dir}: run `freshrec run batch`")
        with open(recs_dir / "recommender.pkl", "rb") as fh:
            rec = pickle.load(fh)
        blocked = json.loads((recs_dir / "unavailable.json").read_text()) if (recs_dir / "unavailable.json").is_file() else []
        _RECOMMENDERS.clear()
        _RECOMMENDERS[key] = (rec, blocked)
    return _RECOMMENDERS[key]


def refresh_popular_step(settings: Settings) -> dict[str, Any]:
    """Fold the recent micro-batches into the batch's item popularity and upsert the popular
    lists (overall and per category) into the live version (``jobs.score.fold_popularity``)."""
    from freshrec.features import feature_rows
    from freshrec.jobs.score import POPULAR_COLUMNS, fold_popularity, popular_lists
    from freshrec.lake import features_lock, has_table, read_recent
    from freshrec.serving import open_store

    if not has_table(settings.features_dir / "item_stats"):
        return {"lists": 0, "skipped": "no item stats yet"}
    with features_lock(settings, "popular refresh", shared=True):
        stats = feature_rows(settings, "item_stats", [*POPULAR_COLUMNS, "last_seen"])
        recent = read_recent(settings)
    stats = fold_popularity(stats, recent, settings.event_weights, settings.decay_half_life_days)
    lists = popular_lists(stats, settings.top_n)
    with open_store(settings.serving) as store:
        if store.live_version() is None:
            return {"lists": 0, "skipped": "nothing published yet"}
        result = store.upsert_lists("popular", lists)
    return {"version": result["version"], "lists": result["rows"], "recent_events": len(recent)}
