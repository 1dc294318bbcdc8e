"""The two-stage recommender: candidates from several sources (models/candidates.py), ordered by a
LightGBM LambdaRank model.

Training labels come from the training data only. The training histories are cut at
``cutoff - label_window_days`` (``cutoff`` = their ``now``): the sources are fitted on, and the
candidates drawn from, the events before that cut; a candidate's label is 1 when the user took
the item (a target event type) in the label window after it. With ``n_label_windows`` > 1 the
same is repeated one window further back each time, and the groups are stacked: what one
fortnight rewarded (Ta-Feng: trending items before the lunar new year) is averaged with others.
For ratings dumps evaluated by protocols.random_holdout, ``label_protocol="random"`` holds out a
seeded share of each user's items instead (``n_label_windows`` draws). Users whose
candidates hold no label teach LambdaRank nothing and are left out. Then the sources are refitted
on every training event for scoring, so the evaluation window is never seen.

Features of a (user, item) candidate (``FEATURES``): every source's score, that score over the
user's best from the source, its rank and how many sources listed it; what the user did with the
item (counts per event type, recency, decayed weights, the user's own re-take gap and the time
since the last take over it and over the item's typical re-take interval, the share of the
user's weight in the item's category); the user
(activity, tenure, recency, repeat share, basket size, mean price); the item (popularity, buyers,
trend, 28-day sales, share of its sales in its best week, re-take interval and share, price,
category popularity, age) and the item's price over the user's mean price. Popularity-like
values are shares of the log's total, since the ranker learns on a shorter log than it scores.

``recommend`` ranks a user's candidates and fills the rest of the list with overall popularity;
``score`` gives the same order over the whole catalogue. Scoring one user costs one candidate
batch of that user and one LightGBM call over a few hundred rows. Deterministic for a seed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from freshrec.models.baselines import Recommender, top_k_shared, top_per_row
from freshrec.models.candidates import (
    HISTORY,
    ITEM_STATS,
    SOURCES,
    CandidateConfig,
    CandidateGenerator,
    Candidates,
)
from freshrec.models.data import (
    EVENT_CODES,
    POSITIVE_EVENT_TYPES,
    SECONDS_PER_DAY,
    Catalogue,
    Histories,
    Ragged,
    event_weight_array,
    unique_columns,
)
from freshrec.models.split import DEFAULT_TARGET_EVENT_TYPES, seen_items

USER_FEATURES = ("user_events", "user_items", "user_days", "user_days_since_last", "user_days_since_first",
                 "user_repeat_share", "user_events_per_day", "user_mean_price")
FEATURES = (*(f"score_{s}" for s in SOURCES), *(f"relative_{s}" for s in SOURCES), *(f"rank_{s}" for s in SOURCES),
            "n_sources", *HISTORY,
            *USER_FEATURES, *(f"item_{s}" for s in ITEM_STATS), "price_over_user_mean")


# LGBMRanker's parameters; n_estimators is a ceiling, early stopping on held-out label users picks
# the number of trees
LIGHTGBM_DEFAULTS: dict[str, Any] = {
    "n_estimators": 400, "learning_rate": 0.05, "num_leaves": 31, "min_child_samples": 100,
    "colsample_bytree": 0.8, "subsample": 0.8, "subsample_freq": 1, "lambdarank_truncation_level": 20,
}


@dataclass(frozen=True)
class RankerConfig:
    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    label_window_days: float = 14.0  # use the evaluation window: the ranker learns "what is taken next window"
    n_label_windows: int = 4  # label windows stacked back from the cutoff (random protocol: draws)
    target_event_types: tuple[str, ...] = DEFAULT_TARGET_EVENT_TYPES
    min_target_users: int = 50  # below this many users with a target in a label window, every positive event counts
    exclude_seen: str = "none"  # the serving rule: training candidates leave out the same items
    # "time": labels from the window(s) before the cutoff; "random": a seeded share of each user's
    # items held out, for logs evaluated by protocols.random_holdout (ratings dumps)
    label_protocol: str = "time"
    label_fraction: float = 0.2
    max_train_users: int | None = 3000  # per label window, a seeded sample
    # per training group: every positive and at most this many negatives (a seeded sample; None: all).
    # LambdaRank learns from the pairs within a group; most of a user's 300 candidates are easy
    # negatives that cost LightGBM time and add little to those pairs (models/README.md)
    max_negatives_per_group: int | None = 100
    # label groups kept with the model for the refresh's replay (a seeded sample of those it learned
    # from): a refresh replays them instead of building older groups, which needs a fit of every source
    replay_groups: int = 512
    validation_share: float = 0.1  # of the label users, for early stopping
    early_stopping_rounds: int = 40
    lightgbm: dict[str, Any] = field(default_factory=dict)  # overrides of LIGHTGBM_DEFAULTS
    # LightGBM's threads for fit and predict; 0: one per core. Its OpenMP threads sleep while they
    # wait (OMP_WAIT_POLICY=PASSIVE, models/__init__.py): spinning ones cost more than a second
    # thread gives on a CPU shared with other work. Inside a Spark task, one (single_threaded).
    num_threads: int = 0
    seed: int = 0


@dataclass
class TrainingSet:
    """Stacked candidate groups with their features and labels."""

    features: np.ndarray  # float32 (n_rows, len(FEATURES))
    items: np.ndarray  # int64 index per row in the catalogue the group was built in
    labels: np.ndarray  # int32
    groups: np.ndarray  # int64 rows per group, in row order
    users: np.ndarray  # user id per group
    window_start: np.ndarray  # epoch seconds per group: the start of its label window

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (a model's replay buffer) with the features deflated: Ta-Feng's 512 groups
        take 29 MB as float32 and 10 MB packed, in a quarter of a second."""
        state = self.__dict__.copy()
        f = np.ascontiguousarray(self.features)
        state["features"] = (zlib.compress(f.tobytes(), 1), f.dtype.str, f.shape)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        packed, dtype, shape = state["features"]
        self.__dict__.update(state, features=np.frombuffer(zlib.decompress(packed), dtype=dtype).reshape(shape).copy())


