"""Re-scoring without retraining: the lists of the users who just acted, and the popular lists,
upserted into the live serving version (the micro-batch path and the publish step's catch-up).

Lists are computed for one version, with the recommender and unavailable items that version
was scored with, and upserted only while that version is still live (``expected_version``): if a
batch publish switches the live pointer in between, the store writes nothing and raises
``LiveVersionChanged``, and the lists are computed again for the version now live. Old lists
never land in a new version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import time
from typing import Any, Callable

from freshrec.errors import UserError
from freshrec.settings import Settings

log = logging.getLogger(__name__)

#: the event API's accepted events a publish's catch-up re-scores: those of the last hour
CATCH_UP_ACCEPTED_S = 3600.0
#: how many times a re-score starts over because another version went live meanwhile
ATTEMPTS = 3


def catch_up_users(settings: Settings):
    """The users a version built from the batch's features lacks news of: those of the
    micro-batches since (``features/recent``) and of the events the event API accepted in the
    last CATCH_UP_ACCEPTED_S; with those accepted events (``(users, accepted)``)."""
    from freshrec.lake import read_recent
    from freshrec.realtime import accepted_since

    accepted = accepted_since(settings, time.time() - CATCH_UP_ACCEPTED_S)
    return sorted(set(read_recent(settings)["user_id"].astype(str)) | set(accepted["user_id"])), accepted


def catch_up_step(settings: Settings) -> dict[str, Any]:
    """Re-score the users of the micro-batches the live version was not built from (those that
    landed after the batch's ``matrices`` read the lake) and of the events the event API accepted
    in the last CATCH_UP_ACCEPTED_S (some may have reached the landing zone after ``clean`` read
    it), and refresh the popular lists, so a batch publish never takes a fresh list away."""
    users, accepted = catch_up_users(settings)
    if not users:
        return {"users": 0}
    refreshed = refresh_users_step(settings, users, accepted)
    popular = refresh_popular_step(settings)
    return {"users": refreshed.get("users", 0), "popular_lists": popular.get("lists", 0)}


def _into_live(settings: Settings, write: Callable[[Any, str], dict[str, Any]]) -> dict[str, Any] | None:
    """``write(store, version)``: compute lists for ``version`` and upsert them with
    ``expected_version=version``. Run for the live version, and again for the next one if a
    batch publish switched versions before the upsert committed. None when nothing is live."""
    from freshrec.serving import open_store
    from freshrec.serving.base import LiveVersionChanged

    with open_store(settings.serving) as store:
        attempt = 1
        while True:
            version = store.live_version()
            if version is None:
                return None
            try:
                return write(store, version)
            except LiveVersionChanged as exc:
                if attempt == ATTEMPTS:
                    raise
                attempt += 1
                log.info("version %s went live while lists were computed for %s: computing them again", exc.live, exc.expected)


def refresh_users_step(settings: Settings, users: list[str], accepted=None) -> dict[str, Any]:
    """Re-score ``users`` with the live version's recommender, no retraining, and upsert their
    lists into that version while it is live (the micro-batch and the real-time path).

    A user's sequence is their features/sequences row plus their events in features/recent
    (the micro-batches since the last batch) and in ``accepted`` (RECENT_COLUMNS rows: events
    the event API accepted that no micro-batch has read yet), one row per event id, the last
    FRESHREC_SEQUENCE_LENGTH kept (``jobs.history``); a user seen for the first time is scored
    from their recent events alone. Exclusions (FRESHREC_EXCLUDE_SEEN) and unavailable items
    hold as in the batch."""
    from freshrec.experiments import protected_versions

    started = time.perf_counter()
    users = sorted({str(u) for u in users})

    def write(store, version: str) -> dict[str, Any]:
        if not users:
            return {"version": version, "users": 0, "skipped": "no users"}
        return store.upsert_user_recs(_rows(_score_users(settings, store, version, users, accepted)),
                                      expected_version=version)

    result = _into_live(settings, write)
    if result is None:
        return {"version": None, "users": 0, "skipped": "nothing published yet"}
    if result.get("skipped"):
        return result
    variants = refresh_versions(settings, sorted(protected_versions(settings) - {result["version"]}), users, accepted)
    if variants:
        result["variants"] = variants
    result["seconds"] = round(time.perf_counter() - started, 3)
    log.info("refreshed %d users in version %s", result["users"], result["version"])
    return result


def _rows(scored):
    """``score_frame``'s lists as the store's ``(user, [(item, score), ...])`` rows."""
    return ((u, list(zip(items, scores, strict=True)))
            for u, items, scores in zip(scored["user_id"], scored["items"], scored["scores"], strict=True))


def refresh_versions(settings: Settings, versions: list[str], users: list[str], accepted=None) -> dict[str, int]:
    """``users``' lists in each of ``versions`` (those a running experiment serves besides the
    live one), each scored with that version's own recommender ({version: users}). A version
    pruned or unreadable meanwhile is logged and skipped: the live lists are already written."""
    from freshrec.serving import ServingError, open_store

    done: dict[str, int] = {}
    if not versions or not users:
        return done
    with open_store(settings.serving) as store:
        for version in versions:
            try:
                scored = _score_users(settings, store, version, users, accepted)
                done[version] = store.upsert_lists("user", _rows(scored), version=version)["rows"]
            except (ServingError, UserError) as exc:
                log.warning("experiment version %s not refreshed: %s", version, exc)
    return done


def scoring_inputs(settings: Settings, users: list[str], accepted=None):
    """What ``score_frame`` reads for ``users`` (``jobs.history.scoring_frame``): their batch
    sequence and interactions (by key, from ``freshrec.userstate``) plus their micro-batch
    events, read under the shared features lock, and the events in ``accepted`` (see
    :func:`refresh_users_step`)."""
    import pandas as pd

    from freshrec.jobs.history import event_counts, scoring_frame
    from freshrec.lake import features_lock, read_recent
    from freshrec.userstate import ensure_user_state, user_state

    ensure_user_state(settings)
    with features_lock(settings, "re-scoring", shared=True):
        recent = read_recent(settings, users)
        if accepted is not None and len(accepted):
            recent = pd.concat([part for part in (recent, accepted) if len(part)], ignore_index=True)
        batch, seen = user_state(settings, users)
    # a micro-batch that landed while the batch read the lake is in both: one row per event id
    events = pd.concat([part for part in (batch, recent) if len(part)] or [recent], ignore_index=True)
    counts = pd.concat([part for part in (seen, event_counts(recent)) if len(part)] or [seen], ignore_index=True)
    return scoring_frame(users, events, counts, settings.sequence_length, settings.exclude_seen)


def _score_users(settings: Settings, store, version: str, users: list[str], accepted=None):
    """``users``' lists from the recommender and unavailable items of ``version``."""
    from freshrec.jobs.score import score_frame

    rec, blocked = _live_recommender(settings, version, (store.version_info(version) or {}).get("meta") or {})
    frame = scoring_inputs(settings, users, accepted)
    newest = max((int(t.max()) for t in frame["t"] if len(t)), default=None)
    now = newest + 1 if newest is not None else int(time.time())
    unavailable = rec.catalogue.lookup(blocked)
    return score_frame(rec, frame, settings.top_n, now, unavailable[unavailable >= 0])


