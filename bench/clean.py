"""Benchmark: clean + matrices on Ta-Feng and on a synthetic log, with DuckDB as a single-node
reference doing the same cleaning (parse, validate, dedup, Parquet by date) and the
interaction aggregation on the same landing files. Prints one JSON object; ``spark_over_duckdb``
gives Spark's time over DuckDB's for the clean alone and for the whole job.

    .venv/bin/python bench/clean.py [--synthetic-events 10000000] [--tafeng PATH] [--skip-duckdb]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from freshrec.settings import Settings  # noqa: E402


class PeakRSS:
    """Peak resident memory of this process plus its children (the Spark JVM), sampled."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _sample(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# the clean part (read, parse, validate, dedup, write events and quarantine), then the interaction table
DUCKDB_CLEAN_SQL = """
CREATE OR REPLACE TEMP VIEW raw AS
  SELECT filename AS source_file, column0 AS raw FROM read_csv({files}, columns={{'column0': 'VARCHAR'}},
         delim=E'\\x01', quote='', escape='', header=false, filename=true, auto_detect=false, compression='auto')
  WHERE trim(column0) <> '';
CREATE OR REPLACE TEMP TABLE parsed AS
  WITH j AS (SELECT source_file, raw, try_cast(raw AS JSON) AS v FROM raw),
  f AS (
    SELECT source_file, raw, v,
      nullif(trim(v->>'event_id'), '') AS event_id, nullif(trim(v->>'user_id'), '') AS user_id,
      nullif(trim(v->>'session_id'), '') AS session_id, lower(nullif(trim(v->>'event_type'), '')) AS event_type,
      nullif(trim(v->>'item_id'), '') AS item_id, lower(nullif(trim(v->>'query'), '')) AS query,
      nullif(trim(v->>'category'), '') AS category, v->>'price' AS s_price, v->>'quantity' AS s_quantity,
      v->>'ts' AS s_ts, json_type(v, '$.user_id') AS t_user
    FROM j),
  t AS (
    SELECT *, CASE WHEN regexp_matches(s_ts, '^-?[0-9]+$') THEN make_timestamp(try_cast(s_ts AS BIGINT) * 1000)
                   ELSE try_cast(try_cast(s_ts AS TIMESTAMPTZ) AS TIMESTAMP) END AS ts,
              try_cast(s_price AS DOUBLE) AS price, try_cast(s_quantity AS DECIMAL(38, 6)) AS qty
    FROM f)
  SELECT *, CASE
      WHEN v IS NULL THEN 'malformed_json' WHEN json_type(v) <> 'OBJECT' THEN 'not_an_object'
      WHEN t_user IN ('OBJECT', 'ARRAY', 'BOOLEAN', 'DOUBLE') THEN 'invalid_id_type'
      WHEN user_id IS NULL THEN 'missing_user_id' WHEN event_type IS NULL THEN 'missing_event_type'
      WHEN event_type NOT IN ('view', 'add_to_cart', 'remove_from_cart', 'purchase', 'search') THEN 'unknown_event_type'
      WHEN ts IS NULL THEN 'invalid_ts' WHEN ts > now()::TIMESTAMP + INTERVAL 1 DAY THEN 'future_ts'
      WHEN ts < TIMESTAMP '1990-01-01' THEN 'ts_out_of_range'
      WHEN event_type <> 'search' AND item_id IS NULL THEN 'missing_item_id'
      WHEN event_type = 'search' AND query IS NULL THEN 'missing_query'
      WHEN s_price IS NOT NULL AND (price IS NULL OR isnan(price) OR isinf(price) OR price < 0) THEN 'invalid_price'
      WHEN s_quantity IS NOT NULL AND (qty IS NULL OR qty <> floor(qty) OR qty < 1) THEN 'invalid_quantity'
    END AS reason
  FROM t;
CREATE OR REPLACE TEMP TABLE clean AS
  SELECT coalesce(event_id, 'd-' || left(sha256(concat_ws(chr(1), epoch_us(ts)::VARCHAR, user_id, session_id,
             event_type, item_id, query)), 32)) AS event_id,
         ts, user_id, session_id, event_type, item_id, query, category, price, try_cast(qty AS INTEGER) AS quantity,
         source_file, ts::DATE AS event_date
  FROM parsed WHERE reason IS NULL
  QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY source_file, hash(raw)) = 1;
COPY clean TO '{out}/events' (FORMAT PARQUET, PARTITION_BY (event_date), OVERWRITE_OR_IGNORE);
COPY (SELECT source_file, raw, reason FROM parsed WHERE reason IS NOT NULL) TO '{out}/quarantine.parquet' (FORMAT PARQUET);
"""
DUCKDB_INTERACTIONS_SQL = """
COPY (
  WITH ref AS (SELECT max(ts) AS r FROM clean)
  SELECT user_id, item_id,
         sum(CASE event_type WHEN 'view' THEN 1.0 WHEN 'add_to_cart' THEN 3.0 WHEN 'purchase' THEN 5.0
                             WHEN 'remove_from_cart' THEN -1.0 ELSE 0.0 END
             * pow(2.0, -(epoch(ref.r) - epoch(ts)) / 86400.0 / 30.0)) AS weight,
         count(*) AS n_events, max(ts) AS last_ts
  FROM clean, ref WHERE item_id IS NOT NULL GROUP BY user_id, item_id) TO '{out}/interactions.parquet' (FORMAT PARQUET);
"""


