"""The vaccines assets end to end: a real mock HTTP server serving the bundled files at the lake's
paths, real S3 and PostgreSQL (session fixtures), Dagster's own execution. Expected figures come from
the raw files through the csv-module helpers in conftest (`ref`), not from the code under test."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
from collections.abc import Iterator

import dagster as dg
import pytest

from covid_lakehouse import runtime
from covid_lakehouse.defs.vaccines.assets import PEOPLE_PER_DOSE_KEY, RAW_KEY, people_per_dose, raw_sources
from covid_lakehouse.defs.vaccines.definitions import defs as vaccines_defs
from covid_lakehouse.defs.vaccines.report import ReportUnavailable, people_per_dose_report
from covid_lakehouse.defs.vaccines.resources import (
    DEFAULT_ALLOCATION_URLS,
    DEFAULT_POPULATION_URL,
    SourceConfigError,
    VaccinesSettings,
    public_url,
)
from covid_lakehouse.defs.vaccines.schedules import vaccines_refresh, vaccines_weekly
from covid_lakehouse.defs.vaccines.transform import FOLDED_CITIES, STATES
from covid_lakehouse.lib.resources import HttpResource, platform_resources
from covid_lakehouse_dev.apis.harness import Fault, MockApi, MockResponse
from covid_lakehouse_dev.apis.vaccines import ALLOCATION_FILES, POPULATION_FILE, lake_path, register
from covid_lakehouse_tests.vaccines import support as ref

pytestmark = pytest.mark.integration

MODERNA_PATH = lake_path(DEFAULT_ALLOCATION_URLS["moderna"])
PFIZER_PATH = lake_path(DEFAULT_ALLOCATION_URLS["pfizer"])
POPULATION_PATH = lake_path(DEFAULT_POPULATION_URL)
JANSSEN_PATH = "/covid19-lake/cdc-janssen-vaccine-distribution/csv/janssen.csv"
TERRITORIES_AND_FEDERAL = {
    "Federal Entities", "Puerto Rico", "U.S. Virgin Islands", "Guam", "American Samoa", "Mariana Islands",
    "Marshall Islands", "Micronesia", "Palau",
}
PEOPLE_COLUMNS = ("state, population, doses_moderna, doses_pfizer, total_doses, people_per_dose, "
                  "first_allocation_week, last_allocation_week, loaded_at")


# ---- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def lake() -> Iterator[tuple[MockApi, dict[str, str]]]:
    """The offline lake: the domain's own mock routes on a real local HTTP server."""
    api = MockApi()
    env = register(api)
    with api:
        yield api, {k: v.replace("{base}", api.url) for k, v in env.items()}


@pytest.fixture
def api(lake) -> Iterator[MockApi]:
    mock = lake[0]
    mock.reset()
    yield mock
    mock.reset()


@pytest.fixture
def sources(lake) -> VaccinesSettings:
    env = lake[1]
    return VaccinesSettings(allocation_urls={"moderna": env["VACCINES_MODERNA_URL"], "pfizer": env["VACCINES_PFIZER_URL"]},
                          population_url=env["VACCINES_POPULATION_URL"])


@pytest.fixture
def fresh_tables(pg, reset_domain) -> Iterator[None]:
    """Every test starts without the vaccines tables (as on a new database) and leaves none behind."""
    reset_domain("vaccines")
    yield
    reset_domain("vaccines")


def materialize(resources: dict, instance: dg.DagsterInstance, sources: VaccinesSettings, **overrides):
    return dg.materialize([raw_sources, people_per_dose], instance=instance, raise_on_error=False,
                          resources={**resources, "vaccines_settings": sources, **overrides})


def published(pg) -> tuple[list[tuple], list[tuple]]:
    """Both tables, every column (loaded_at included)."""
    return (pg.execute("SELECT * FROM vaccines.people_per_dose ORDER BY state").fetchall(),
            pg.execute("SELECT * FROM vaccines.excluded_jurisdictions ORDER BY jurisdiction").fetchall())


