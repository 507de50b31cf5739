"""The staging sweep (lib/staging.py) on the real warehouse and a real Dagster instance: a load drops
the staging left by runs that ended (a killed run is marked failed by run monitoring), and never a
concurrent run's or one the instance does not know; marketing loads sweep at their start."""

import dagster as dg
import pytest
from psycopg import sql

from covid_lakehouse.lib.staging import sweep_staging
from covid_lakehouse_tests.platform.support import leave_staging, tables

pytestmark = pytest.mark.integration


def test_sweep_drops_only_staging_of_finished_runs(instance, pg, unique_schema):
    pg.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(unique_schema)))
    finished = leave_staging(instance, pg, unique_schema)
    before = tables(pg, unique_schema)

    assert set(sweep_staging(pg, unique_schema, instance)) == finished
    assert tables(pg, unique_schema) == before - finished
    assert sweep_staging(pg, unique_schema) == []  # outside a run there is no instance to ask: nothing dropped


def test_a_marketing_load_sweeps_staging_of_ended_runs_first(services, warehouse, pg, instance):
    from covid_lakehouse.defs.marketing.load import STAGING_SCHEMA, StagingWriter
    from covid_lakehouse.defs.marketing.tables import FACEBOOK
    from covid_lakehouse.lib.migrate import ensure_migrated

    with warehouse.connection() as conn:
        ensure_migrated(conn, "marketing")
    finished = leave_staging(instance, pg, STAGING_SCHEMA)
    kept = tables(pg, STAGING_SCHEMA) - finished
    seen: list[str] = []

    @dg.asset
    def stages_rows() -> None:
        with StagingWriter(warehouse, FACEBOOK) as staging:
            seen.append(staging.name)
            assert tables(pg, STAGING_SCHEMA) == kept | {staging.name}

    try:
        assert dg.materialize([stages_rows], instance=instance).success
        assert seen and tables(pg, STAGING_SCHEMA) == kept
    finally:
        for name in kept:
            pg.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(STAGING_SCHEMA, name)))
