"""Evaluation protocols beyond the single time split (not yet wired into the gate).

- ``rolling_cutoffs``: the time protocol of split.py repeated at several cutoffs, newest last,
  so one lucky or unlucky fortnight does not decide a comparison. The newest fold is exactly
  today's ``time_split`` + ``build_eval_set``.
- ``random_holdout``: a per-user random holdout for logs whose timestamps do not make a useful
  time split (ratings dumps such as MovieLens).
- ``choose_protocol``: which of the two a log calls for, with the reason.
- ``thin_evidence``: whether a fold has too few test users for its numbers to mean much.

Every protocol returns split.EvalSet, built by split.py's own builder, so targets, new-user
flags and seen-item exclusion follow the rules of split.py's docstring in all of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
from freshrec.models.data import POSITIVE_EVENT_TYPES, SECONDS_PER_DAY, Catalogue, Histories, normalize_events
from freshrec.models.split import DEFAULT_TARGET_EVENT_TYPES, EvalSet, TimeSplit, _assemble, build_eval_set

DEFAULT_MIN_TEST_USERS = 200
# choose_protocol's thresholds (see its docstring)
MAX_SINGLE_TIMESTAMP_SHARE = 0.8
MIN_ACTIVE_SHARE = 0.02


@dataclass(frozen=True)
class Fold:
    """One cutoff of the rolling-origin protocol."""

    split: TimeSplit  # train: t < cutoff; window: cutoff <= t < end (the newest fold: t <= end, the newest event)
    eval_set: EvalSet

    @property
    def cutoff(self) -> int:
        return self.split.cutoff

    @property
    def window_end(self) -> int:
        return self.split.end

    @property
    def n_train_events(self) -> int:
        return len(self.split.train)

    @property
    def n_test_users(self) -> int:
        return len(self.eval_set)


def rolling_cutoffs(events: pd.DataFrame, n_cutoffs: int = 3, window_days: float = 14.0, step_days: float | None = None,
                    exclude_seen: str = "purchased", target_event_types: tuple[str, ...] = DEFAULT_TARGET_EVENT_TYPES,
                    min_target_users: int = 50, items: pd.DataFrame | None = None, max_users: int | None = None,
                    seed: int = 0) -> list[Fold]:
    """``n_cutoffs`` time splits, newest last, ``step_days`` apart (default: ``window_days``, so
    the test windows tile the last ``n_cutoffs x window_days`` without overlap).

    The newest cutoff is time_split's, ``newest event - window_days``; each earlier one is
    ``step_days`` before the next. A fold trains on every event before its cutoff and tests on
    the events in ``[cutoff, cutoff + window_days)``; the newest fold's window also holds the
    newest event itself, at exactly ``cutoff + window_days``, as time_split's does. Each fold
    picks its target event types (with time_split's fallback to every positive event when
    fewer than ``min_target_users`` users have a target), builds its catalogue from its own
    training events and its EvalSet with build_eval_set, as pipeline.prepare_window does.
    Raises ValueError when the oldest cutoff leaves no event to train on.
    """
    step_days = window_days if step_days is None else step_days
    if n_cutoffs < 1 or window_days <= 0 or step_days <= 0:
        raise ValueError(f"need n_cutoffs >= 1, window_days > 0 and step_days > 0, got {n_cutoffs}, {window_days}, {step_days}")
    ev = events if "t" in events else normalize_events(events)
    if ev.empty:
        raise ValueError("no item events to split")
    t = ev["t"].to_numpy()
    start, end = int(t.min()), int(t.max())
    window, step = int(round(window_days * SECONDS_PER_DAY)), int(round(step_days * SECONDS_PER_DAY))
    cutoffs = [end - window - (n_cutoffs - 1 - i) * step for i in range(n_cutoffs)]
    if cutoffs[0] <= start:
        raise ValueError(
            f"the log spans {(end - start) / SECONDS_PER_DAY:.1f} days; {n_cutoffs} cutoffs {step_days:g} days apart with a "
            f"{window_days:g}-day window need more than {(window + (n_cutoffs - 1) * step) / SECONDS_PER_DAY:g} days "
            "so that the oldest cutoff has events to train on")
    folds = []
    for cutoff in cutoffs:
        in_window = (t >= cutoff) & ((t < cutoff + window) | (cutoff + window >= end))
        split = _time_split_at(ev.loc[t < cutoff].reset_index(drop=True), ev.loc[in_window].reset_index(drop=True),
                               cutoff, min(cutoff + window, end), tuple(target_event_types), min_target_users)
        catalogue = Catalogue.from_events(split.train, items)
        eval_set = build_eval_set(split, exclude_seen, catalogue, max_users=max_users, seed=seed)
        folds.append(Fold(split=split, eval_set=eval_set))
    return folds


def _time_split_at(train: pd.DataFrame, window: pd.DataFrame, cutoff: int, end: int, types: tuple[str, ...],
                   min_target_users: int) -> TimeSplit:
    """time_split's TimeSplit for a given cutoff and window, with its target-type fallback."""
    if window.loc[window["event_type"].isin(types), "user_id"].nunique() < min_target_users:
        types = POSITIVE_EVENT_TYPES
    return TimeSplit(train=train, window=window, cutoff=cutoff, end=end, target_event_types=types)


