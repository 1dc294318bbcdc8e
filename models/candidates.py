"""Candidate generation: the first stage of the two-stage recommender (models/ranker.py).

Each user gets up to ``n_candidates`` items from several sources; the ranker then orders them.

- ``own``: the user's own items, by time-decayed summed event weight (repeat purchases);
- ``covisit``: item kNN from the user's ``recent_items`` latest distinct items, each weighted by
  how recently the user had it (CooccurrenceKNN's cosine similarity);
- ``ease``: EASE (Steck 2019) restricted to the ``ease_items`` most popular items, so a catalogue
  too large for a dense inverse still gets its strongest item-item model where most targets are;
- ``category``: the best sellers of the user's ``user_categories`` main categories, scored as
  CategoryPopularity scores (P(category | user) x P(item | category));
- ``trending`` and ``popular``: the lists every user shares (Trending, Popularity).

A source proposes its ``*_max`` best items (after the exclusions); the union is cut to
``n_candidates`` by each pair's best rank relative to its source's quota (rank / quota), so every
source keeps its share. Every kept pair carries every source's score (0 where the source has
nothing to say about it; NaN for ``ease`` outside its items) and its rank in each source's list
(NaN where that source did not propose it), plus what the user did with the item (``HISTORY``).
Everything is vectorised over a batch of users; nothing loops over users or items in Python.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from freshrec.models.baselines import EASE, CategoryPopularity, CooccurrenceKNN, Trending, top_k_shared, top_per_row
from freshrec.models.data import (
    EVENT_CODES,
    SECONDS_PER_DAY,
    Catalogue,
    Histories,
    Ragged,
    concat_ranges,
    event_weight_array,
    unique_columns,
)

SOURCES = ("own", "covisit", "ease", "category", "trending", "popular")
# per (user, item) pair, from the user's own events with the item (0 / NaN when there are none)
HISTORY = ("n_view", "n_cart", "n_remove", "n_purchase", "n_days", "days_since_last", "days_since_first",
           "decay_short", "decay_long", "own_gap", "since_over_own_gap", "since_over_item_interval", "category_share")
# item facts as of the fit (ItemStats.table)
ITEM_STATS = ("popularity", "n_users", "trend", "trend_share", "recent_28_days", "peak_week_share", "repeat_interval",
              "repeat_share", "price", "category_popularity", "days_since_first_seen", "days_since_last_seen")


@dataclass(frozen=True)
class CandidateConfig:
    n_candidates: int = 300
    # each source's quota; together they exceed n_candidates so that a source with little to say
    # for a user (no own items, no history at all) leaves its places to the others
    own_max: int = 150
    covisit_max: int = 150
    ease_max: int = 150
    category_max: int = 60
    trending_max: int = 40
    popular_max: int = 50
    ease_items: int = 5000  # EASE's dense inverse is items^2: the most popular ease_items only
    ease_l2: float = 500.0
    ease_neighbors: int = 200  # EASE weights kept per item (the largest), so scoring one user is sparse
    # up to this many EASE items every weight is kept, negative ones too: scoring them is cheap, and
    # on MovieLens (1,682 items) the ranker scored NDCG@10 0.466 with 200 weights an item, 0.478 with all
    ease_full_items: int = 2000
    knn_neighbors: int = 100
    recent_items: int = 20  # the user's latest distinct items that seed co-visitation
    seed_half_life_days: float = 14.0  # a seed item's weight halves with each half-life since the user had it
    own_half_life_days: float = 30.0  # the own source's decay (and HISTORY's decay_long)
    short_half_life_days: float = 7.0  # HISTORY's decay_short
    user_categories: int = 5
    trending_days: float = 7.0
    event_weights: dict[str, float] | None = None

    def quota(self) -> np.ndarray:
        return np.array([getattr(self, f"{s}_max") for s in SOURCES], dtype=np.float64)


@dataclass(frozen=True)
class Candidates:
    """Candidate pairs of a batch of users in CSR layout (user i owns pairs offsets[i]:offsets[i+1])."""

    offsets: np.ndarray  # int64, n_users + 1
    item: np.ndarray  # int64 catalogue index
    score: np.ndarray  # float32 (n_pairs, len(SOURCES))
    rank: np.ndarray  # float32 (n_pairs, len(SOURCES)), 1 = the source's best; NaN: not proposed by it
    history: np.ndarray  # float32 (n_pairs, len(HISTORY))

    def __len__(self) -> int:
        return len(self.item)

    @property
    def rows(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.offsets) - 1, dtype=np.int64), np.diff(self.offsets))

    @property
    def sources(self) -> np.ndarray:
        """Bit s set when SOURCES[s] proposed the pair."""
        return (np.isfinite(self.rank) * (1 << np.arange(len(SOURCES)))).sum(axis=1).astype(np.int64)

    @classmethod
    def concat(cls, parts: list["Candidates"]) -> "Candidates":
        offsets = [np.zeros(1, dtype=np.int64)]
        for part in parts:
            offsets.append(part.offsets[1:] + offsets[-1][-1])
        return cls(np.concatenate(offsets), *(np.concatenate([getattr(p, f) for p in parts])
                                              for f in ("item", "score", "rank", "history")))


@dataclass
class ItemStats:
    """Per item, as of ``now``: the facts the ranker reads about an item (ITEM_STATS)."""

    table: np.ndarray  # float32 (n_items, len(ITEM_STATS))
    popularity: np.ndarray  # summed event weights
    trend: np.ndarray  # Trending's decayed recent weight
    interval: np.ndarray  # median days between one user's days with the item; NaN when nobody came back

    @classmethod
    def compute(cls, train: Histories, catalogue: Catalogue, popularity: np.ndarray, trend: np.ndarray) -> "ItemStats":
        n_items = len(catalogue)
        ok = (train.item >= 0) & (event_weight_array(None)[train.etype] > 0)
        rows, items, t = train.row_of_event[ok], train.item[ok], train.t[ok]
        now = int(train.now.max()) if len(train) else 0
        visits = np.stack(unique_columns(items, rows, t // SECONDS_PER_DAY))  # sorted by item, user, day
        same = (visits[0, 1:] == visits[0, :-1]) & (visits[1, 1:] == visits[1, :-1])
        gap_items, gaps = visits[0, 1:][same], np.diff(visits[2])[same].astype(np.float64)
        pairs = unique_columns(visits[0], visits[1])[0]
        n_users = np.bincount(pairs, minlength=n_items).astype(np.float64)
        returners = unique_columns(gap_items, visits[1, 1:][same])[0]
        first, last = np.full(n_items, np.inf), np.full(n_items, -np.inf)
        np.minimum.at(first, items, t)
        np.maximum.at(last, items, t)
        first[~np.isfinite(first)] = np.nan
        last[~np.isfinite(last)] = np.nan
        cat = catalogue.category_code
        cat_pop = np.bincount(cat[cat >= 0], weights=popularity[cat >= 0], minlength=max(len(catalogue.categories), 1))
        interval = _group_median(gap_items, gaps, n_items)
        # what sells drifts (promotions, holidays): a smoother horizon than the trend, and how much
        # of an item's sales fell in its best week (a promoted item sells in bursts)
        weeks = (now - t) // (7 * SECONDS_PER_DAY)
        week_keys, week_counts = np.unique(items * (int(weeks.max(initial=0)) + 1) + weeks, return_counts=True)
        peak = np.zeros(n_items)
        np.maximum.at(peak, week_keys // (int(weeks.max(initial=0)) + 1), week_counts)
        count = np.bincount(items, minlength=n_items)
        # shares, not counts: the ranker learns on a log one label window shorter than the one it scores
        table = np.stack([
            _share(popularity), n_users / max(len(np.unique(rows)), 1), _share(trend),
            trend / np.maximum(popularity, 1e-9), _share(np.bincount(items[weeks < 4], minlength=n_items).astype(np.float64)),
            np.where(count > 0, peak / np.maximum(count, 1), np.nan), interval,
            np.bincount(returners, minlength=n_items) / np.maximum(n_users, 1), catalogue.price,
            np.where(cat >= 0, _share(cat_pop)[np.maximum(cat, 0)], np.nan),
            (now - first) / SECONDS_PER_DAY, (now - last) / SECONDS_PER_DAY,
        ], axis=1).astype(np.float32)
        return cls(table=table, popularity=popularity, trend=trend, interval=interval)


def _share(weights: np.ndarray) -> np.ndarray:
    """Each entry's share of the total (per ten thousand, a scale trees split as easily as any)."""
    total = weights.sum()
    return weights * (1e4 / total) if total > 0 else np.zeros_like(weights, dtype=np.float64)


