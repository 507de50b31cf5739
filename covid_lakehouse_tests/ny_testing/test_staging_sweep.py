"""A ny_testing load starts by dropping the staging left by runs that ended (lib/staging.py), and keeps
a concurrent run's (real warehouse, real Dagster instance)."""

import pytest
from psycopg import sql

from covid_lakehouse.defs.ny_testing.warehouse import STAGING_SCHEMA
from covid_lakehouse_tests.ny_testing.support import dataset
from covid_lakehouse_tests.platform.support import leave_staging, tables

pytestmark = pytest.mark.integration


def test_a_ny_testing_load_sweeps_staging_of_ended_runs_first(ny, pg, instance):
    finished = leave_staging(instance, pg, STAGING_SCHEMA)
    kept = tables(pg, STAGING_SCHEMA) - finished
    try:
        ny.serve(dataset())
        assert ny.daily().success
        assert tables(pg, STAGING_SCHEMA) == kept  # its own staging dropped too, when it ended
    finally:
        for name in kept:
            pg.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(STAGING_SCHEMA, name)))
