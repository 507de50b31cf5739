"""Loading county tables end to end: MockApi -> raw S3 object -> sensor -> one run over every county."""

from __future__ import annotations

import datetime as dt
import io

import dagster as dg
import pytest

from covid_lakehouse.defs.ny_testing.assets import publish_counties
from covid_lakehouse.defs.ny_testing.parsing import open_rows_json
from covid_lakehouse.defs.ny_testing.warehouse import (
    COUNTY_SCHEMA,
    REFERENCE_SCHEMA,
    STAGING_SCHEMA,
    SourceVersion,
    Warehouse,
)
from covid_lakehouse_tests.ny_testing.support import COUNTY_KEY, checks, dataset, materialized, rows_json

pytestmark = pytest.mark.integration

MEASURES = ["new_positives", "cumulative_number_of_positives", "total_number_of_tests_performed",
            "cumulative_number_of_tests_performed"]


def summary(result) -> dict:
    [observation] = result.asset_observations_for_node("ny_testing__county_tests")
    return {k: v.value for k, v in observation.metadata.items()}


def test_each_county_gets_its_own_table_with_the_six_columns(ny, pg):
    ny.serve(dataset())
    result = ny.daily()
    assert result.success

    schema = COUNTY_SCHEMA
    assert ny.tables() == {"albany", "new_york", "st_lawrence", "all_counties"}  # no REGION/STATEWIDE table
    columns = pg.execute(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = 'st_lawrence' ORDER BY ordinal_position", (schema,)).fetchall()
    assert columns == [("test_date", "date", "NO"), *((m, "bigint", "NO") for m in MEASURES),
                       ("load_date", "timestamp with time zone", "NO")]
    primary_key = pg.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indisprimary AND i.indrelid = %s::regclass", (f'"{schema}".st_lawrence',)).fetchall()
    assert primary_key == [("test_date",)]

    # Values as served: St. Lawrence is the third county (new positives 7, tests 120 a day).
    rows = ny.rows("st_lawrence")
    assert list(rows) == [dt.date(2022, 9, 11), dt.date(2022, 9, 12), dt.date(2022, 9, 13)]
    assert {m: rows[dt.date(2022, 9, 13)][m] for m in MEASURES} == {
        "new_positives": 7, "cumulative_number_of_positives": 1021,
        "total_number_of_tests_performed": 120, "cumulative_number_of_tests_performed": 20360}

    # REGION and STATEWIDE rows live outside the county schema, for reconciliation.
    reference = pg.execute(
        f'SELECT geography, name, count(*) FROM "{REFERENCE_SCHEMA}".geography_totals '
        "GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
    assert reference == [("REGION", "New York City", 3), ("STATEWIDE", "STATEWIDE", 3)]

    view = pg.execute(f'SELECT county, count(*) FROM "{schema}".all_counties GROUP BY 1 ORDER BY 1').fetchall()
    assert view == [("Albany", 3), ("New York", 3), ("St. Lawrence", 3)]

    # One materialization per county partition, with that county's figures.
    per_county = materialized(result)
    assert set(per_county) == {"Albany", "New York", "St. Lawrence"}
    assert per_county["St. Lawrence"]["dagster/row_count"] == 3
    assert per_county["St. Lawrence"]["dagster/table_name"] == f"{schema}.st_lawrence"
    assert (per_county["St. Lawrence"]["inserted"], per_county["St. Lawrence"]["updated"]) == (3, 0)
    assert (per_county["Albany"]["first_test_date"], per_county["Albany"]["last_test_date"]) == (
        "2022-09-11", "2022-09-13")
    assert [c.name for c in per_county["Albany"]["dagster/column_schema"].columns] == [
        "test_date", *MEASURES, "load_date"]
    run = summary(result)
    assert run["counties_published"] == 3 and run["rows_inserted"] == 9
    assert "| St. Lawrence | " in run["load_summary"] and "created" in run["load_summary"]
    assert run["reference_rows"] == "6 inserted, 0 updated, 0 unchanged"


def test_the_raw_download_is_kept_write_once_and_described(ny, s3):
    ny.serve(dataset())
    assert ny.download().success
    raw = ny.latest_raw()
    stored = s3.get_client().get_object(Bucket="raw", Key=raw["s3_key"])
    assert stored["Body"].read() == ny.body  # byte for byte what the API sent
    assert raw["s3_key"] == f"{ny.settings.raw_prefix}/sha256={raw['sha256']}.json"
    assert stored["Metadata"]["sha256"] == raw["sha256"]
    assert (raw["rows"], raw["county_count"], raw["bytes"]) == (15, 3, len(ny.body))
    assert raw["counties"] == ["Albany", "New York", "St. Lawrence"]
    assert raw["reference_geographies"] == ["New York City [REGION]", "STATEWIDE [STATEWIDE]"]
    assert raw["column_mapping"]["total_number_of_tests_performed"] == "total_number_of_tests"
    assert raw["ignored_columns"] == []
    assert (raw["first_test_date"], raw["last_test_date"]) == ("2022-09-11", "2022-09-13")
    assert raw["data_source"].startswith("downloaded from http://127.0.0.1")
    assert raw["already_stored"] is False

    # The validating parse left the parsed rows next to it, for the load.
    assert raw["parsed_key"] == raw["s3_key"].removesuffix(".json") + ".parsed-v1.parquet"
    assert s3.object_exists("raw", raw["parsed_key"])

    # The same bytes again (a frozen dataset, daily): not parsed or stored again, described the same way.
    assert ny.download().success
    assert ny.latest_raw() == {**raw, "already_stored": True}

    # Bytes stored before but not by the last download: validated again, the object is not rewritten.
    ny.serve(dataset(days=4))
    assert ny.download().success
    ny.serve(dataset())
    assert ny.download().success
    assert ny.latest_raw()["s3_key"] == raw["s3_key"] and ny.latest_raw()["already_stored"] is True


def test_a_rerun_adds_nothing_and_keeps_load_dates(ny, pg):
    ny.serve(dataset())
    assert ny.daily().success
    before = {t: ny.rows(t) for t in ("albany", "new_york", "st_lawrence")}
    reference_before = pg.execute(
        f'SELECT * FROM "{REFERENCE_SCHEMA}".geography_totals ORDER BY 1, 2, 3').fetchall()

    rerun = ny.daily()  # a new download of the same data, a new sensor tick, a new load
    assert rerun.success
    assert {t: ny.rows(t) for t in before} == before  # same rows, same load_date
    assert pg.execute(f'SELECT * FROM "{REFERENCE_SCHEMA}".geography_totals ORDER BY 1, 2, 3'
                      ).fetchall() == reference_before
    counts = {c: (m["inserted"], m["updated"], m["unchanged"]) for c, m in materialized(rerun).items()}
    assert counts == {"Albany": (0, 0, 3), "New York": (0, 0, 3), "St. Lawrence": (0, 0, 3)}
    assert summary(rerun)["reference_rows"] == "0 inserted, 0 updated, 6 unchanged"


def test_a_revised_row_gets_a_new_load_date_and_the_others_keep_theirs(ny):
    rows = dataset()
    ny.serve(rows)
    assert ny.daily().success
    before = ny.rows("albany")

    revised = [r.copy() for r in rows]
    albany_day2 = next(r for r in revised if r[1] == "Albany" and r[0].startswith("2022-09-12"))
    albany_day2[2] = "9"  # the source corrects one day's new positives
    ny.serve(revised)
    result = ny.daily()
    assert result.success

    after = ny.rows("albany")
    day2 = dt.date(2022, 9, 12)
    assert after[day2]["new_positives"] == 9
    assert after[day2]["load_date"] > before[day2]["load_date"]
    assert {d: r for d, r in after.items() if d != day2} == {d: r for d, r in before.items() if d != day2}
    albany = materialized(result)["Albany"]
    assert (albany["inserted"], albany["updated"], albany["unchanged"]) == (0, 1, 2)


def test_any_earlier_download_can_be_replayed(ny):
    rows = dataset()
    ny.serve(rows)
    assert ny.daily().success
    first_key = ny.latest_raw()["s3_key"]
    revised = [r.copy() for r in rows]
    revised[0][2] = "50"
    ny.serve(revised)
    assert ny.daily().success
    assert ny.rows("albany")[dt.date(2022, 9, 11)]["new_positives"] == 50

    job = ny.defs.resolve_implicit_global_asset_job_def()
    replay = job.execute_in_process(
        instance=ny.instance, asset_selection=[COUNTY_KEY], partition_key="Albany",
        run_config={"ops": {"ny_testing__county_tests": {"config": {"raw_key": first_key}}}})
    assert replay.success
    assert ny.rows("albany")[dt.date(2022, 9, 11)]["new_positives"] == 5
    assert set(materialized(replay)) == {"Albany"}  # a single-partition run touches only its county


def test_a_new_county_in_the_response_becomes_a_partition_and_a_table(ny):
    ny.serve(dataset(("Albany", "New York")))
    assert ny.daily().success
    assert ny.partitions() == ["Albany", "New York"]

    ny.serve(dataset(("Albany", "New York", "Yates", "Bronx")))
    result = ny.daily()
    assert result.success
    assert ny.partitions() == ["Albany", "New York", "Bronx", "Yates"]  # new ones added after the old
    assert ny.tables() == {"albany", "new_york", "bronx", "yates", "all_counties"}
    assert len(ny.rows("yates")) == 3
    assert materialized(result)["Bronx"]["table_created"] is True
    view = ny.pg.execute(f'SELECT DISTINCT county FROM "{COUNTY_SCHEMA}".all_counties ORDER BY 1')
    assert [r[0] for r in view] == ["Albany", "Bronx", "New York", "Yates"]


def test_a_county_that_disappears_keeps_its_table_and_is_reported(ny, capsys):
    ny.serve(dataset(("Albany", "New York", "St. Lawrence")))
    assert ny.daily().success
    kept = ny.rows("st_lawrence")

    ny.serve(dataset(("Albany", "New York"), days=4))
    assert ny.download().success
    capsys.readouterr()
    data = ny.tick()
    # the sensor's log (the console handler of Dagster's sensor logger; the UI shows it on the tick)
    assert "missing from the latest download keep their tables: St. Lawrence" in capsys.readouterr().err
    result = ny.run(data.run_requests[0])

    assert result.success  # a WARN, not a failure
    assert ny.partitions() == ["Albany", "New York", "St. Lawrence"]
    assert ny.rows("st_lawrence") == kept
    assert len(ny.rows("albany")) == 4
    present = checks(result)["counties_present"]
    assert present.passed is False and present.severity.value == "WARN"
    assert present.metadata["missing_counties"].value == ["St. Lawrence"]
    assert set(materialized(result)) == {"Albany", "New York"}
    assert "absent from the source: table kept" in summary(result)["load_summary"]
    view = ny.pg.execute(f'SELECT count(*) FROM "{COUNTY_SCHEMA}".all_counties '
                         "WHERE county = 'St. Lawrence'").fetchone()[0]
    assert view == 3  # still in the analysts' view


def test_loads_run_through_a_worker_pool_and_leave_no_staging_behind(ny, pg):
    ny.serve(dataset(("Albany", "Bronx", "Cayuga", "Delaware", "Essex", "Fulton", "Greene")))
    result = ny.daily()
    assert result.success
    assert len(materialized(result)) == 7
    leftovers = pg.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = %s",
                           (STAGING_SCHEMA,)).fetchone()[0]
    assert leftovers == 0
    # every row of one run shares the run's load_date
    stamps = pg.execute(f'SELECT count(DISTINCT load_date) FROM "{COUNTY_SCHEMA}".all_counties')
    assert stamps.fetchone()[0] == 1
    assert summary(result)["counties_held_back"] == []


def test_one_county_failing_to_publish_leaves_the_others_committed(ny, warehouse, pg):
    """Each county is its own transaction on its own connection: a broken table fails alone."""
    schema = COUNTY_SCHEMA
    wh = Warehouse(warehouse)
    staging = wh.staging_table("unit-test")
    reader = open_rows_json(io.BytesIO(rows_json(dataset())), source="test")
    assert wh.stage(staging, reader.batches()) == 15
    pg.execute(f'CREATE TABLE "{schema}".albany (test_date date PRIMARY KEY)')  # not the table we expect

    loaded, errors = publish_counties(wh, staging, ["Albany", "New York", "St. Lawrence"],
                                       {"Albany": "albany", "New York": "new_york", "St. Lawrence": "st_lawrence"},
                                       dt.datetime.now(dt.UTC), SourceVersion("test", dt.datetime.now(dt.UTC)),
                                       max_workers=2)
    wh.drop_staging(staging)
    assert set(loaded) == {"New York", "St. Lawrence"} and set(errors) == {"Albany"}
    assert "new_positives" in str(errors["Albany"])
    assert len(ny.rows("new_york")) == 3 and ny.rows("albany") == {}


def test_the_load_reads_the_parsed_copy_and_falls_back_to_the_json_without_it(ny, s3):
    ny.serve(dataset())
    first = ny.daily()
    raw = ny.latest_raw()
    assert summary(first)["staged_from"] == f"s3://raw/{raw['parsed_key']}"
    before = {t: ny.rows(t) for t in ("albany", "new_york", "st_lawrence")}

    s3.get_client().delete_object(Bucket="raw", Key=raw["parsed_key"])  # e.g. stored by an older parser
    again = ny.run(dg.RunRequest(asset_selection=[COUNTY_KEY], tags={
        "dagster/asset_partition_range_start": "Albany", "dagster/asset_partition_range_end": "St. Lawrence"}))
    assert again.success
    assert summary(again)["staged_from"] == f"s3://raw/{raw['s3_key']}"
    assert {t: ny.rows(t) for t in before} == before


def test_large_staging_is_rewritten_in_county_order_without_changing_its_rows(ny, warehouse, pg):
    """Above shared_buffers the staged rows are reordered so each county's upsert reads its own pages."""
    wh = Warehouse(warehouse)
    staging = wh.staging_table("order-test")
    reader = open_rows_json(io.BytesIO(rows_json(dataset(days=4))), source="test")
    assert wh.stage(staging, reader.batches()) == 20
    name = staging.as_string(pg)
    try:
        before = sorted(pg.execute(f"SELECT * FROM {name}").fetchall())
        assert wh.order_staging(staging) is False  # a few rows: far below shared_buffers, left as staged
        # An operator's lower threshold (NyTestingSettings.order_staging_above_mb) reorders it.
        assert Warehouse(warehouse, order_staging_above_mb=0).order_staging(staging) is True
        in_file_order = pg.execute(f"SELECT geography, county, test_date FROM {name} ORDER BY ctid").fetchall()
        assert in_file_order == sorted(in_file_order)  # physically in (geography, county, test_date) order
        assert sorted(pg.execute(f"SELECT * FROM {name}").fetchall()) == before
    finally:
        wh.drop_staging(staging)
