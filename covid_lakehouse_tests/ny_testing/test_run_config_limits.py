"""Whoever can launch a run cannot point ny_testing at another host or at another domain's raw objects:
a source URL in run config must name health.data.ny.gov (or the operator's host), a replayed raw_key
must be a key under the domain's own raw prefix. Both fail before anything is fetched, read or written."""

from __future__ import annotations

import pytest

from covid_lakehouse.defs.ny_testing.asset_keys import RAW_KEY_TAG
from covid_lakehouse_tests.ny_testing.support import COUNTY_KEY, dataset

pytestmark = pytest.mark.integration


@pytest.fixture
def loaded(ny):
    ny.serve(dataset())
    assert ny.daily().success
    ny.api.reset()
    return {t: ny.rows(t) for t in ("albany", "new_york", "st_lawrence")}


def raw_keys(ny, s3) -> list[str]:
    listing = s3.get_client().list_objects_v2(Bucket="raw", Prefix=f"{ny.settings.raw_prefix}/")
    return sorted(o["Key"] for o in listing.get("Contents", []))


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",  # cloud metadata
    "https://evil.example/rows.json",
    "https://health.data.ny.gov@evil.example/rows.json",  # user info before the real host
    "https://health.data.ny.gov:8443/api/views/xdss-u53e/rows.json",  # the vendor's name, another port
])
def test_a_source_url_outside_the_allowed_hosts_fails_naming_the_field(ny, s3, loaded, url):
    before = raw_keys(ny, s3)
    job = ny.defs.resolve_job_def("ny_testing_raw_job")
    result = job.execute_in_process(
        instance=ny.instance, raise_on_error=False,
        run_config={"resources": {"ny_testing_settings": {"config": {"source_url": url}}}})
    assert not result.success
    error = result.failure_data_for_node("ny_testing__raw_rows_json").error.message
    assert "source_url (resource config) / NY_TESTING_SOURCE_URL" in error
    assert "is not allowed for this source" in error and "health.data.ny.gov:443" in error
    assert raw_keys(ny, s3) == before  # nothing stored, not even in quarantine
    assert ny.tick().run_requests == []  # and nothing for the sensor to load


@pytest.mark.parametrize(("raw_key", "problem"), [
    ("marketing/clevertap/2026-01-01/run/page-1.json", "is not under this domain's prefix"),
    ("{prefix}/../../marketing/clevertap/page-1.json", "'..' path segment"),
    ("/{prefix}/sha256=0.json", "absolute"),
    ("{prefix}//sha256=0.json", "empty, '.' or '..' path segment"),
])
def test_a_replayed_raw_key_outside_the_domain_prefix_fails_and_nothing_changes(ny, loaded, raw_key, problem):
    key = raw_key.format(prefix=ny.settings.raw_prefix)
    job = ny.defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=ny.instance, asset_selection=[COUNTY_KEY], partition_key="Albany", raise_on_error=False,
        run_config={"ops": {"ny_testing__county_tests": {"config": {"raw_key": key}}}})
    assert not result.success
    error = result.failure_data_for_node("ny_testing__county_tests").error.message
    assert "KeyOutsidePrefixError: config raw_key: key " in error and problem in error
    assert {t: ny.rows(t) for t in loaded} == loaded


def test_a_raw_key_run_tag_is_held_to_the_prefix_too(ny, loaded):
    job = ny.defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=ny.instance, asset_selection=[COUNTY_KEY], partition_key="Albany", raise_on_error=False,
        tags={RAW_KEY_TAG: "omop/landing/acme/clients.csv"})
    assert not result.success
    error = result.failure_data_for_node("ny_testing__county_tests").error.message
    assert f"run tag {RAW_KEY_TAG}: key 'omop/landing/acme/clients.csv' is not under this domain's prefix" in error
    assert {t: ny.rows(t) for t in loaded} == loaded
