"""Build the matrices the models read: stable id maps, weighted interactions, recent
sequences and item statistics (docs/tables.md). Pure DataFrame -> DataFrame functions; the
pipeline's ``matrices_step`` (freshrec.steps) reads the lake and writes features/.

Every function takes the clean events (lake/events columns). Time decay is measured from the
newest item event in the data (``reference_time``), not the wall clock, so a rerun on the same
events gives the same numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame


def reference_time(events: "DataFrame") -> "Column":
    """The newest item event's time, as a literal column (one small aggregate).

    Item events only: the micro-batch's popular refresh (``jobs.score.fold_popularity``) moves
    this reference with the item events it folds in (searches never reach features/recent),
    so a search newer than every item event must not move it here either."""
    from pyspark.sql import functions as F

    ref = item_events(events).agg(F.max("ts")).first()[0]
    return F.lit(ref).cast("timestamp")


def decayed_weight(events: "DataFrame", weights: Mapping[str, float], half_life_days: float) -> "tuple[Column, Column]":
    """(event-type weight x 2^(-age/half-life), age in days), age measured from ``reference_time``."""
    from pyspark.sql import functions as F

    ref = reference_time(events)
    weight_of = F.create_map(*[x for k, v in weights.items() for x in (F.lit(k), F.lit(float(v)))])
    age_days = (F.unix_micros(ref) - F.unix_micros("ts")) / 86_400e6
    decay = F.pow(F.lit(2.0), -age_days / F.lit(half_life_days))
    return F.coalesce(weight_of[F.col("event_type")], F.lit(0.0)) * decay, age_days


def item_events(events: "DataFrame") -> "DataFrame":
    from pyspark.sql import functions as F

    return events.where(F.col("item_id").isNotNull())


def new_id_rows(events: "DataFrame", existing: "DataFrame | None", key: str) -> "DataFrame":
    """Ids not yet in ``existing`` with the next free indices, ordered by first appearance.

    Id maps are append-only: an id keeps its index forever, and a rerun adds nothing.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    idx = f"{key.removesuffix('_id')}_idx"
    first = events.where(F.col(key).isNotNull()).groupBy(key).agg(F.min("ts").alias("first_seen"))
    offset = 0
    if existing is not None:
        first = first.join(existing.select(key), key, "left_anti")
        offset = existing.agg(F.max(idx)).first()[0]
        offset = -1 if offset is None else offset
        offset += 1
    order = Window.orderBy("first_seen", key)  # one partition, but only over the new ids
    return first.select(key, (F.row_number().over(order) - 1 + offset).cast("long").alias(idx), "first_seen")


def interactions(events: "DataFrame", weights: Mapping[str, float], half_life_days: float,
                 user_index: "DataFrame", item_index: "DataFrame") -> "DataFrame":
    """One row per (user, item): decayed weighted strength plus per-type counts."""
    from pyspark.sql import functions as F

    weight, _ = decayed_weight(events, weights, half_life_days)
    n_of = lambda t: F.sum(F.when(F.col("event_type") == t, 1).otherwise(0)).cast("long")  # noqa: E731
    return (
        item_events(events)
        .withColumn("w", weight)
        .groupBy("user_id", "item_id")
        .agg(F.sum("w").alias("weight"), n_of("view").alias("n_view"), n_of("add_to_cart").alias("n_cart"),
             n_of("purchase").alias("n_purchase"), F.count("*").alias("n_events"), F.max("ts").alias("last_ts"))
        .join(user_index.select("user_id", "user_idx"), "user_id")
        .join(item_index.select("item_id", "item_idx"), "item_id")
        .select("user_id", "item_id", "user_idx", "item_idx", "weight", "n_view", "n_cart", "n_purchase", "n_events", "last_ts")
    )


def recent_sequences(events: "DataFrame", length: int, item_index: "DataFrame", user_index: "DataFrame") -> "DataFrame":
    """The last ``length`` item events of each user, oldest first: the Spark twin of
    ``jobs.history.last_events``, in its order (``EVENT_ORDER``: time, then event id). The
    event ids come along so the micro-batch can merge its own events in the same order."""
    from freshrec.jobs.history import EVENT_ORDER
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    newest_first = Window.partitionBy("user_id").orderBy(*[F.col(c).desc() for c in EVENT_ORDER])
    recent = (
        item_events(events)
        .withColumn("_rn", F.row_number().over(newest_first))
        .where(F.col("_rn") <= length)
        .join(item_index.select("item_id", "item_idx"), "item_id")
    )
    # structs compare field by field: EVENT_ORDER first sorts them as last_events does
    seq = F.array_sort(F.collect_list(F.struct(*EVENT_ORDER, "item_idx")))
    return (
        recent.groupBy("user_id")
        .agg(seq.alias("s"))
        .join(user_index.select("user_id", "user_idx"), "user_id")
        .select(
            "user_id", "user_idx", F.col("s.event_id").alias("event_ids"),
            F.col("s.item_id").alias("item_ids"), F.col("s.item_idx").alias("item_idx"),
            F.col("s.event_type").alias("event_types"), F.col("s.ts").alias("ts"),
            F.element_at(F.col("s.ts"), -1).alias("last_ts"),
        )
    )


