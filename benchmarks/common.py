"""Pieces shared by benchmark cases: the empty-asset baseline, a Dagster materialization helper and the
reset of a domain's warehouse schemas."""

from __future__ import annotations

import os

import dagster as dg

from benchmarks.harness import timed


def materialize_timed(assets, resources, **kwargs) -> tuple[float, dg.ExecuteInProcessResult]:
    """Time one materialization; the instance exists before the clock starts, as in a deployment."""
    holder = {}
    with dg.DagsterInstance.ephemeral() as instance:
        def run() -> int:
            holder["result"] = dg.materialize(assets, resources=resources, instance=instance, **kwargs)
            return 0

        seconds, _ = timed(run)
    if not holder["result"].success:
        raise RuntimeError("benchmark materialization failed")
    return seconds, holder["result"]


def measure_empty_asset() -> tuple[float, int]:
    """Baseline: the peak RSS of a process that materializes an asset doing nothing."""

    @dg.asset
    def empty() -> None:
        return None

    seconds, _ = materialize_timed([empty], {})
    return seconds, 0


def reset_domain(scope: str, *schemas: str) -> None:
    """covid_lakehouse_dev.warehouse.reset_domain on the benchmark's warehouse (WAREHOUSE_DSN)."""
    import psycopg

    from covid_lakehouse_dev.warehouse import reset_domain as reset

    with psycopg.connect(os.environ["WAREHOUSE_DSN"], autocommit=True) as conn:
        reset(conn, scope, *schemas)
