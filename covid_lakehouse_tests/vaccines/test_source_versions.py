"""Runs out of order: the vaccines tables never go back to an older download than the one they reflect.

people_per_dose publishes the latest raw_sources download it sees when it starts. A run that read
download N and publishes only after another run downloaded and published N+1 (slow, or retried) must
write nothing, say it was superseded, and not fail. Real PostgreSQL and S3; only the CDC lake is mocked.
"""

from __future__ import annotations

import threading

import dagster as dg
import pytest

from covid_lakehouse.defs.vaccines import assets
from covid_lakehouse.defs.vaccines.assets import people_per_dose, raw_sources
from covid_lakehouse.defs.vaccines.resources import DEFAULT_ALLOCATION_URLS
from covid_lakehouse_dev.apis.harness import MockApi
from covid_lakehouse_dev.apis.vaccines import lake_path
from covid_lakehouse_tests.platform.support import run_a_held
from covid_lakehouse_tests.vaccines.support import lake_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def instance(postgres_instance: dg.DagsterInstance) -> dg.DagsterInstance:
    """The runs here execute at once in threads: they share a PostgreSQL-backed instance, as on a deployment."""
    return postgres_instance

MAINE_N = b'"Maine","2021-06-21T00:00:00.000","15800","15800"'
MAINE_N1 = b'"Maine","2021-06-21T00:00:00.000","15900","15900"'  # download N+1: Moderna restated one week


def people(pg) -> list[tuple]:
    return pg.execute("SELECT state, doses_moderna, total_doses, loaded_at FROM vaccines.people_per_dose "
                      "UNION ALL SELECT jurisdiction, doses_moderna, total_doses, loaded_at "
                      "FROM vaccines.excluded_jurisdictions ORDER BY 1").fetchall()


def test_a_run_of_an_older_download_publishing_last_changes_nothing(pg, reset_domain, resources, instance,
                                                                    monkeypatch):
    reset_domain("vaccines")
    with MockApi() as api:
        res = {**resources, "vaccines_settings": lake_settings(api)}

        def run(*selection):
            return dg.materialize(list(selection), instance=instance, resources=res, raise_on_error=False)

        assert run(raw_sources).success  # download N
        a_read, b_done = threading.Event(), threading.Event()
        real = assets.latest_raw_sources

        def read_then_wait(inst):  # run A has read download N; it publishes after run B
            found = real(inst)
            if threading.current_thread().name == "run-a":
                a_read.set()
                assert b_done.wait(120), "run B never finished"
            return found

        monkeypatch.setattr(assets, "latest_raw_sources", read_then_wait)
        with run_a_held(lambda: run(people_per_dose), a_read, b_done) as results:
            api.transform(lake_path(DEFAULT_ALLOCATION_URLS["moderna"]), lambda body: body.replace(MAINE_N, MAINE_N1))
            newer = run(raw_sources, people_per_dose)  # download N+1, published
            after_newer = people(pg)  # before run A goes on
            versions = pg.execute("SELECT published, source_version FROM vaccines.source_versions").fetchall()
    assert newer.success
    assert versions == [("people_per_dose", versions[0][1])] and newer.run_id in versions[0][1]

    older = results["a"]
    assert older.success  # not an error: the tables simply keep the newer download
    assert people(pg) == after_newer  # nothing written: N's Maine figures not back, loaded_at kept
    assert pg.execute("SELECT published, source_version FROM vaccines.source_versions").fetchall() == versions
    assert older.asset_materializations_for_node("vaccines__people_per_dose") == []
    [observation] = older.asset_observations_for_node("vaccines__people_per_dose")
    outcome = observation.metadata["outcome"].value
    assert outcome.startswith("skipped: superseded by ") and newer.run_id in outcome and "nothing written" in outcome
    assert observation.metadata["superseded_by"].value == versions[0][1]
