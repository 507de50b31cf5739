"""The non-streamed publish (stage_audit_publish without merging=: staged rows or a fill) waits for the
target's lock as the streamed one does: at most MARKETING_PUBLISH_LOCK_TIMEOUT_S, then the run fails
with PublishLockTimeout naming the table, the setting and the session holding it, and nothing is published."""

from collections.abc import Iterator

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from covid_lakehouse.defs.marketing.load import PublishLockTimeout, StagingWriter, stage_audit_publish
from covid_lakehouse.defs.marketing.tables import SCHEMA
from covid_lakehouse_tests.marketing.support import probe_fixture, probe_rows

pytestmark = pytest.mark.integration

PROBE, TABLE, probe = probe_fixture("publish_lock_probe")


@pytest.fixture
def holder(services) -> Iterator[psycopg.Connection]:
    """A second session that holds the target (e.g. another writer's open transaction). Its server ends it
    after 30 s idle in the transaction: code that waits for the lock without a bound then publishes, and
    the test fails instead of hanging."""
    with psycopg.connect(services.warehouse_dsn) as conn:
        conn.execute("SET idle_in_transaction_session_timeout = '30s'")
        conn.commit()
        yield conn


@pytest.mark.parametrize("source", ["staged", "fill"])
def test_a_session_holding_the_target_fails_the_unstreamed_publish(source, probe, warehouse, holder, pg,
                                                                    monkeypatch) -> None:
    monkeypatch.setenv("MARKETING_PUBLISH_LOCK_TIMEOUT_S", "0.2")
    pid = holder.execute("SELECT pg_backend_pid()").fetchone()[0]
    key = dg.AssetKey([SCHEMA, PROBE.name])
    with StagingWriter(warehouse, probe) as staging:
        staging.write(probe_rows(PROBE, 1, 2), pages=1)
        staging.flush()
        holder.execute(f"LOCK TABLE {TABLE} IN ROW EXCLUSIVE MODE")  # held until the publish gave up
        if source == "staged":
            steps = stage_audit_publish(warehouse, probe, audits=[], asset_key=key, staged=staging)
        else:
            steps = stage_audit_publish(warehouse, probe, audits=[], asset_key=key,
                                        fill=sql.SQL("SELECT id, v, raw_object FROM {}").format(staging.table))
        with pytest.raises(PublishLockTimeout) as failed:
            list(steps)
        holder.rollback()
    message = str(failed.value)
    assert TABLE in message and "MARKETING_PUBLISH_LOCK_TIMEOUT_S" in message and f"pid {pid}" in message
    assert pg.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] == 0  # nothing published
