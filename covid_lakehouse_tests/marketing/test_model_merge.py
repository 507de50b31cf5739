"""Why the cross-platform model keeps its merge instead of the warehouse IO manager's slice replace
(docs/orchestration.md): a look-back rerun leaves unchanged rows untouched (loaded_at and updated_at
kept) and gives restated rows a new updated_at only. A replace of the run's days would rewrite every
row of the window and reset both. A regression guard: the model already merged when this was written."""

import dagster as dg
import pytest

from covid_lakehouse.defs.marketing.assets import AD_PERFORMANCE_KEY, ASSETS, FACEBOOK_KEY
from covid_lakehouse.defs.marketing.partitions import RANGE_END_TAG, RANGE_START_TAG

pytestmark = pytest.mark.integration


def stamps(pg) -> dict[tuple, tuple]:
    rows = pg.execute("SELECT account_id, ad_id, date, conversions, loaded_at, updated_at "
                      "FROM marketing.ad_performance_daily").fetchall()
    return {(a, ad, d): (c, loaded, updated) for a, ad, d, c, loaded, updated in rows}


def test_a_rerun_of_the_model_keeps_the_row_times_of_unchanged_rows(clean_marketing, marketing_resources, instance,
                                                                    pg, mock) -> None:
    def run(first: str, last: str) -> None:
        assert dg.materialize(ASSETS, selection=[FACEBOOK_KEY, AD_PERFORMANCE_KEY], resources=marketing_resources,
                              instance=instance, tags={RANGE_START_TAG: first, RANGE_END_TAG: last}).success

    run("2024-07-01", "2024-07-02")
    first = stamps(pg)
    mock.facebook_revision = 1  # Facebook restates conversions inside its attribution window
    run("2024-07-01", "2024-07-02")
    restated = stamps(pg)
    run("2024-07-01", "2024-07-02")  # the next day's look-back: nothing changed at the source

    assert stamps(pg) == restated  # no row rewritten: loaded_at and updated_at kept
    assert restated.keys() == first.keys()
    changed = {k for k in first if restated[k][0] != first[k][0]}
    assert changed
    for k in first:
        assert restated[k][1] == first[k][1]  # loaded_at: first loaded
        assert (restated[k][2] > first[k][2]) == (k in changed)  # updated_at: last changed
