"""Two runs of the vaccines assets at once (the weekly schedule and a manual launch), interleaved at
chosen points with events, never sleeps: the published tables equal those of one run, and the raw
store holds each body once (content-addressed: the second run's identical download stores nothing).

Regression guards: the publish already serialized its writers when these tests were written; with the
table locks removed (publish advisory lock and the upsert's LOCK TABLE) the "merged" case fails with a
unique violation."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import dagster as dg
import pytest

from covid_lakehouse.defs.vaccines import publish
from covid_lakehouse.defs.vaccines.assets import people_per_dose, raw_sources
from covid_lakehouse.defs.vaccines.resources import DEFAULT_ALLOCATION_URLS, VaccinesSettings
from covid_lakehouse_dev.apis.harness import MockApi
from covid_lakehouse_dev.apis.vaccines import lake_path
from covid_lakehouse_tests.platform.support import first_call_waits_for_b, hold_once, hold_runs_at, two_runs
from covid_lakehouse_tests.vaccines.support import lake_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def instance(postgres_instance: dg.DagsterInstance) -> dg.DagsterInstance:
    """The runs here execute at once in threads: they share a PostgreSQL-backed instance, as on a deployment."""
    return postgres_instance


@pytest.fixture
def lake(pg, reset_domain) -> Iterator[tuple[MockApi, VaccinesSettings]]:
    reset_domain("vaccines")
    with MockApi() as api:
        yield api, lake_settings(api)
    reset_domain("vaccines")


def materialize(resources: dict, sources: VaccinesSettings, instance: dg.DagsterInstance) -> bool:
    """One run of both assets; the runs of a test share one instance, as on one deployment."""
    return dg.materialize([raw_sources, people_per_dose], instance=instance, raise_on_error=False,
                          resources={**resources, "vaccines_settings": sources}).success


def published(pg) -> tuple[list[tuple], list[tuple], int]:
    """Both tables without loaded_at, and how many publishes their loaded_at values come from."""
    people = pg.execute("SELECT state, population, doses_moderna, doses_pfizer, total_doses, people_per_dose, "
                        "first_allocation_week, last_allocation_week FROM vaccines.people_per_dose ORDER BY state")
    excluded = pg.execute("SELECT jurisdiction, doses_moderna, doses_pfizer, total_doses "
                          "FROM vaccines.excluded_jurisdictions ORDER BY jurisdiction")
    publishes = pg.execute("SELECT count(DISTINCT loaded_at) FROM (SELECT loaded_at FROM vaccines.people_per_dose "
                           "UNION ALL SELECT loaded_at FROM vaccines.excluded_jurisdictions) t")
    return people.fetchall(), excluded.fetchall(), publishes.fetchone()[0]


def raw_objects(s3) -> dict[str, tuple[str, object]]:
    listing = s3.get_client().list_objects_v2(Bucket="raw", Prefix="vaccines/")
    return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listing.get("Contents", [])}


@pytest.fixture
def one_run(lake, resources, pg, s3, instance) -> tuple[tuple, dict]:
    """What ONE run publishes, and the raw objects after it; then the tables are emptied (they stay, as
    in a deployment: the runs below race on the publish, not on creating the tables)."""
    assert materialize(resources, lake[1], instance)
    expected = published(pg), raw_objects(s3)
    pg.execute("TRUNCATE vaccines.people_per_dose, vaccines.excluded_jurisdictions")
    return expected


def test_a_download_answered_after_another_run_published_changes_nothing(one_run, lake, resources, pg, s3,
                                                                         instance) -> None:
    (expected, raw), (api, sources) = one_run, lake
    a_waiting, b_done = threading.Event(), threading.Event()
    # Run A's Moderna download answers only after run B has published
    api.transform(lake_path(DEFAULT_ALLOCATION_URLS["moderna"]), first_call_waits_for_b(a_waiting, b_done))
    results = two_runs(a_waiting, lambda: materialize(resources, sources, instance), b_done)

    assert results == {"a": True, "b": True}
    assert published(pg) == expected  # one publish: run A found the published rows identical
    assert raw_objects(s3) == raw  # the same objects, none rewritten


@pytest.mark.parametrize("hold_at", ["staged", "merged"])
def test_two_runs_publishing_at_once_leave_the_tables_of_one(one_run, lake, resources, pg, monkeypatch,
                                                             instance, hold_at) -> None:
    """Run A is held inside its publish transaction, its rows staged and audited (``staged``) or
    already merged, not committed (``merged``), until run B is blocked behind it or has finished."""
    expected, _ = one_run
    a_publishing, b_done = threading.Event(), threading.Event()
    hold_runs_at(monkeypatch, publish, hold_at == "staged", hold_once(pg, a_publishing, b_done))
    results = two_runs(a_publishing, lambda: materialize(resources, lake[1], instance), b_done)

    assert results == {"a": True, "b": True}
    assert published(pg) == expected
