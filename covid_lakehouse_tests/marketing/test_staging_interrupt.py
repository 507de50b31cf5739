"""A run terminated (Dagster raises DagsterExecutionInterruptedError in the run's thread) while it waits
for a staging worker, the copier or the merge, that waits on the server: a COPY or merge stalled on a
lock another transaction holds. No interrupt reaches the worker's thread, so the run's thread cancels
what the worker runs in the server, waits for it to end, and the interrupt goes on, while the other
transaction is still open. On the code before, the interrupt left the worker waiting: the step's end
joined it until the lock was released (here, after GUARD seconds)."""

import threading

import psycopg
import pytest
from dagster import DagsterExecutionInterruptedError
from psycopg import sql

from covid_lakehouse.defs.marketing.load import StagingWriter, StreamingMerge
from covid_lakehouse_tests.marketing.support import probe_fixture, probe_rows
from covid_lakehouse_tests.platform.support import interrupt_once_stalled, sigint_raises, waits_on_a_lock

pytestmark = pytest.mark.integration

PROBE, TABLE, probe = probe_fixture("staging_interrupt_probe")
GUARD = 30  # seconds: only bounds waits that never end on broken code (the worker left waiting on the lock)


def _workers() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in (f"stage-{PROBE.name}", f"merge-{PROBE.name}")]


@pytest.mark.parametrize("streamed", [False, True], ids=["staged", "streamed"])
def test_an_interrupt_while_the_run_waits_for_the_copier_cancels_its_stalled_copy(probe, warehouse, pg,
                                                                                   streamed) -> None:
    """The copier's COPY into the staging table waits on a lock another session holds on that table.
    Streamed (a merge thread beside the copier), the merge thread is ended and waited for as well before
    the interrupt goes on: the caller hands the merge's connection back to the pool next (the code before
    h21mend's review left it running: the copier's wait raised past the merge's)."""
    with psycopg.connect(warehouse.dsn) as blocker, StagingWriter(warehouse, probe) as staging, \
            warehouse.connection() as conn:
        blocker.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(staging.table))  # COPY waits for it
        if streamed:
            staging.merge_into(StreamingMerge(conn, probe))

        def stalled() -> bool:
            return waits_on_a_lock(pg, query=f"COPY %{staging.name}%")

        left = []
        with interrupt_once_stalled(stalled, blocker.rollback, GUARD) as seen, \
                sigint_raises(DagsterExecutionInterruptedError), pytest.raises(DagsterExecutionInterruptedError):
            try:
                staging.write(probe_rows(PROBE, 1, 2), pages=1)
                staging.finish()  # the run's thread waits for the copier, the copier for the lock
            finally:
                seen.raised()
                left += _workers()
        conn.rollback()
    assert seen.events == ["interrupt raised", "lock released"]
    assert seen.let_go == [True]  # the COPY no longer waited in the server
    assert left == [] and staging.rows == 0


def test_an_interrupt_while_the_run_waits_for_the_merge_cancels_its_stalled_statement(probe, warehouse, pg) -> None:
    """The merge thread's chunk updates a published row another session holds FOR UPDATE (a row lock only:
    the merge's own lock on the table is granted)."""
    pg.execute(f"INSERT INTO {TABLE} (id, v, raw_object) VALUES (1, 'old', 's3://raw/p#0.json')")
    with psycopg.connect(warehouse.dsn) as blocker, StagingWriter(warehouse, probe) as staging, \
            warehouse.connection() as conn:
        blocker.execute(f"SELECT 1 FROM {TABLE} WHERE id = 1 FOR UPDATE")
        merging = StreamingMerge(conn, probe)
        staging.merge_into(merging)
        merger = conn.info.backend_pid

        def stalled() -> bool:
            return waits_on_a_lock(pg, merger)

        left = []
        with interrupt_once_stalled(stalled, blocker.rollback, GUARD) as seen, \
                sigint_raises(DagsterExecutionInterruptedError), pytest.raises(DagsterExecutionInterruptedError):
            try:
                staging.write(probe_rows(PROBE, 1, v="new"), pages=1)
                staging.finish()  # the run's thread waits for the merge, the merge on row 1
            finally:
                seen.raised()
                left += _workers()
        assert isinstance(merging.error, psycopg.errors.QueryCanceled)
        conn.rollback()
    assert seen.events == ["interrupt raised", "lock released"]
    assert seen.let_go == [True]  # the merge no longer waited in the server
    assert left == []
    assert pg.execute(f"SELECT v FROM {TABLE}").fetchall() == [("old",)]