class TwoStageRanker(Recommender):
    """Candidates (CandidateGenerator) re-ranked by LightGBM LambdaRank; see the module docstring."""

    name = "two_stage"
    kind = "model"

    def __init__(self, config: RankerConfig | None = None):
        self.config = config or RankerConfig()
        self.timings: dict[str, float] = {}

    def params(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self.config).items() if k not in ("candidates", "lightgbm")}
        out.update({f"candidates.{k}": v for k, v in dataclasses.asdict(self.config.candidates).items()})
        out.update({f"lightgbm.{k}": v for k, v in {**LIGHTGBM_DEFAULTS, **self.config.lightgbm}.items()})
        return out

    def fit(self, train: Histories, catalogue: Catalogue) -> "TwoStageRanker":
        from lightgbm import LGBMRanker, early_stopping

        cfg = self.config
        self.timings = {}
        started = time.perf_counter()
        data = self.training_set(train, catalogue)
        val = _validation_groups(len(data.groups), cfg.validation_share, cfg.seed)
        row_val = np.repeat(val, data.groups)
        group_of = np.repeat(np.arange(len(data.groups)), data.groups)
        fit_rows = ~row_val & _negatives_kept(data.labels, group_of, cfg.max_negatives_per_group, cfg.seed)
        fit_groups = np.bincount(group_of[fit_rows], minlength=len(data.groups))[~val]
        params = {**LIGHTGBM_DEFAULTS, **cfg.lightgbm}
        self.model = LGBMRanker(objective="lambdarank", random_state=cfg.seed, deterministic=True, force_row_wise=True,
                                n_jobs=cfg.num_threads, verbose=-1, **params)
        eval_kw: dict[str, Any] = {}
        if val.any():
            eval_kw = {"eval_X": (data.features[row_val],), "eval_y": (data.labels[row_val],), "eval_group": [data.groups[val]],
                       "eval_at": [10], "callbacks": [early_stopping(cfg.early_stopping_rounds, verbose=False)]}
        with self._timed("lightgbm_fit"):
            self.model.fit(data.features[fit_rows], data.labels[fit_rows], group=fit_groups, **eval_kw)
        self.n_train_groups, self.n_train_rows = int((~val).sum()), int(fit_rows.sum())
        self.replay = _sample_groups(data, cfg.replay_groups, np.random.default_rng([cfg.seed, 1]))
        self.best_iteration = int(self.model.best_iteration_ or params["n_estimators"])
        with self._timed("sources_fit"):
            self.prepare(catalogue, train)
        self.train_seconds = time.perf_counter() - started
        return self

    def refresh(self, train: Histories, catalogue: Catalogue, since: int, trees: int = 50, replay_share: float = 0.5,
                seed: int | None = None, learning_rate_scale: float = 0.2) -> dict[str, Any]:
        """Warm-start update: ``trees`` more boosting rounds on top of the fitted model
        (LightGBM's ``init_model``, cut at its best iteration), the ranker's earlier trees kept,
        at ``learning_rate_scale`` of the fit's learning rate: a few hundred new label groups
        fine-tune the ranker rather than refit it (on the planted-taste log of the integration
        tests, 20 trees at the fit's rate lost 6% NDCG@10 on the next week, at a fifth of it
        they gained 1.5%).

        The trees learn from the groups whose labels are the new events (candidates drawn from the
        events before ``since``, labels = the target events at or after it), mixed with a seeded
        replay sample of the groups the model learned from before (``replay``, kept with the
        model) making ``replay_share`` of the groups. The groups and features are ``fit``'s own
        (``_groups``); the trees learn from each group's positives and at most
        ``max_negatives_per_group`` of its negatives, as ``fit``'s do. The new groups join the
        replay buffer (whole), which a seeded sample cuts back to ``replay_groups``: older groups
        thin out with each refresh. Then the candidate sources are
        refitted on ``train``: co-visitation, EASE, popularity and trend see the new events, and
        items new since the fit become candidates as themselves."""
        import lightgbm
        from lightgbm import LGBMRanker

        cfg = self.config
        seed = cfg.seed if seed is None else seed
        started = time.perf_counter()
        in_new = (train.t >= since) & (train.item >= 0)
        before = train.t < since
        # the sources were last fitted on exactly the events before `since` (the batch's cutoff, or
        # where the previous refresh ended): the new labels' candidates come from them, with no refit
        reuse = getattr(self, "sources_log", None) == _log_key(train.filter(before, now=since))
        fresh = self._groups(train, catalogue, before, in_new & self._label_codes(train, in_new), since,
                             generator=self.generator if reuse else None)
        if fresh is None:
            raise ValueError("no user of the new events has a target among their candidates: nothing to learn from")
        rng = np.random.default_rng([seed, since])
        buffer = getattr(self, "replay", None)  # None: a model fitted before the buffer existed
        n_fresh = len(fresh.groups)
        n_replay = 0
        if buffer is not None and replay_share > 0:
            n_replay = min(len(buffer.groups), int(round(n_fresh * replay_share / max(1.0 - replay_share, 1e-9))))
        data = _concat_groups([fresh, _sample_groups(buffer, n_replay, rng)] if n_replay else [fresh])
        init = lightgbm.Booster(model_str=self.model.booster_.model_to_string(num_iteration=self.best_iteration))
        params = {**LIGHTGBM_DEFAULTS, **cfg.lightgbm}
        params.update(n_estimators=trees, learning_rate=params["learning_rate"] * learning_rate_scale)
        model = LGBMRanker(objective="lambdarank", random_state=seed, deterministic=True, force_row_wise=True,
                           n_jobs=cfg.num_threads, verbose=-1, **params)
        group_of = np.repeat(np.arange(len(data.groups)), data.groups)
        rows = _negatives_kept(data.labels, group_of, cfg.max_negatives_per_group, seed)
        model.fit(data.features[rows], data.labels[rows], group=np.bincount(group_of[rows], minlength=len(data.groups)),
                  init_model=init)
        self.model = model
        self.best_iteration = self.best_iteration + trees
        self.replay = _sample_groups(_concat_groups([buffer, fresh] if buffer is not None else [fresh]),
                                     cfg.replay_groups, rng)
        self.prepare(catalogue, train)
        return {"fresh_groups": n_fresh, "replay_groups": n_replay, "train_rows": int(rows.sum()), "trees_added": trees,
                "sources_reused": bool(reuse), "trees": self.best_iteration, "seconds": time.perf_counter() - started}

    def learning_curve(self) -> list[dict[str, float]]:
        """Per boosting iteration, LambdaRank's NDCG@10 on the held-out label users (empty without them)."""
        curves = getattr(self.model, "evals_result_", None) or {}
        values = next(iter(curves.values()), {}).get("ndcg@10", [])
        return [{"validation_ndcg_at_10": float(v)} for v in values]

    def training_summary(self) -> dict[str, float]:
        """What the training run logs to MLflow beside the learning curve."""
        return {"train_seconds": self.train_seconds, "n_examples": self.n_train_rows, "n_train_groups": self.n_train_groups,
                "examples_per_second": self.n_train_rows / max(self.timings.get("lightgbm_fit", 0.0), 1e-9),
                "best_epoch": self.best_iteration, **{f"seconds_{k}": v for k, v in self.timings.items()}}

    @contextlib.contextmanager
    def _timed(self, stage: str):
        """Add the seconds of the block to ``timings[stage]`` (bench/quality.py reports them)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - started

    def prepare(self, catalogue: Catalogue, train: Histories) -> "TwoStageRanker":
        """Fit the candidate sources on ``train`` (every event the scored users may be scored from),
        as SeqRec.prepare binds a later log or a newer catalogue without retraining."""
        self.catalogue = catalogue
        self.generator = CandidateGenerator(self.config.candidates).fit(train, catalogue)
        self.sources_log = _log_key(train)
        return self

    def training_set(self, train: Histories, catalogue: Catalogue) -> TrainingSet:
        """The stacked groups of every label window (see the module docstring)."""
        cfg = self.config
        if cfg.label_protocol == "random":
            is_target = self._label_codes(train, train.item >= 0)
            parts = [self._groups(train, catalogue, *_random_labels(train, is_target, cfg.label_fraction, cfg.seed + w),
                                  int(train.now.max()), draw=w) for w in range(cfg.n_label_windows)]
        else:
            cutoff = int(train.now.max())
            window = int(round(cfg.label_window_days * SECONDS_PER_DAY))
            parts = []
            for w in range(cfg.n_label_windows):
                start, end = cutoff - (w + 1) * window, cutoff - w * window
                in_window = (train.t >= start) & (train.t < end) & (train.item >= 0)
                is_label = in_window & self._label_codes(train, in_window)
                parts.append(self._groups(train, catalogue, train.t < start, is_label, start))
        parts = [p for p in parts if p is not None]
        if not parts:
            raise ValueError("no label window has a user whose candidates hold one of their targets")
        return _concat_groups(parts)

    def _label_codes(self, train: Histories, eligible: np.ndarray) -> np.ndarray:
        """Per event: is it of a target type (every positive type when fewer than
        ``min_target_users`` eligible users have a target event, as split.py does)?"""
        cfg = self.config
        is_target = np.isin(train.etype, [EVENT_CODES[e] for e in cfg.target_event_types])
        if len(np.unique(train.row_of_event[eligible & is_target])) < cfg.min_target_users:
            is_target = np.isin(train.etype, [EVENT_CODES[e] for e in POSITIVE_EVENT_TYPES])
        return is_target

    def _groups(self, train: Histories, catalogue: Catalogue, keep: np.ndarray, is_label: np.ndarray,
                now: int, draw: int = 0, generator: CandidateGenerator | None = None) -> TrainingSet | None:
        """Groups of one label set: candidates from the events where ``keep`` holds (as of ``now``),
        labels = the items of the events where ``is_label`` holds. ``generator``: sources already
        fitted on exactly those events (in their own catalogue), used instead of a new fit."""
        cfg = self.config
        users = np.unique(train.row_of_event[is_label])
        if not keep.any():  # a label window at the start of the log has no history to draw candidates from
            return None
        if cfg.max_train_users is not None and len(users) > cfg.max_train_users:
            users = np.sort(np.random.default_rng([cfg.seed, now, draw]).choice(users, cfg.max_train_users, replace=False))
        if not len(users):
            return None
        earlier = train.filter(keep, now=now)
        code = np.arange(len(catalogue))  # item codes in the generator's catalogue
        with self._timed("candidates"):
            if generator is None:
                generator = CandidateGenerator(cfg.candidates).fit(earlier, catalogue)
            elif generator.catalogue is not catalogue:
                code = generator.catalogue.lookup(catalogue.item_ids)
                earlier = dataclasses.replace(earlier, item=np.where(earlier.item >= 0, code[np.maximum(earlier.item, 0)], -1))
            hist = earlier.subset(users)
            cands = generator.generate(hist, seen_items(hist, cfg.exclude_seen))
        n_items = len(generator.catalogue)
        row_of = np.full(len(train), -1, dtype=np.int64)
        row_of[users] = np.arange(len(users))
        label_rows = row_of[train.row_of_event[is_label]]
        labels = np.isin(cands.rows * n_items + cands.item, label_rows * n_items + code[train.item[is_label]]).astype(np.int32)
        with self._timed("features"):
            features = candidate_features(cands, hist, generator)
        sizes = np.diff(cands.offsets)
        has_label = np.bincount(cands.rows, weights=labels, minlength=len(users)) > 0
        if not has_label.any():
            return None
        keep_rows = np.repeat(has_label, sizes)
        return TrainingSet(features=features[keep_rows], items=cands.item[keep_rows], labels=labels[keep_rows],
                           groups=sizes[has_label],
                           users=train.user_ids[users][has_label], window_start=np.full(int(has_label.sum()), now))

    def _predict(self, features: np.ndarray) -> np.ndarray:
        """The LightGBM model's raw scores, from its trees compiled to native code (lleaves,
        ``compiled_trees``): the same values as ``LGBMRanker.predict`` (to about 1e-15, the order
        of a sum), 7x faster on one core (Ta-Feng-sized candidates, 81 trees: 0.54 -> 0.08 s for
        210k rows), which was half the cost of scoring a user. Compiled once per process and model."""
        compiled = self.__dict__.get("_compiled")
        if compiled is None or compiled[0] is not self.model:  # refresh() replaces the model
            compiled = self._compiled = (self.model, compiled_trees(self.model.booster_))
        return compiled[1].predict(features, n_jobs=self.config.num_threads or os.cpu_count() or 1)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_compiled", None)  # native code: compiled again where it is unpickled
        return state

    def single_threaded(self) -> "TwoStageRanker":
        self.config = dataclasses.replace(self.config, num_threads=1)
        return self

    def _ranked(self, histories: Histories) -> tuple[Candidates, np.ndarray]:
        """Candidates of the users (the items of the serving rule ``exclude_seen`` left out, as in
        training) and their ranker scores moved into [1, 2]."""
        with self._timed("score_candidates"):
            cands = self.generator.generate(histories, seen_items(histories, self.config.exclude_seen))
        if not len(cands):
            return cands, np.zeros(0, dtype=np.float32)
        with self._timed("score_features"):
            features = candidate_features(cands, histories, self.generator)
        with self._timed("score_predict"):
            raw = self._predict(features)
        return cands, _row_scaled(raw, cands.rows)

    def _fallback_scores(self) -> np.ndarray:
        pop = self.generator.items.popularity
        top = pop.max() if len(pop) else 0.0
        return (pop / (top + 1.0) if top > 0 else np.zeros_like(pop)).astype(np.float32)

    def score(self, histories: Histories) -> np.ndarray:
        """(n, n_items): ranked candidates in [1, 2] (best = 2), every other item by popularity in [0, 1)."""
        out = np.tile(self._fallback_scores(), (len(histories), 1))
        cands, scaled = self._ranked(histories)
        out[cands.rows, cands.item] = scaled
        return out

    def _top_k_batch(self, histories: Histories, k: int, exclude: Ragged) -> tuple[np.ndarray, np.ndarray]:
        """``score``'s top-k with ``exclude`` removed, without the (n, n_items) matrix: the
        ranked candidates, then popular items."""
        n, n_items = len(histories), len(self.catalogue)
        items = np.full((n, k), -1, dtype=np.int64)
        vals = np.full((n, k), -np.inf, dtype=np.float32)
        cands, scaled = self._ranked(histories)
        allowed = ~np.isin(cands.rows * n_items + cands.item, exclude.rows * n_items + exclude.values)
        r, i, s, rank = top_per_row(cands.rows[allowed], cands.item[allowed], scaled[allowed], k)
        items[r, rank - 1], vals[r, rank - 1] = i, s
        n_ranked = np.bincount(r, minlength=n)
        taken = Ragged.from_pairs(np.concatenate([exclude.rows, r]), np.concatenate([exclude.values, i]), n)
        fill, fill_vals = top_k_shared(self._fallback_scores(), n, k, taken)
        col = np.arange(k)[None, :] - n_ranked[:, None]  # place j of a row takes fill[j - n_ranked]
        fr, fc = np.nonzero(col >= 0)
        items[fr, fc], vals[fr, fc] = fill[fr, col[fr, fc]], fill_vals[fr, col[fr, fc]]
        return items, vals

    def feature_importance(self) -> dict[str, float]:
        gain = self.model.booster_.feature_importance(importance_type="gain")
        return {name: float(g) for name, g in sorted(zip(FEATURES, gain, strict=True), key=lambda x: -x[1])}


def candidate_features(cands: Candidates, hist: Histories, generator: CandidateGenerator) -> np.ndarray:
    """(n_pairs, len(FEATURES)) float32 in FEATURES order; NaN where a value does not exist."""
    rows, items = cands.rows, cands.item
    users = user_features(hist)[rows]
    price = generator.catalogue.price[items]
    with np.errstate(invalid="ignore", divide="ignore"):
        price_ratio = price / users[:, USER_FEATURES.index("user_mean_price")]
    n_sources = np.isfinite(cands.rank).sum(axis=1)
    parts = [cands.score, _relative_to_row_best(cands.score, rows), cands.rank, n_sources, cands.history, users,
             generator.items.table[items], price_ratio]
    # filled column block by column block: a column_stack would first build the float64 matrix
    out = np.empty((len(items), len(FEATURES)), dtype=np.float32)
    at = 0
    for part in parts:
        width = part.shape[1] if part.ndim == 2 else 1
        out[:, at:at + width] = part.reshape(len(items), width)
        at += width
    assert at == len(FEATURES), (at, len(FEATURES))
    return out


def user_features(hist: Histories) -> np.ndarray:
    """(n_users, len(USER_FEATURES)): activity, tenure, recency, repeat share, basket size, price."""
    n = len(hist)
    ok = (hist.item >= 0) & (event_weight_array(None)[hist.etype] > 0)
    rows, items, t = hist.row_of_event[ok], hist.item[ok], hist.t[ok]
    events = np.bincount(rows, minlength=n).astype(np.float64)
    visits = np.stack(unique_columns(rows, items, t // SECONDS_PER_DAY))  # (user, item, day), sorted
    pairs = unique_columns(visits[0], visits[1])[0]
    n_items = np.bincount(pairs, minlength=n).astype(np.float64)
    n_visits = np.bincount(visits[0], minlength=n).astype(np.float64)
    days = unique_columns(rows, t // SECONDS_PER_DAY)[0]
    n_days = np.bincount(days, minlength=n).astype(np.float64)
    first, last = np.full(n, np.inf), np.full(n, -np.inf)
    np.minimum.at(first, rows, t)
    np.maximum.at(last, rows, t)
    price = np.where(np.isfinite(hist.price[ok]) & (hist.price[ok] > 0), hist.price[ok], 0.0)
    priced = np.bincount(rows, weights=price > 0, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.stack([
            events, n_items, n_days, (hist.now - last) / SECONDS_PER_DAY, (hist.now - first) / SECONDS_PER_DAY,
            (n_visits - n_items) / n_visits,  # share of the user's item-days on an item of an earlier day
            events / n_days, np.bincount(rows, weights=price, minlength=n) / priced,
        ], axis=1)
    out[~np.isfinite(out)] = np.nan
    return out


def _relative_to_row_best(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each source's score over the user's best score from it: a user with a long history has
    larger co-visitation and EASE sums than one with a short one, and the training histories are
    shorter than the scored ones."""
    if not len(rows):
        return np.zeros((0, scores.shape[1]))
    order = None if (rows[1:] >= rows[:-1]).all() else np.argsort(rows, kind="stable")  # candidates come by row
    r, s = (rows, scores) if order is None else (rows[order], scores[order])
    starts = np.flatnonzero(np.concatenate([[True], r[1:] != r[:-1]]))
    best = np.maximum(np.maximum.reduceat(np.nan_to_num(s, nan=0.0), starts, axis=0), 0.0).astype(np.float64)  # at least 0
    best = np.repeat(best, np.diff(np.append(starts, len(r))), axis=0)
    if order is not None:
        best[order] = best.copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(best > 0, scores / best, np.nan)


