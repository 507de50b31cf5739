"""Two runs of the ny_testing assets at once (the sensor's run and a manual launch or a backfill; two
downloads: the schedule and a manual launch), interleaved at chosen points with events, never sleeps.

The published county tables (values and ``load_date``), the ``all_counties`` view, the reference rows and
the per-county version rows (ny_testing_reference.table_versions) equal those of one run; two downloads
of two API calls store the body once (content-addressed, write-once).

Failed before the fix (defs/ny_testing/warehouse.py): ``audited`` (a run that started first but
published second stamped the version row's ``published_at`` with its start, earlier than the rows'
``load_date`` from the other run) and the view test (the view's table list was read before its lock,
so the run rebuilding last dropped a table the other had just added).

Regression guards: ``publishing`` passed when written; with the claim's row lock (lib/source_versions.py,
claimed in the publishing transaction) and the upsert's LOCK TABLE both removed, run B hits a unique
violation and gets in only through the RetryPolicy, which ``clean_run`` refuses. The two downloads'
guard is S3's ``If-None-Match`` in ``put_write_once``: without it run A rewrites the stored objects.
"""

from __future__ import annotations

import datetime as dt
import threading

import dagster as dg
import pytest
from psycopg import sql

from covid_lakehouse.defs.ny_testing import assets
from covid_lakehouse.defs.ny_testing.asset_keys import RAW_FETCHED_AT_TAG, RAW_KEY_TAG
from covid_lakehouse.defs.ny_testing.parsing import MEASURES
from covid_lakehouse.defs.ny_testing.warehouse import COUNTY_SCHEMA, REFERENCE_SCHEMA, Warehouse
from covid_lakehouse_tests.ny_testing.support import COUNTY_KEY, dataset, empty_ny_testing_schemas
from covid_lakehouse_tests.platform.support import hold_once, hold_runs_at, two_runs

pytestmark = pytest.mark.integration


@pytest.fixture
def instance(postgres_instance: dg.DagsterInstance) -> dg.DagsterInstance:
    """The runs here execute at once in threads: they share a PostgreSQL-backed instance, as on a deployment."""
    return postgres_instance

COUNTIES = ("Albany", "New York", "St. Lawrence", "Kings")
VALUES = ", ".join(("test_date", *MEASURES))


def county_tables(pg) -> list[str]:
    return [t for (t,) in pg.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1",
                                     (COUNTY_SCHEMA,)).fetchall()]


def published(pg) -> dict:
    """Everything a county run publishes, ``load_date`` as the number of distinct values per table and
    overall (one run stamps every row it inserts with one load_date) and whether it is that of the
    table's version row, when it was published."""
    tables = county_tables(pg)
    rows = {t: pg.execute(sql.SQL(f"SELECT {VALUES} FROM {{}} ORDER BY 1").format(
        sql.Identifier(COUNTY_SCHEMA, t))).fetchall() for t in tables}
    load_dates = {t: {d for (d,) in pg.execute(sql.SQL("SELECT DISTINCT load_date FROM {}").format(
        sql.Identifier(COUNTY_SCHEMA, t))).fetchall()} for t in tables}
    versions = pg.execute(f'SELECT target_table, county, raw_key, fetched_at, published_at FROM '
                          f'"{REFERENCE_SCHEMA}".table_versions ORDER BY 1').fetchall()
    stamped = {target: published_at for target, _, _, _, published_at in versions}
    view = pg.execute(f'SELECT county, {VALUES}, load_date FROM "{COUNTY_SCHEMA}".all_counties ORDER BY 1, 2').fetchall()
    return {
        "rows": rows,
        "versions": [v[:4] for v in versions],
        "load_dates": len(set().union(*load_dates.values())),
        # The version row says when its table was last published: never before its rows' load_date.
        "published_after_load": all(stamped[f"{COUNTY_SCHEMA}.{t}"] >= max(d) for t, d in load_dates.items()),
        "view": [(county, *r[:-1]) for county, *r in view],
        "view_counties": sorted({r[0] for r in view}),
        "view_has_every_table": len({r[0] for r in view}) == len(tables),
        "reference": pg.execute(f'SELECT geography, name, {VALUES} FROM "{REFERENCE_SCHEMA}".geography_totals '
                                "ORDER BY 1, 2, 3").fetchall(),
    }


@pytest.fixture
def one_run(ny, pg):
    """The sensor's run request for one download of four counties, and what ONE run of it publishes; then
    the domain's tables are emptied (the two runs below race on creating the tables too)."""
    ny.serve(dataset(COUNTIES))
    assert ny.download().success
    [request] = ny.tick().run_requests
    assert ny.run(request).success
    expected = published(pg)
    assert len(expected["rows"]) == 4 and expected["load_dates"] == 1 and expected["published_after_load"]
    empty_ny_testing_schemas(pg)
    return request, expected


def clean_run(result: dg.ExecuteInProcessResult) -> bool:
    """Succeeded at the first attempt: a writer that lost a race and got in through the RetryPolicy (a
    unique violation, seconds of backoff, a red attempt in the UI) does not count."""
    return result.success and not any(e.is_step_up_for_retry for e in result.all_events)


