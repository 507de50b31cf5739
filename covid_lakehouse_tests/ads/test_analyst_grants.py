"""The analyst reads shown_per_group_daily, which the warehouse IO manager writes (no migration
creates it), and cannot write it."""

from __future__ import annotations

from datetime import timedelta

import pytest

from covid_lakehouse.defs.ads.archive import archive_old_rows
from covid_lakehouse.defs.ads.definitions import defs as ads_defs
from covid_lakehouse.defs.ads.shown_per_group import SHOWN_PER_GROUP_KEY
from covid_lakehouse.lib.policies import rebuilt
from covid_lakehouse_dev.apis.ads import AdsMock
from covid_lakehouse_tests.ads.support import NOW, load_rows
from covid_lakehouse_tests.platform.support import analyst_reads_but_cannot_write

pytestmark = pytest.mark.integration


def test_the_analyst_reads_shown_per_group_and_cannot_write_it(ads_clean, warehouse, pg, ads_resources, instance,
                                                                lakehouse, embedded_stack):
    load_rows(warehouse, AdsMock(seed=11, now=NOW.timestamp), pages=2)
    archive_old_rows(warehouse, lakehouse, retention=timedelta(hours=12), now=NOW, chunk_rows=40)  # its other input
    defs = rebuilt(ads_defs, resources=ads_resources)
    assert defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[SHOWN_PER_GROUP_KEY]).success
    expected = pg.execute("SELECT count(*) FROM ads.shown_per_group_daily").fetchone()[0]
    assert expected > 0
    assert analyst_reads_but_cannot_write(embedded_stack.state.analyst_dsn(), "ads.shown_per_group_daily") == expected
