"""The freshrec_spark pool is sized for the machine the tasks run on."""

from __future__ import annotations

from freshrec.airflow.runtime import SPARK_POOL_SLOTS, spark_pool_slots
from freshrec.settings import Settings


def test_spark_pool_is_sized_for_the_machine(tmp_path):
    gib = 1 << 30
    local = Settings(home=tmp_path, spark_master="local[*]", spark_driver_memory="4g")
    assert spark_pool_slots(local, cpus=2, memory_bytes=24 * gib) == 1
    assert spark_pool_slots(local, cpus=16, memory_bytes=128 * gib) == 8
    assert spark_pool_slots(local, cpus=16, memory_bytes=16 * gib) == 2  # memory-bound: 6 GiB per task
    assert spark_pool_slots(local, cpus=1, memory_bytes=2 * gib) == 1  # never zero
    assert spark_pool_slots(local.replace(spark_pool_slots=3), cpus=2, memory_bytes=gib) == 3
    assert spark_pool_slots(local.replace(spark_master="spark://m:7077"), cpus=64, memory_bytes=512 * gib) == SPARK_POOL_SLOTS
