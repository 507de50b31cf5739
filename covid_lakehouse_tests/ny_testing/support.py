"""Helpers shared by the ny_testing tests (plain functions and classes; fixtures live in conftest.py).

``NyPipeline`` is the whole pipeline on the real services: a MockApi serving rows.json at the real
API's path (bodies built with snapshot.write_rows_json), the domain's definitions merged with the
platform's resources, an ephemeral instance, and methods that drive it the way the daemon does
(schedule's job, one sensor tick, the run it requests). Row builders and result readers are below.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Sequence
from datetime import date, timedelta
from importlib import resources

import dagster as dg
import psycopg
from psycopg import sql

from covid_lakehouse.defs.ny_testing.definitions import defs as ny_testing_defs
from covid_lakehouse.defs.ny_testing.resources import NyTestingSettings
from covid_lakehouse.defs.ny_testing.snapshot import CSV_HEADER_COLUMNS, ColumnSpec, write_rows_json
from covid_lakehouse.defs.ny_testing.warehouse import COUNTY_SCHEMA, REFERENCE_SCHEMA, STAGING_SCHEMA
from covid_lakehouse.lib.clock import FakeClock
from covid_lakehouse.lib.policies import rebuilt
from covid_lakehouse.lib.resources import HttpResource
from covid_lakehouse_dev.apis.harness import MockApi, MockResponse
from covid_lakehouse_dev.apis.ny_testing import ROWS_PATH

SNAPSHOT = resources.files("covid_lakehouse.defs.ny_testing") / "data" / "xdss-u53e_rows.json.gz"
COLUMNS: list[ColumnSpec] = list(CSV_HEADER_COLUMNS.values())  # test_date ... test_positive, geography
START = date(2022, 9, 11)
Row = list[str | None]


COUNTY_KEY = dg.AssetKey(["ny_testing", "county_tests"])


# ---- small rows.json variants ------------------------------------------------------------------------
def county_series(name: str, days: int = 3, *, start: date = START, new_positives: int = 5, tests: int = 100,
                  geography: str = "COUNTY") -> list[Row]:
    """``days`` consistent rows (cumulative = previous + new) in the API's representation (strings)."""
    rows, cum_pos, cum_tests = [], 1000, 20000
    for i in range(days):
        cum_pos, cum_tests = cum_pos + new_positives, cum_tests + tests
        rows.append([f"{start + timedelta(days=i)}T00:00:00", name, str(new_positives), str(cum_pos), str(tests),
                     str(cum_tests), f"{100 * new_positives / tests:.2f}", geography])
    return rows


def with_totals(rows: list[Row], region: Sequence[str] = ("New York",)) -> list[Row]:
    """Add a STATEWIDE row per date (sum of every county) and a REGION "New York City" (sum of ``region``)."""
    state: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    nyc: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in rows:
        for target in (state, nyc) if r[1] in region else (state,):
            target[r[0]] = [a + int(b) for a, b in zip(target[r[0]], r[2:6], strict=True)]
    extra = [[d, "STATEWIDE", *map(str, v), "0.00", "STATEWIDE"] for d, v in state.items()]
    extra += [[d, "New York City", *map(str, v), "0.00", "REGION"] for d, v in nyc.items()]
    return rows + extra


def dataset(counties: Sequence[str] = ("Albany", "New York", "St. Lawrence"), days: int = 3, *,
            start: date = START, totals: bool = True) -> list[Row]:
    rows = [r for i, c in enumerate(counties)
            for r in county_series(c, days, start=start, new_positives=5 + i, tests=100 + 10 * i)]
    return with_totals(rows) if totals else rows


def rows_json(rows: list[Row], columns: list[ColumnSpec] = COLUMNS) -> bytes:
    out = io.BytesIO()
    write_rows_json(out, columns, rows)
    return out.getvalue()


