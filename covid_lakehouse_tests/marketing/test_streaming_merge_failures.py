"""StreamingMerge when the run goes wrong: once it is failing (the reader raised, the copier failed) the
chunks still queued are dropped, not merged before the rollback; and the target's lock is waited for a
bounded time (MARKETING_PUBLISH_LOCK_TIMEOUT_S), then the run fails naming the table, the setting and the
session holding it, and its readers stop."""

import psycopg
import pyarrow as pa
import pytest

from covid_lakehouse.defs.marketing.load import PublishLockTimeout, StagingWriter, StreamingMerge
from covid_lakehouse_tests.marketing.support import probe_fixture, probe_rows
from covid_lakehouse_tests.platform.support import proxied_dsn, until_waiting_on_a_lock

pytestmark = pytest.mark.integration

PROBE, TABLE, probe = probe_fixture("streaming_failure_probe")


def until_the_merge_waits_for_the_lock(pg: psycopg.Connection, merging: StreamingMerge) -> None:
    """Returns once the merge thread waits on a lock (LOCK TABLE, the target held by another session)."""
    until_waiting_on_a_lock(pg, merging.conn.info.backend_pid, timeout=60)


def stage_while_the_merge_waits(pg: psycopg.Connection, staging: StagingWriter, merging: StreamingMerge,
                                fail) -> None:
    """Three chunks staged while another session holds the target (the merge thread waits in LOCK TABLE with
    the first chunk, the other two queued behind it), then ``fail``; the holder lets go afterwards."""
    with pg.transaction():
        pg.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        for ids in ((1, 2), (3,), (4,)):
            staging.write(probe_rows(PROBE, *ids), pages=1)
            staging.flush()  # the third returns once the merge took the first: its queue holds two
        until_the_merge_waits_for_the_lock(pg, merging)
        fail()


def test_chunks_queued_for_the_merge_are_dropped_when_the_reader_fails(probe, warehouse, pg) -> None:
    with StagingWriter(warehouse, probe) as staging, warehouse.connection() as conn:
        merging = StreamingMerge(conn, probe)
        staging.merge_into(merging)
        stage_while_the_merge_waits(pg, staging, merging, staging.abandon)  # what the asset does when its reader raises
        staging.write(probe_rows(PROBE, 5), pages=1)  # a reader still running: its rows are not staged either
        staging.finish_quietly()
        # none: the first chunk's lock wait was cancelled, 3 and 4 were dropped, not merged
        assert merging.counts.inserted == 0 and isinstance(merging.error, psycopg.errors.QueryCanceled)
        assert staging.rows == 4
        conn.rollback()
    assert pg.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] == 0


def test_chunks_queued_for_the_merge_are_dropped_when_staging_fails(probe, warehouse, pg) -> None:
    not_a_number = pa.table({"id": ["x"], "v": ["x"], "raw_object": ["s3://raw/p#1.json"]})  # COPY refuses it

    def copier_fails() -> None:
        staging.write(not_a_number, pages=1)
        with pytest.raises(RuntimeError, match="staging rows .* failed"):
            staging.flush()

    with StagingWriter(warehouse, probe) as staging, warehouse.connection() as conn:
        merging = StreamingMerge(conn, probe)
        staging.merge_into(merging)
        stage_while_the_merge_waits(pg, staging, merging, copier_fails)
        staging.finish_quietly()
        assert merging.counts.inserted == 0
        conn.rollback()


