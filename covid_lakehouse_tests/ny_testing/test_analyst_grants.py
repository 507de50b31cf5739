"""The analyst reads ny_testing_derived.positivity_7d, which the warehouse IO manager writes into a
schema no migration creates, and cannot write it."""

from __future__ import annotations

import pytest

from covid_lakehouse.defs.ny_testing.positivity import POSITIVITY_KEY
from covid_lakehouse_tests.ny_testing.support import dataset
from covid_lakehouse_tests.platform.support import analyst_reads_but_cannot_write

pytestmark = pytest.mark.integration


def test_the_analyst_reads_positivity_and_cannot_write_it(ny, pg, embedded_stack):
    pg.execute("DROP SCHEMA IF EXISTS ny_testing_derived CASCADE")  # as on a new database
    ny.serve(dataset(("Albany",), days=3))
    assert ny.daily().success
    job = ny.defs.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(instance=ny.instance, asset_selection=[POSITIVITY_KEY], partition_key="Albany").success
    assert analyst_reads_but_cannot_write(embedded_stack.state.analyst_dsn(), "ny_testing_derived.positivity_7d") == 3
