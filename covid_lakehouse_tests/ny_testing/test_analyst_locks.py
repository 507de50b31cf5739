"""An analyst who opens a transaction on ny_testing.all_counties and goes idle cannot hang the county
load: the view rebuild waits a bounded time (lock_timeout, bounded attempts) and fails naming the
analyst's session, never its query text; once the analyst is gone, a rerun publishes the view."""

from __future__ import annotations

import psycopg
import pytest

from covid_lakehouse_tests.ny_testing.support import dataset

pytestmark = pytest.mark.integration


def test_an_idle_analyst_transaction_fails_the_view_rebuild_with_its_name_not_a_hang(
        ny, embedded_stack, monkeypatch):
    ny.serve(dataset(["Albany", "Bronx"]))
    assert ny.daily().success
    monkeypatch.setenv("WAREHOUSE_DDL_LOCK_TIMEOUT_S", "0.2")
    monkeypatch.setenv("WAREHOUSE_DDL_LOCK_ATTEMPTS", "2")

    with psycopg.connect(embedded_stack.state.analyst_dsn(), application_name="analyst-notebook") as analyst:
        secret_filter = "Albany-private-filter"
        analyst.execute("SELECT count(*) FROM ny_testing.all_counties WHERE county <> %s", (secret_filter,))
        # The analyst's transaction is open and idle, holding its lock on the view.
        assert analyst.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS

        ny.serve(dataset(["Albany", "Bronx", "Clinton"]))
        result = ny.daily()

        assert not result.success
        message = result.failure_data_for_node("ny_testing__county_tests").error.message
        assert "could not lock ny_testing.all_counties in 2 attempt(s)" in message
        assert "user analyst" in message and "'analyst-notebook'" in message
        assert secret_filter not in message and "count(*)" not in message  # never the query text
        in_view = ny.pg.execute("SELECT DISTINCT county FROM ny_testing.all_counties").fetchall()
        assert {c for (c,) in in_view} == {"Albany", "Bronx"}  # the view as it was
        analyst.rollback()

    rerun = ny.daily()
    assert rerun.success
    in_view = ny.pg.execute("SELECT DISTINCT county FROM ny_testing.all_counties").fetchall()
    assert {c for (c,) in in_view} == {"Albany", "Bronx", "Clinton"}
