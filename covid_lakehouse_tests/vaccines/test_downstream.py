"""The published vaccines table loads as an input: the ranking asset reads it through the warehouse
IO manager and is written by it; the raw sources load as their verified bytes."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import pytest

from covid_lakehouse.defs.vaccines.assets import RAW_KEY, people_per_dose, raw_sources
from covid_lakehouse.defs.vaccines.ranking import RANKING_KEY, people_per_dose_ranking
from covid_lakehouse.defs.vaccines.resources import VaccinesSettings
from covid_lakehouse_dev.apis.harness import MockApi
from covid_lakehouse_dev.apis.vaccines import ALLOCATION_FILES, POPULATION_FILE
from covid_lakehouse_tests.vaccines.support import lake_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def sources(pg, reset_domain) -> Iterator[VaccinesSettings]:
    reset_domain("vaccines")
    with MockApi() as api:
        yield lake_settings(api)
    reset_domain("vaccines")


def test_the_ranking_reads_the_published_table_and_is_written_by_the_io_manager(sources, resources, instance, pg):
    assets = [raw_sources, people_per_dose, people_per_dose_ranking]
    result = dg.materialize(assets, instance=instance, resources={**resources, "vaccines_settings": sources})
    assert result.success
    ranking = pg.execute("SELECT rank, state, people_per_dose FROM vaccines.people_per_dose_ranking "
                         "ORDER BY rank, state").fetchall()
    expected = pg.execute("SELECT state, people_per_dose FROM vaccines.people_per_dose "
                          "ORDER BY people_per_dose, state").fetchall()
    assert len(ranking) == 51
    assert [(s, p) for _, s, p in ranking] == expected
    assert ranking[0][0] == 1 and ranking[-1][0] == 51
    [mat] = result.asset_materializations_for_node(RANKING_KEY.to_python_identifier())
    assert mat.metadata["dagster/table_name"].value == "vaccines.people_per_dose_ranking"

    # Analysts (a notebook) load the same datasets, without a run.
    defs = dg.Definitions(assets=assets, resources={**resources, "vaccines_settings": sources})
    published = defs.load_asset_value(people_per_dose.key, instance=instance)
    assert len(published) == 51 and {"state", "people_per_dose", "loaded_at"} <= set(published.columns)
    raw = defs.load_asset_value(RAW_KEY, instance=instance)
    assert raw["population"] == POPULATION_FILE.read_bytes()
    assert {name: raw[name] for name in ("moderna", "pfizer")} == {
        name: ALLOCATION_FILES[name].read_bytes() for name in ("moderna", "pfizer")}