def _group_median(groups: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Median of ``values`` per group id in [0, n); NaN for a group without values."""
    out = np.full(n, np.nan)
    if not len(values):
        return out
    order = np.lexsort((values, groups))
    groups, values = groups[order], values[order]
    starts = np.searchsorted(groups, np.arange(n), side="left")
    counts = np.bincount(groups, minlength=n)
    has = counts > 0
    lo = starts[has] + (counts[has] - 1) // 2
    hi = starts[has] + counts[has] // 2
    out[has] = (values[lo] + values[hi]) / 2.0
    return out


class CandidateGenerator:
    """Fit the sources on training histories, then ``generate`` candidates for any users."""

    def __init__(self, config: CandidateConfig | None = None):
        self.config = config or CandidateConfig()

    def fit(self, train: Histories, catalogue: Catalogue) -> "CandidateGenerator":
        cfg = self.config
        self.catalogue = catalogue
        trending = Trending(window_days=cfg.trending_days, event_weights=cfg.event_weights).fit(train, catalogue)
        self.items = ItemStats.compute(train, catalogue, trending.popularity, trending.trend)
        self.similarity = CooccurrenceKNN(n_neighbors=cfg.knn_neighbors, event_weights=cfg.event_weights).fit(
            train, catalogue).similarity.astype(np.float32)
        self.item_share = CategoryPopularity(event_weights=cfg.event_weights).fit(train, catalogue).item_share
        self.category_top = _category_top(catalogue.category_code, self.item_share, cfg.category_max)
        self._fit_ease(train, catalogue)
        return self

    def _fit_ease(self, train: Histories, catalogue: Catalogue) -> None:
        """EASE on the ``ease_items`` most popular items, its weights cut to ``ease_neighbors`` per
        item past ``ease_full_items`` items."""
        cfg = self.config
        n_items = len(catalogue)
        k = min(cfg.ease_items, n_items)
        top = np.sort(np.lexsort((np.arange(n_items), -self.items.popularity))[:k])
        self.ease_pos = np.full(n_items, -1, dtype=np.int64)
        self.ease_pos[top] = np.arange(k)
        self.ease_items = top
        sub = Catalogue(item_ids=catalogue.item_ids[top], category=catalogue.category[top], price=catalogue.price[top])
        local = dataclasses.replace(train, item=np.where(train.item >= 0, self.ease_pos[np.maximum(train.item, 0)], -1))
        weights = EASE(l2=cfg.ease_l2, max_items=k).fit(local, sub).weights_
        keep = k if k <= cfg.ease_full_items else min(cfg.ease_neighbors, k)
        cols = np.argpartition(-weights, keep - 1, axis=1)[:, :keep] if keep < k else np.tile(np.arange(k), (k, 1))
        vals = np.take_along_axis(weights, cols, axis=1)
        ok = vals > 0 if keep < k else vals != 0  # a full matrix keeps EASE's negative weights too
        rows = np.broadcast_to(np.arange(k)[:, None], cols.shape)
        self.ease_weights = sp.csr_matrix((vals[ok], (rows[ok], cols[ok])), shape=(k, k), dtype=np.float32)

    def generate(self, histories: Histories, exclude: Ragged | None = None, batch_size: int = 2048) -> Candidates:
        """Candidates of every user in ``histories``; ``exclude[u]`` never becomes one of user u's."""
        parts = []
        for start in range(0, len(histories), batch_size):
            rows = np.arange(start, min(start + batch_size, len(histories)))
            ex = exclude.subset(rows) if exclude is not None else Ragged.empty(len(rows))
            parts.append(self._generate_batch(histories.subset(rows), ex))
        if not parts:
            return self._generate_batch(histories, Ragged.empty(0))
        return Candidates.concat(parts)

    def _generate_batch(self, hist: Histories, exclude: Ragged) -> Candidates:
        cfg = self.config
        n, n_items = len(hist), len(self.catalogue)
        own = _OwnItems(hist, n_items, self.catalogue.category_code, cfg)
        matrices = {
            "own": own.matrix,
            "covisit": (own.seed_matrix(cfg.recent_items, cfg.seed_half_life_days) @ self.similarity).tocsr(),
            "ease": self._ease_scores(hist),
            "category": self._category_matrix(own.profile),
        }
        shared = {"trending": self.items.trend, "popular": self.items.popularity}
        ex_keys = exclude.rows * n_items + exclude.values
        lists = []
        for s, name in enumerate(SOURCES):
            if name in matrices:
                r, i, v = _pairs_of(matrices[name], self.ease_items if name == "ease" else None)
                keep = ~np.isin(r * n_items + i, ex_keys)
                r, i, _, rank = top_per_row(r[keep], i[keep], v[keep], int(cfg.quota()[s]))
            else:
                r, i, rank = _shared_list(shared[name], n, int(cfg.quota()[s]), exclude)
            lists.append((r, i, np.full(len(r), s), rank))
        rows, items, src, rank = (np.concatenate(x) for x in zip(*lists, strict=True))
        rows, items, ranks = _merge(rows, items, src, rank, cfg.quota(), cfg.n_candidates, n_items)
        scores = np.stack([
            _lookup(own.matrix, rows, items),
            _lookup(matrices["covisit"], rows, items),
            self._ease_lookup(matrices["ease"], rows, items),
            own.category_share(rows, items) * self.item_share[items],
            self.items.table[items, ITEM_STATS.index("trend")], self.items.table[items, ITEM_STATS.index("popularity")],
        ], axis=1).astype(np.float32)
        history = own.pair_features(rows, items, self.items.interval)
        offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int64)
        return Candidates(offsets=offsets, item=items, score=scores, rank=ranks, history=history)

    def _ease_scores(self, hist: Histories) -> sp.csr_matrix:
        """users x ease_items scores: the binary history on those items times the kept EASE weights."""
        pos = np.where(hist.item >= 0, self.ease_pos[np.maximum(hist.item, 0)], -1)
        ok = (pos >= 0) & (event_weight_array(None)[hist.etype] > 0)
        x = sp.csr_matrix((np.ones(int(ok.sum()), dtype=np.float32), (hist.row_of_event[ok], pos[ok])),
                          shape=(len(hist), len(self.ease_items)))
        x.data[:] = 1.0  # the constructor sums repeated events; EASE was fitted on a binary matrix
        return (x @ self.ease_weights).tocsr()

    def _ease_lookup(self, scores: sp.csr_matrix, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        pos = self.ease_pos[items]
        out = np.full(len(items), np.nan, dtype=np.float64)
        inside = pos >= 0
        out[inside] = _lookup(scores, rows[inside], pos[inside])
        return out

    def _category_matrix(self, profile: sp.csr_matrix) -> sp.csr_matrix:
        """users x items: P(category | user) x P(item | category) for the best sellers of each
        user's ``user_categories`` main categories (the category source's list)."""
        cfg = self.config
        r, c, share = _pairs_of(profile)
        r, c, share, _ = top_per_row(r, c, share, cfg.user_categories)
        offsets, top_items = self.category_top
        lengths = offsets[c + 1] - offsets[c]
        rows = np.repeat(r, lengths)
        items = top_items[concat_ranges(offsets[c], lengths)]
        values = np.repeat(share, lengths) * self.item_share[items]
        return sp.csr_matrix((values, (rows, items)), shape=(profile.shape[0], len(self.catalogue)))


class _OwnItems:
    """A batch's (user, item) history aggregates, sorted by key = row x n_items + item."""

    def __init__(self, hist: Histories, n_items: int, category_code: np.ndarray, cfg: CandidateConfig):
        self.n, self.n_items, self.category_code = len(hist), n_items, category_code
        weights = event_weight_array(cfg.event_weights)
        valid = hist.item >= 0
        rows, items, t, etype = hist.row_of_event[valid], hist.item[valid], hist.t[valid], hist.etype[valid]
        age = (hist.now[rows] - t) / SECONDS_PER_DAY
        self.keys, inverse = np.unique(rows * n_items + items, return_inverse=True)
        m = len(self.keys)
        counts = [np.bincount(inverse, weights=(etype == EVENT_CODES[e]), minlength=m)
                  for e in ("view", "add_to_cart", "remove_from_cart", "purchase")]
        w = weights[etype]
        decay_short = np.bincount(inverse, weights=w * np.exp2(-age / cfg.short_half_life_days), minlength=m)
        decay_long = np.bincount(inverse, weights=w * np.exp2(-age / cfg.own_half_life_days), minlength=m)
        first_age, last_age = np.zeros(m), np.full(m, np.inf)
        np.maximum.at(first_age, inverse, age)
        np.minimum.at(last_age, inverse, age)
        days = unique_columns(inverse, t // SECONDS_PER_DAY)[0]
        n_days = np.bincount(days, minlength=m).astype(np.float64)
        own_gap = np.where(n_days > 1, (first_age - last_age) / np.maximum(n_days - 1, 1), np.nan)
        self.table = np.stack([*counts, n_days, last_age, first_age, decay_short, decay_long, own_gap,
                               last_age / own_gap], axis=1)
        positive = decay_long > 0
        self.matrix = sp.csr_matrix((decay_long[positive], (self.keys[positive] // n_items, self.keys[positive] % n_items)),
                                    shape=(self.n, n_items))
        self.last_age = last_age
        self.profile = self._category_profile()

    def seed_matrix(self, recent: int, half_life_days: float) -> sp.csr_matrix:
        """users x items: the user's ``recent`` latest positive items, weighted 2^(-days since / half-life)."""
        m = self.matrix.tocoo()
        keys = m.row.astype(np.int64) * self.n_items + m.col
        last = self.last_age[np.searchsorted(self.keys, keys)]
        r, i, w, _ = top_per_row(m.row.astype(np.int64), m.col.astype(np.int64), -last, recent)
        return sp.csr_matrix((np.exp2(w / half_life_days).astype(np.float32), (r, i)), shape=(self.n, self.n_items))

    def _category_profile(self) -> sp.csr_matrix:
        """users x categories: the share of the user's (decayed) weight in each category."""
        m = self.matrix.tocoo()
        cat = self.category_code[m.col]
        known = cat >= 0
        profile = sp.csr_matrix((m.data[known], (m.row[known], cat[known])),
                                shape=(self.n, max(int(self.category_code.max(initial=-1)) + 1, 1)))
        total = np.asarray(profile.sum(axis=1)).ravel()
        return (sp.diags(1.0 / np.maximum(total, 1e-12)) @ profile).tocsr()

    def category_share(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """P(the item's category | user) for each (row, item) pair; 0 for an unknown category."""
        cat = self.category_code[items]
        out = np.zeros(len(items))
        known = cat >= 0
        out[known] = _lookup(self.profile, rows[known], cat[known])
        return out

    def pair_features(self, rows: np.ndarray, items: np.ndarray, interval: np.ndarray) -> np.ndarray:
        """HISTORY for each (row, item) pair: counts 0 and timings NaN where the user never had the item."""
        keys = rows * self.n_items + items
        pos = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
        found = (self.keys[pos] == keys) if len(self.keys) else np.zeros(len(keys), dtype=bool)
        out = np.zeros((len(keys), len(HISTORY)), dtype=np.float32)
        width = self.table.shape[1]
        out[found, :width] = self.table[pos[found]]
        timings = [HISTORY.index(c) for c in ("days_since_last", "days_since_first", "own_gap", "since_over_own_gap")]
        out[np.ix_(~found, timings)] = np.nan
        out[:, width] = out[:, HISTORY.index("days_since_last")] / interval[items]
        out[:, width + 1] = self.category_share(rows, items)
        return out


def _lookup(matrix: sp.spmatrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """matrix[rows[j], cols[j]] for each j (0 where the matrix has no entry), without densifying."""
    if not len(rows):
        return np.zeros(0)
    matrix = matrix.tocsr()
    if not matrix.has_sorted_indices:  # a sparse product's rows come unsorted; scipy scans those, bisects sorted ones
        matrix.sort_indices()  # (10x faster lookups on a co-visitation block); in place, the entries unchanged
    return np.asarray(matrix[rows, cols]).ravel().astype(np.float64)


def _pairs_of(matrix: sp.spmatrix, col_map: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The positive entries of a sparse matrix as (rows, cols, values); cols mapped through col_map."""
    m = matrix.tocoo()
    ok = m.data > 0
    cols = m.col[ok].astype(np.int64)
    return m.row[ok].astype(np.int64), (cols if col_map is None else col_map[cols]), m.data[ok].astype(np.float64)


def _shared_list(scores: np.ndarray, n: int, cap: int, exclude: Ragged) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``cap`` best items with a positive score, the same for every row, past each row's exclusions."""
    cap = min(cap, int((scores > 0).sum()))
    if cap == 0 or n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    items, _ = top_k_shared(np.where(scores > 0, scores, -np.inf), n, cap, exclude)
    ok = items >= 0
    rank = np.broadcast_to(np.arange(1, cap + 1), items.shape)
    return np.nonzero(ok)[0].astype(np.int64), items[ok], rank[ok]


def _merge(rows, items, src, rank, quota, n_candidates, n_items):
    """The union of the sources' lists cut to ``n_candidates`` per row by the best rank / quota,
    and the (n_pairs, n_sources) rank matrix of the kept pairs (NaN where a source did not list it)."""
    keys = rows * n_items + items
    order = np.lexsort((rank / quota[src], keys))
    keys, src, rank = keys[order], src[order], rank[order]
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    uniq = keys[first]
    best = (rank / quota[src])[first]
    r, i, _, _ = top_per_row(uniq // n_items, uniq % n_items, -best, n_candidates)
    kept = r * n_items + i  # sorted by row then priority
    by_key = np.argsort(kept)
    pos = np.searchsorted(kept[by_key], keys)
    inside = pos < len(kept)
    inside[inside] = kept[by_key][pos[inside]] == keys[inside]
    ranks = np.full((len(kept), len(quota)), np.nan, dtype=np.float32)
    ranks[by_key[pos[inside]], src[inside]] = rank[inside]
    return r, i, ranks


def _category_top(category_code: np.ndarray, item_share: np.ndarray, per_category: int) -> tuple[np.ndarray, np.ndarray]:
    """Each category's ``per_category`` best items by share, as (offsets, items) over category codes."""
    known = np.flatnonzero((category_code >= 0) & (item_share > 0))
    n_cat = int(category_code.max(initial=-1)) + 1
    cats, items, _, _ = top_per_row(category_code[known], known, item_share[known], per_category)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(cats, minlength=n_cat))]).astype(np.int64)
    return offsets, items
