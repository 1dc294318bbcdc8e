"""Clean and validate raw landing rows: parse, type, normalise, quarantine, deduplicate.

``clean_raw`` is the one implementation of cleaning. The batch path calls it on every landing
file; the incremental path calls it on each micro-batch. It works on a DataFrame of raw JSON
text lines ``(source_file, raw)``; CSV landing files are turned into such lines first
(``csv_as_json_lines``), so one set of rules covers both formats.

Everything here is a DataFrame -> DataFrame function: no I/O except the landing-zone readers
at the bottom (``read_landing`` reads the files ``freshrec.intake`` took). The pipeline's
``clean_step`` (freshrec.steps) writes the results.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from freshrec.jobs.rules import (
    BARE_CONSTANT,
    CONTROL_CHARS,
    DEFAULT_MAX_ID_LENGTH,
    ID_TYPES_OK,
    INVALID_TS,
    MALFORMED_JSON,
    NOT_AN_OBJECT,
    TYPE_LIST,
)

from freshrec.intake import is_csv
from freshrec.schemas import CLEAN_EVENT_COLUMNS, EVENT_FIELDS, EVENT_TYPES, ID_FIELDS, ITEM_EVENT_TYPES

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession



@dataclass(frozen=True)
class CleanResult:
    clean: "DataFrame"        # columns CLEAN_EVENT_COLUMNS, unique on event_id
    quarantine: "DataFrame"   # source_file, raw, reason
    per_file: "DataFrame"     # source_file, read, clean, quarantined, duplicates
    _cached: tuple = ()

    def release(self) -> None:
        """Drop the cached intermediate results once the outputs are written."""
        for df in self._cached:
            df.unpersist()


def _fields(names: Iterable[str]) -> "Column":
    """Every named field of the variant ``v`` as text, in one lookup pass: a struct of strings.

    Each field is what ``variant_get(v, '$.name', 'string')`` gives (objects and arrays as JSON
    text, a JSON null or a missing key as null), matched case-sensitively; a non-object gives a
    null struct. One struct cast costs about a quarter less than a ``variant_get`` per field."""
    from pyspark.sql import functions as F

    struct = ", ".join(f"{name}: string" for name in names)
    return F.expr(f"try_variant_get(v, '$', 'struct<{struct}>')")


def _id_type(name: str) -> "Column":
    """``schema_of_variant`` of the id field ``name``, looked up only where its text could be
    another type's: a string starting with a digit, '-', '{' or '[', 'true' or 'false'. Any
    other text is a STRING; no text (the key absent, or a JSON null, which passes the type
    rule as absent) is null."""
    from pyspark.sql import functions as F

    text = F.col(f"f.{name}")
    other = F.substring(text, 1, 1).isin(*"-0123456789{[") | text.isin("true", "false")
    return (F.when(other, F.expr(f"schema_of_variant(variant_get(v, '$.{name}'))"))
            .when(text.isNotNull(), F.lit("STRING")))


def _checks(event_type: "Column", price: "Column", now: datetime, min_event_ts: str,
            max_future_skew_hours: float, max_id_length: int) -> list[tuple["Column", "Column"]]:
    """Each rule of docs/events.md as (broken, reason), in the order a row's reasons are listed;
    jobs/rules.py holds the same rules for one row at a time."""
    from pyspark.sql import functions as F

    now_lit = F.lit(now.replace(tzinfo=None) if now.tzinfo is None else now).cast("timestamp")
    max_ts = now_lit + F.expr(f"make_dt_interval(0, 0, 0, {int(max_future_skew_hours * 3600)})")
    min_ts = F.lit(min_event_ts).cast("timestamp")

    def bad_id(name: str) -> Column:
        return F.col(f"t_{name}").isNotNull() & ~F.col(f"t_{name}").isin(*ID_TYPES_OK)

    checks: list[tuple[Column, Column]] = [
        (F.col("v").isNull(), F.lit(MALFORMED_JSON)),
        (~F.col("_is_object"), F.lit(NOT_AN_OBJECT)),
    ]
    for name in ID_FIELDS:
        checks.append((bad_id(name), F.concat(F.lit(f"invalid_id_type: {name} must be a string or an integer, got "),
                                               F.col(f"t_{name}"))))
    for name in ID_FIELDS:
        checks.append((F.col(f"s_{name}").rlike(CONTROL_CHARS),
                       F.lit(f"invalid_id_chars: {name} holds a control character")))
    for name in ID_FIELDS:
        checks.append((F.length(f"s_{name}") > max_id_length,
                       F.concat(F.lit(f"id_too_long: {name} is longer than {max_id_length} characters, got "),
                                F.length(f"s_{name}").cast("string"))))
    checks += [
        (F.col("s_user_id").isNull(), F.lit("missing_user_id: user_id is required")),
        (F.col("s_event_type").isNull(), F.lit("missing_event_type: event_type is required")),
        (F.col("s_event_type").isNotNull() & ~event_type.isin(*EVENT_TYPES),
         F.concat(F.lit("unknown_event_type: '"), F.col("s_event_type"), F.lit(f"' is not one of {TYPE_LIST}"))),
        (F.col("s_ts").isNull(), F.lit("missing_ts: ts is required")),
        (F.col("s_ts").isNotNull() & F.col("ts").isNull(), F.concat(F.lit("invalid_ts: '"), F.col("s_ts"), F.lit(INVALID_TS))),
        (F.col("ts").isNotNull() & (F.col("ts") < min_ts),
         F.concat(F.lit(f"ts_out_of_range: {min_event_ts} is the earliest accepted time, got "), F.col("ts").cast("string"))),
        (F.col("ts").isNotNull() & (F.col("ts") > max_ts),
         F.concat(F.lit(f"future_ts: more than {max_future_skew_hours:g}h after processing time, got "), F.col("ts").cast("string"))),
        (event_type.isin(*ITEM_EVENT_TYPES) & F.col("s_item_id").isNull(),
         F.concat(F.lit("missing_item_id: item_id is required for "), event_type, F.lit(" events"))),
        ((event_type == "search") & F.col("s_query").isNull(), F.lit("missing_query: search events need a query")),
        (F.col("s_price").isNotNull() & (price.isNull() | F.isnan(price) | (F.abs(price) == float("inf")) | (price < 0)),
         F.concat(F.lit("invalid_price: price must be a finite number >= 0, got "), F.col("s_price"))),
        (F.col("s_quantity").isNotNull()
         & (F.col("qty_dec").isNull() | (F.col("qty_dec") != F.floor("qty_dec")) | (F.col("qty_dec") < 1)
            | (F.col("qty_dec") > 2_147_483_647)),
         F.concat(F.lit("invalid_quantity: quantity must be an integer >= 1, got "), F.col("s_quantity"))),
    ]
    return checks


def pseudonym_column(user_id: "Column", key: bytes) -> "Column":
    """``jobs.rules.pseudonym`` in Spark SQL: HMAC-SHA256 spelled out with sha2 over the padded
    key's inner and outer blocks (RFC 2104), since Spark has no hmac function."""
    import hashlib

    from pyspark.sql import functions as F

    block = hashlib.sha256(key).digest() if len(key) > 64 else key
    block = block.ljust(64, b"\0")
    inner_pad = bytearray(b ^ 0x36 for b in block)
    outer_pad = bytearray(b ^ 0x5C for b in block)
    inner = F.unhex(F.sha2(F.concat(F.lit(inner_pad), F.encode(user_id, "UTF-8")), 256))
    return F.concat(F.lit("p-"), F.substring(F.sha2(F.concat(F.lit(outer_pad), inner), 256), 1, 32))


def parse_raw(raw: "DataFrame", now: datetime, min_event_ts: str, max_future_skew_hours: float,
              max_id_length: int = DEFAULT_MAX_ID_LENGTH, pseudonym_key: bytes | None = None) -> "DataFrame":
    """Parse ``(source_file, raw)`` JSON lines into typed columns plus a ``reason`` (null when valid)."""
    from pyspark.sql import functions as F

    # Python's json writes bare NaN/Infinity; quote them so the row parses and the price rule
    # (not a JSON syntax error) explains what is wrong.
    # (The regex runs only on lines that mention them: applied to every line it triples the parse cost.)
    raw_col = F.col("raw")
    quoted = F.when(raw_col.contains("NaN") | raw_col.contains("Infinity"),
                    F.regexp_replace(raw_col, BARE_CONSTANT, '$1"$2"$3')).otherwise(raw_col)
    df = raw.withColumn("v", F.try_parse_json(quoted))
    df = df.withColumn("_is_object", F.ltrim(F.col("raw")).startswith("{") & F.col("v").isNotNull())

    # Numbers and timestamps are trimmed by their casts; trimming them here too costs time.
    df = df.withColumn("f", _fields(EVENT_FIELDS))
    blank = {name: F.nullif(F.col(f"f.{name}") if name in ("price", "quantity") else F.trim(F.col(f"f.{name}")), F.lit(""))
             for name in EVENT_FIELDS}
    df = df.select(
        "source_file", "raw", "v", "_is_object",
        *[blank[n].alias(f"s_{n}") for n in EVENT_FIELDS],
        *[_id_type(n).alias(f"t_{n}") for n in ID_FIELDS],
    )

    ts_num = F.col("s_ts").rlike(r"^-?\d+(\.\d+)?$")
    ts = (
        F.when(ts_num, F.expr("timestamp_millis(try_cast(try_cast(s_ts as decimal(38,3)) as bigint))"))
        .otherwise(F.expr("try_cast(s_ts as timestamp)"))
    )
    event_type = F.lower(F.col("s_event_type"))
    price = F.expr("try_cast(s_price as double)")
    qty_dec = F.expr("try_cast(s_quantity as decimal(38,6))")
    df = df.withColumns({"ts": ts, "event_type": event_type, "price": price, "qty_dec": qty_dec})

    checks = _checks(event_type, price, now, min_event_ts, max_future_skew_hours, max_id_length)
    # Report every broken rule, first the structural ones; a malformed line reports only that.
    reasons = F.concat_ws("; ", *[F.when(cond, msg) for cond, msg in checks])
    reason = F.when(F.col("v").isNull(), checks[0][1]).when(~F.col("_is_object"), checks[1][1]).otherwise(
        F.when(reasons != "", reasons))

    # A missing event id is derived from the normalised content, so a re-send of the same
    # event gets the same id and is counted as a duplicate.
    derived_id = F.concat(F.lit("d-"), F.substring(F.sha2(F.concat_ws(
        "\u0001", F.expr("cast(unix_micros(ts) as string)"),
        "s_user_id", "s_session_id", event_type, "s_item_id", F.lower("s_query")), 256), 1, 32))
    # Valid rows keep only a hash of their text (to break ties between rows sharing an event
    # id); carrying every raw line through the cache and the shuffle doubles the job's cost.
    return df.withColumn("reason", reason).select(
        "source_file",
        F.when(F.col("reason").isNotNull(), F.col("raw")).alias("raw"),
        F.xxhash64("raw").alias("raw_hash"),
        "reason",
        F.coalesce("s_event_id", derived_id).alias("event_id"),
        "ts",
        (pseudonym_column(F.col("s_user_id"), pseudonym_key) if pseudonym_key else F.col("s_user_id")).alias("user_id"),
        F.col("s_session_id").alias("session_id"),
        "event_type",
        F.when(event_type != "search", F.col("s_item_id")).alias("item_id"),
        F.when(event_type == "search", F.lower("s_query")).alias("query"),
        F.col("s_category").alias("category"),
        F.col("price"),
        F.expr("try_cast(qty_dec as int)").alias("quantity"),  # a quarantined 2147483648 must not fail the job
        F.col("s_recommendation_id").alias("recommendation_id"),
    )


def _persist_uncompressed(df: "DataFrame") -> "DataFrame":
    """``df`` cached without the columnar cache's compression: clean's cache is read three times
    and dropped at once, and compressing it costs more than it saves (10% of the step on 2M
    events). The setting is read when the cache is declared, so it is switched for that call only."""
    from pyspark import StorageLevel

    conf, key = df.sparkSession.conf, "spark.sql.inMemoryColumnarStorage.compressed"
    before = conf.get(key)
    conf.set(key, "false")
    try:
        return df.persist(StorageLevel.MEMORY_AND_DISK)
    finally:
        conf.set(key, before)


def clean_raw(raw: "DataFrame", now: datetime, min_event_ts: str = "1990-01-01T00:00:00Z",
              max_future_skew_hours: float = 24.0, known_event_ids: "DataFrame | None" = None,
              max_id_length: int = DEFAULT_MAX_ID_LENGTH, pseudonym_key: bytes | None = None) -> CleanResult:
    """Clean raw JSON lines. ``known_event_ids`` (one column ``event_id``) are events already in
    the lake: rows repeating them count as duplicates (the incremental path passes them).

    Among rows sharing an event id the kept one is the first by (source_file, raw), so the
    choice does not depend on Spark's partitioning and reruns keep the same row.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    parsed = parse_raw(raw, now, min_event_ts, max_future_skew_hours, max_id_length, pseudonym_key)
    # One shuffle and one cache for every output. Valid rows are ranked among the rows sharing
    # their event id, before any quarantined one; a quarantined row (its event id may be null)
    # is a group of its own text, so a corrupt file does not pile into one window. Valid rows
    # are shuffled and ordered by their event id alone, so the lake's row order is the one
    # ranking the valid rows only gave.
    valid = F.col("reason").isNull()
    group = F.when(valid, F.col("event_id")).otherwise(F.col("raw_hash").cast("string"))
    order = Window.partitionBy(group).orderBy(valid.desc(), "source_file", "raw_hash")
    ranked = parsed.withColumn("_rank", F.row_number().over(order))
    if known_event_ids is not None:
        known = known_event_ids.select("event_id").distinct().withColumn("_known", F.lit(True))
        ranked = ranked.join(known, "event_id", "left")
        duplicate = (F.col("_rank") > 1) | F.col("_known").isNotNull()
    else:
        duplicate = F.col("_rank") > 1
    status = F.when(~valid, "quarantined").when(duplicate, "duplicates").otherwise("clean")
    ranked = _persist_uncompressed(ranked.withColumn("_status", status))

    clean = ranked.where(F.col("_status") == "clean").select(
        *[c for c in CLEAN_EVENT_COLUMNS if c != "event_date"], F.to_date("ts").alias("event_date"))
    quarantine = ranked.where(~valid).select("source_file", "raw", "reason")
    per_file = ranked.groupBy("source_file").agg(
        F.count("*").alias("read"),
        *[F.sum(F.when(F.col("_status") == name, 1).otherwise(0)).alias(name) for name in ("clean", "quarantined", "duplicates")],
    )
    return CleanResult(clean=clean, quarantine=quarantine, per_file=per_file, _cached=(ranked,))


# -- reading the landing zone ------------------------------------------------------------


def csv_as_json_lines(spark: "SparkSession", path: Path) -> "DataFrame":
    """One CSV landing file as ``(source_file, raw)`` JSON lines with the canonical columns.

    Every value of a CSV is a string; columns the file lacks are simply absent from the JSON.
    """
    from pyspark.sql import functions as F

    df = spark.read.option("header", True).option("mode", "PERMISSIVE").csv(str(path))
    present = [c for c in EVENT_FIELDS if c in df.columns]
    return df.select(F.lit(path.name).alias("source_file"), F.to_json(F.struct(*[F.col(c) for c in present])).alias("raw"))


def json_lines(spark: "SparkSession", paths: Iterable[Path]) -> "DataFrame":
    from pyspark.sql import functions as F

    paths = [str(p) for p in paths]
    return (
        spark.read.text(paths)
        .select(F.col("_metadata.file_name").alias("source_file"), F.col("value").alias("raw"))
        .where(F.trim("raw") != "")  # blank lines are not rows
    )


def read_landing(spark: "SparkSession", files: list[Path]) -> "DataFrame":
    """All given landing files as one ``(source_file, raw)`` DataFrame."""
    from functools import reduce

    jsons = [p for p in files if not is_csv(p)]
    parts = [json_lines(spark, jsons)] if jsons else []
    parts += [csv_as_json_lines(spark, p) for p in files if is_csv(p)]
    if not parts:
        return spark.createDataFrame([], "source_file string, raw string")
    return reduce(lambda a, b: a.unionByName(b), parts)