def _row_scaled(raw: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per row, scores moved into [1, 2] keeping their order (a row's best at 2)."""
    n = int(rows.max()) + 1 if len(rows) else 0
    lo, hi = np.full(n, np.inf), np.full(n, -np.inf)
    np.minimum.at(lo, rows, raw)
    np.maximum.at(hi, rows, raw)
    span = hi[rows] - lo[rows]
    return (1.0 + np.where(span > 0, (raw - lo[rows]) / np.where(span > 0, span, 1.0), 1.0)).astype(np.float32)


#: compiled tree ensembles of this process by the SHA-256 of the model's text: a Spark worker is
#: reused across jobs and unpickles each job's broadcast, and compiling takes seconds
_COMPILED: dict[str, Any] = {}
KEEP_COMPILED = 4


def compiled_trees(booster) -> Any:
    """``booster`` (as many trees as its ``predict`` uses: the best iteration when early
    stopping found one) compiled to native code with lleaves (LLVM), once per process."""
    import lleaves

    text = booster.model_to_string()
    key = hashlib.sha256(text.encode()).hexdigest()
    model = _COMPILED.get(key)
    if model is None:
        with tempfile.TemporaryDirectory(prefix="freshrec-trees-") as tmp:
            path = os.path.join(tmp, "model.txt")
            with open(path, "w") as fh:
                fh.write(text)
            model = lleaves.Model(model_file=path)
            model.compile()
        while len(_COMPILED) >= KEEP_COMPILED:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = model
    return model


def _log_key(train: Histories) -> tuple[int, int, int]:
    """What a fit of the candidate sources saw: events, the newest one, and ``now``."""
    return len(train.t), int(train.t.max()) if len(train.t) else -1, int(train.now.max()) if len(train) else -1


def _take_groups(data: TrainingSet, picked: np.ndarray) -> TrainingSet:
    """The groups ``picked`` (indices, in order) of ``data`` with their rows."""
    ends = np.cumsum(data.groups)
    rows = np.concatenate([np.arange(e - n, e) for e, n in zip(ends[picked], data.groups[picked], strict=True)]) \
        if len(picked) else np.zeros(0, dtype=np.int64)
    return TrainingSet(features=data.features[rows], items=data.items[rows], labels=data.labels[rows],
                       groups=data.groups[picked], users=data.users[picked], window_start=data.window_start[picked])


def _sample_groups(data: TrainingSet, n: int, rng: np.random.Generator) -> TrainingSet:
    """A sample of ``n`` of the groups of ``data`` (all when it has no more), in their order."""
    if len(data.groups) <= n:
        return data
    return _take_groups(data, np.sort(rng.choice(len(data.groups), n, replace=False)))


def _concat_groups(parts: list[TrainingSet]) -> TrainingSet:
    return TrainingSet(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(TrainingSet)))


def _negatives_kept(labels: np.ndarray, group_of: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Per row: kept for training? Every positive, and per group a seeded sample of at most ``n``
    negatives (every row when ``n`` is None)."""
    if n is None:
        return np.ones(len(labels), dtype=bool)
    neg = np.flatnonzero(labels == 0)
    order = neg[np.lexsort((np.random.default_rng([seed, 2]).random(len(neg)), group_of[neg]))]
    place = np.arange(len(order)) - np.searchsorted(group_of[order], group_of[order])
    keep = labels != 0
    keep[order[place < n]] = True
    return keep


def _validation_groups(n_groups: int, share: float, seed: int) -> np.ndarray:
    """A seeded ``share`` of the groups (at least 1 when share > 0 and there are 2+ groups)."""
    val = np.zeros(n_groups, dtype=bool)
    n_val = int(round(share * n_groups)) if n_groups >= 2 else 0
    if share > 0 and n_groups >= 2:
        n_val = max(n_val, 1)
    if n_val:
        val[np.random.default_rng(seed).choice(n_groups, n_val, replace=False)] = True
    return val


def _random_labels(train: Histories, is_target: np.ndarray, fraction: float, seed: int,
                   min_events: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(keep, is_label) per event: each user with ``min_events`` item events and two or more
    distinct items holds out round(fraction x n) of their n distinct target items (at least 1,
    never all their items), drawn with ``seed``, as protocols.random_holdout does."""
    rows, items = train.row_of_event, train.item
    valid = items >= 0
    n_items_total = int(items.max(initial=0)) + 1
    key = rows * n_items_total + items
    cand = np.unique(key[valid & is_target])
    cand_rows = cand // n_items_total
    n_events = np.bincount(rows[valid], minlength=len(train))
    n_distinct = np.bincount(np.unique(key[valid]) // n_items_total, minlength=len(train))
    draw = np.random.default_rng(seed).random(len(cand))
    order = np.lexsort((draw, cand_rows))
    rank = np.empty(len(cand), dtype=np.int64)
    rank[order] = np.arange(len(cand)) - np.searchsorted(cand_rows[order], cand_rows[order])
    n_cand = np.bincount(cand_rows, minlength=len(train))
    n_hold = np.minimum(np.maximum(1, np.floor(fraction * n_cand + 0.5)), n_distinct - 1)
    eligible = (n_events >= min_events) & (n_distinct >= 2)
    held = cand[eligible[cand_rows] & (rank < n_hold[cand_rows])]
    is_held = valid & np.isin(key, held)
    return ~is_held, is_held & is_target