def raw_objects(s3) -> dict[str, tuple[str, object]]:
    """key -> (ETag, LastModified) of every raw object of the domain."""
    client = s3.get_client()
    objects: dict[str, tuple[str, object]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="raw", Prefix="vaccines/"):
        for item in page.get("Contents", []):
            objects[item["Key"]] = (item["ETag"], item["LastModified"])
    return objects


def checks(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def materialization(result, key: dg.AssetKey) -> dg.AssetMaterialization:
    [event] = [m for m in result.asset_materializations_for_node(key.to_python_identifier())]
    return event


def serve(api: MockApi, path: str, body: bytes, content_type: str = "text/csv") -> None:
    api.fail_next(path, Fault.custom(MockResponse(200, body, content_type=content_type)))


def requests_to(api: MockApi, path: str) -> int:
    return sum(r.path == path for r in api.requests)


def edited_csv(path, edit) -> bytes:
    """The file re-written with the csv module after edit(header, rows) changed it in place."""
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    header, body = rows[0], rows[1:]
    edit(header, body)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL).writerows([header, *body])
    return out.getvalue().encode()


def expected_state(ref, state: str) -> dict:
    """A state's figures straight from the raw files: its own rows plus its folded cities' rows."""
    parts = [state, *[city for city, s in FOLDED_CITIES.items() if s == state]]
    doses: dict[str, int] = {}
    weeks = []
    for name, path in (("moderna", ref.MODERNA_DEMO), ("pfizer", ref.PFIZER_DEMO)):
        rows = [r for r in ref.raw_rows(path) if r["jurisdiction"] in parts]
        doses[name] = sum(r["first"] + r["second"] for r in rows)
        weeks += [dt.date.fromisoformat(r["week"][:10]) for r in rows if r["first"] + r["second"] > 0]
    population = ref.raw_pep_population_by_state()[state]
    return {"population": population, **doses, "total": sum(doses.values()),
            "ratio": population / sum(doses.values()), "first": min(weeks), "last": max(weeks)}


# ---- the happy path -----------------------------------------------------------------------------


def test_publishes_51_states_with_figures_from_the_raw_files(api, sources, resources, instance, pg, s3,
                                                             fresh_tables) -> None:
    result = materialize(resources, instance, sources)
    assert result.success

    rows = {r[0]: r for r in pg.execute(f"SELECT {PEOPLE_COLUMNS} FROM vaccines.people_per_dose").fetchall()}
    assert sorted(rows) == sorted(STATES)
    assert sum(r[1] for r in rows.values()) == 327_167_434
    for state in ("New York", "Pennsylvania", "Wyoming"):
        expected = expected_state(ref, state)
        _, population, moderna, pfizer, total, ratio, first, last, loaded_at = rows[state]
        assert (population, moderna, pfizer, total) == (
            expected["population"], expected["moderna"], expected["pfizer"], expected["total"])
        assert ratio == pytest.approx(expected["ratio"])
        assert (first, last) == (expected["first"], expected["last"])
        assert loaded_at is not None
    assert rows["New York"][6] == dt.date(2021, 3, 8)

    raw = ref.raw_doses_by_jurisdiction(ref.MODERNA_DEMO, ref.PFIZER_DEMO)
    excluded = dict(pg.execute("SELECT jurisdiction, total_doses FROM vaccines.excluded_jurisdictions").fetchall())
    assert excluded == {j: raw[j] for j in TERRITORIES_AND_FEDERAL}
    # doses reconcile with every source row, independently of the checks
    assert sum(r[4] for r in rows.values()) + sum(excluded.values()) == sum(raw.values())

    evaluations = checks(result)
    assert {name: e.passed for name, e in evaluations.items()} == {
        "fifty_one_rows": True, "population_total": True, "doses_reconcile": True, "sources_not_truncated": False,
    }
    warning = evaluations["sources_not_truncated"]
    assert warning.severity == dg.AssetCheckSeverity.WARN
    assert "https://data.cdc.gov/resource/b7pe-5nws.csv?$limit=50000" in warning.description
    assert "https://data.cdc.gov/resource/saz5-9hgg.csv?$limit=50000" in warning.description

    metadata = materialization(result, PEOPLE_PER_DOSE_KEY).metadata
    assert metadata["dagster/row_count"].value == 51
    assert [c.name for c in metadata["dagster/column_schema"].schema.columns][:3] == [
        "state", "population", "doses_moderna"]
    lowest = min(rows.values(), key=lambda r: r[5])[0]
    assert f"| 1 | {lowest} |" in metadata["preview"].value
    assert "Federal Entities" in metadata["excluded_jurisdictions"].value
    assert metadata["excluded_total_doses"].value == sum(excluded.values())
    assert "$limit=50000" in metadata["truncation_warning"].value
    assert metadata["published"].value is True

    # raw objects: write-once, content-addressed by the sha256 of exactly what was served
    stored = {s["name"]: s for s in materialization(result, RAW_KEY).metadata["sources"].value}
    client = s3.get_client()
    for name, path in (*ALLOCATION_FILES.items(), ("population", POPULATION_FILE)):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert stored[name]["sha256"] == digest
        assert stored[name]["key"].endswith(f"/sha256={digest}.csv")
        head = client.head_object(Bucket="raw", Key=stored[name]["key"])
        assert head["Metadata"]["sha256"] == digest and head["ContentLength"] == path.stat().st_size
        body = client.get_object(Bucket="raw", Key=stored[name]["key"])["Body"].read()
        assert body == path.read_bytes()