def run_duckdb(files: list[Path], out: Path) -> dict:
    import duckdb

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    con = duckdb.connect()
    con.execute(f"SET threads={os.cpu_count()}")
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        con.execute(DUCKDB_CLEAN_SQL.format(files=json.dumps([str(f) for f in files]).replace('"', "'"), out=out))
        t_clean = time.perf_counter() - t0
        con.execute(DUCKDB_INTERACTIONS_SQL.format(out=out))
        seconds = time.perf_counter() - t0
    read = con.execute("SELECT count(*) FROM parsed").fetchone()[0]
    clean = con.execute("SELECT count(*) FROM clean").fetchone()[0]
    quarantined = con.execute("SELECT count(*) FROM parsed WHERE reason IS NOT NULL").fetchone()[0]
    con.close()
    return {"seconds": round(seconds, 2), "clean_s": round(t_clean, 2), "interactions_s": round(seconds - t_clean, 2),
            "events_per_s": round(read / seconds), "peak_rss_mb": round(mem.peak / 2**20), "read": read, "clean": clean, "quarantined": quarantined}


def run_freshrec(settings: Settings) -> dict:
    from freshrec.spark import get_spark
    from freshrec.steps import clean_step, matrices_step

    with PeakRSS() as mem:
        t0 = time.perf_counter()
        get_spark(settings)
        t_start = time.perf_counter() - t0
        t1 = time.perf_counter()
        counts = clean_step(settings, "bench")
        t_clean = time.perf_counter() - t1
        t2 = time.perf_counter()
        matrices = matrices_step(settings)
        t_mat = time.perf_counter() - t2
    total = t_clean + t_mat
    return {"seconds": round(total, 2), "clean_s": round(t_clean, 2), "matrices_s": round(t_mat, 2),
            "spark_start_s": round(t_start, 2), "events_per_s": round(counts["read"] / total),
            "clean_events_per_s": round(counts["read"] / t_clean), "peak_rss_mb": round(mem.peak / 2**20),
            "counts": {k: counts[k] for k in ("read", "clean", "quarantined", "duplicates")}, "matrices": matrices}


def bench_dataset(name: str, settings: Settings, skip_duckdb: bool) -> dict:
    from freshrec.intake import landing_files

    files = landing_files(settings.landing_events_dir)
    result = {"dataset": name, "files": len(files), "landing_mb": round(sum(f.stat().st_size for f in files) / 2**20, 1),
              "freshrec_spark": run_freshrec(settings)}
    if not skip_duckdb:
        duck = result["duckdb_reference"] = run_duckdb(files, settings.home / "duckdb")
        spark = result["freshrec_spark"]
        # Spark's time over DuckDB's: the clean alone, and the whole job (DuckDB builds only the
        # interaction table, where matrices also builds id maps, sequences, item stats and user state)
        result["spark_over_duckdb"] = {"clean": round(spark["clean_s"] / duck["clean_s"], 2),
                                       "clean_and_matrices": round(spark["seconds"] / duck["seconds"], 2)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--synthetic-events", type=int, default=10_000_000)
    parser.add_argument("--tafeng", type=Path, default=REPO.parent / "shared" / "data" / "ta_feng.csv.zip")
    parser.add_argument("--skip-duckdb", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    from freshrec.generate import GenerateOptions, generate_to_landing
    from freshrec.importers import import_sources

    work = args.workdir or Path(tempfile.mkdtemp(prefix="freshrec-bench-"))
    base = Settings.load()
    out = {"benchmark": "clean+matrices", "cpus": os.cpu_count(), "spark_master": base.spark_master, "results": []}
    if args.tafeng.is_file():
        s = base.replace(home=work / "tafeng")
        s.ensure_dirs()
        import_sources(s, "tafeng", [args.tafeng])
        out["results"].append(bench_dataset("ta_feng", s, args.skip_duckdb))
        print(json.dumps(out["results"][-1]), file=sys.stderr)
    if args.synthetic_events:
        s = base.replace(home=work / "synthetic")
        s.ensure_dirs()
        t0 = time.perf_counter()
        generate_to_landing(s, GenerateOptions(events=args.synthetic_events, seed=7, users=None, items=None, days=60,
                                               start="2026-01-01", dirty=True, rows_per_file=1_000_000, prefix="bench"))
        gen_s = time.perf_counter() - t0
        res = bench_dataset(f"synthetic_{args.synthetic_events}", s, args.skip_duckdb)
        res["generate_s"] = round(gen_s, 1)
        out["results"].append(res)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
