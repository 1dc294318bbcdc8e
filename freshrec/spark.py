"""The one place a SparkSession is built. Imported lazily so DAG files parse fast."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from freshrec.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def apps_log(settings: Settings) -> Path:
    """Every Spark application freshrec started under this home: one JSON line each (app id,
    master, name, pid, start), so a run can be matched with the cluster's own records."""
    return settings.home / "logs" / "spark-apps.jsonl"


JIT_HUGE_METHODS = "-XX:-DontCompileHugeMethods"


def get_spark(settings: Settings, app_name: str = "freshrec") -> "SparkSession":
    # The driver and the Python workers must be the same interpreter (the venv's).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    new = SparkContext._active_spark_context is None  # one context per process, whatever the thread
    if new:
        # Inside an Airflow task the application is named after it (the cluster's UI lists names).
        task = ".".join(filter(None, (os.environ.get("AIRFLOW_CTX_DAG_ID"), os.environ.get("AIRFLOW_CTX_TASK_ID"))))
        app_name = f"{app_name} {task}" if task else app_name

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
        # The clean job's generated code has methods over HotSpot's 8,000-byte limit, which the
        # JVM otherwise never compiles: parsing runs 2x slower interpreted (bench/clean.py).
        .config("spark.driver.extraJavaOptions",
                f"-Dderby.system.home={(settings.home / 'derby').resolve()} {JIT_HUGE_METHODS}")
        .config("spark.executor.extraJavaOptions", JIT_HUGE_METHODS)
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    if new:
        context = spark.sparkContext
        record = {"app_id": context.applicationId, "master": context.master, "name": context.appName,
                  "pid": os.getpid(), "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        log = apps_log(settings)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as out:  # one short line per append: concurrent tasks do not interleave
            out.write(json.dumps(record) + "\n")
    return spark
