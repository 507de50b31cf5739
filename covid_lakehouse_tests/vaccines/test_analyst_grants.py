"""The analyst reads the ranking the warehouse IO manager writes (a table no migration creates), and
cannot write it."""

from __future__ import annotations

import dagster as dg
import pytest

from covid_lakehouse.defs.vaccines.assets import people_per_dose, raw_sources
from covid_lakehouse.defs.vaccines.ranking import people_per_dose_ranking
from covid_lakehouse_dev.apis.harness import MockApi
from covid_lakehouse_tests.platform.support import analyst_reads_but_cannot_write
from covid_lakehouse_tests.vaccines.support import lake_settings

pytestmark = pytest.mark.integration


def test_the_analyst_reads_the_ranking_and_cannot_write_it(embedded_stack, resources, instance, pg, reset_domain):
    reset_domain("vaccines")
    with MockApi() as api:
        sources = lake_settings(api)
        assert dg.materialize([raw_sources, people_per_dose, people_per_dose_ranking], instance=instance,
                              resources={**resources, "vaccines_settings": sources}).success
    analyst = embedded_stack.state.analyst_dsn()
    assert analyst_reads_but_cannot_write(analyst, "vaccines.people_per_dose_ranking") == 51
    assert analyst_reads_but_cannot_write(analyst, "vaccines.people_per_dose") == 51
