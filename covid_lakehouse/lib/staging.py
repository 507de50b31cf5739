"""One sweep for every staging area (ny_testing_staging, marketing_staging, ...): tables a load stages
into are claimed for its Dagster run (a table comment naming the run id), and every load starts by
dropping the staging of runs that are no longer in progress. A table is dropped only when the Dagster
instance knows its run and says it finished (succeeded, failed or canceled; a SIGKILLed run is marked
failed by run monitoring): a concurrent run's staging, or one whose run the instance does not know, is
never touched."""

from __future__ import annotations

import logging
import re

import dagster as dg
import psycopg
from dagster._core.errors import DagsterInvariantViolationError
from psycopg import sql

from covid_lakehouse.lib.postgres import validate_identifier

log = logging.getLogger(__name__)

_CLAIM = "covid_lakehouse staging of dagster run {}"
_CLAIMED = re.compile(r"^covid_lakehouse staging of dagster run ([0-9a-zA-Z_-]{1,64})$")


def _current_context() -> dg.OpExecutionContext | None:
    try:
        return dg.OpExecutionContext.get()
    except DagsterInvariantViolationError:  # called outside a Dagster run (a script, a unit test)
        return None


def claim_staging(conn: psycopg.Connection, table: sql.Composable, run_id: str | None = None) -> None:
    """Mark ``table`` as the staging of ``run_id`` (by default the current Dagster run; outside a run
    the table is not claimed and no sweep ever drops it)."""
    if run_id is None:
        context = _current_context()
        run_id = context.run_id if context is not None else None
    if run_id is not None:
        conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(table, sql.Literal(_CLAIM.format(run_id))))


def sweep_staging(conn: psycopg.Connection, schema: str, instance: dg.DagsterInstance | None = None) -> list[str]:
    """Drop the tables in ``schema`` claimed by runs that are no longer in progress; returns their names.
    ``instance`` defaults to the current run's instance (outside a run nothing is dropped)."""
    if instance is None:
        context = _current_context()
        if context is None:
            return []
        instance = context.instance
    claimed = conn.execute(
        "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN ('r', 'p')",
        (validate_identifier(schema, what="staging schema"),)).fetchall()
    dropped = []
    for name, comment in claimed:
        match = _CLAIMED.match(comment or "")
        if match is None:
            continue  # not a table this code stages into
        run = instance.get_run_by_id(match.group(1))
        if run is None or not run.is_finished:
            continue  # in progress, or unknown here: it may be another deployment's live run
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, name)))
        dropped.append(name)
    if dropped:
        log.info("dropped %d staging table(s) of finished runs in %s: %s", len(dropped), schema, ", ".join(dropped))
    return dropped