def empty_county_tables(pg) -> None:
    """The county tables stay (as in a deployment after the first load), without rows or version rows."""
    for table in county_tables(pg):
        pg.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(COUNTY_SCHEMA, table)))
    pg.execute(f'TRUNCATE "{REFERENCE_SCHEMA}".table_versions, "{REFERENCE_SCHEMA}".geography_totals')


@pytest.mark.parametrize("tables", ["new", "existing"])
@pytest.mark.parametrize("hold_at", ["audited", "publishing"])
def test_two_county_runs_at_once_publish_what_one_run_does(one_run, ny, pg, monkeypatch, hold_at, tables) -> None:
    """Run A is held after staging and auditing (``audited``: run B stages, audits and publishes
    meanwhile, its staging untouched by B's sweep), or inside a county's publishing transaction, its rows
    upserted, not committed (``publishing``), until run B is blocked behind it or has finished. The
    county tables are created by the runs (``new``) or exist already (``existing``)."""
    request, expected = one_run
    if tables == "existing":
        assert ny.run(request).success
        empty_county_tables(pg)
    reached, b_done = threading.Event(), threading.Event()
    hold = hold_once(pg, reached, b_done)
    hold_runs_at(monkeypatch, assets, hold_at == "audited", hold)

    results = two_runs(reached, lambda: clean_run(ny.run(request)), b_done)

    assert results == {"a": True, "b": True}
    assert published(pg) == expected


def test_a_run_of_some_counties_never_drops_a_table_another_run_added_to_the_view(ny, pg, monkeypatch) -> None:
    """Run A (one county, launched by hand) rebuilds the view while run B (the sensor's, over a download
    with a new county) creates that county's table: the view ends up over every table, whichever rebuilds
    last. Failed before: A listed the existing tables before taking the view's lock, so its rebuild,
    after B's, dropped the new county from the view."""
    ny.serve(dataset(COUNTIES[:3]))
    assert ny.daily().success
    ny.serve(dataset(COUNTIES))  # Kings is new
    assert ny.download().success
    [request] = ny.tick().run_requests
    reached, b_done = threading.Event(), threading.Event()
    hold = hold_once(pg, reached, b_done)
    real_table_names = Warehouse.table_names

    def table_names(self, *args, **kwargs):
        named = real_table_names(self, *args, **kwargs)
        hold()  # run A knows which tables exist; B creates Kings's and rebuilds the view meanwhile
        return named

    monkeypatch.setattr(Warehouse, "table_names", table_names)
    job = ny.defs.resolve_implicit_global_asset_job_def()
    tags = {k: request.tags[k] for k in (RAW_KEY_TAG, RAW_FETCHED_AT_TAG)}

    results = two_runs(reached, lambda: job.execute_in_process(
        instance=ny.instance, asset_selection=[COUNTY_KEY], partition_key="Albany", tags=tags,
        raise_on_error=False).success, b_done, run_b=lambda: ny.run(request).success)

    assert results == {"a": True, "b": True}
    state = published(pg)
    assert "kings" in county_tables(pg)
    assert state["view_counties"] == sorted(COUNTIES)
    assert state["view_has_every_table"]


def raw_objects(s3, prefix: str) -> dict[str, tuple[str, dt.datetime]]:
    listing = s3.get_client().list_objects_v2(Bucket="raw", Prefix=prefix)
    return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listing.get("Contents", [])}


def test_two_downloads_at_once_store_the_body_once(ny, s3, monkeypatch) -> None:
    """Run A has downloaded and is parsing (it saw no earlier download of these bytes) while run B
    downloads the same bytes, stores and materializes them; A then finds the objects stored and keeps
    them (regression guard: write-once S3 puts). Both runs succeed: two API calls, two materializations
    of one stored body."""
    ny.serve(dataset(COUNTIES))
    reached, b_done = threading.Event(), threading.Event()
    after_b: dict = {}
    real_summarize = assets.summarize
    calls = iter(range(1_000_000))

    def summarize(*args, **kwargs):
        if next(calls) == 0:  # run A's parse; B's is the second
            reached.set()
            assert b_done.wait(60), "run B never finished"
            after_b.update(raw_objects(s3, ny.settings.raw_prefix))
        return real_summarize(*args, **kwargs)

    monkeypatch.setattr(assets, "summarize", summarize)
    results = two_runs(reached, lambda: ny.download().success, b_done)

    assert results == {"a": True, "b": True}
    assert len(after_b) == 2  # the raw body and its parsed parquet, stored by B
    assert raw_objects(s3, ny.settings.raw_prefix) == after_b  # A rewrote nothing
    records = ny.instance.fetch_materializations(dg.AssetKey(["ny_testing", "raw_rows_json"]), limit=10).records
    metadata = [{k: v.value for k, v in r.asset_materialization.metadata.items()} for r in records]
    assert len(metadata) == 2
    assert {m["s3_key"] for m in metadata} == {next(k for k in after_b if k.endswith(".json"))}
    assert sorted(m["already_stored"] for m in metadata) == [False, True]
