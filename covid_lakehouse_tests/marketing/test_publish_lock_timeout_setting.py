"""An invalid MARKETING_PUBLISH_LOCK_TIMEOUT_S fails a marketing load as its step starts, naming the setting
and the value, before the vendor's API is called: not at the merge, after the whole read."""

import dagster as dg
import pytest

from covid_lakehouse.defs.marketing.assets import ASSETS, CLEVERTAP_KEY, FACEBOOK_KEY, GOOGLE_ADS_KEY
from covid_lakehouse.defs.marketing.partitions import RANGE_END_TAG, RANGE_START_TAG
from covid_lakehouse_dev.apis.harness import MockApi

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("value", "problem"), [("ten", "'ten' is not a number"), ("0", "at least 0.001, got 0"),
                                                ("nan", "'nan' is not a finite number")])
@pytest.mark.parametrize("asset_key", [FACEBOOK_KEY, GOOGLE_ADS_KEY, CLEVERTAP_KEY], ids=lambda k: k.path[-1])
def test_a_bad_lock_timeout_fails_the_step_before_any_api_request(clean_marketing, marketing_resources, instance,
                                                                  api: MockApi, monkeypatch, asset_key, value,
                                                                  problem) -> None:
    monkeypatch.setenv("MARKETING_PUBLISH_LOCK_TIMEOUT_S", value)

    result = dg.materialize(ASSETS, selection=[asset_key], resources=marketing_resources, instance=instance,
                            raise_on_error=False, tags={RANGE_START_TAG: "2024-07-01", RANGE_END_TAG: "2024-07-01"})

    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message
    assert "MARKETING_PUBLISH_LOCK_TIMEOUT_S" in message and problem in message
    assert api.requests == []  # not one: no token exchange, no report, no page