def random_holdout(events: pd.DataFrame, fraction: float = 0.2, min_events: int = 5, exclude_seen: str = "purchased",
                   target_event_types: tuple[str, ...] = DEFAULT_TARGET_EVENT_TYPES, min_target_users: int = 50,
                   items: pd.DataFrame | None = None, max_users: int | None = None, seed: int = 0) -> EvalSet:
    """Hold out a random share of each user's items (for logs that are not time-dense).

    A user with at least ``min_events`` item events and at least two distinct items gives up
    ``round(fraction x n)`` (at least 1, at most their number of distinct items - 1, so never
    their only item) of the n distinct items they have a target event on (purchase or
    add-to-cart; every positive event when fewer than ``min_target_users`` users have one, as
    in time_split). Every event of a held-out (user, item) leaves the training data; the
    held-out items are the user's targets. Everyone else's events all stay in training. The
    draw depends only on ``seed`` and the events. Histories are scored as of just after the
    newest event (the EvalSet's cutoff). Seen-item exclusion is split.py's; it never removes a
    target here, since a held-out item has no training event of that user. Unlike the time
    protocol, a held-out item may predate the user's training events: this measures taste, not
    what comes next.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    ev = events if "t" in events else normalize_events(events)
    if ev.empty:
        raise ValueError("no item events to hold out")
    types = tuple(target_event_types)
    if ev.loc[ev["event_type"].isin(types), "user_id"].nunique() < min_target_users:
        types = POSITIVE_EVENT_TYPES
    held = _held_out_pairs(ev, types, fraction, min_events, seed)
    is_held = pd.MultiIndex.from_frame(ev[["user_id", "item_id"]]).isin(pd.MultiIndex.from_frame(held))
    train = ev.loc[~is_held].reset_index(drop=True)
    cutoff = int(ev["t"].max()) + 1
    catalogue = Catalogue.from_events(train, items)
    histories = Histories.from_events(train, catalogue, now=cutoff)
    eval_set = _assemble(catalogue, histories, held["user_id"].to_numpy(dtype=object),
                         catalogue.lookup(held["item_id"].to_numpy()), exclude_seen, cutoff, types, max_users, seed)
    return dataclasses.replace(eval_set, protocol="random")


def _held_out_pairs(ev: pd.DataFrame, types: tuple[str, ...], fraction: float, min_events: int, seed: int) -> pd.DataFrame:
    """The (user_id, item_id) pairs random_holdout holds out, sorted."""
    per_user = ev.groupby("user_id").agg(n_events=("item_id", "size"), n_items=("item_id", "nunique"))
    eligible = per_user.index[(per_user["n_events"] >= min_events) & (per_user["n_items"] >= 2)]
    cand = ev.loc[ev["event_type"].isin(types) & ev["user_id"].isin(eligible), ["user_id", "item_id"]]
    cand = cand.drop_duplicates().sort_values(["user_id", "item_id"]).reset_index(drop=True)
    by_user = cand.assign(key=np.random.default_rng(seed).random(len(cand))).groupby("user_id")
    rank = by_user["key"].rank(method="first").to_numpy() - 1  # each user's candidates in a random order
    n_cand = by_user["item_id"].transform("size").to_numpy()
    n_items = per_user["n_items"].reindex(cand["user_id"]).to_numpy()
    n_hold = np.minimum(np.maximum(1, np.floor(fraction * n_cand + 0.5)), n_items - 1)
    return cand.loc[rank < n_hold].reset_index(drop=True)


def choose_protocol(events: pd.DataFrame, window_days: float = 14.0) -> tuple[str, str]:
    """``("time", reason)`` or ``("random", reason)`` for a log, by this rule (first match wins):

    1. the log spans less than two windows -> random: a time split would leave less than one
       window of history to learn from;
    2. at least 80% of the users with two or more item events have them all at one timestamp
       -> random: the order of their events is unknown (a ratings dump stamped per user);
    3. the log has one event type and no user has any item twice -> random: a ratings dump
       (MovieLens), where what a user rated next is no more "next" than any other rating;
    4. fewer than 2% of all users have an item event in the last window -> random: the log is
       not time-dense (a historical dump whose last fortnight is a sliver of its users);
    5. otherwise time.

    Day-stamped logs pass rule 2 as long as users come back on other days (Ta-Feng: 34% of its
    users have one timestamp, 37% act in the last 14 days). The reason also gives the median
    number of distinct days per user and, for the window's users, the share with earlier
    events (how much of the time split is about returning users). Deterministic.
    """
    ev = events if "t" in events else normalize_events(events)
    if ev.empty:
        raise ValueError("no item events to choose a protocol for")
    t = ev["t"].to_numpy()
    span_days = (int(t.max()) - int(t.min())) / SECONDS_PER_DAY
    cutoff = int(t.max()) - int(round(window_days * SECONDS_PER_DAY))
    per_user = ev.assign(day=ev["t"] // SECONDS_PER_DAY, before=ev["t"] < cutoff).groupby("user_id").agg(
        n=("t", "size"), n_ts=("t", "nunique"), n_days=("day", "nunique"), last=("t", "max"), before=("before", "any"))
    several = per_user["n"] >= 2
    single_ts = float((per_user["n_ts"] == 1)[several].mean()) if several.any() else 1.0
    active = per_user["last"] >= cutoff
    active_share = float(active.mean())
    returning = float(per_user.loc[active, "before"].mean()) if active.any() else 0.0
    facts = (f"{single_ts:.0%} of users with 2+ events have one timestamp, {active_share:.1%} of users act in the "
             f"last {window_days:g} days ({returning:.0%} of them returning), "
             f"median {per_user['n_days'].median():g} distinct days per user")
    if span_days < 2 * window_days:
        return "random", f"the log spans {span_days:.1f} days, less than two {window_days:g}-day windows; {facts}"
    if single_ts >= MAX_SINGLE_TIMESTAMP_SHARE:
        return "random", f"event order within users is unknown: {facts}"
    if ev["event_type"].nunique() == 1 and not ev.duplicated(["user_id", "item_id"]).any():
        return "random", f"a ratings-style log: one event type ({ev['event_type'].iloc[0]}) and no user has an item twice; {facts}"
    if active_share < MIN_ACTIVE_SHARE:
        return "random", f"the log is not time-dense: {facts}"
    return "time", f"the log is time-dense: {facts}"


def thin_evidence(eval_set: EvalSet, min_test_users: int = DEFAULT_MIN_TEST_USERS) -> tuple[bool, str]:
    """Whether a fold has fewer than ``min_test_users`` test users, and the sentence to show.

    Below it, the difference between two recommenders is dominated by which users happened to
    buy in the window; a gate should say so rather than promote or block on it.
    """
    n, n_new = len(eval_set), int(eval_set.is_new.sum())
    at = pd.Timestamp(eval_set.cutoff, unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M")
    counts = f"{n} test users ({n_new} new, {n - n_new} returning) at the cutoff {at} UTC"
    if n < min_test_users:
        return True, f"thin evidence: {counts}, fewer than the {min_test_users} needed"
    return False, f"{counts}, at least the {min_test_users} needed"