# ---- the pipeline on real services -------------------------------------------------------------------
class NyPipeline:
    def __init__(self, api: MockApi, settings: NyTestingSettings, resources: dict, http: HttpResource,
                 instance: dg.DagsterInstance, pg: psycopg.Connection, clock: FakeClock) -> None:
        self.api, self.settings, self.instance, self.pg, self.clock = api, settings, instance, pg, clock
        self.defs = rebuilt(ny_testing_defs, resources={**resources, "http": http, "ny_testing_settings": settings})
        self.body = b""
        self.cursor: str | None = None
        api.route("GET", ROWS_PATH, lambda _: MockResponse(200, self.body))

    # what the source serves
    def serve(self, rows: list[Row], columns: list[ColumnSpec] = COLUMNS) -> None:
        self.body = rows_json(rows, columns)

    # the daemon's steps
    def download(self) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_job_def("ny_testing_raw_job")
        return job.execute_in_process(instance=self.instance, raise_on_error=False)

    def tick(self):
        """One evaluation of the sensor with the cursor kept between ticks; applies its partition requests."""
        sensor = self.defs.resolve_sensor_def("ny_testing_county_partitions")
        with dg.build_sensor_context(instance=self.instance, cursor=self.cursor, definitions=self.defs) as context:
            data = sensor.evaluate_tick(context)
        for request in data.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        self.cursor = data.cursor or self.cursor
        return data

    def run(self, request: dg.RunRequest, **kwargs) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_implicit_global_asset_job_def()
        return job.execute_in_process(instance=self.instance, asset_selection=list(request.asset_selection),
                                      tags=request.tags, raise_on_error=False, **kwargs)

    def daily(self) -> dg.ExecuteInProcessResult:
        """Download, tick, run the one requested load; returns the load's result."""
        downloaded = self.download()
        assert downloaded.success, downloaded.all_events
        data = self.tick()
        assert len(data.run_requests) == 1
        return self.run(data.run_requests[0])

    # what landed
    def partitions(self) -> list[str]:
        return list(self.instance.get_dynamic_partitions("ny_testing_counties"))

    def tables(self, schema: str | None = None) -> set[str]:
        schema = schema or COUNTY_SCHEMA
        rows = self.pg.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                               (schema,)).fetchall()
        return {r[0] for r in rows}

    def rows(self, table: str, schema: str | None = None) -> dict[date, dict]:
        schema = schema or COUNTY_SCHEMA
        cur = self.pg.execute(sql.SQL("SELECT * FROM {} ORDER BY test_date").format(sql.Identifier(schema, table)))
        names = [d.name for d in cur.description]
        return {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}

    def latest_raw(self) -> dict:
        event = self.instance.get_latest_materialization_event(dg.AssetKey(["ny_testing", "raw_rows_json"]))
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def materialized(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    """Partition -> metadata values of the county materializations in a run."""
    out = {}
    for m in result.asset_materializations_for_node("ny_testing__county_tests"):
        out[m.partition] = {k: v.value for k, v in m.metadata.items()}
    return out

DERIVED_SCHEMA = "ny_testing_derived"  # positivity_7d, written by the warehouse IO manager


def empty_ny_testing_schemas(pg: psycopg.Connection) -> None:
    """The domain's schemas as the migrations leave them: no county table, view, staging or derived
    table, an empty reference table (the schemas are fixed, so tests share them and start from this
    state; the demo test loads the same schemas)."""
    pg.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(sql.Identifier(COUNTY_SCHEMA, "all_counties")))
    for schema in (COUNTY_SCHEMA, STAGING_SCHEMA, DERIVED_SCHEMA):
        for (table,) in pg.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)).fetchall():
            pg.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, table)))
    for table in ("geography_totals", "table_versions"):  # table_versions: once its migration ran
        if pg.execute("SELECT to_regclass(%s)", (f"{REFERENCE_SCHEMA}.{table}",)).fetchone()[0] is not None:
            pg.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(REFERENCE_SCHEMA, table)))