def test_rerun_with_unchanged_sources_changes_nothing(api, sources, resources, instance, pg, s3, fresh_tables) -> None:
    assert materialize(resources, instance, sources).success
    tables, objects = published(pg), raw_objects(s3)

    again = materialize(resources, instance, sources)
    assert again.success
    assert raw_objects(s3) == objects  # no new raw object, none rewritten
    raw_meta = materialization(again, RAW_KEY).metadata
    assert raw_meta["new_objects"].value == 0 and raw_meta["unchanged"].value is True
    assert published(pg) == tables  # same rows, same loaded_at
    meta = materialization(again, PEOPLE_PER_DOSE_KEY).metadata
    assert meta["published"].value is False and meta["rows_changed"].value == 0
    assert meta["publish"].value.startswith("unchanged")


def test_a_changed_source_is_stored_anew_and_only_changed_rows_get_a_new_loaded_at(
        api, sources, resources, instance, pg, s3, fresh_tables) -> None:
    assert materialize(resources, instance, sources).success
    before = {r[0]: r for r in published(pg)[0]}
    objects = raw_objects(s3)

    def more_for_maine(header, rows):
        row = next(r for r in rows if r[0] == "Maine")
        row[2] = str(int(row[2]) + 100)

    changed = edited_csv(ALLOCATION_FILES["moderna"], more_for_maine)
    serve(api, MODERNA_PATH, changed)
    result = materialize(resources, instance, sources)
    assert result.success

    new_keys = set(raw_objects(s3)) - set(objects)
    assert new_keys == {f"vaccines/allocations/moderna/sha256={hashlib.sha256(changed).hexdigest()}.csv"}
    after = {r[0]: r for r in published(pg)[0]}
    assert after["Maine"][2] == before["Maine"][2] + 100  # doses_moderna
    assert after["Maine"][-1] > before["Maine"][-1]  # loaded_at: this row changed
    assert {s: r for s, r in after.items() if s != "Maine"} == {s: r for s, r in before.items() if s != "Maine"}
    assert materialization(result, PEOPLE_PER_DOSE_KEY).metadata["rows_changed"].value == 1


# ---- write-audit-publish with a failing blocking check ------------------------------------------


