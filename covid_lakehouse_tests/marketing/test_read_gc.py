"""While a source is read, the garbage collector leaves the heap that existed before alone (gc.freeze):
parsing a million Facebook rows allocates tens of millions of short-lived objects, and every full pass they
set off walked Dagster's whole heap again (a quarter of the load's CPU in a profile). Afterwards the heap is
back in the collector's care."""

import gc

import dagster as dg
import pytest

from covid_lakehouse.defs.marketing import facebook
from covid_lakehouse.defs.marketing.assets import ASSETS, FACEBOOK_KEY
from covid_lakehouse.defs.marketing.partitions import RANGE_END_TAG, RANGE_START_TAG

pytestmark = pytest.mark.integration


def test_the_heap_from_before_the_read_is_left_alone_while_pages_are_parsed(clean_marketing, marketing_resources,
                                                                           instance, api, monkeypatch) -> None:
    frozen: list[int] = []
    page_table = facebook.page_table

    def parse(page, raw_object):
        frozen.append(gc.get_freeze_count())
        return page_table(page, raw_object)

    monkeypatch.setattr(facebook, "page_table", parse)
    result = dg.materialize(ASSETS, selection=[FACEBOOK_KEY], resources=marketing_resources, instance=instance,
                            tags={RANGE_START_TAG: "2024-08-05", RANGE_END_TAG: "2024-08-05"})
    assert result.success
    assert frozen and min(frozen) > 0  # every page parsed with the old heap out of the collector's passes
    assert gc.get_freeze_count() == 0  # and given back after the read
