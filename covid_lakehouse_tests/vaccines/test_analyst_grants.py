"""The analyst reads the ranking the warehouse IO manager writes (a table no migration creates), and
cannot write it."""

from __future__ import annotations

import dagster as dg
import pytest

from covid_lakehouse.defs.vaccines.assets import people_per_dose, raw_sources
from covid_lakehouse.defs.vaccines.ranking import people_per_dose_ranking
from covid_lakehouse.defs.vaccines.resources import VaccinesSettings
from covid_lakehouse_dev.apis.harness import MockApi
from covid_lakehouse_dev.apis.vaccines import register
from covid_lakehouse_tests.platform.support import analyst_reads_but_cannot_write

pytestmark = pytest.mark.integration


def test_the_analyst_reads_the_ranking_and_cannot_write_it(embedded_stack, resources, instance, pg, reset_domain):
    reset_domain("vaccines")
    with MockApi() as api:
        env = {k: v.replace("{base}", api.url) for k, v in register(api).items()}
        sources = VaccinesSettings(allocation_urls={"moderna": env["VACCINES_MODERNA_URL"],
                                                    "pfizer": env["VACCINES_PFIZER_URL"]},
                                   population_url=env["VACCINES_POPULATION_URL"])
        assert dg.materialize([raw_sources, people_per_dose, people_per_dose_ranking], instance=instance,
                              resources={**resources, "vaccines_settings": sources}).success
    analyst = embedded_stack.state.analyst_dsn()
    assert analyst_reads_but_cannot_write(analyst, "vaccines.people_per_dose_ranking") == 51
    assert analyst_reads_but_cannot_write(analyst, "vaccines.people_per_dose") == 51
