"""The main model: a sequence encoder with a learned repeat-or-explore decision over the catalogue.

For a user at time ``now`` with recent item events e_1..e_L (oldest first):

- Item representation: ID embedding + category embedding + price-bucket embedding. Items seen
  fewer than ``min_item_count`` times in training (and items new since training) share the
  unknown-ID row, so they are scored from their category and price: a new item can be listed.
  An online refresh (``extend``, ``refresh``) gives the new items that sell a row of their own.
- Sequence encoder (SASRec-style): each event is its item representation plus embeddings of its
  event type, the gap since the previous event, its age at ``now`` and its recency rank; attention
  from a query token reads them into the user vector h. There is no user-ID parameter: a user
  seen for the first time, or whose sequence changed, is encoded from the sequence alone.
- Repeat head (RepeatNet-style, Ren et al. 2019; "what the user already buys" as a first-class
  input): for each item in the user's sequence, P(taken again within the horizon) from what the
  user did with it (counts per event type, distinct days, first and last age, share of the
  sequence, recency), the item's popularity and trend, and h.
- Explore head: the expected number of new items the user takes, times a softmax over every other
  catalogue item of trend_i + h . e_i + b_i + w(h) . [popularity_i, trend_i]: the item's log
  recent popularity (``trend``, decayed over ``trend_days``) is the anchor, with coefficient 1,
  and the rest a learned correction that starts near 0, so a user the encoder knows little
  about gets the trending list, not noise (popularity and trend read from the log as of
  ``now``, so new users get a fresh list).
- Score = log P(item among what the user takes in the horizon): own items from the repeat head,
  the others from the explore head shifted by an offset calibrated on the validation window
  (explore is far less predictable in some windows than in others: promotions come and go).

Training examples: (user, session start) and (user, calendar cutoff) pairs, input = the events
before that moment, targets = the distinct target-type items of the next horizon: the shape of the
evaluation window. Loss = binary cross-entropy of the repeat head over own items + Poisson
likelihood of the number of new items + softmax cross-entropy of each new target; the softmax
partition is exact for catalogues up to ``full_softmax_max_items`` and importance-sampled above
(``n_negatives`` shared draws, log-q corrected). Deterministic for a seed on the CPU (fixed thread
count, deterministic algorithms, seeded batching and sampling); on a GPU when one is present.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
import torch
from freshrec.models.baselines import Recommender
from freshrec.models.data import EVENT_CODES, SECONDS_PER_DAY, Catalogue, Histories, Ragged, event_weight_array, unique_columns
from freshrec.models.split import DEFAULT_TARGET_EVENT_TYPES
from torch import nn

N_GAP_BUCKETS = 40
N_PRICE_BUCKETS = 16
N_REPEAT_FEATURES = 15  # per (user, own item) pair, see _candidates
PAD, UNK = 0, 1  # rows 0 and 1 of the item and category tables


@dataclass(frozen=True)
class SeqRecConfig:
    max_len: int = 50  # events read per user: features/sequences keeps Settings.sequence_length
    dim: int = 64
    n_layers: int = 1
    n_heads: int = 2
    ffn_mult: int = 2
    dropout: float = 0.0  # CPU dropout kernels cost more than they give here; weight decay regularizes
    epochs: int = 4
    batch_size: int = 512
    lr: float = 3e-3
    weight_decay: float = 1e-5
    horizon_days: float = 14.0  # targets of a training example: the next horizon_days (use the eval window)
    # "cutoffs": examples are (user, calendar cutoff) like the evaluation window, one cutoff every
    # cutoff_stride_days going back from the end; "sessions": one example per session start
    # (the moment a micro-batch refreshes a user); "both": the union
    examples: str = "both"
    cutoff_stride_days: float | None = None  # None: horizon_days / 2
    session_gap_minutes: float = 30.0
    max_examples_per_user: int = 50  # the most recent examples of each user
    # what sells (promotions, seasons) drifts much faster than how people re-buy: an example
    # weighs 2^(-age / half_life), age measured back from the end of the training data
    recency_half_life_days: float | None = None
    max_targets: int = 64
    min_item_count: int = 2  # rarer items share the unknown-ID embedding
    full_softmax_max_items: int = 4096
    n_negatives: int = 2048  # importance-sampled catalogue items per batch above that size
    trend_days: float = 7.0
    target_event_types: tuple[str, ...] = DEFAULT_TARGET_EVENT_TYPES
    exclude_seen: str = "none"  # the serving rule: excluded items are masked in training too
    event_weights: dict[str, float] | None = None
    seed: int = 0
    num_threads: int | None = 1  # one thread: on a shared CPU, OpenMP barriers of a second one cost more than it gives
    device: str | None = None  # None: cuda when available, else cpu
    patience: int = 1  # epochs without validation gain before stopping

    def to_params(self) -> dict[str, Any]:
        return {k: (",".join(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


class _Net(nn.Module):
    def __init__(self, n_item_rows: int, n_cat_rows: int, cfg: SeqRecConfig):
        super().__init__()
        d = cfg.dim
        self.item_emb = nn.Embedding(n_item_rows, d, padding_idx=PAD)
        self.cat_emb = nn.Embedding(n_cat_rows, d, padding_idx=PAD)
        self.price_emb = nn.Embedding(N_PRICE_BUCKETS + 1, d, padding_idx=0)
        self.item_bias = nn.Embedding(n_item_rows, 1, padding_idx=PAD)
        self.cat_bias = nn.Embedding(n_cat_rows, 1, padding_idx=PAD)
        self.etype_emb = nn.Embedding(max(EVENT_CODES.values()) + 1, d, padding_idx=0)
        self.gap_emb = nn.Embedding(N_GAP_BUCKETS + 1, d, padding_idx=0)
        self.age_emb = nn.Embedding(N_GAP_BUCKETS + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len + 1, d, padding_idx=0)
        self.query = nn.Parameter(torch.zeros(1, 1, d))
        # n_layers - 1 full self-attention layers over [query; events], then a last layer computed
        # for the query token only: the only output read, so per-event feed-forwards are skipped
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d, cfg.n_heads, cfg.ffn_mult * d, cfg.dropout, batch_first=True, norm_first=True)
            for _ in range(cfg.n_layers - 1))
        self.read_norm_q = nn.LayerNorm(d)
        self.read_norm_kv = nn.LayerNorm(d)
        self.read_attn = nn.MultiheadAttention(d, cfg.n_heads, dropout=cfg.dropout, batch_first=True)
        self.read_norm_ff = nn.LayerNorm(d)
        self.read_ff = nn.Sequential(nn.Linear(d, cfg.ffn_mult * d), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.ffn_mult * d, d))
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        self.stat_weight = nn.Linear(d, 2)  # explore: user-dependent weight of item popularity and trend
        self.count_head = nn.Linear(d, 1)  # explore: log of the expected number of new items the user takes
        n_rep_in = N_REPEAT_FEATURES + 2  # the pair features plus the item's popularity and trend
        self.rep_user = nn.Linear(d, 16)
        self.rep_mlp = nn.Sequential(nn.Linear(n_rep_in + 16, 64), nn.GELU(), nn.Linear(64, 1))
        self.rep_linear = nn.Linear(n_rep_in, 1)
        for emb in (self.item_emb, self.cat_emb, self.price_emb, self.etype_emb, self.gap_emb, self.age_emb, self.pos_emb):
            nn.init.normal_(emb.weight, std=0.02)
            if emb.padding_idx is not None:
                with torch.no_grad():
                    emb.weight[emb.padding_idx].zero_()
        nn.init.zeros_(self.item_bias.weight)
        nn.init.zeros_(self.cat_bias.weight)
        nn.init.zeros_(self.stat_weight.weight)
        nn.init.zeros_(self.rep_mlp[-1].weight)
        nn.init.zeros_(self.rep_mlp[-1].bias)
        with torch.no_grad():  # start from "popular and trending items" and "what the user buys often"
            self.stat_weight.bias.copy_(torch.tensor([1.0, 0.5]))
            self.rep_linear.weight.zero_()
            self.rep_linear.weight[0, 0] = 1.0  # log1p(events on the item)
            self.rep_linear.bias.fill_(-2.0)

    def items(self, rows: torch.Tensor, cats: torch.Tensor, prices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Item vectors and biases."""
        vec = self.item_emb(rows) + self.cat_emb(cats) + self.price_emb(prices)
        return vec, (self.item_bias(rows) + self.cat_bias(cats)).squeeze(-1)

    def encode(self, seq: dict[str, torch.Tensor]) -> torch.Tensor:
        # an event is its item's vector (as items()) plus the embeddings of its type, gap, age
        # and position: the small tables' rows are summed in one embedding_bag over their
        # concatenation (each table's pad row 0 mapped to one zero row), not one pass each
        small = (self.cat_emb, self.price_emb, self.etype_emb, self.gap_emb, self.age_emb, self.pos_emb)
        sizes = [t.num_embeddings for t in small]
        zero_row = sum(sizes)
        starts = torch.tensor(np.cumsum([0, *sizes[:-1]]), device=seq["row"].device)
        idx = torch.stack([seq[f] for f in ("cat", "price", "etype", "gap", "age", "pos")], dim=-1)
        idx = torch.where(idx == 0, zero_row, idx + starts)
        weight = torch.cat([*(t.weight for t in small), self.cat_emb.weight.new_zeros(1, self.cat_emb.embedding_dim)])
        x = self.item_emb(seq["row"]) + nn.functional.embedding_bag(
            idx.view(-1, idx.shape[-1]), weight, mode="sum", padding_idx=zero_row).view(*idx.shape[:2], -1)
        b = x.shape[0]
        x = self.drop(torch.cat([self.query.expand(b, 1, -1), x], dim=1))
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=x.device), seq["etype"] == 0], dim=1)
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=pad)
        q = x[:, :1]
        kv = self.read_norm_kv(x)
        q = q + self._read(self.read_norm_q(q[:, 0]), kv, pad)[:, None]
        q = q + self.read_ff(self.read_norm_ff(q))
        return self.norm(q[:, 0])

    def _read(self, q: torch.Tensor, kv: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """``read_attn`` (multi-head attention) of one query per row over the (B, L, d) events,
        with the key and value projections folded into the query side: per head, the query goes
        through W_k's transpose (so a score is one dot product with an event's vector) and the
        softmax-weighted sum of the events goes through W_v. The same function as projecting every
        event (the key bias only shifts a row's scores, the value bias adds once since the weights
        sum to 1), at O(L x d) a head instead of O(L x d^2): the projections of every event were
        most of the cost of scoring a user."""
        attn = self.read_attn
        b, d = q.shape
        heads = attn.num_heads
        _, w_k, w_v = attn.in_proj_weight.view(3, heads, d // heads, d).unbind(0)
        b_q, _, b_v = attn.in_proj_bias.view(3, d).unbind(0)
        qh = (q @ attn.in_proj_weight[:d].T + b_q).view(b, heads, d // heads) * (d // heads) ** -0.5
        scores = torch.bmm(torch.einsum("bhe,hed->bhd", qh, w_k), kv.transpose(1, 2))  # (B, heads, L)
        weights = torch.softmax(scores.masked_fill(pad[:, None, :], float("-inf")), dim=-1)
        weights = nn.functional.dropout(weights, attn.dropout, self.training)
        ctx = torch.einsum("bhd,hed->bhe", torch.bmm(weights, kv), w_v).reshape(b, d) + b_v
        return attn.out_proj(ctx)

    def explore_logits(self, h: torch.Tensor, vec: torch.Tensor, bias: torch.Tensor, stats: torch.Tensor,
                       stats_row: torch.Tensor) -> torch.Tensor:
        """(B, n) unnormalized explore scores of n items; stats[stats_row[b]] is (n, 2) for row b:
        the item's log recent popularity (the anchor) plus the learned correction."""
        w = self.stat_weight(h)
        if stats.shape[0] == 1:  # every row scored on the same day (serving): one matmul, no gather
            return torch.addmm((bias + stats[0, :, 1])[None, :], torch.cat([h, w], dim=1), torch.cat([vec, stats[0]], dim=1).T)
        trend = stats[stats_row, :, 1]
        return h @ vec.T + bias[None, :] + trend + w[:, :1] * stats[stats_row, :, 0] + w[:, 1:] * trend

    def pair_explore_logits(self, h: torch.Tensor, b: torch.Tensor, vec: torch.Tensor, bias: torch.Tensor,
                            stats: torch.Tensor) -> torch.Tensor:
        """Explore scores of (row b, item) pairs; vec, bias, stats are per pair (as explore_logits)."""
        return (h[b] * vec).sum(-1) + bias + stats[:, 1] + (self.stat_weight(h)[b] * stats).sum(-1)

    def repeat_logit(self, h: torch.Tensor, b: torch.Tensor, x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """Logit of P(the user takes this own item again in the horizon) for (row b, item) pairs."""
        z = torch.cat([x, stats], dim=1)
        return (self.rep_mlp(torch.cat([z, self.rep_user(h)[b]], dim=1)) + self.rep_linear(z)).squeeze(-1)


class SeqRec(nn.Module, Recommender):
    """The trainable recommender (see the module docstring); an nn.Module for mlflow.pytorch."""

    name = "seqrec"
    kind = "model"

    def __init__(self, config: SeqRecConfig | None = None):
        super().__init__()
        self.config = config or SeqRecConfig()
        self.history: list[dict[str, float]] = []  # one row per epoch: loss and validation metrics
        self.train_seconds = 0.0
        self.examples_per_second = 0.0
        self.n_examples = 0
        self.best_epoch = -1
        self.explore_offset = 0.0  # added to explore log-probabilities; calibrated on validation
        self.device = torch.device("cpu")
        self.net: _Net | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_stats_cache"] = {}  # derived, possibly large
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if self.net is not None:  # loaded with map_location: score where the weights are
            self.device = next(self.net.parameters()).device

    # -- vocabulary and data binding -----------------------------------------------------------
    def _build_vocab(self, train: Histories, catalogue: Catalogue) -> None:
        counts = np.bincount(train.item[train.item >= 0], minlength=len(catalogue))
        keep = catalogue.item_ids[counts >= self.config.min_item_count]
        self.item_vocab = {item: row for row, item in enumerate(keep, start=2)}
        self.cat_vocab = {c: row for row, c in enumerate(catalogue.categories, start=2)}
        prices = catalogue.price[np.isfinite(catalogue.price) & (catalogue.price > 0)]
        qs = np.linspace(0, 1, N_PRICE_BUCKETS + 1)[1:-1]
        self.price_edges = np.unique(np.quantile(np.log(prices), qs)) if len(prices) else np.zeros(0)

    def _price_bucket(self, price: np.ndarray) -> np.ndarray:
        price = np.asarray(price, dtype=np.float64)
        ok = np.isfinite(price) & (price > 0)
        out = np.zeros(price.shape, dtype=np.int64)
        out[ok] = 1 + np.searchsorted(self.price_edges, np.log(price[ok]))
        return out

    def _cat_rows(self, categories: np.ndarray) -> np.ndarray:
        vocab = self.cat_vocab
        return np.array([vocab.get(c, UNK) if c else PAD for c in categories], dtype=np.int64)

    def training_summary(self) -> dict[str, float]:
        """What the training run logs to MLflow beside the per-epoch metrics."""
        return {"train_seconds": self.train_seconds, "examples_per_second": self.examples_per_second,
                "n_examples": self.n_examples, "best_epoch": self.best_epoch, "explore_offset": self.explore_offset}

    def prepare(self, catalogue: Catalogue, train: Histories) -> "SeqRec":
        """Bind the catalogue to score and the log that item popularity and trend are read from.

        Items the model never saw get the unknown-ID row and are scored from category and price.
        Call again (no retraining) to score a newer catalogue or a later log, e.g. to evaluate a
        champion on a new window.
        """
        self.catalogue = catalogue
        self.item_row = np.array([self.item_vocab.get(i, UNK) for i in catalogue.item_ids], dtype=np.int64)
        self.item_cat = self._cat_rows(catalogue.category)
        self.item_price = self._price_bucket(catalogue.price)
        weights = event_weight_array(self.config.event_weights)[train.etype]
        ok = (train.item >= 0) & (weights > 0)
        day = train.t[ok] // SECONDS_PER_DAY
        self.day0 = int(day.min()) if len(day) else 0
        n_days = int(day.max()) - self.day0 + 1 if len(day) else 1
        self.daily = sp.csr_matrix((weights[ok], (day - self.day0, train.item[ok])), shape=(n_days, len(catalogue)))
        self.daily.sum_duplicates()
        self._stats_cache: dict[int, np.ndarray] = {}
        return self

    def _stats_at(self, day: int) -> np.ndarray:
        """(n_items, 2): log popularity and log trend of each item from the days before ``day``."""
        d = min(max(day - self.day0, 0), self.daily.shape[0])
        cached = self._stats_cache.get(d)
        if cached is not None:
            return cached
        n_items = len(self.catalogue)
        pop = np.asarray(self.daily[:d].sum(axis=0)).ravel() if d else np.zeros(n_items)
        n_trend = int(np.ceil(self.config.trend_days))
        lo = max(0, d - n_trend)
        trend = np.zeros(n_items)
        if d > lo:
            decay = np.exp2(-(d - 1 - np.arange(lo, d)) / (self.config.trend_days / 2))
            trend = np.asarray(self.daily[lo:d].T @ decay).ravel()
        out = np.stack([np.log1p(pop) - np.log1p(pop.sum() / n_items),
                        np.log1p(trend) - np.log1p(trend.sum() / n_items)], axis=1).astype(np.float32)
        if len(self._stats_cache) * n_items > 50_000_000:
            self._stats_cache.clear()
        self._stats_cache[d] = out
        return out

    def _stats(self, now: np.ndarray, cols: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per distinct day of ``now``: (U, n, 2) item statistics, and each row's index into U."""
        uniq, inv = np.unique(now // SECONDS_PER_DAY, return_inverse=True)
        table = np.stack([self._stats_at(int(d)) if cols is None else self._stats_at(int(d))[cols] for d in uniq])
        return torch.from_numpy(table).to(self.device), torch.from_numpy(inv.ravel()).to(self.device)

    # -- batches --------------------------------------------------------------------------------
    def _sequence_batch(self, hist: Histories, ends: np.ndarray, starts: np.ndarray, now: np.ndarray,
                        event_cat: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The last max_len events before each ``ends`` (flat indices, not before ``starts``),
        padded on the left to the longest in the batch, and the repeat candidates (each
        window's distinct catalogue items) with their features."""
        lo = np.maximum(starts, ends - self.config.max_len)
        width = max(int((ends - lo).max()) if len(ends) else 0, 1)
        idx = ends[:, None] - width + np.arange(width)[None, :]
        valid = idx >= lo[:, None]
        idx = np.where(valid, idx, 0)
        if len(hist.t) == 0:
            idx = np.zeros_like(idx)
            hist = _one_dummy_event(hist)
            event_cat = np.zeros(1, np.int64)
        item = np.where(valid, hist.item[idx], -1)
        etype = np.where(valid, hist.etype[idx], 0).astype(np.int64)
        t = hist.t[idx]
        known = item >= 0
        safe = np.maximum(item, 0)
        row = np.where(known, self.item_row[safe], UNK)
        cat = np.where(known, self.item_cat[safe], event_cat[idx])
        price = np.where(known, self.item_price[safe], self._price_bucket(hist.price[idx]))
        first = np.concatenate([np.ones((len(ends), 1), bool), ~valid[:, :-1]], axis=1)
        gap = np.where(first, 0, _gap_bucket(t - np.concatenate([t[:, :1], t[:, :-1]], axis=1)))
        recency = width - np.arange(width)[None, :]  # 1 = the most recent event
        seq = {"row": np.where(valid, row, PAD), "cat": np.where(valid, cat, PAD), "price": np.where(valid, price, 0),
               "etype": etype, "gap": np.where(valid, gap, 0), "age": np.where(valid, _gap_bucket(now[:, None] - t), 0),
               "pos": np.where(valid, recency, 0)}
        return seq, self._candidates(item, etype, t, valid, now)

    def _candidates(self, item: np.ndarray, etype: np.ndarray, t: np.ndarray, valid: np.ndarray,
                    now: np.ndarray) -> dict[str, np.ndarray]:
        """Distinct (row, item) pairs of the windows and what the user did with each item."""
        n_items = len(self.catalogue)
        b, width = item.shape
        bb, pp = np.nonzero(valid & (item >= 0))
        if len(bb) == 0:
            return {"b": np.zeros(0, np.int64), "item": np.zeros(0, np.int64), "x": np.zeros((0, N_REPEAT_FEATURES), np.float32)}
        it, et, tt = item[bb, pp], etype[bb, pp], t[bb, pp]
        key = bb * n_items + it
        pairs, inv = np.unique(key, return_inverse=True)
        inv = inv.ravel()
        cb, ci = pairs // n_items, pairs % n_items
        n_pairs = len(pairs)

        def count(mask: np.ndarray | None = None) -> np.ndarray:
            return np.bincount(inv, weights=None if mask is None else mask.astype(np.float64), minlength=n_pairs)

        days = tt // SECONDS_PER_DAY - tt.min() // SECONDS_PER_DAY
        n_days_item = np.bincount(np.unique(inv * (days.max() + 1) + days) // (days.max() + 1), minlength=n_pairs)
        user_days = np.bincount(np.unique(bb * (days.max() + 1) + days) // (days.max() + 1), minlength=b).astype(np.float64)
        last_t = np.full(n_pairs, np.iinfo(np.int64).min)
        np.maximum.at(last_t, inv, tt)
        first_t = np.full(n_pairs, np.iinfo(np.int64).max)
        np.minimum.at(first_t, inv, tt)
        last_pos = np.zeros(n_pairs, dtype=np.int64)
        np.maximum.at(last_pos, inv, pp)
        n_user = valid.sum(axis=1).astype(np.float64)
        user_last = np.where(valid, t, np.iinfo(np.int64).min).max(axis=1)
        n_all = count()
        day_s = float(SECONDS_PER_DAY)
        x = np.stack([
            np.log1p(n_all),
            np.log1p(count(et == EVENT_CODES["purchase"])),
            np.log1p(count(et == EVENT_CODES["add_to_cart"])),
            np.log1p(count(et == EVENT_CODES["view"])),
            np.log1p(count(et == EVENT_CODES["remove_from_cart"])),
            np.log1p(np.maximum(now[cb] - last_t, 0) / day_s),
            np.log1p(np.maximum(now[cb] - first_t, 0) / day_s),
            n_all / n_user[cb],
            np.log1p(n_days_item),
            n_days_item / np.maximum(user_days[cb], 1.0),
            np.log1p(n_user[cb]),
            np.log1p(np.maximum(now[cb] - user_last[cb], 0) / day_s),
            np.log1p(user_days[cb]),
            (width - 1 - last_pos) / self.config.max_len,
            (n_all == 1).astype(np.float64),
        ], axis=1).astype(np.float32)
        return {"b": cb, "item": ci, "x": x}

    def _tensors(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in arrays.items()}

    def _item_tensors(self, cols: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = torch.from_numpy(cols).to(self.device)
        return (torch.from_numpy(self.item_row).to(self.device)[c], torch.from_numpy(self.item_cat).to(self.device)[c],
                torch.from_numpy(self.item_price).to(self.device)[c])

    # -- scoring ------------------------------------------------------------------------------
    def _event_cats(self, hist: Histories) -> np.ndarray:
        """Category rows of the events' own categories, read only for items outside the
        catalogue (a catalogue item embeds its catalogue category): looked up for those alone."""
        unknown = hist.item < 0
        out = np.zeros(len(hist.item), dtype=np.int64)
        out[unknown] = self._cat_rows(hist.category[unknown])
        return out

    @torch.no_grad()
    def score(self, histories: Histories) -> np.ndarray:
        """(n_users, n_items): log P(item among what the user takes in the horizon), from each
        user's sequence at ``histories.now``: the repeat head for the user's own items, the
        expected number of new items times the explore distribution for all others (shifted by
        the explore offset calibrated on the validation window).

        Only the sequence is read, so a changed or brand-new user is scored without retraining.
        """
        explore, own_b, own_item, own_score = self._score_parts(histories)
        out = explore + np.float32(self.explore_offset)
        out[own_b, own_item] = own_score
        return out

    @torch.no_grad()
    def _score_parts(self, histories: Histories) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Explore log-probabilities (own items at -inf) and the own items' repeat log-probabilities."""
        self.net.eval()
        with _threads(self.config.num_threads):
            seq, cand = self._sequence_batch(histories, histories.offsets[1:], histories.offsets[:-1], histories.now,
                                             self._event_cats(histories))
            h = self.net.encode(self._tensors(seq))
            vec, bias = self.net.items(*self._item_tensors(np.arange(len(self.catalogue))))
            stats, stats_row = self._stats(histories.now)
            logits = self.net.explore_logits(h, vec, bias, stats, stats_row)
            c = self._tensors(cand)
            if len(cand["b"]):  # own items leave the explore distribution
                logits.index_put_((c["b"], c["item"]), torch.tensor(float("-inf"), device=self.device))
            log_q = logits - _logsumexp_rows(logits)
            expected = torch.exp(self.net.count_head(h))  # (B, 1)
            explore = torch.log((-torch.expm1(-expected * torch.exp(log_q))).clamp_min(1e-30))
            if len(cand["b"]):
                explore.index_put_((c["b"], c["item"]), torch.tensor(float("-inf"), device=self.device))
                own = torch.nn.functional.logsigmoid(
                    self.net.repeat_logit(h, c["b"], c["x"], stats[stats_row[c["b"]], c["item"]])).float().cpu().numpy()
            else:
                own = np.zeros(0, np.float32)
            return explore.float().cpu().numpy(), cand["b"], cand["item"], own

    @torch.no_grad()
    def recommend(self, histories: Histories, k: int, exclude: Ragged | None = None,
                  batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (item indices, scores) per user: the lists ``score`` + ``top_k`` give, without
        materialising the transformed score matrix.

        For a user the explore score log(1 - exp(-E * q_i)) is increasing in the logit of item i,
        so the top-k explore items are the top-k logits: only those k, and the user's own items,
        are transformed, and the rest of the work is one matmul, one logsumexp and one topk.
        """
        n = len(histories)
        items = np.full((n, k), -1, dtype=np.int64)
        vals = np.full((n, k), -np.inf, dtype=np.float32)
        n_items = len(self.catalogue)
        neg_inf = torch.tensor(float("-inf"), device=self.device)
        self.net.eval()
        with _threads(self.config.num_threads):
            vec, bias = self.net.items(*self._item_tensors(np.arange(n_items)))
            # batches of users with histories of about the same length: a batch is padded to its
            # longest, so mixed lengths (most users have far fewer events than max_len) waste work
            by_length = np.argsort(np.minimum(histories.lengths, self.config.max_len), kind="stable")
            for start in range(0, n, batch_size):
                rows = by_length[start:start + batch_size]
                hist = histories.subset(rows)
                seq, cand = self._sequence_batch(hist, hist.offsets[1:], hist.offsets[:-1], hist.now, self._event_cats(hist))
                h = self.net.encode(self._tensors(seq))
                stats, stats_row = self._stats(hist.now)
                logits = self.net.explore_logits(h, vec, bias, stats, stats_row)
                c = self._tensors(cand)
                if len(cand["b"]):
                    logits.index_put_((c["b"], c["item"]), neg_inf)
                lse = _logsumexp_rows(logits)  # over every non-own item, as in score()
                ex_keys = np.zeros(0, np.int64)
                if exclude is not None:
                    ex = exclude.subset(rows)
                    if len(ex.values):
                        logits.index_put_((torch.from_numpy(ex.rows).to(self.device), torch.from_numpy(ex.values).to(self.device)),
                                          neg_inf)
                        ex_keys = ex.rows.astype(np.int64) * n_items + ex.values
                top_v, top_i = top_k_rows(logits, min(k, n_items))
                expected = torch.exp(self.net.count_head(h))
                explore = torch.log((-torch.expm1(-expected * torch.exp(top_v - lse))).clamp_min(1e-30))
                explore = torch.where(torch.isfinite(top_v), explore + self.explore_offset, neg_inf)
                cand_v, cand_i = [explore], [top_i]
                if len(cand["b"]):
                    own = torch.nn.functional.logsigmoid(
                        self.net.repeat_logit(h, c["b"], c["x"], stats[stats_row[c["b"]], c["item"]])).float()
                    b, item = cand["b"].astype(np.int64), cand["item"].astype(np.int64)
                    own[torch.from_numpy(np.isin(b * n_items + item, ex_keys)).to(self.device)] = float("-inf")
                    order = np.argsort(b, kind="stable")
                    b, item = b[order], item[order]
                    slot = np.arange(len(b)) - np.searchsorted(b, b)  # rank of the own item within its row
                    width = int(slot.max()) + 1
                    own_v = torch.full((len(rows), width), float("-inf"), device=self.device)
                    own_i = torch.zeros((len(rows), width), dtype=torch.long, device=self.device)
                    bt, st = torch.from_numpy(b).to(self.device), torch.from_numpy(slot).to(self.device)
                    own_v[bt, st] = own[torch.from_numpy(order).to(self.device)]
                    own_i[bt, st] = torch.from_numpy(item).to(self.device)
                    cand_v.append(own_v)
                    cand_i.append(own_i)
                merged_v, merged_i = torch.cat(cand_v, dim=1), torch.cat(cand_i, dim=1)
                kk = min(k, merged_v.shape[1])
                v, j = torch.topk(merged_v, kk, dim=1)
                top = torch.gather(merged_i, 1, j)
                top[~torch.isfinite(v)] = -1
                items[rows, :kk] = top.cpu().numpy()
                vals[rows, :kk] = v.cpu().numpy()
        return items, vals

    def _calibrate_explore(self, validation, k: int = 10) -> tuple[float, float]:
        """The explore offset that maximizes validation ndcg@k, and that ndcg.

        Training windows can be more (promotions) or less predictable than the next one; the
        offset re-balances own items against new ones on the most recent held-out window.
        """
        from freshrec.models.baselines import top_k
        from freshrec.models.metrics import per_user_metrics

        n = len(validation)
        own_top = np.full((n, k), -1, np.int64)
        own_val = np.full((n, k), -np.inf, np.float32)
        exp_top, exp_val = own_top.copy(), own_val.copy()
        for start in range(0, n, 1024):
            rows = np.arange(start, min(start + 1024, n))
            batch = validation.histories.subset(rows)
            explore, ob, oi, os_ = self._score_parts(batch)
            ex = validation.exclude.subset(rows)
            own = np.full_like(explore, -np.inf)
            own[ob, oi] = os_
            exp_top[rows], exp_val[rows] = top_k(explore, k, ex.rows, ex.values)
            own_top[rows], own_val[rows] = top_k(own, k, ex.rows, ex.values)
        best_offset, best_ndcg = 0.0, -1.0
        for offset in sorted(np.arange(-4.0, 2.01, 0.25), key=abs):  # ties keep the offset nearest 0
            merged_val = np.concatenate([own_val, exp_val + offset], axis=1)
            merged = np.concatenate([own_top, exp_top], axis=1)
            order = np.argsort(-merged_val, axis=1, kind="stable")[:, :k]
            recs = np.take_along_axis(merged, order, axis=1)
            recs[~np.isfinite(np.take_along_axis(merged_val, order, axis=1))] = -1
            ndcg = float(per_user_metrics(recs, validation.targets, (k,))[f"ndcg_at_{k}"].mean())
            if ndcg > best_ndcg + 1e-12:
                best_offset, best_ndcg = float(offset), ndcg
        return best_offset, best_ndcg

    @torch.no_grad()
    def encode_users(self, histories: Histories) -> np.ndarray:
        """(n_users, dim) user vectors from their sequences alone (no user-ID parameters)."""
        self.net.eval()
        seq, _ = self._sequence_batch(histories, histories.offsets[1:], histories.offsets[:-1], histories.now,
                                      self._event_cats(histories))
        return self.net.encode(self._tensors(seq)).float().cpu().numpy()

    def params(self) -> dict[str, Any]:
        return self.config.to_params()

    # -- training -----------------------------------------------------------------------------
    def fit(self, train: Histories, catalogue: Catalogue, validation=None,
            on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> "SeqRec":
        """Train on ``train`` (every user's history before the cutoff, oldest first).

        ``validation`` (an EvalSet on a window before the cutoff) picks the best epoch and stops
        early; ``on_epoch(epoch, row)`` sees each epoch's loss and validation metrics.
        """
        cfg = self.config
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        with _deterministic(cfg.seed, cfg.num_threads, self.device):
            self._build_vocab(train, catalogue)
            self.prepare(catalogue, train)
            self.net = _Net(len(self.item_vocab) + 2, len(self.cat_vocab) + 2, cfg).to(self.device)
            examples = _training_examples(train, cfg)
            event_cat = self._event_cats(train)
            opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
            rng = np.random.default_rng(cfg.seed)
            proposal = _proposal(train, len(catalogue))
            lengths = np.minimum(examples.end - examples.start, cfg.max_len)
            best, best_state, stale, seen = -np.inf, None, 0, 0
            started = time.perf_counter()
            for epoch in range(cfg.epochs):
                batches = _length_batches(lengths, cfg.batch_size, rng)
                total = self._steps(train, examples, batches, opt, event_cat, proposal, rng)
                seen += sum(len(ex) for ex in batches)
                row = {"loss": total / max(len(batches), 1), "seconds": time.perf_counter() - started}
                if validation is not None and len(validation):
                    from freshrec.models.evaluate import evaluate

                    self.prepare(validation.catalogue, validation.train)
                    self.explore_offset, _ = self._calibrate_explore(validation)
                    val = evaluate(self, validation, ks=(10, 20)).metrics
                    self.prepare(catalogue, train)
                    row["explore_offset"] = self.explore_offset
                    row.update({f"val_{k}": v for k, v in val.items() if "/" not in k and k != "n_users" and not k.startswith("novelty")})
                self.history.append(row)
                if on_epoch is not None:
                    on_epoch(epoch, row)
                score = row.get("val_ndcg_at_10", -row["loss"])
                if score > best:
                    best, stale, self.best_epoch = score, 0, epoch
                    best_state = (copy.deepcopy(self.net.state_dict()), self.explore_offset)
                else:
                    stale += 1
                    if stale > cfg.patience:
                        break
            self.train_seconds = time.perf_counter() - started
            self.examples_per_second = seen / max(self.train_seconds, 1e-9)
            self.n_examples = len(examples.user)
            if best_state is not None:
                self.net.load_state_dict(best_state[0])
                self.explore_offset = best_state[1]
        self.net.eval()
        return self

    def _steps(self, train: Histories, examples: "_Examples", batches: list[np.ndarray], opt: torch.optim.Optimizer,
               event_cat: np.ndarray, proposal: np.ndarray, rng: np.random.Generator) -> float:
        """One optimizer step per batch of example indices (``_loss``, clipped gradients); the
        summed loss. The one training loop of ``fit`` and ``refresh``."""
        cfg = self.config
        self.net.train()
        total = 0.0
        for ex in batches:
            targets = [examples.targets[i] for i in ex]
            targets = [tg if len(tg) <= cfg.max_targets else np.sort(rng.choice(tg, cfg.max_targets, replace=False))
                       for tg in targets]
            loss = self._loss(train, examples, ex, targets, event_cat, proposal, rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), 5.0)
            opt.step()
            total += float(loss.detach())
        self.net.eval()
        return total

    # -- online refresh ------------------------------------------------------------------------
    def extend(self, catalogue: Catalogue, train: Histories, since: int) -> dict[str, int]:
        """Give an ID row to each item taken at least ``min_item_count`` times in the events of
        ``train`` at or after ``since`` that has none, and a row to each new category.

        Each new row starts as a copy of the unknown row it was scored through until now (items:
        the ID embedding and bias; categories: the category embedding and bias), so extending
        changes no score: not of an existing item, and not of the new item itself, which keeps
        its category-and-price representation until training moves its row."""
        new = (train.t >= since) & (train.item >= 0)
        counts = np.bincount(train.item[new], minlength=len(catalogue))
        items = [i for i in catalogue.item_ids[counts >= self.config.min_item_count] if i not in self.item_vocab]
        cats = [c for c in catalogue.categories if c not in self.cat_vocab]
        net = self.net
        with torch.no_grad():
            for emb, bias, vocab, added in ((net.item_emb, net.item_bias, self.item_vocab, items),
                                            (net.cat_emb, net.cat_bias, self.cat_vocab, cats)):
                if not added:
                    continue
                first = emb.num_embeddings
                for table in (emb, bias):
                    rows = table.weight[UNK].expand(len(added), -1)
                    table.weight = nn.Parameter(torch.cat([table.weight, rows.clone()]))
                    table.num_embeddings = table.weight.shape[0]
                vocab.update({key: first + k for k, key in enumerate(added)})
        return {"items_added": len(items), "categories_added": len(cats)}

    def refresh(self, train: Histories, catalogue: Catalogue, since: int, steps: int = 200, replay_share: float = 0.5,
                lr_scale: float = 1.0, seed: int | None = None) -> dict[str, Any]:
        """Warm-start update on the events of ``train`` at or after ``since``: :meth:`extend`,
        then ``steps`` optimizer steps of ``fit``'s loss on the examples whose target horizon
        reaches into the new events, mixed with a seeded replay sample of older examples making
        ``replay_share`` of the mix (it guards against forgetting what the older log taught).

        The examples and the loss are ``fit``'s own (``_training_examples``, ``_loss``). The
        optimizer is rebuilt (AdamW at ``lr x lr_scale``): Adam's moment estimates from the end
        of the last fit describe other batches, and keeping them would add twice the weights to
        every registered version. Deterministic for the seed on the CPU. Binds the model to
        ``catalogue`` and ``train`` (popularity and trend refreshed) before returning."""
        cfg = self.config
        seed = cfg.seed if seed is None else seed
        started = time.perf_counter()
        with _deterministic(seed, cfg.num_threads, self.device):
            added = self.extend(catalogue, train, since)
            self.net.to(self.device)
            self.prepare(catalogue, train)
            examples = _training_examples(train, cfg)
            fresh = np.flatnonzero(examples.now + int(cfg.horizon_days * SECONDS_PER_DAY) > since)
            older = np.flatnonzero(examples.now + int(cfg.horizon_days * SECONDS_PER_DAY) <= since)
            rng = np.random.default_rng(seed)
            n_replay = min(len(older), int(round(len(fresh) * replay_share / max(1.0 - replay_share, 1e-9))))
            chosen = np.sort(np.concatenate([fresh, rng.choice(older, n_replay, replace=False)])) if len(fresh) else fresh
            batches: list[np.ndarray] = []
            lengths = np.minimum(examples.end - examples.start, cfg.max_len)
            while len(chosen) and len(batches) < steps:
                batches += [chosen[b] for b in _length_batches(lengths[chosen], cfg.batch_size, rng)]
            batches = batches[:steps]
            opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr * lr_scale, weight_decay=cfg.weight_decay, fused=True)
            total = self._steps(train, examples, batches, opt, self._event_cats(train), _proposal(train, len(catalogue)), rng)
        return {**added, "fresh_examples": int(len(fresh)), "replay_examples": int(n_replay if len(fresh) else 0),
                "steps": len(batches), "loss": total / max(len(batches), 1), "seconds": time.perf_counter() - started}

    def _loss(self, train: Histories, examples: "_Examples", ex: np.ndarray, targets: list[np.ndarray],
              event_cat: np.ndarray, proposal: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """Negative log-likelihood of each example's targets, averaged over examples (weighted):

        - repeat head: binary cross-entropy of "taken again" over the user's own (not excluded) items;
        - explore count: Poisson likelihood of the number of new items taken;
        - explore distribution: softmax cross-entropy of each new target over the catalogue minus
          the user's own and excluded items; the partition sums the targets exactly and the rest
          exactly or by importance sampling (``n_negatives`` draws, log-q corrected).
        """
        n_items = len(self.catalogue)
        dev = self.device
        b = len(ex)
        now = examples.now[ex]
        weight = examples.weight[ex] if examples.weight is not None else np.ones(b)
        seq, cand = self._sequence_batch(train, examples.end[ex], examples.start[ex], now, event_cat)
        h = self.net.encode(self._tensors(seq))
        stats, stats_row = self._stats(now)
        masked = Ragged.from_pairs(np.repeat(np.arange(b), [len(examples.masked[i]) for i in ex]),
                                   np.concatenate([examples.masked[i] for i in ex]), b)
        all_targets = Ragged.from_pairs(np.repeat(np.arange(b), [len(examples.targets[i]) for i in ex]),
                                        np.concatenate([examples.targets[i] for i in ex]), b)
        loss = torch.zeros((), device=dev)
        # repeat head over own items that may be shown
        rep = ~_pairs_in(cand["b"], cand["item"], masked, n_items)
        if rep.any():
            cb, ci = cand["b"][rep], cand["item"][rep]
            label = _pairs_in(cb, ci, all_targets, n_items).astype(np.float32)
            cb_t, ci_t = torch.from_numpy(cb).to(dev), torch.from_numpy(ci).to(dev)
            logit = self.net.repeat_logit(h, cb_t, torch.from_numpy(cand["x"][rep]).to(dev), stats[stats_row[cb_t], ci_t])
            bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, torch.from_numpy(label).to(dev), reduction="none")
            loss = loss + (bce * torch.from_numpy(weight[cb]).to(dev, bce.dtype)).sum()
        # explore: new targets = targets that are not own items
        own = Ragged.from_pairs(cand["b"], cand["item"], b)
        t_rows = np.repeat(np.arange(b), [len(t) for t in targets])
        t_items = np.concatenate(targets)
        new = ~_pairs_in(t_rows, t_items, own, n_items)
        t_rows, t_items = t_rows[new], t_items[new]
        n_new = np.bincount(all_targets.rows[~_pairs_in(all_targets.rows, all_targets.values, own, n_items)], minlength=b)
        log_n = self.net.count_head(h).squeeze(-1)
        n_new_t = torch.from_numpy(n_new.astype(np.float32)).to(dev)
        poisson = torch.exp(log_n) - n_new_t * log_n
        loss = loss + (poisson * torch.from_numpy(weight).to(dev, poisson.dtype)).sum()
        if len(t_rows):
            tr_t, ti_t = torch.from_numpy(t_rows).to(dev), torch.from_numpy(t_items).to(dev)
            tv, tb = self.net.items(*self._item_tensors(t_items))
            exact = self.net.pair_explore_logits(h, tr_t, tv, tb, stats[stats_row[tr_t], ti_t])
            if n_items <= self.config.full_softmax_max_items:
                cols = np.arange(n_items)
                correction = np.zeros(n_items, np.float32)
            else:
                cols = np.sort(rng.choice(n_items, self.config.n_negatives, replace=True, p=proposal))
                correction = np.log(self.config.n_negatives * proposal[cols]).astype(np.float32)
            sv, sb = self.net.items(*self._item_tensors(cols))
            shared = self.net.explore_logits(h, sv, sb, stats[:, torch.from_numpy(cols).to(dev)], stats_row)
            shared = shared - torch.from_numpy(correction).to(dev)[None, :]
            # the shared part leaves out what the exact part holds, own items and excluded items
            out_rows, out_cols = _pairs_at(np.concatenate([t_rows, own.rows, masked.rows]),
                                           np.concatenate([t_items, own.values, masked.values]), cols)
            if len(out_rows):
                shared = shared.index_put((torch.from_numpy(out_rows).to(dev), torch.from_numpy(out_cols).to(dev)),
                                          torch.tensor(float("-inf"), device=dev))
            e_col = np.arange(len(t_rows)) - np.searchsorted(t_rows, t_rows, side="left")
            e_pad = torch.full((b, int(np.bincount(t_rows, minlength=b).max())), float("-inf"), device=dev)
            e_pad = e_pad.index_put((tr_t, torch.from_numpy(e_col).to(dev)), exact)
            log_z = torch.logsumexp(torch.cat([e_pad, shared], dim=1), dim=1)
            nll = log_z[tr_t] - exact
            loss = loss + (nll * torch.from_numpy(weight[t_rows]).to(dev, nll.dtype)).sum()
        return loss / b


@dataclass
class _Examples:
    user: np.ndarray  # row in the training histories
    start: np.ndarray  # the user's first event (flat index)
    end: np.ndarray  # the session start: input = events [start, end)
    now: np.ndarray  # epoch seconds of the session start
    targets: list[np.ndarray] = field(default_factory=list)  # catalogue items in [now, now + horizon)
    masked: list[np.ndarray] = field(default_factory=list)  # items excluded by exclude_seen at that point
    weight: np.ndarray | None = None  # per example, mean 1


def _training_examples(train: Histories, cfg: SeqRecConfig) -> _Examples:
    """Training examples (see SeqRecConfig.examples); each has at least one target."""
    rows = train.row_of_event
    t = train.t
    n = len(t)
    if n == 0:
        raise ValueError("no training events")
    horizon = int(cfg.horizon_days * SECONDS_PER_DAY)
    t0 = int(t.min())
    key = rows * (1 << 36) + (t - t0)
    if cfg.examples not in ("cutoffs", "sessions", "both"):
        raise ValueError(f"examples must be 'cutoffs', 'sessions' or 'both', got {cfg.examples!r}")
    cuts, nows = [], []
    if cfg.examples in ("sessions", "both"):
        new_session = np.ones(n, bool)
        new_session[1:] = (rows[1:] != rows[:-1]) | ((t[1:] - t[:-1]) > cfg.session_gap_minutes * 60)
        cuts.append(np.flatnonzero(new_session))
        nows.append(t[cuts[-1]])
    if cfg.examples in ("cutoffs", "both"):
        stride = int((cfg.cutoff_stride_days or cfg.horizon_days / 2) * SECONDS_PER_DAY)
        end = int(train.now.max()) if len(train) else int(t.max()) + 1
        cutoffs = np.arange(end - horizon, t0, -max(stride, 1))
        if len(cutoffs) == 0:
            cutoffs = np.array([t0 + (end - t0) // 2])
        # for each cutoff, every user with an event in [cutoff, cutoff + horizon)
        user_rows = np.arange(len(train))
        for c in cutoffs:
            first = np.searchsorted(key, user_rows * (1 << 36) + (c - t0), side="left")
            active = (first < train.offsets[1:]) & (t[np.minimum(first, n - 1)] < c + horizon)
            cuts.append(first[active])
            nows.append(np.full(int(active.sum()), c, dtype=np.int64))
    cut, now = unique_columns(np.concatenate(cuts), np.concatenate(nows))  # sorted by event, then time
    cut_rows = rows[cut]
    from_end = np.cumsum(np.bincount(cut_rows, minlength=len(train)))[cut_rows] - np.arange(len(cut)) - 1
    recent = from_end < cfg.max_examples_per_user
    cut, now, cut_rows = cut[recent], now[recent], cut_rows[recent]
    stop = np.searchsorted(key, cut_rows * (1 << 36) + (now - t0 + horizon), side="left")
    starts = train.offsets[cut_rows]
    is_target = np.isin(train.etype, [EVENT_CODES[e] for e in cfg.target_event_types]) & (train.item >= 0)
    purchase = EVENT_CODES["purchase"]
    keep, targets, masked = [], [], []
    for i, (s, e, h) in enumerate(zip(starts, cut, stop, strict=True)):
        tg = np.unique(train.item[e:h][is_target[e:h]])
        seen = np.zeros(0, np.int64)
        if cfg.exclude_seen != "none":
            ok = train.item[s:e] >= 0
            if cfg.exclude_seen == "purchased":
                ok &= train.etype[s:e] == purchase
            seen = np.unique(train.item[s:e][ok])
            tg = tg[~np.isin(tg, seen)]
        if len(tg):
            keep.append(i)
            targets.append(tg)
            masked.append(seen)
    keep = np.array(keep, dtype=np.int64)
    now = now[keep]
    weight = np.ones(len(keep))
    if cfg.recency_half_life_days and len(keep):
        weight = np.exp2(-(now.max() - now) / (cfg.recency_half_life_days * SECONDS_PER_DAY))
        weight /= weight.mean()
    return _Examples(user=cut_rows[keep], start=starts[keep], end=cut[keep], now=now, targets=targets, masked=masked,
                     weight=weight)


def _length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of examples of similar input length (less padding, same randomness)."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 16
    batches = []
    for c in range(0, len(order), chunk):
        idx = order[c:c + chunk]
        idx = idx[np.argsort(lengths[idx], kind="stable")]
        batches += [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _proposal(train: Histories, n_items: int) -> np.ndarray:
    """Sampling distribution of the negatives: half uniform, half popularity^0.75."""
    counts = np.bincount(train.item[train.item >= 0], minlength=n_items).astype(np.float64) ** 0.75
    q = 0.5 / n_items + 0.5 * counts / max(counts.sum(), 1e-12)
    return q / q.sum()


def _pairs_in(rows: np.ndarray, items: np.ndarray, ragged: Ragged, n_items: int) -> np.ndarray:
    if len(rows) == 0 or len(ragged.values) == 0:
        return np.zeros(len(rows), bool)
    return np.isin(rows * n_items + items, ragged.rows * n_items + ragged.values)


def _pairs_at(rows: np.ndarray, items: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) positions in a (B, len(cols)) matrix whose column holds one of the (row, item) pairs."""
    order = np.argsort(items, kind="stable")
    items_sorted, rows_sorted = items[order], rows[order]
    lo = np.searchsorted(items_sorted, cols, side="left")
    hi = np.searchsorted(items_sorted, cols, side="right")
    n = hi - lo
    col_idx = np.repeat(np.arange(len(cols)), n)
    src = np.repeat(lo - np.cumsum(n) + n, n) + np.arange(int(n.sum()))
    return rows_sorted[src], col_idx


def _one_dummy_event(hist: Histories) -> Histories:
    return Histories(hist.user_ids, hist.offsets, np.array([-1]), np.array([0], np.int8), np.array([0], np.int64),
                     np.array([""], dtype=object), np.array([np.nan]), hist.now)


#: how many columns share a block in top_k_rows
TOP_K_BLOCK = 4


def top_k_rows(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(x, k, dim=1)`` in two smaller top-ks: one over the maxima of blocks of
    TOP_K_BLOCK columns, one over the columns of the k best blocks (and the few columns past the
    last whole block). The k best values of a row lie in those blocks: a block holding one of
    them has a maximum at least the k-th best, and each such maximum is itself among the k best.
    Block j holds the columns j, j + w, j + 2w, ... (w = n // TOP_K_BLOCK), so its maxima are an
    elementwise maximum of contiguous slices, not a reduction over short strided rows.
    Torch's CPU top-k leaves its heap for a selection over every (value, index) pair on rows
    narrower than 64 x k columns; on 1024 x 3935 logits of the sequence model with k = 100 this
    takes 10.4 ms on one core, against 15.1 with adjacent columns as blocks and 19.8 with
    torch's. Equal values may come out in another order than torch's."""
    b, n = x.shape
    w = n // TOP_K_BLOCK
    if w < k:
        return torch.topk(x, k, dim=1)
    maxima = x[:, :w].clone()
    for i in range(1, TOP_K_BLOCK):
        torch.maximum(maxima, x[:, i * w:(i + 1) * w], out=maxima)
    best = torch.topk(maxima, k, dim=1, sorted=False).indices
    cols = (best.unsqueeze(2) + torch.arange(0, TOP_K_BLOCK * w, w, device=x.device)).flatten(1)
    if w * TOP_K_BLOCK < n:
        cols = torch.cat([cols, torch.arange(w * TOP_K_BLOCK, n, device=x.device).expand(b, -1)], dim=1)
    v, j = torch.topk(torch.gather(x, 1, cols), k, dim=1)
    return v, torch.gather(cols, 1, j)


def _logsumexp_rows(x: torch.Tensor) -> torch.Tensor:
    """``torch.logsumexp(x, dim=1, keepdim=True)`` for scoring (no gradient): one scratch copy
    exponentiated in place. On 1024 x 3935 logits it takes 5.8 ms on one core against torch's
    9.1, and the scoring of every user pays it once per batch. A row of -inf gives -inf."""
    m = x.amax(dim=1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return m + torch.sub(x, m).exp_().sum(dim=1, keepdim=True).log_()


def _gap_bucket(seconds: np.ndarray) -> np.ndarray:
    """1..N_GAP_BUCKETS on a log scale from under a minute to years."""
    minutes = np.maximum(np.asarray(seconds, dtype=np.float64), 0.0) / 60.0
    return (1 + np.minimum(np.floor(2.0 * np.log2(1.0 + minutes)), N_GAP_BUCKETS - 1)).astype(np.int64)


@contextlib.contextmanager
def _threads(num_threads: int | None):
    prev = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


@contextlib.contextmanager
def _deterministic(seed: int, num_threads: int | None, device: torch.device):
    """Seeded, deterministic training; restores the process-wide torch settings afterwards."""
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.manual_seed(seed)
    # CUDA lacks deterministic kernels for some scatter ops: warn there rather than fail
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    try:
        with _threads(num_threads):
            yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