def test_failing_blocking_check_keeps_the_published_tables(api, sources, resources, instance, pg, fresh_tables) -> None:
    assert materialize(resources, instance, sources).success
    tables = published(pg)

    # The Census county file "with Puerto Rico": parses, and Puerto Rico is a known jurisdiction, so the
    # run reaches the audit, where the population no longer adds up to the source's total.
    puerto_rico = [f'0500000US7200{i},7200{i},"Municipio {i}, Puerto Rico",' + ",".join(["10000"] * 11) + "\r\n"
                   for i in (1, 3)]
    serve(api, POPULATION_PATH, POPULATION_FILE.read_bytes() + "".join(puerto_rico).encode("latin-1"))
    result = materialize(resources, instance, sources)

    assert not result.success
    assert result.asset_materializations_for_node(RAW_KEY.to_python_identifier())  # raw data is fine and kept
    evaluations = checks(result)
    population = evaluations["population_total"]
    assert population.passed is False and population.severity == dg.AssetCheckSeverity.ERROR
    assert population.metadata["difference"].value == 20_000
    assert population.metadata["source_total"].value == 327_187_434
    assert "Puerto Rico: 20,000" in population.description
    assert evaluations["fifty_one_rows"].passed and evaluations["doses_reconcile"].passed
    error = result.failure_data_for_node(PEOPLE_PER_DOSE_KEY.to_python_identifier()).error.message
    assert "nothing published" in error and "population_total" in error
    assert not result.asset_materializations_for_node(PEOPLE_PER_DOSE_KEY.to_python_identifier())
    assert published(pg) == tables


def test_failing_check_also_rolls_back_a_new_manufacturer_column(lake, api, sources, resources, instance, pg,
                                                                  fresh_tables) -> None:
    assert materialize(resources, instance, sources).success
    tables = published(pg)
    janssen_file = ref.FIXTURES / "cdc_full_Rwritecsv_janssen_thru_2021-06-21.csv"
    lake[0].route("GET", JANSSEN_PATH, lambda _: MockResponse.file(janssen_file, "text/csv"))
    three = VaccinesSettings(allocation_urls={**sources.allocation_urls, "janssen": lake[0].url + JANSSEN_PATH},
                           population_url=sources.population_url)
    serve(api, POPULATION_PATH, POPULATION_FILE.read_bytes()
          + b'0500000US72001,72001,"Adjuntas Municipio, Puerto Rico",' + b",".join([b"1"] * 11) + b"\r\n")

    result = materialize(resources, instance, three)

    assert not result.success and checks(result)["population_total"].passed is False
    columns = [r[0] for r in pg.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = "
                                        "'vaccines' AND table_name = 'people_per_dose'").fetchall()]
    assert "doses_janssen" not in columns  # the ALTER TABLE was part of the rolled-back transaction
    assert published(pg) == tables


# ---- bad input: a clear error, nothing stored, nothing published -----------------------------------


def _drop_week_column(header, rows):
    i = header.index("week_of_allocations")
    for r in [header, *rows]:
        del r[i]


def _dose_not_a_number(header, rows):
    rows[4][header.index("_1st_dose_allocations")] = "N/A"


