"""A realistic synthetic event log for scale tests, seeded and streaming.

What it simulates (vectorised with numpy, one chunk of about 100k events at a time, so memory
stays bounded up to 100M events; only per-user and per-item arrays are held):

* a catalogue of items in named categories ("electronics/phones"), with lognormal prices per
  category, Zipf-like popularity, items released over time (no event for an item before its
  release) and a rotating set of trending categories and items per period;
* users with an activity level (heavy users come back often), a few preferred categories and a
  couple of staple items they buy again and again;
* sessions over a diurnal and weekly traffic curve, in time order: an optional search (a query
  built from the category's name words) followed by views mostly in that category; views turn
  into carts (about 10 per 100 views), some carts are removed, and about 3 purchases per 100 views
  are made at the end of the session.

``generate_events`` yields dicts in canonical form. With ``dirty=True`` about 2% of rows are
malformed (cycling over :data:`DIRTY_KINDS`) and about 1% are exact re-sends of an earlier row;
both count within ``n_events``. A row that is not a JSON object at all (a truncated line, the
line ``[1,2]``) is yielded as ``{"__raw__": "<the line>"}``: write such rows verbatim
(:func:`event_line` does it).

Same seed and arguments (with an explicit ``start``) give the same rows, and
``generate_to_landing`` the same bytes.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import chain
from typing import Iterator, Mapping

import numpy as np

from freshrec.errors import UserError
from freshrec.fileio import json_line
from freshrec.landing import write_parts

RAW_KEY = "__raw__"
CHUNK_EVENTS = 100_000

VIEW, SEARCH, CART, REMOVE, PURCHASE = 0, 1, 2, 3, 4
TYPE_NAMES = ("view", "search", "add_to_cart", "remove_from_cart", "purchase")

# Funnel knobs (per view): carts ~10/100 views, purchases ~3/100 views.
P_SEARCH_SESSION = 0.30
MEAN_VIEWS = 6.5
P_CART = 0.095
P_REMOVE = 0.15
P_BUY = 0.30
P_REPEAT_BUY = 0.05
P_FOCUS = 0.75
P_FOCUS_AFTER_SEARCH = 0.95
P_DIRTY = 0.02
P_RESEND = 0.01

TAXONOMY: dict[str, tuple[str, ...]] = {
    "electronics": ("phones", "laptops", "tablets", "headphones", "cameras", "televisions", "smartwatches", "chargers",
                    "speakers", "monitors"),
    "home": ("furniture", "bedding", "lighting", "kitchenware", "cookware", "storage", "decor", "rugs"),
    "fashion": ("shoes", "dresses", "jackets", "jeans", "shirts", "bags", "watches", "jewelry", "sunglasses"),
    "beauty": ("skincare", "makeup", "fragrance", "haircare", "nails"),
    "sports": ("running", "cycling", "fitness", "camping", "swimming", "yoga", "football"),
    "toys": ("puzzles", "bricks", "dolls", "board-games", "outdoor-toys"),
    "grocery": ("coffee", "tea", "snacks", "pasta", "chocolate", "cereal", "spices", "wine"),
    "books": ("fiction", "cookbooks", "comics", "travel-guides", "childrens-books", "science"),
    "garden": ("plants", "garden-tools", "seeds", "patio-furniture", "grills"),
    "automotive": ("tires", "motor-oil", "car-accessories", "car-care"),
    "health": ("vitamins", "supplements", "first-aid"),
    "pets": ("dog-food", "cat-food", "aquarium", "pet-toys"),
    "office": ("paper", "pens", "printers", "desks", "office-chairs"),
    "baby": ("diapers", "strollers", "car-seats", "baby-clothing"),
    "gaming": ("consoles", "video-games", "controllers", "keyboards", "mice"),
}
_VARIANTS = ("kids", "pro", "eco", "vintage", "mini", "premium", "travel", "classic")
_QUERY_TEMPLATES = ("{w}", "{w}", "{w} {top}", "best {w}", "cheap {w}", "{w} sale", "new {w}")

DIRTY_KINDS = (
    "truncated_json", "missing_user_id", "empty_user_id", "unknown_event_type", "unparseable_ts",
    "impossible_date", "far_future_ts", "negative_price", "nan_price", "infinity_price", "zero_quantity",
    "fractional_quantity", "object_user_id", "search_without_query", "non_object_line", "missing_item_id",
    "null_ts",
)


# --------------------------------------------------------------------------------------------
# the world: categories, items, users
# --------------------------------------------------------------------------------------------

@dataclass
class _World:
    seed: int
    n_users: int
    n_items: int
    start_s: int
    span_s: int
    period_s: int
    n_periods: int
    cat_names: list[str]
    queries: list[str]              # n_cats * len(_QUERY_TEMPLATES)
    item_cat: np.ndarray            # int32 [n_items]
    item_base: np.ndarray           # float64 popularity
    item_release: np.ndarray        # int32 period of release
    item_frag: list[str]            # '"item_id":"i7","category":"...","price":9.99'
    by_cat: np.ndarray              # item ids sorted by category
    cat_lo: np.ndarray              # start offset of each category in by_cat
    cat_hi: np.ndarray
    user_cum: np.ndarray            # cumulative activity weights
    user_pref: np.ndarray           # int32 [n_users, 3]
    user_staple: np.ndarray         # int32 [n_users, 2]
    minute_cdf: np.ndarray          # traffic CDF over the span, per minute
    _tables: dict

    def period_tables(self, p: int):
        """Cumulative item weights (in category order) for period ``p``, with trends and releases applied."""
        hit = self._tables.get(p)
        if hit is not None:
            return hit
        rng = np.random.default_rng([self.seed, 17, p])
        w = self.item_base * (self.item_release <= p)
        n_cats = len(self.cat_names)
        trending_cats = rng.choice(n_cats, size=min(3, n_cats), replace=False)
        cat_mult = np.ones(n_cats)
        cat_mult[trending_cats] = 3.0
        w = w * cat_mult[self.item_cat]
        n_trend = max(5, self.n_items // 200)
        trending_items = rng.choice(self.n_items, size=min(n_trend, self.n_items), replace=False)
        w[trending_items] *= 10.0
        fresh = (self.item_release > 0) & ((self.item_release == p) | (self.item_release == p - 1))
        w[fresh] *= 4.0
        cum = np.cumsum(w[self.by_cat])
        lo_val = np.where(self.cat_lo > 0, cum[np.maximum(self.cat_lo - 1, 0)], 0.0)
        lo_val[self.cat_lo == 0] = 0.0
        tot = cum[self.cat_hi - 1] - lo_val
        cat_cum = np.cumsum(tot)
        # last position with weight in each category (rounding must never land on an unreleased item)
        last = np.searchsorted(cum, cum[self.cat_hi - 1], side="left")
        if len(self._tables) > 4:
            self._tables.clear()
        self._tables[p] = (cum, lo_val, tot, cat_cum, last)
        return self._tables[p]

    def sample_in_cats(self, p: int, cats: np.ndarray, u: np.ndarray) -> np.ndarray:
        cum, lo_val, tot, _, last = self.period_tables(p)
        pos = np.searchsorted(cum, lo_val[cats] + u * tot[cats], side="right")
        pos = np.maximum(np.minimum(pos, last[cats]), self.cat_lo[cats])
        return self.by_cat[pos]

    def sample_cats(self, p: int, u: np.ndarray) -> np.ndarray:
        cat_cum = self.period_tables(p)[3]
        return np.minimum(np.searchsorted(cat_cum, u * cat_cum[-1], side="right"), len(cat_cum) - 1)


def _category_names(n: int) -> list[str]:
    base = [f"{top}/{sub}" for top, subs in TAXONOMY.items() for sub in subs]
    names = list(base)
    k = 0
    while len(names) < n:
        variant = _VARIANTS[(k // len(base)) % len(_VARIANTS)]
        suffix = "" if k < len(base) * len(_VARIANTS) else f"-{k // (len(base) * len(_VARIANTS))}"
        names.append(f"{base[k % len(base)]}-{variant}{suffix}")
        k += 1
    return names[:n]


def _queries_for(name: str) -> list[str]:
    top, sub = name.split("/", 1)
    words = sub.replace("-", " ").lower()
    return [t.format(w=words, top=top) for t in _QUERY_TEMPLATES]


def _build_world(seed: int, n_events: int, n_users: int | None, n_items: int | None, days: int, start_s: int) -> _World:
    rng = np.random.default_rng([seed, 1])
    n_users = int(n_users or max(50, n_events // 20))
    n_items = int(n_items or max(100, n_events // 50))
    n_cats = int(min(200, max(20, n_items // 40), n_items))
    span_s = int(days) * 86400
    period_s = 86400 if days <= 90 else int(math.ceil(span_s / 90))
    n_periods = max(1, int(math.ceil(span_s / period_s)))

    cat_names = _category_names(n_cats)
    rng_names = np.random.default_rng([seed, 2])
    order = rng_names.permutation(len(cat_names))  # which names this world uses first
    cat_names = [cat_names[i] for i in np.sort(order)]
    queries = [q for name in cat_names for q in _queries_for(name)]

    # categories: Zipf-ish sizes; every category gets one item released at the start
    cat_size = 1.0 / np.arange(1, n_cats + 1) ** 0.8
    cat_size = cat_size[rng.permutation(n_cats)]
    item_cat = np.empty(n_items, dtype=np.int32)
    item_cat[:n_cats] = np.arange(n_cats)
    item_cat[n_cats:] = rng.choice(n_cats, size=n_items - n_cats, p=cat_size / cat_size.sum())
    # popularity: Zipf over a random ranking
    item_base = 1.0 / (rng.permutation(n_items) + 1.0) ** 1.05
    # releases: ~70% at the start, the rest spread over the later periods
    item_release = np.zeros(n_items, dtype=np.int32)
    if n_periods > 1:
        late = rng.random(n_items) < 0.3
        late[:n_cats] = False
        item_release[late] = rng.integers(1, n_periods, size=int(late.sum()))
    # prices: lognormal per category
    cat_median = np.clip(np.exp(rng.normal(3.3, 0.9, size=n_cats)), 1.0, 2000.0)
    price = np.maximum(0.5, np.round(cat_median[item_cat] * np.exp(rng.normal(0.0, 0.35, size=n_items)), 2))
    price_txt = [repr(float(x)) for x in price.tolist()]
    item_frag = [f'"item_id":"i{i}","category":"{cat_names[c]}","price":{pt}'
                 for i, (c, pt) in enumerate(zip(item_cat.tolist(), price_txt, strict=True))]

    by_cat = np.argsort(item_cat, kind="stable").astype(np.int64)
    counts = np.bincount(item_cat, minlength=n_cats)
    cat_hi = np.cumsum(counts)
    cat_lo = cat_hi - counts

    # users: lognormal activity (returning heavy users), 3 preferred categories, 2 staple items
    activity = np.exp(rng.normal(0.0, 1.2, size=n_users))
    user_cum = np.cumsum(activity)
    cat_w = np.bincount(item_cat, weights=item_base, minlength=n_cats)
    cat_cdf = np.cumsum(cat_w) / cat_w.sum()
    user_pref = np.minimum(np.searchsorted(cat_cdf, rng.random((n_users, 3)), side="right"), n_cats - 1).astype(np.int32)

    world = _World(seed=seed, n_users=n_users, n_items=n_items, start_s=start_s, span_s=span_s, period_s=period_s,
                   n_periods=n_periods, cat_names=cat_names, queries=queries, item_cat=item_cat, item_base=item_base,
                   item_release=item_release, item_frag=item_frag, by_cat=by_cat, cat_lo=cat_lo, cat_hi=cat_hi,
                   user_cum=user_cum, user_pref=user_pref, user_staple=np.zeros((n_users, 2), dtype=np.int32),
                   minute_cdf=_traffic_cdf(start_s, span_s), _tables={})
    staple_cats = user_pref[:, :2].reshape(-1)
    world.user_staple = world.sample_in_cats(0, staple_cats, rng.random(staple_cats.size)).reshape(n_users, 2).astype(np.int32)
    return world


def _traffic_cdf(start_s: int, span_s: int) -> np.ndarray:
    """CDF of traffic per minute: a diurnal curve (evening peak), busier weekends, slow growth."""
    minutes = np.arange(max(1, span_s // 60), dtype=np.float64)
    t = start_s + minutes * 60.0
    hour = (t % 86400) / 3600.0
    weekday = ((t // 86400) + 3) % 7  # 1970-01-01 was a Thursday: 0 = Monday
    rate = 1.0 + 0.65 * np.sin((hour - 14.0) / 24.0 * 2 * np.pi)
    rate *= np.where(weekday >= 5, 1.15, 1.0)
    rate *= 1.0 + 0.3 * minutes / max(1.0, minutes[-1])
    cdf = np.concatenate([[0.0], np.cumsum(rate)])
    return cdf / cdf[-1]


# --------------------------------------------------------------------------------------------
# one chunk of sessions
# --------------------------------------------------------------------------------------------

@dataclass
class _Chunk:
    etype: list[int]
    ts: list[str]
    session: list[int]        # index into session_frag
    item: list[int]
    query: list[int]
    qty: list[int]
    session_frag: list[str]   # 'Z","user_id":"u1","session_id":"s42-7","event_type":"' per session


def _simulate_chunk(world: _World, rng: np.random.Generator, emitted: int, n_total: int, target: int,
                    first_session: int) -> tuple[_Chunk, int]:
    """Simulate whole sessions worth about ``target`` events; returns the chunk and sessions used."""
    n_sessions = max(1, int(target / (MEAN_VIEWS * 1.18 + P_SEARCH_SESSION + 3 * P_REPEAT_BUY)) + 8)
    # -- structure -------------------------------------------------------------------------
    n_views = np.minimum(rng.geometric(1.0 / MEAN_VIEWS, size=n_sessions), 80)
    has_search = rng.random(n_sessions) < P_SEARCH_SESSION
    repeat = rng.random(n_sessions) < P_REPEAT_BUY
    v_sess = np.repeat(np.arange(n_sessions), n_views)
    v_first = np.cumsum(n_views) - n_views
    v_k = np.arange(v_sess.size) - v_first[v_sess] + 1
    is_cart = rng.random(v_sess.size) < P_CART
    c_view = np.flatnonzero(is_cart)
    is_removed = rng.random(c_view.size) < P_REMOVE
    is_bought = (~is_removed) & (rng.random(c_view.size) < P_BUY)
    r_view = c_view[is_removed]
    b_view = c_view[is_bought]
    c_qty = np.where(rng.random(c_view.size) < 0.85, 1, np.where(rng.random(c_view.size) < 0.66, 2, 3))
    rb_sess = np.flatnonzero(repeat)

    per_session = (n_views + has_search + np.bincount(v_sess[c_view], minlength=n_sessions)
                   + np.bincount(v_sess[r_view], minlength=n_sessions) + np.bincount(v_sess[b_view], minlength=n_sessions)
                   + 3 * repeat)
    ends = np.cumsum(per_session)
    keep = int(np.searchsorted(ends, target, side="left")) + 1  # sessions up to the one that reaches target
    keep = min(keep, n_sessions)

    # The helpers below draw from ``rng`` in this order; changing it changes every generated log.
    start, period = _session_starts(world, rng, emitted, n_total, ends - per_session, per_session, keep)
    users = np.minimum(np.searchsorted(world.user_cum, rng.random(keep) * world.user_cum[-1], side="right"),
                       world.n_users - 1)
    focus = _focus_categories(world, rng, users, period, has_search[:keep])
    vmask = v_sess < keep
    vs = v_sess[vmask]
    n_v = vs.size
    v_item = _view_items(world, rng, vs, period, focus, has_search)

    # -- events: (session, position) then sort -----------------------------------------------------
    vk = v_k[vmask]
    nv_s = n_views[:keep]
    cv = c_view[c_view < n_v]
    cq = c_qty[: cv.size]
    rv = r_view[r_view < n_v]
    bv_mask = is_bought[: cv.size]
    bv = cv[bv_mask]
    bq = cq[bv_mask]
    srch = np.flatnonzero(has_search[:keep])
    rb = rb_sess[rb_sess < keep]
    staple = world.user_staple[users[rb], rng.integers(0, 2, size=rb.size)]
    rb_qty = np.where(rng.random(rb.size) < 0.8, 1, 2)
    remove_pos = vk[rv] + 0.35 + rng.random(rv.size) * (nv_s[vs[rv]] - vk[rv] + 0.1)

    parts_sess = [vs, vs[cv], vs[rv], vs[bv], srch, rb, rb, rb]
    parts_pos = [vk.astype(np.float64), vk[cv] + 0.3, remove_pos, nv_s[vs[bv]] + 0.6 + vk[bv] * 1e-3,
                 np.zeros(srch.size), np.full(rb.size, 0.5), np.full(rb.size, 0.6), nv_s[rb] + 0.59]
    parts_type = [np.full(n_v, VIEW), np.full(cv.size, CART), np.full(rv.size, REMOVE), np.full(bv.size, PURCHASE),
                  np.full(srch.size, SEARCH), np.full(rb.size, VIEW), np.full(rb.size, CART), np.full(rb.size, PURCHASE)]
    parts_item = [v_item, v_item[cv], v_item[rv], v_item[bv], np.full(srch.size, -1), staple, staple, staple]
    parts_qty = [np.zeros(n_v, dtype=np.int64), cq, np.zeros(rv.size, dtype=np.int64), bq, np.zeros(srch.size, dtype=np.int64),
                 np.zeros(rb.size, dtype=np.int64), rb_qty, rb_qty]
    e_sess = np.concatenate(parts_sess)
    e_pos = np.concatenate(parts_pos)
    order = np.lexsort((e_pos, e_sess))
    e_sess = e_sess[order]
    e_type = np.concatenate(parts_type)[order]
    e_item = np.concatenate(parts_item)[order]
    e_qty = np.concatenate(parts_qty)[order]
    n_q = len(_QUERY_TEMPLATES)
    q_choice = np.minimum(rng.zipf(1.6, size=keep) - 1, n_q - 1)
    e_query = np.where(e_type == SEARCH, focus[e_sess] * n_q + q_choice[e_sess], -1)

    ts_txt = _event_times(rng, e_type, e_sess, start)
    seed = world.seed
    session_frag = [f'Z","user_id":"u{u}","session_id":"s{seed}-{first_session + k}","event_type":"'
                    for k, u in enumerate(users.tolist())]
    chunk = _Chunk(etype=e_type.tolist(), ts=ts_txt, session=e_sess.tolist(), item=e_item.tolist(), query=e_query.tolist(),
                   qty=e_qty.tolist(), session_frag=session_frag)
    return chunk, keep


def _session_starts(world: _World, rng: np.random.Generator, emitted: int, n_total: int, starts_before: np.ndarray,
                    per_session: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Start (epoch seconds) and period of the first ``keep`` sessions: over the traffic curve, and
    chronological across chunks (a session's place in the whole log picks its time)."""
    q = (emitted + starts_before[:keep] + rng.random(keep) * per_session[:keep] * 0.5) / max(1, n_total)
    q = np.clip(q, 0.0, 1.0)
    minute = np.interp(q, world.minute_cdf, np.arange(world.minute_cdf.size, dtype=np.float64))
    start = world.start_s + (minute * 60.0).astype(np.int64)
    period = np.minimum((start - world.start_s) // world.period_s, world.n_periods - 1)
    return start, period


def _focus_categories(world: _World, rng: np.random.Generator, users: np.ndarray, period: np.ndarray,
                      searched: np.ndarray) -> np.ndarray:
    """Each session's category: mostly one its user prefers, else one drawn by the period's popularity."""
    n = users.size
    focus = np.empty(n, dtype=np.int64)
    slot = np.searchsorted([0.5, 0.8], rng.random(n), side="right")
    pref = world.user_pref[users, slot]
    use_pref = rng.random(n) < np.where(searched, 0.6, P_FOCUS)
    u_cat = rng.random(n)
    for p in np.unique(period):
        m = period == p
        focus[m] = np.where(use_pref[m], pref[m], world.sample_cats(int(p), u_cat[m]))
    return focus


def _view_items(world: _World, rng: np.random.Generator, vs: np.ndarray, period: np.ndarray, focus: np.ndarray,
                has_search: np.ndarray) -> np.ndarray:
    """The item of each view (``vs``: the view's session), mostly in its session's category."""
    n_v = vs.size
    in_focus = rng.random(n_v) < np.where(has_search[vs], P_FOCUS_AFTER_SEARCH, P_FOCUS)
    u_item = rng.random(n_v)
    u_glob_cat = rng.random(n_v)
    v_item = np.empty(n_v, dtype=np.int64)
    v_period = period[vs]
    for p in np.unique(v_period):
        m = v_period == p
        cats = np.where(in_focus[m], focus[vs[m]], world.sample_cats(int(p), u_glob_cat[m]))
        v_item[m] = world.sample_in_cats(int(p), cats, u_item[m])
    return v_item


def _event_times(rng: np.random.Generator, e_type: np.ndarray, e_sess: np.ndarray, start: np.ndarray) -> list[str]:
    """Each event's time (ISO, to the second): its session's start plus cumulative think times."""
    gaps = np.where(e_type == PURCHASE, 20.0, 0.0) + rng.exponential(35.0, size=e_sess.size) + 2.0
    first_of_session = np.r_[True, e_sess[1:] != e_sess[:-1]]
    gaps[first_of_session] = 0.0
    cum = np.cumsum(gaps)
    base = np.maximum.accumulate(np.where(first_of_session, cum, 0.0))
    ts = start[e_sess] + (cum - base).astype(np.int64)
    return np.datetime_as_string(ts.astype("datetime64[s]"), unit="s").tolist()


def _lines(world: _World, chunk: _Chunk, seed: int, first_index: int, limit: int) -> list[str]:
    """JSON lines for the first ``limit`` events of a chunk (string templates: json.dumps per row is 5x slower)."""
    out: list[str] = []
    append = out.append
    frag = world.item_frag
    queries = world.queries
    names = TYPE_NAMES
    sfrag = chunk.session_frag
    prefix = f'{{"event_id":"syn-{seed}-'
    idx = first_index
    for t, ts, s, it, q, qt in zip(chunk.etype[:limit], chunk.ts, chunk.session, chunk.item, chunk.query, chunk.qty,
                                   strict=False):
        if t == 0:
            append(f'{prefix}{idx}","ts":"{ts}{sfrag[s]}view",{frag[it]}}}')
        elif t == 1:
            append(f'{prefix}{idx}","ts":"{ts}{sfrag[s]}search","query":"{queries[q]}"}}')
        elif qt:
            append(f'{prefix}{idx}","ts":"{ts}{sfrag[s]}{names[t]}",{frag[it]},"quantity":{qt}}}')
        else:
            append(f'{prefix}{idx}","ts":"{ts}{sfrag[s]}{names[t]}",{frag[it]}}}')
        idx += 1
    return out


# --------------------------------------------------------------------------------------------
# dirty rows and re-sends
# --------------------------------------------------------------------------------------------

def _dirty(line: str, kind: str) -> str:
    if kind == "truncated_json":
        return line[: max(1, len(line) // 2)]
    if kind == "non_object_line":
        return "[1,2]"
    d = json.loads(line)
    if kind == "missing_user_id":
        d.pop("user_id", None)
    elif kind == "empty_user_id":
        d["user_id"] = ""
    elif kind == "unknown_event_type":
        d["event_type"] = "wishlist_add"
    elif kind == "unparseable_ts":
        d["ts"] = "yesterday afternoon"
    elif kind == "impossible_date":
        d["ts"] = "2023-02-30T10:00:00Z"
    elif kind == "far_future_ts":
        d["ts"] = "2099-01-01T00:00:00Z"
    elif kind == "negative_price":
        d["price"] = -abs(float(d.get("price") or 9.99))
    elif kind == "nan_price":
        d["price"] = "NaN"
    elif kind == "infinity_price":
        d["price"] = "Infinity"
    elif kind == "zero_quantity":
        d["quantity"] = 0
    elif kind == "fractional_quantity":
        d["quantity"] = 1.5
    elif kind == "object_user_id":
        d["user_id"] = {"id": d.get("user_id")}
    elif kind == "search_without_query":
        for key in ("item_id", "query", "category", "price", "quantity"):
            d.pop(key, None)
        d["event_type"] = "search"
    elif kind == "missing_item_id":
        d.pop("query", None)
        d.pop("item_id", None)
        if d.get("event_type") == "search":
            d["event_type"] = "view"
    elif kind == "null_ts":
        d["ts"] = None
    else:  # pragma: no cover
        raise AssertionError(kind)
    return json.dumps(d, separators=(",", ":"))


def _corrupt(lines: list[str], rng: np.random.Generator, dirty_counter: int, prev_tail: list[str]) -> tuple[int, list[str]]:
    """Replace ~2% of lines by malformed ones and ~1% by exact re-sends of an earlier well-formed line, in place.

    Returns the running count of malformed rows (it picks the next kind) and the last well-formed
    lines, for re-sends at the start of the next chunk.
    """
    n = len(lines)
    u = rng.random(n)
    dirty = u < P_DIRTY
    resend = (u >= P_DIRTY) & (u < P_DIRTY + P_RESEND)
    pick = rng.random(n)
    ok = np.flatnonzero(~dirty)
    for i in np.flatnonzero(resend).tolist():
        k = int(np.searchsorted(ok, i))  # well-formed rows before i in this chunk
        pool = min(k + len(prev_tail), 5000)
        if pool == 0:
            continue  # nothing earlier to re-send: the row stays as it is
        j = int(pick[i] * pool)  # 0 = the nearest earlier row
        lines[i] = lines[int(ok[k - 1 - j])] if j < k else prev_tail[-1 - (j - k)]
    for i in np.flatnonzero(dirty).tolist():
        lines[i] = _dirty(lines[i], DIRTY_KINDS[dirty_counter % len(DIRTY_KINDS)])
        dirty_counter += 1
    tail = [lines[i] for i in ok[-5000:].tolist()]
    if len(tail) < 5000:
        tail = (prev_tail + tail)[-5000:]
    return dirty_counter, tail


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------

def parse_start(start: str | datetime | None, days: int) -> int:
    """Epoch seconds of the first event: ``start`` (ISO date/time, UTC unless it says otherwise) or ``days`` before now."""
    if start is None:
        now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
        return int((now - timedelta(days=int(days))).timestamp())
    if isinstance(start, datetime):
        dt = start
    else:
        text = str(start).strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise UserError(f"--start: expected an ISO date such as 2024-01-01 or 2024-01-01T00:00:00Z, got {start!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp())


def _generate_lines(n_events: int, seed: int, n_users: int | None, n_items: int | None, days: int,
                    start: str | datetime | None, dirty: bool) -> Iterator[list[str]]:
    """Yield the log as lists of JSON lines (no newline), about CHUNK_EVENTS at a time."""
    n_events = int(n_events)
    if n_events < 1:
        raise UserError(f"the number of events must be a positive integer, got {n_events}")
    if int(days) < 1:
        raise UserError(f"--days must be >= 1, got {days}")
    if n_users is not None and int(n_users) < 1:
        raise UserError(f"--users must be >= 1, got {n_users}")
    if n_items is not None and int(n_items) < 1:
        raise UserError(f"--items must be >= 1, got {n_items}")
    start_s = parse_start(start, days)
    world = _build_world(int(seed), n_events, n_users, n_items, int(days), start_s)
    emitted = 0
    sessions = 0
    chunk_no = 0
    dirty_counter = 0
    tail: list[str] = []
    while emitted < n_events:
        rng = np.random.default_rng([int(seed), 3, chunk_no])
        target = min(CHUNK_EVENTS, n_events - emitted)
        chunk, used = _simulate_chunk(world, rng, emitted, n_events, target, sessions)
        limit = min(len(chunk.ts), n_events - emitted)
        lines = _lines(world, chunk, int(seed), emitted, limit)
        if dirty:
            dirty_counter, tail = _corrupt(lines, np.random.default_rng([int(seed), 5, chunk_no]), dirty_counter, tail)
        emitted += len(lines)
        sessions += used
        chunk_no += 1
        yield lines


def generate_events(n_events: int, seed: int, n_users: int | None = None, n_items: int | None = None, days: int = 30,
                    start: str | datetime | None = None, dirty: bool = False) -> Iterator[dict]:
    """Yield ``n_events`` synthetic canonical events (dicts), in session order; deterministic for a seed and ``start``.

    A row that is not a JSON object (dirty mode only) is ``{"__raw__": "<line>"}``.
    """
    loads = json.loads
    for lines in _generate_lines(n_events, seed, n_users, n_items, days, start, dirty):
        for line in lines:
            try:
                obj = loads(line)
            except ValueError:
                obj = None
            yield obj if type(obj) is dict else {RAW_KEY: line}


def generate_window(n_events: int, seed: int, start: datetime, span_s: float, n_users: int | None = None,
                    n_items: int | None = None) -> list[dict]:
    """``n_events`` synthetic events in ``[start, start + span_s)``: one simulated day squeezed
    into the window, for micro-batches of fresh traffic. Event ids carry ``seed``, so windows
    with different seeds never collide with each other or with a history of another seed."""
    start = start.astimezone(timezone.utc).replace(microsecond=0)
    squeeze = span_s / 86_400
    rows = []
    for row in generate_events(n_events, seed, n_users=n_users, n_items=n_items, days=1, start=start):
        ts = datetime.fromisoformat(row["ts"].replace("Z", "+00:00"))
        row["ts"] = (start + (ts - start) * squeeze).isoformat().replace("+00:00", "Z")
        rows.append(row)
    return rows


def event_line(row: Mapping) -> str:
    """The landing line for a generated row: ``__raw__`` rows verbatim, the rest as compact JSON."""
    if RAW_KEY in row:
        return str(row[RAW_KEY])
    return json_line(row)


@dataclass(frozen=True)
class GenerateOptions:
    """What ``freshrec generate`` writes (docs/commands.md); the defaults are the command's."""

    events: int
    seed: int = 42
    users: int | None = None  # default: events / 20
    items: int | None = None  # default: events / 50
    days: int = 30
    start: str | datetime | None = None  # default: ``days`` before now
    dirty: bool = False
    rows_per_file: int = 1_000_000
    prefix: str = "synthetic"


def generate_to_landing(settings, options: GenerateOptions) -> int:
    """Write ``options.events`` rows into landing files ``{prefix}-{seed}-{part:05d}.jsonl``; returns rows written."""
    directory = settings.landing_events_dir
    directory.mkdir(parents=True, exist_ok=True)
    prefix = options.prefix
    if not prefix or "/" in prefix or os.sep in prefix or prefix.startswith((".", "_")):
        raise UserError(f"--prefix must be a plain file name prefix (no '/', not starting with '.' or '_'), got {prefix!r}")
    stem = f"{prefix}-{options.seed}-"
    existing = sorted(p.name for p in directory.glob(f"{stem}*.jsonl"))
    if existing:
        raise UserError(f"landing files {stem}*.jsonl already exist (e.g. {existing[0]}); the landing zone is append-only: "
                        f"use another --seed or --prefix")
    if options.rows_per_file < 1:
        raise UserError(f"--rows-per-file must be >= 1, got {options.rows_per_file}")
    # Lines go out as generated: a dirty null-ts row keeps its "ts":null, unlike event_line.
    lines = chain.from_iterable(_generate_lines(options.events, options.seed, options.users, options.items, options.days,
                                                options.start, options.dirty))
    return sum(n for _, n in write_parts(directory, stem, lines, options.rows_per_file))