def test_a_session_holding_the_target_fails_the_run_after_the_lock_timeout(probe, warehouse, pg, monkeypatch) -> None:
    monkeypatch.setenv("MARKETING_PUBLISH_LOCK_TIMEOUT_S", "0.2")
    holder = pg.execute("SELECT pg_backend_pid()").fetchone()[0]
    with StagingWriter(warehouse, probe) as staging, warehouse.connection() as conn:
        merging = StreamingMerge(conn, probe)
        staging.merge_into(merging)
        with pg.transaction():
            pg.execute(f"LOCK TABLE {TABLE} IN ROW EXCLUSIVE MODE")  # e.g. another writer's open transaction
            staging.write(probe_rows(PROBE, 1, 2), pages=1)
            staging.flush()
            failure = merging.wait()  # the merge thread gave up on the lock
        assert isinstance(failure, PublishLockTimeout)
        message = str(failure)
        assert TABLE in message and "MARKETING_PUBLISH_LOCK_TIMEOUT_S" in message and f"pid {holder}" in message
        with pytest.raises(PublishLockTimeout):  # the readers stop: nothing more is read for a failed run
            staging.write(probe_rows(PROBE, 3), pages=1)
        conn.rollback()


def test_a_failing_run_does_not_wait_out_the_lock_timeout(probe, warehouse, pg, monkeypatch) -> None:
    """The reader fails (or the step is cancelled) while the merge waits for the target: the wait is
    cancelled at once, not sat out (it would end in PublishLockTimeout after 120 s here)."""
    monkeypatch.setenv("MARKETING_PUBLISH_LOCK_TIMEOUT_S", "120")
    with StagingWriter(warehouse, probe) as staging, warehouse.connection() as conn:
        merging = StreamingMerge(conn, probe)
        staging.merge_into(merging)
        with pg.transaction():
            pg.execute(f"LOCK TABLE {TABLE} IN ROW EXCLUSIVE MODE")  # held until the run has given up
            staging.write(probe_rows(PROBE, 1, 2), pages=1)
            staging.flush()
            until_the_merge_waits_for_the_lock(pg, merging)
            staging.abandon()
            staging.finish_quietly()
            assert isinstance(merging.error, psycopg.errors.QueryCanceled) and merging.failure is None
        conn.rollback()


def test_a_lock_timeout_after_the_last_page_fails_the_run_as_such(probe, warehouse, pg, monkeypatch) -> None:
    """The reader is done and finish() waits for the merge: its lock timeout is the run's error as it is,
    not a staging failure."""
    monkeypatch.setenv("MARKETING_PUBLISH_LOCK_TIMEOUT_S", "0.2")
    with StagingWriter(warehouse, probe) as staging, warehouse.connection() as conn:
        merging = StreamingMerge(conn, probe)
        staging.merge_into(merging)
        with pg.transaction():
            pg.execute(f"LOCK TABLE {TABLE} IN ROW EXCLUSIVE MODE")
            staging.write(probe_rows(PROBE, 1, 2), pages=1)
            with pytest.raises(PublishLockTimeout, match="MARKETING_PUBLISH_LOCK_TIMEOUT_S"):
                staging.finish()
        conn.rollback()


def test_a_cancel_that_cannot_reach_the_server_closes_the_merge_s_connection(probe, warehouse, pg, monkeypatch) -> None:
    """The run fails while the merge waits for the target, and the cancel cannot reach the server (here a
    proxy refuses its connection): the merge's connection is closed instead, so the merge thread ends
    without waiting out the lock; abandon raises nothing over the run's own error (on the code before, it
    raised the cancel's OperationalError)."""
    monkeypatch.setenv("MARKETING_PUBLISH_LOCK_TIMEOUT_S", "120")
    with proxied_dsn(warehouse.dsn) as (dsn, proxy), psycopg.connect(dsn) as conn:
        proxy.refuse_new()  # the cancel, a connection of its own, is refused: the server out of reach
        merging = StreamingMerge(conn, probe)
        with pg.transaction():
            pg.execute(f"LOCK TABLE {TABLE} IN ROW EXCLUSIVE MODE")  # held until the merge has given up
            merging.submit(probe_rows(PROBE, 1, 2), None)
            until_the_merge_waits_for_the_lock(pg, merging)
            merging.abandon()
            assert merging.wait() is None
            assert conn.closed and isinstance(merging.error, psycopg.OperationalError)
