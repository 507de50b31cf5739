"""Staging left behind by runs in every state, for the sweep tests (platform and ny_testing)."""

import uuid

import dagster as dg
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from psycopg import sql

from covid_lakehouse.lib.staging import claim_staging


def _run(instance: dg.DagsterInstance, status: DagsterRunStatus) -> str:
    run = DagsterRun(job_name="some_load", run_id=str(uuid.uuid4()), status=status)
    instance.add_run(run)
    return run.run_id


def _staged(pg, schema: str, name: str, run_id: str | None) -> None:
    table = sql.Identifier(schema, name)
    pg.execute(sql.SQL("CREATE UNLOGGED TABLE {} (id bigint)").format(table))
    if run_id is not None:
        claim_staging(pg, table, run_id)


def tables(pg, schema: str) -> set[str]:
    return {n for (n,) in pg.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))}


def leave_staging(instance: dg.DagsterInstance, pg, schema: str) -> set[str]:
    """Staging of a killed (failed), a succeeded, a canceled, a running and a not yet started run,
    one of a run this instance does not know, and an unclaimed table; returns the names to be dropped."""
    names = {}
    for label, status in (("killed", DagsterRunStatus.FAILURE), ("done", DagsterRunStatus.SUCCESS),
                          ("canceled", DagsterRunStatus.CANCELED), ("running", DagsterRunStatus.STARTED),
                          ("not_started", DagsterRunStatus.NOT_STARTED)):
        names[label] = f"sweep_probe_{label}"
        _staged(pg, schema, names[label], _run(instance, status))
    _staged(pg, schema, "sweep_probe_unknown", str(uuid.uuid4()))
    _staged(pg, schema, "sweep_probe_unclaimed", None)
    return {names["killed"], names["done"], names["canceled"]}
