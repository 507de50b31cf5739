"""Postgres IO manager writing a 1,000,000-row, 6-column DataFrame, against a plain script that
COPYs the same DataFrame with psycopg (same CSV encoding, no framework). Target: 1.5x."""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd

from benchmarks.harness import Scale, alternately, case, measure, result, timed

ROWS = 1_000_000
SMOKE_ROWS = 10_000
TABLE = "bench_io"


def frame(rows: int = ROWS) -> pd.DataFrame:
    rng = np.random.default_rng(42)
    return pd.DataFrame({
        "id": np.arange(rows, dtype="int64"),
        "amount": rng.random(rows),
        "quantity": rng.integers(0, 1000, rows),
        "label": pd.Series(rng.integers(0, 10_000, rows)).map(lambda i: f"item-{i}"),
        "day": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 365, rows), unit="D"),
        "flag": rng.random(rows) > 0.5,
    })


def _reset(schema: str) -> None:
    import psycopg

    with psycopg.connect(os.environ["WAREHOUSE_DSN"], autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def measure_floor(rows: int = ROWS) -> tuple[float, int]:
    import psycopg
    import pyarrow as pa
    import pyarrow.csv as pacsv

    df = frame(rows)
    _reset("bench_floor")

    def work() -> int:
        with psycopg.connect(os.environ["WAREHOUSE_DSN"]) as conn:
            conn.execute("CREATE SCHEMA bench_floor")
            conn.execute("CREATE TABLE bench_floor.t (id bigint, amount double precision, quantity bigint, "
                         "label text, day timestamp, flag boolean)")
            table = pa.Table.from_pandas(df, preserve_index=False)
            with conn.cursor().copy("COPY bench_floor.t FROM STDIN (FORMAT csv)") as copy:
                for batch in table.to_batches(max_chunksize=200_000):
                    buf = io.BytesIO()
                    pacsv.write_csv(batch, buf, pacsv.WriteOptions(include_header=False))
                    copy.write(buf.getbuffer())
        return len(df)

    try:
        return timed(work)
    finally:
        _reset("bench_floor")


def measure_dagster(rows: int = ROWS) -> tuple[float, int]:
    import dagster as dg

    from benchmarks.common import materialize_timed
    from covid_lakehouse.lib.io_managers import PostgresIOManager

    df = frame(rows)
    _reset("bench_dagster")

    @dg.asset(key_prefix=["bench_dagster"], io_manager_key="warehouse_io_manager")
    def t() -> pd.DataFrame:
        return df

    try:
        seconds, _ = materialize_timed([t], {"warehouse_io_manager": PostgresIOManager(dsn=os.environ["WAREHOUSE_DSN"])})
    finally:
        _reset("bench_dagster")
    return seconds, len(df)


@case("io_manager_1m")
def run(scale: Scale) -> list:
    rows = scale.size(ROWS, SMOKE_ROWS)
    baseline = measure("benchmarks.common", "empty_asset", repeat=scale.repeat(3))
    # five of each (a run is about a second), taken in turn
    floor, dagster = alternately("benchmarks.io_manager", "floor", "dagster", repeat=scale.repeat(5), rows=rows)
    return [result("io_manager_1m", dagster, floor, baseline, target_ratio=1.5)]
