"""A newly configured manufacturer's ALTER TABLE waits a bounded time for an analyst's idle open
transaction on the published table, then fails naming that session; nothing is added."""

from __future__ import annotations

import psycopg
import pytest

from covid_lakehouse.defs.vaccines.publish import PEOPLE_TABLE, SCHEMA, ensure_tables, table_columns
from covid_lakehouse.lib.postgres import DdlLockTimeoutError

pytestmark = pytest.mark.integration


def test_an_idle_analyst_transaction_bounds_the_add_column(services, embedded_stack, monkeypatch):
    monkeypatch.setenv("WAREHOUSE_DDL_LOCK_TIMEOUT_S", "0.2")
    monkeypatch.setenv("WAREHOUSE_DDL_LOCK_ATTEMPTS", "3")
    with psycopg.connect(services.warehouse_dsn) as writer:
        ensure_tables(writer, ["doses_moderna", "doses_pfizer"])
        writer.commit()
        with psycopg.connect(embedded_stack.state.analyst_dsn(), application_name="bi-dashboard") as analyst:
            analyst.execute(f"SELECT count(*) FROM {SCHEMA}.{PEOPLE_TABLE}")  # open, then idle

            with pytest.raises(DdlLockTimeoutError) as raised:
                ensure_tables(writer, ["doses_moderna", "doses_pfizer", "doses_janssen"])
            writer.rollback()

            message = str(raised.value)
            assert f"could not lock {SCHEMA}.{PEOPLE_TABLE} in 3 attempt(s)" in message
            assert "adding column doses_janssen" in message
            assert "user analyst" in message and "'bi-dashboard'" in message
            assert "doses_janssen" not in table_columns(writer, PEOPLE_TABLE)