def item_stats(events: "DataFrame", weights: Mapping[str, float], half_life_days: float, trending_days: float,
               item_index: "DataFrame", catalogue: "DataFrame | None" = None) -> "DataFrame":
    """Popularity overall and within category, trending score, first/last seen, availability.

    trending_score compares the last ``trending_days`` with the window before it:
    (recent - previous) / sqrt(previous + 1), a rough z-score that favours items rising now.
    Catalogue rows (landing/items) override category and price and set availability.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    weight, age_days = decayed_weight(events, weights, half_life_days)
    recent = F.sum(F.when(age_days < trending_days, 1).otherwise(0))
    previous = F.sum(F.when((age_days >= trending_days) & (age_days < 2 * trending_days), 1).otherwise(0))
    stats = (
        item_events(events)
        .withColumn("w", F.greatest(weight, F.lit(0.0)))  # a removal never makes an item less popular than unseen
        .groupBy("item_id")
        .agg(
            F.max_by("category", F.when(F.col("category").isNotNull(), F.col("ts"))).alias("category"),
            F.max_by("price", F.when(F.col("price").isNotNull(), F.col("ts"))).alias("price"),
            F.count("*").alias("n_events"),
            F.countDistinct("user_id").alias("n_users"),
            F.sum(F.when(F.col("event_type") == "purchase", 1).otherwise(0)).cast("long").alias("n_purchases"),
            F.sum("w").alias("popularity"),
            ((recent - previous) / F.sqrt(previous + 1)).cast("double").alias("trending_score"),
            F.min("ts").alias("first_seen"),
            F.max("ts").alias("last_seen"),
        )
    )
    if catalogue is not None:
        cat = catalogue.select("item_id", F.col("category").alias("c_category"), F.col("price").alias("c_price"),
                               F.col("available").alias("c_available"))
        stats = (
            stats.join(cat, "item_id", "left")
            .withColumn("category", F.coalesce("c_category", "category"))
            .withColumn("price", F.coalesce("c_price", "price"))
            .withColumn("available", F.coalesce("c_available", F.lit(True)))
            .drop("c_category", "c_price", "c_available")
        )
    else:
        stats = stats.withColumn("available", F.lit(True))
    by_pop = Window.orderBy(F.col("popularity").desc(), F.col("n_events").desc(), "item_id")
    by_cat = Window.partitionBy("category").orderBy(F.col("popularity").desc(), F.col("n_events").desc(), "item_id")
    return (
        stats.withColumn("pop_rank", F.row_number().over(by_pop))
        .withColumn("category_rank", F.row_number().over(by_cat))
        .join(item_index.select("item_id", "item_idx"), "item_id")
        .select("item_id", "item_idx", "category", "price", "available", "n_events", "n_users", "n_purchases",
                "popularity", "pop_rank", "category_rank", "trending_score", "first_seen", "last_seen")
    )


def normalise_catalogue(raw: "DataFrame") -> "DataFrame":
    """Catalogue rows as (item_id, category, price, available); the last file wins per item."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cols = set(raw.columns)
    get = lambda c: F.col(c).cast("string") if c in cols else F.lit(None).cast("string")  # noqa: E731
    available = F.lower(F.trim(get("available")))
    latest = Window.partitionBy("item_id").orderBy(F.col("source_file").desc())
    return (
        raw.select(
            F.trim(get("item_id")).alias("item_id"),
            F.trim(get("category")).alias("category"),
            F.expr("try_cast(price as double)").alias("price") if "price" in cols else F.lit(None).cast("double").alias("price"),
            F.when(available.isin("false", "0", "no", "n", "f"), False)
            .when(available.isin("true", "1", "yes", "y", "t"), True).alias("available"),
            F.col("_metadata.file_name").alias("source_file"),
        )
        .where(F.col("item_id").isNotNull() & (F.col("item_id") != ""))
        .withColumn("_rn", F.row_number().over(latest))
        .where("_rn = 1")
        .drop("_rn", "source_file")
    )