_RECOMMENDERS: dict[str, Any] = {}
#: recommenders kept in memory: the live version's and a running experiment's variants'
KEEP_RECOMMENDERS = 3


def live_recommender(settings: Settings):
    """The live version's recommender and unavailable items (:func:`_live_recommender`), or None
    when nothing is published."""
    from freshrec.serving import open_store

    with open_store(settings.serving) as store:
        version = store.live_version()
        if version is None:
            return None
        return _live_recommender(settings, version, (store.version_info(version) or {}).get("meta") or {})


def _live_recommender(settings: Settings, version: str, meta: dict[str, Any]):
    """The recommender (and the unavailable item ids) a published version was scored with;
    kept in memory per version, so a watching process loads it once.

    Unpickling runs code, so nothing is unpickled unless it is exactly what the batch wrote: the
    version id is checked before a path is built from it, and the file's SHA-256 must equal the
    one the publish step recorded in the version's metadata in the serving store."""
    from freshrec.serving.base import check_version_id

    recs_dir = settings.recs_dir / check_version_id(version)
    key = str(recs_dir.resolve())
    if key not in _RECOMMENDERS:
        path = recs_dir / "recommender.pkl"
        if not path.is_file():
            raise UserError(f"live version {version} has no recommender under {recs_dir}: run `freshrec run batch`")
        expected = meta.get("recommender_sha256")
        if not expected:
            raise UserError(f"live version {version} records no checksum of its recommender (published before "
                            "checksums were kept): run `freshrec run batch` to publish a new version")
        payload = path.read_bytes()
        if hashlib.sha256(payload).hexdigest() != expected:
            raise UserError(f"{path} does not match the checksum recorded when version {version} was published: "
                            "it was changed or damaged since; refusing to load it (run `freshrec run batch`)")
        rec = pickle.loads(payload)
        blocked = json.loads((recs_dir / "unavailable.json").read_text()) if (recs_dir / "unavailable.json").is_file() else []
        while len(_RECOMMENDERS) >= KEEP_RECOMMENDERS:  # the oldest goes: the live one and an experiment's
            _RECOMMENDERS.pop(next(iter(_RECOMMENDERS)))
        _RECOMMENDERS[key] = (rec, blocked)
    return _RECOMMENDERS[key]


def refresh_popular_step(settings: Settings) -> dict[str, Any]:
    """Fold the recent micro-batches into the batch's item popularity and upsert the popular
    lists (overall and per category) into the live version (``jobs.score.fold_popularity``)."""
    from freshrec.features import feature_rows
    from freshrec.jobs.score import POPULAR_COLUMNS, fold_popularity, popular_lists
    from freshrec.lake import features_lock, has_table, read_recent

    if not has_table(settings.features_dir / "item_stats"):
        return {"lists": 0, "skipped": "no item stats yet"}
    folded: dict[str, int] = {}

    def write(store, version: str) -> dict[str, Any]:
        with features_lock(settings, "popular refresh", shared=True):
            stats = feature_rows(settings, "item_stats", [*POPULAR_COLUMNS, "last_seen"])
            recent = read_recent(settings)
        folded["recent_events"] = len(recent)
        stats = fold_popularity(stats, recent, settings.event_weights, settings.decay_half_life_days)
        return store.upsert_lists("popular", popular_lists(stats, settings.top_n), expected_version=version)

    result = _into_live(settings, write)
    if result is None:
        return {"lists": 0, "skipped": "nothing published yet"}
    return {"version": result["version"], "lists": result["rows"], **folded}