BAD_INPUTS = {
    "html-outage-page": (MODERNA_PATH, lambda ref: (ref.FIXTURES / "soda_outage_html_body_2021-02-21.csv.txt").read_bytes(),
                         "text/html", "got an HTML page instead of CSV: 'Site Currently Unavailable"),
    "json-error-body": (PFIZER_PATH, lambda ref: (ref.FIXTURES / "soda_outage_json_error_2021-09-28.csv.txt").read_bytes(),
                        "application/json", "got a JSON body instead of CSV: 'Internal error: please include code"),
    "json-error-on-population": (POPULATION_PATH,
                                 lambda ref: (ref.FIXTURES / "soda_outage_json_error_2022-01-12.csv.txt").read_bytes(),
                                 "application/json", "got a JSON body instead of CSV: 'Internal error' (status=500)"),
    "missing-column": (MODERNA_PATH, lambda ref: edited_csv(ref.MODERNA_DEMO, _drop_week_column), "text/csv",
                       "missing column(s) 'Week of Allocations' for moderna allocations"),
    "non-numeric-dose": (PFIZER_PATH, lambda ref: edited_csv(ref.PFIZER_DEMO, _dose_not_a_number), "text/csv",
                         "column '_1st_dose_allocations', line 6: 'N/A' is not a whole number"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_clearly_and_leaves_everything_intact(case, lake, api, sources, resources, instance,
                                                              pg, s3, fresh_tables) -> None:
    path, body, content_type, message = BAD_INPUTS[case]
    assert materialize(resources, instance, sources).success
    tables, objects = published(pg), raw_objects(s3)
    api.reset()

    serve(api, path, body(ref), content_type)
    result = materialize(resources, instance, sources)

    assert not result.success
    error = result.failure_data_for_node(RAW_KEY.to_python_identifier()).error.message
    assert message in error
    assert lake[0].url + path in error  # names the source
    assert "Nothing was stored in S3 and the published vaccines tables are unchanged" in error
    assert "<" not in error.split(lake[0].url + path, 1)[1]  # an HTML page is reduced to its text
    assert requests_to(api, path) == 1  # bad data is not retried
    assert not result.asset_materializations_for_node(PEOPLE_PER_DOSE_KEY.to_python_identifier())
    assert published(pg) == tables
    assert raw_objects(s3) == objects  # the bad body was never stored


def test_outage_page_with_503_fails_after_the_http_retry_budget(lake, api, sources, resources, instance, pg, s3,
                                                                fresh_tables) -> None:
    assert materialize(resources, instance, sources).success
    tables, objects = published(pg), raw_objects(s3)
    api.reset()

    api.fail_next(MODERNA_PATH, Fault.html_outage(503), times=5)
    result = materialize(resources, instance, sources, http=HttpResource(max_attempts=2, backoff_base_s=0.001))

    assert not result.success
    error = result.failure_data_for_node(RAW_KEY.to_python_identifier()).error.message
    assert "HTTP 503" in error and "Site Currently Unavailable" in error and lake[0].url + MODERNA_PATH in error
    assert requests_to(api, MODERNA_PATH) == 2  # the client's budget; the RetryPolicy does not multiply it
    assert published(pg) == tables and raw_objects(s3) == objects


def test_an_outage_that_clears_within_the_budget_is_invisible(api, sources, resources, instance, pg,
                                                               fresh_tables) -> None:
    api.fail_next(PFIZER_PATH, Fault.html_outage(503), times=1)
    result = materialize(resources, instance, sources, http=HttpResource(max_attempts=3, backoff_base_s=0.001))
    assert result.success
    assert requests_to(api, PFIZER_PATH) == 2
    assert pg.execute("SELECT count(*) FROM vaccines.people_per_dose").fetchone()[0] == 51


# ---- configuration ------------------------------------------------------------------------------


def test_janssen_is_added_by_configuration_and_removed_again(lake, api, sources, resources, instance, pg,
                                                              fresh_tables) -> None:
    janssen_file = ref.FIXTURES / "cdc_full_Rwritecsv_janssen_thru_2021-06-21.csv"
    lake[0].route("GET", JANSSEN_PATH, lambda _: MockResponse.file(janssen_file, "text/csv"))
    assert materialize(resources, instance, sources).success  # published with two manufacturers first

    three = VaccinesSettings(allocation_urls={**sources.allocation_urls, "janssen": lake[0].url + JANSSEN_PATH},
                           population_url=sources.population_url)
    result = materialize(resources, instance, three)
    assert result.success
    texas = pg.execute("SELECT doses_moderna, doses_pfizer, doses_janssen, total_doses FROM vaccines.people_per_dose "
                       "WHERE state = 'Texas'").fetchone()
    raw_janssen = ref.raw_doses_by_jurisdiction(janssen_file)
    assert texas[2] == raw_janssen["Texas"] > 0  # the ALTER TABLE'd column, filled
    assert texas[3] == texas[0] + texas[1] + texas[2]
    assert all(e.passed for e in checks(result).values() if e.check_name != "sources_not_truncated")
    assert "janssen" in people_per_dose_report(pg)

    assert materialize(resources, instance, sources).success  # Janssen no longer configured
    nulls, total = pg.execute("SELECT count(*) FILTER (WHERE doses_janssen IS NULL), sum(total_doses) "
                              "FROM vaccines.people_per_dose").fetchone()
    assert nulls == 51
    assert total == sum(expected_state(ref, s)["total"] for s in STATES)
    assert "janssen" not in people_per_dose_report(pg)


def test_sources_resolve_config_then_environment_then_lake(monkeypatch) -> None:
    for name in ("VACCINES_MANUFACTURERS", "VACCINES_MODERNA_URL", "VACCINES_PFIZER_URL", "VACCINES_JANSSEN_URL",
                 "VACCINES_POPULATION_URL"):
        monkeypatch.delenv(name, raising=False)
    assert VaccinesSettings().allocations() == DEFAULT_ALLOCATION_URLS
    assert VaccinesSettings().population() == DEFAULT_POPULATION_URL

    monkeypatch.setenv("VACCINES_MODERNA_URL", "http://mirror/moderna.csv")
    monkeypatch.setenv("VACCINES_POPULATION_URL", "http://mirror/pop.csv")
    assert VaccinesSettings().allocations() == {"moderna": "http://mirror/moderna.csv",
                                              "pfizer": DEFAULT_ALLOCATION_URLS["pfizer"]}
    assert VaccinesSettings().population() == "http://mirror/pop.csv"
    # a config URL may name the operator's host (lib/http/hosts.py)
    assert VaccinesSettings(population_url="http://mirror/pop2.csv").population() == "http://mirror/pop2.csv"

    monkeypatch.setenv("VACCINES_MANUFACTURERS", "moderna, pfizer, janssen")
    with pytest.raises(SourceConfigError, match="VACCINES_JANSSEN_URL is not set"):
        VaccinesSettings().allocations()
    monkeypatch.setenv("VACCINES_JANSSEN_URL", "https://data.cdc.gov/resource/w9zu-fywh.csv?$limit=50000")
    assert list(VaccinesSettings().allocations()) == ["moderna", "pfizer", "janssen"]

    with pytest.raises(SourceConfigError, match="lower-case name"):
        VaccinesSettings(allocation_urls={"J&J; drop": "http://x/j.csv"}).allocations()
    assert public_url("https://u:pw@h/r.csv?$limit=5&$$app_token=secret") == "https://h/r.csv?$limit=5&$$app_token=REDACTED"


def test_a_bad_configuration_fails_at_once_without_retries(api, resources, instance) -> None:
    result = materialize(resources, instance, VaccinesSettings(allocation_urls={"moderna": "ftp://x/m.csv"}))
    assert not result.success
    error = result.failure_data_for_node(RAW_KEY.to_python_identifier()).error.message
    assert "moderna: 'ftp://x/m.csv' is not an http(s) URL" in error
    assert sum(1 for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY") == 0
    assert api.requests == []


def test_mock_api_registrar_points_the_domain_at_the_lake_paths() -> None:
    env = register(MockApi())
    assert env == {"VACCINES_MODERNA_URL": "{base}" + MODERNA_PATH, "VACCINES_PFIZER_URL": "{base}" + PFIZER_PATH,
                   "VACCINES_POPULATION_URL": "{base}" + POPULATION_PATH}
    assert MODERNA_PATH == ("/covid19-lake/cdc-moderna-vaccine-distribution/csv/"
                            "cdc-moderna-covid-19-vaccine-distribution-by-state.csv")
    assert POPULATION_PATH == "/covid19-lake/static-datasets/csv/CountyPopulation/County_Population.csv"


def test_domain_definitions_run_like_the_demo(lake, api, services, instance, pg, monkeypatch, fresh_tables) -> None:
    """The Definitions as shipped (VaccinesSettings() unconfigured) pointed at the mock by environment
    variables set after import, as `make demo` does, and run by the demo's own runner."""
    for name, value in lake[1].items():
        monkeypatch.setenv(name, value)
    defs = dg.Definitions.merge(vaccines_defs, dg.Definitions(resources=platform_resources()))
    dg.Definitions.validate_loadable(defs)
    report = runtime.run_demo(defs, instance)
    assert report.ok
    assert set(report.materialized) == {"vaccines/raw_sources", "vaccines/people_per_dose",
                                        "vaccines/people_per_dose_ranking"}
    assert {(c, p) for _, c, p, _ in report.checks} >= {("population_total", True), ("sources_not_truncated", False)}
    assert pg.execute("SELECT count(*) FROM vaccines.people_per_dose").fetchone()[0] == 51


def test_weekly_schedule_refreshes_the_whole_domain() -> None:
    assert vaccines_weekly.cron_schedule == "0 6 * * 1"
    assert vaccines_weekly.execution_timezone == "America/New_York"
    assert vaccines_weekly.job_name == vaccines_refresh.name == "vaccines_refresh"
    assert vaccines_weekly.default_status == dg.DefaultScheduleStatus.RUNNING
    defs = dg.Definitions.merge(vaccines_defs, dg.Definitions(resources=platform_resources()))
    job = defs.resolve_job_def("vaccines_refresh")
    assert set(job.asset_layer.asset_graph.get_all_asset_keys()) == {RAW_KEY, PEOPLE_PER_DOSE_KEY,
                                                                     dg.AssetKey(["vaccines", "people_per_dose_ranking"])}
    with dg.build_schedule_context(scheduled_execution_time=dt.datetime(2024, 1, 8, 6, 0)) as context:
        [request] = vaccines_weekly.evaluate_tick(context).run_requests
    assert request.asset_selection is None  # the job's own selection: both assets and their checks
    assert job.tags["covid_lakehouse/pool"] == "covid19-lake"  # one run at a time against the lake
    policy = raw_sources.op.retry_policy  # infrastructure errors only: bad data and HTTP errors are final
    assert (policy.max_retries, policy.delay, policy.backoff, policy.jitter) == (
        2, 10, dg.Backoff.EXPONENTIAL, dg.Jitter.PLUS_MINUS)


# ---- the report -----------------------------------------------------------------------------------


def test_report_prints_the_states_sorted_by_people_per_dose(api, sources, resources, instance, pg,
                                                            fresh_tables) -> None:
    with pytest.raises(ReportUnavailable, match="not been published yet"):
        people_per_dose_report(pg)
    assert materialize(resources, instance, sources).success

    text = people_per_dose_report(pg)
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("-")) + 1
    table = lines[start:start + 51]
    printed = [_state_of(line) for line in table]

    ratios = {s: expected_state(ref, s)["ratio"] for s in STATES}
    assert printed == sorted(STATES, key=lambda s: (ratios[s], s))
    new_york = next(line for line in table if _state_of(line) == "New York")
    assert f"{ratios['New York']:.2f}" in new_york and f"{expected_state(ref, 'New York')['total']:,}" in new_york
    assert lines[1].startswith("manufacturers: moderna, pfizer; allocation weeks 2021-03-08 .. 2021-06-21;")
    assert "Excluded" in text and "Federal Entities" in text


def _state_of(line: str) -> str:
    """'12  New York   19,542,209 ...' -> 'New York' (the rank, then the state, then numbers)."""
    words = line.split()[1:]
    return " ".join(w for w in words if not any(ch.isdigit() for ch in w) and w != "n/a")
