"""The one place a SparkSession is built. Imported lazily so DAG files parse fast."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from freshrec.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def get_spark(settings: Settings, app_name: str = "freshrec") -> "SparkSession":
    # The driver and the Python workers must be the same interpreter (the venv's).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.appName(app_name)
        .master(settings.spark_master)
        .config("spark.driver.memory", settings.spark_driver_memory)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(settings.spark_shuffle_partitions))
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.warehouse.dir", str((settings.home / "spark-warehouse").resolve()))
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={(settings.home / 'derby').resolve()}")
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
