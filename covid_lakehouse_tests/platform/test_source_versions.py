"""lib/source_versions.claim over real PostgreSQL: the later fetch wins whatever order two publishers of one
unit commit in; the loser learns the newer version; a replay always claims."""

import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from covid_lakehouse.lib.source_versions import SourceVersion, Superseded, claim
from covid_lakehouse_tests.platform.support import wait_until_blocked_or_done

pytestmark = pytest.mark.integration
T0 = datetime(2026, 12, 1, tzinfo=UTC)
OLD, NEW = SourceVersion("download N", T0), SourceVersion("download N+1", T0 + timedelta(hours=1))


@pytest.fixture
def versions(pg, unique_schema) -> sql.Composed:
    pg.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(unique_schema)))
    table = sql.Identifier(unique_schema, "versions")
    pg.execute(sql.SQL("CREATE TABLE {} (unit text PRIMARY KEY, source_version text NOT NULL, "
                       "fetched_at timestamptz NOT NULL, published_at timestamptz NOT NULL)").format(table))
    return table


def recorded(pg, table) -> list[tuple]:
    return pg.execute(sql.SQL("SELECT unit, source_version FROM {}").format(table)).fetchall()


@pytest.mark.parametrize(("first", "second", "second_gets"), [
    (NEW, OLD, Superseded("download N+1", NEW.fetched_at)),  # the older publisher commits last: refused
    (OLD, NEW, None),  # the newer publisher commits last: claims
])
def test_the_later_fetch_wins_whatever_the_commit_order(services, pg, versions, first, second, second_gets):
    done, result = threading.Event(), {}
    with psycopg.connect(services.warehouse_dsn) as a:
        assert claim(a, versions, {"unit": "albany"}, first, T0) is None  # holds the row until commit

        def b() -> None:
            try:
                with psycopg.connect(services.warehouse_dsn) as conn:
                    result["b"] = claim(conn, versions, {"unit": "albany"}, second, T0)
            finally:
                done.set()

        thread = threading.Thread(target=b)
        thread.start()
        wait_until_blocked_or_done(pg, done)
        assert not done.is_set(), "the second claim did not wait for the first publisher's commit"
        a.commit()
        thread.join()
    assert result["b"] == second_gets
    assert recorded(pg, versions) == [("albany", NEW.identity)]


def test_an_equal_fetch_claims_again_and_a_replay_claims_over_a_newer_one(services, pg, versions):
    with psycopg.connect(services.warehouse_dsn, autocommit=True) as conn:
        assert claim(conn, versions, {"unit": "albany"}, NEW, T0) is None
        assert claim(conn, versions, {"unit": "albany"}, NEW, T0) is None  # a rerun of the same fetch
        refused = claim(conn, versions, {"unit": "albany"}, OLD, T0)
        assert str(refused) == f"superseded by download N+1 (fetched {NEW.fetched_at.isoformat()}): nothing written"
        assert claim(conn, versions, {"unit": "albany"}, SourceVersion("download N", T0, replay=True), T0) is None
    assert recorded(pg, versions) == [("albany", "download N")]


def test_a_table_may_name_its_identity_column_and_record_more_columns_only_when_claimed(services, pg, unique_schema):
    # ny_testing's table_versions predates the lib: identity in raw_key, plus the county last published under.
    pg.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(unique_schema)))
    table = sql.Identifier(unique_schema, "table_versions")
    pg.execute(sql.SQL("CREATE TABLE {} (target_table text PRIMARY KEY, county text, raw_key text NOT NULL, "
                       "fetched_at timestamptz NOT NULL, published_at timestamptz NOT NULL)").format(table))
    key = {"target_table": "ny_testing.st_lawrence"}
    with psycopg.connect(services.warehouse_dsn, autocommit=True) as conn:
        assert claim(conn, table, key, NEW, T0, identity_column="raw_key", also_set={"county": "St. Lawrence"}) is None
        refused = claim(conn, table, key, OLD, T0, identity_column="raw_key", also_set={"county": "St Lawrence"})
    assert refused == Superseded("download N+1", NEW.fetched_at)
    assert pg.execute(sql.SQL("SELECT county, raw_key FROM {}").format(table)).fetchall() == [
        ("St. Lawrence", "download N+1")]  # the refused claim's county is not written either
