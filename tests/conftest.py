"""Shared fixtures: one SparkSession per test session, a fresh FRESHREC_HOME per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from freshrec.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
SHARED_DATA = Path(os.environ.get("FRESHREC_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(home=tmp_path / "home", spark_master="local[2]", spark_shuffle_partitions=4, spark_driver_memory="2g")
    s.ensure_dirs()
    return s


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from freshrec.spark import get_spark

    home = tmp_path_factory.mktemp("spark-home")
    session = get_spark(Settings(home=home, spark_master="local[2]", spark_shuffle_partitions=4, spark_driver_memory="3g"), "freshrec-tests")
    yield session


@pytest.fixture(scope="session")
def tafeng_zip() -> Path:
    path = Path(os.environ.get("FRESHREC_TAFENG_ZIP", SHARED_DATA / "ta_feng.csv.zip"))
    if not path.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"Ta-Feng is required under CI=true but {path} is missing")
        pytest.skip(f"Ta-Feng not available at {path}")
    return path
