"""The Spark twin of models.metrics, for lists too large to collect (same definitions, same names).

``recs``: DataFrame (user_id, item_id, rank) with rank 1 = best; ``targets``: DataFrame
(user_id, item_id). Evaluated users are the users of ``targets``; a user without a list scores 0.
tests/integration/test_models_metrics_spark.py checks that both implementations agree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def spark_ranking_metrics(recs: "DataFrame", targets: "DataFrame", ks: tuple[int, ...] = (10, 20, 100),
                          n_items: int | None = None, user_col: str = "user_id", item_col: str = "item_id",
                          rank_col: str = "rank") -> dict[str, float]:
    """precision, recall, hit_rate, ndcg and map at each k (and coverage when n_items is given)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    kmax = max(ks)
    rel = targets.select(user_col, item_col).distinct()
    n_rel = rel.groupBy(user_col).agg(F.count(F.lit(1)).alias("n_rel"))
    top = recs.select(user_col, item_col, F.col(rank_col).cast("int").alias("rank")).where(F.col("rank") <= kmax)
    hits = top.join(rel, [user_col, item_col], "inner")
    # hits so far at each hit's rank: the numerator of precision@rank
    hits = hits.withColumn("cum_hits", F.row_number().over(Window.partitionBy(user_col).orderBy("rank")))
    aggs = []
    for k in ks:
        at_k = F.col("rank") <= k
        aggs += [
            F.sum(F.when(at_k, 1).otherwise(0)).alias(f"h{k}"),
            F.sum(F.when(at_k, 1.0 / F.log2(F.col("rank") + 1.0)).otherwise(0.0)).alias(f"dcg{k}"),
            F.sum(F.when(at_k, F.col("cum_hits") / F.col("rank")).otherwise(0.0)).alias(f"ap{k}"),
        ]
    per_user = n_rel.join(hits.groupBy(user_col).agg(*aggs), user_col, "left").na.fill(0)
    cols = []
    for k in ks:
        m = F.least(F.col("n_rel"), F.lit(k))
        idcg = F.expr(f"aggregate(sequence(1, least(n_rel, {k})), 0D, (acc, i) -> acc + 1D / log2(i + 1D))")
        cols += [
            F.avg(F.col(f"h{k}") / k).alias(f"precision_at_{k}"),
            F.avg(F.col(f"h{k}") / F.col("n_rel")).alias(f"recall_at_{k}"),
            F.avg(F.when(F.col(f"h{k}") > 0, 1.0).otherwise(0.0)).alias(f"hit_rate_at_{k}"),
            F.avg(F.col(f"dcg{k}") / idcg).alias(f"ndcg_at_{k}"),
            F.avg(F.col(f"ap{k}") / m).alias(f"map_at_{k}"),
        ]
    row = per_user.agg(*cols).collect()[0].asDict()
    out = {name: float(value) if value is not None else float("nan") for name, value in row.items()}
    if n_items:
        for k in ks:
            n = top.where(F.col("rank") <= k).select(item_col).distinct().count()
            out[f"coverage_at_{k}"] = n / n_items
    return out
