"""The time split every recommender is evaluated on.

Protocol (one definition, used for the test window and for the model's validation window):

- ``end`` is the newest event; ``cutoff = end - window_days``. Events before the cutoff are
  training data; events at or after it are the held-out window.
- Test users are the users with at least one *target* in the window. Targets are the distinct
  items of the user's purchase and add-to-cart events in the window; when fewer than
  ``min_target_users`` users have such events (click logs such as a RetailRocket sample), the
  targets fall back to every positive item event (view, add_to_cart, purchase).
- A user's input is their history before the cutoff (empty for a user new in the window), so
  no model sees anything from the window. Items first seen in the window stay in the targets:
  no recommender can hit them, which costs every recommender the same.
- Seen-item exclusion (FRESHREC_EXCLUDE_SEEN) removes the same items from the recommendations
  and from the targets: ``all`` = every item of the user's history, ``purchased`` = items the
  user purchased, ``none`` = nothing. Users left with no target are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from freshrec.jobs.history import event_counts, seen_pairs
from freshrec.models.data import (
    EVENT_CODES,
    EVENT_NAMES,
    POSITIVE_EVENT_TYPES,
    SECONDS_PER_DAY,
    Catalogue,
    Histories,
    Ragged,
    concat_ranges,
    normalize_events,
)

DEFAULT_TARGET_EVENT_TYPES = ("purchase", "add_to_cart")
EXCLUDE_SEEN_MODES = ("all", "purchased", "none")


@dataclass(frozen=True)
class TimeSplit:
    train: pd.DataFrame  # normalized events with t < cutoff
    window: pd.DataFrame  # normalized events with t >= cutoff
    cutoff: int  # epoch seconds
    end: int  # epoch seconds of the newest event
    target_event_types: tuple[str, ...]

    @property
    def targets(self) -> pd.DataFrame:
        """Distinct (user_id, item_id) targets of the window, before seen-item exclusion."""
        w = self.window.loc[self.window["event_type"].isin(self.target_event_types)]
        return w[["user_id", "item_id"]].drop_duplicates().sort_values(["user_id", "item_id"]).reset_index(drop=True)


def time_split(events: pd.DataFrame, window_days: float = 14.0,
               target_event_types: tuple[str, ...] = DEFAULT_TARGET_EVENT_TYPES,
               min_target_users: int = 50) -> TimeSplit:
    """Hold out the last ``window_days`` of ``events`` (see the module docstring)."""
    if window_days <= 0:
        raise ValueError(f"window_days must be > 0, got {window_days}")
    ev = events if "t" in events else normalize_events(events)
    if ev.empty:
        raise ValueError("no item events to split")
    end = int(ev["t"].max())
    cutoff = end - int(round(window_days * SECONDS_PER_DAY))
    train = ev.loc[ev["t"] < cutoff].reset_index(drop=True)
    window = ev.loc[ev["t"] >= cutoff].reset_index(drop=True)
    if train.empty:
        raise ValueError(f"the {window_days}-day window covers all events: nothing left to train on")
    types = tuple(target_event_types)
    if window.loc[window["event_type"].isin(types), "user_id"].nunique() < min_target_users:
        types = POSITIVE_EVENT_TYPES
    return TimeSplit(train=train, window=window, cutoff=cutoff, end=end, target_event_types=types)


def seen_items(histories: Histories, mode: str) -> Ragged:
    """Per user, the catalogue items that EXCLUDE_SEEN ``mode`` keeps out of their list."""
    if mode not in EXCLUDE_SEEN_MODES:
        raise ValueError(f"exclude_seen must be one of {EXCLUDE_SEEN_MODES}, got {mode!r}")
    n = len(histories)
    if mode == "none":
        return Ragged.empty(n)
    ok = histories.item >= 0
    events = pd.DataFrame({"user_id": histories.row_of_event[ok], "item_id": histories.item[ok],
                           "event_type": EVENT_NAMES[histories.etype[ok]]})
    pairs = seen_pairs(event_counts(events), mode)  # the rule serving applies (jobs.history)
    return Ragged.from_pairs(pairs["user_id"].to_numpy(), pairs["item_id"].to_numpy(), n)


@dataclass(frozen=True)
class EvalSet:
    """Exactly what every recommender is evaluated on: same users, targets and exclusions."""

    catalogue: Catalogue
    train: Histories  # every training user's full history (what recommenders fit on)
    histories: Histories  # the test users' histories before the cutoff (now = cutoff)
    targets: Ragged  # catalogue index; items outside the catalogue as distinct codes <= -2
    exclude: Ragged  # catalogue index
    is_new: np.ndarray  # bool: no item event before the cutoff
    exclude_seen: str
    cutoff: int
    target_event_types: tuple[str, ...]
    protocol: str = "time"  # "time" (split.py, protocols.rolling_cutoffs) or "random" (protocols.random_holdout)

    @property
    def users(self) -> np.ndarray:
        return self.histories.user_ids

    def __len__(self) -> int:
        return len(self.histories)


def build_eval_set(split: TimeSplit, exclude_seen: str, catalogue: Catalogue | None = None,
                   max_users: int | None = None, seed: int = 0) -> EvalSet:
    """Targets, inputs and exclusions of the split's test users.

    ``max_users`` keeps a deterministic random subset of test users (for quick checks).
    """
    catalogue = catalogue or Catalogue.from_events(split.train)
    train = Histories.from_events(split.train, catalogue, now=split.cutoff)
    targets = split.targets
    return _assemble(catalogue, train, targets["user_id"].to_numpy(dtype=object), catalogue.lookup(targets["item_id"].to_numpy()),
                     exclude_seen, split.cutoff, split.target_event_types, max_users, seed)


def holdout_window(train: Histories, catalogue: Catalogue, window_days: float, exclude_seen: str,
                   target_event_types: tuple[str, ...] = DEFAULT_TARGET_EVENT_TYPES, min_target_users: int = 50,
                   max_users: int | None = None, seed: int = 0) -> tuple[Histories, EvalSet]:
    """The same protocol one window earlier, inside the training data (model validation).

    Returns the histories to fit on (the validation users' window events removed, so their
    targets stay unseen) and the validation EvalSet (everyone's events before the inner cutoff).
    """
    cutoff = int(train.now.max()) - int(round(window_days * SECONDS_PER_DAY))
    before = train.t < cutoff
    rows = train.row_of_event
    types = tuple(target_event_types)
    is_target = ~before & (train.item >= 0) & np.isin(train.etype, [EVENT_CODES[e] for e in types])
    if len(np.unique(rows[is_target])) < min_target_users:
        types = POSITIVE_EVENT_TYPES
        is_target = ~before & (train.item >= 0) & np.isin(train.etype, [EVENT_CODES[e] for e in types])
    earlier = train.filter(before, now=cutoff)
    val = _assemble(catalogue, earlier, train.user_ids[rows[is_target]], train.item[is_target],
                    exclude_seen, cutoff, types, max_users, seed)
    is_val_user = np.isin(train.user_ids, val.users)
    return train.filter(before | ~is_val_user[rows]), val


def _assemble(catalogue: Catalogue, train: Histories, target_users: np.ndarray, target_codes: np.ndarray,
              exclude_seen: str, cutoff: int, types: tuple[str, ...], max_users: int | None, seed: int) -> EvalSet:
    users = np.array(sorted(set(target_users)), dtype=object)
    if max_users is not None and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))
    histories = histories_of(train, users)
    pos = {u: i for i, u in enumerate(users)}
    row = np.array([pos.get(u, -1) for u in target_users], dtype=np.int64)
    ok = row >= 0
    rows, codes = row[ok], np.asarray(target_codes, dtype=np.int64)[ok].copy()
    unknown = codes < 0
    codes[unknown] = -2 - np.arange(int(unknown.sum()))  # distinct, never equal to the -1 padding
    exclude = seen_items(histories, exclude_seen)
    keep_pair = ~_pairs_in(rows, codes, exclude)
    rows, codes = rows[keep_pair], codes[keep_pair]
    kept = np.flatnonzero(np.bincount(rows, minlength=len(users)) > 0)
    remap = np.full(len(users), -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    histories = histories.subset(kept)
    return EvalSet(
        catalogue=catalogue, train=train, histories=histories,
        targets=Ragged.from_pairs(remap[rows], codes, len(kept)),
        exclude=exclude.subset(kept),
        is_new=histories.lengths == 0,
        exclude_seen=exclude_seen, cutoff=cutoff, target_event_types=types,
    )


def histories_of(known: Histories, users: np.ndarray) -> Histories:
    """``known`` re-ordered as ``users``, with an empty history for each user it lacks (a new user)."""
    pos = {u: i for i, u in enumerate(known.user_ids)}
    rows = np.array([pos.get(u, -1) for u in users], dtype=np.int64)
    found = rows >= 0
    safe = np.where(found, rows, 0)
    if len(known):
        lengths = np.where(found, known.lengths[safe], 0)
        starts = known.offsets[safe]
        now = np.where(found, known.now[safe], known.now.max())
    else:
        lengths = starts = now = np.zeros(len(rows), dtype=np.int64)
    src = concat_ranges(starts, lengths)
    return Histories(
        user_ids=np.asarray(users, dtype=object),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        item=known.item[src], etype=known.etype[src], t=known.t[src],
        category=known.category[src], price=known.price[src], now=now.astype(np.int64),
    )


def _pairs_in(rows: np.ndarray, codes: np.ndarray, ragged: Ragged) -> np.ndarray:
    """For each (row, code) pair: is code in ragged[row]?"""
    if len(ragged.values) == 0 or len(rows) == 0:
        return np.zeros(len(rows), dtype=bool)
    lo = min(int(codes.min()), int(ragged.values.min()))
    span = max(int(codes.max()), int(ragged.values.max())) - lo + 1
    return np.isin(rows * span + (codes - lo), ragged.rows * span + (ragged.values - lo))
