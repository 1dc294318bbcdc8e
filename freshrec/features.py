"""Reads of the batch feature tables (features/*, docs/tables.md) and of the item catalogue.

``matrices`` writes the tables under ``features_lock`` (``freshrec.lake``); readers that must not
see a table half rewritten hold it shared. The Spark readers serve the batch steps, the pandas
reader the micro-batch's popular lists, without starting a Spark job; a few users' rows are read
by key from ``freshrec.userstate``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from freshrec.errors import UserError
from freshrec.lake import has_table
from freshrec.settings import Settings

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame


def require_features(settings: Settings, *names: str) -> None:
    """Raise UserError unless every features/<name> table is there."""
    for name in names:
        if not has_table(settings.features_dir / name):
            raise UserError(f"no features/{name}: run the matrices step first")


def read_features(settings: Settings, name: str) -> "DataFrame":
    """features/<name> as a Spark DataFrame."""
    from freshrec.spark import get_spark

    return get_spark(settings).read.parquet(str(settings.features_dir / name))


def feature_rows(settings: Settings, name: str, columns: list[str]) -> "pd.DataFrame":
    """``columns`` of features/<name> in pandas; no rows when the table is not there yet."""
    import pandas as pd
    import pyarrow.dataset as ds

    path = settings.features_dir / name
    if not has_table(path):
        return pd.DataFrame(columns=columns)
    return ds.dataset(str(path), format="parquet").to_table(columns=columns).to_pandas()


def read_catalogue(settings: Settings) -> "DataFrame | None":
    """The optional item catalogue from landing/items (Spark), or None."""
    from freshrec.intake import landing_files
    from freshrec.jobs.matrices import normalise_catalogue
    from freshrec.spark import get_spark

    files = landing_files(settings.landing_items_dir)
    if not files:
        return None
    spark = get_spark(settings)
    csvs = [str(p) for p in files if ".csv" in p.name.lower()]
    jsons = [str(p) for p in files if ".csv" not in p.name.lower()]
    frames = []
    if jsons:
        frames.append(normalise_catalogue(spark.read.json(jsons)))
    if csvs:
        frames.append(normalise_catalogue(spark.read.option("header", True).csv(csvs)))
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return out
