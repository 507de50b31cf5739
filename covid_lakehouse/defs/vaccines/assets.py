"""Vaccines: people per vaccine dose for the 50 states and DC.

vaccines/raw_sources downloads every configured source, parses it (so an HTML/JSON error page served
at a .csv URL fails the run with the parser's message and is never stored: nothing is quarantined,
the error names the URL and quotes the page), then stores each body write-once in S3 under a
content-addressed key, raw/vaccines/<kind>/[<manufacturer>/]sha256=<digest>.csv. An unchanged source
has the same key, so nothing is written. The keys and digests go into the materialization's metadata.

vaccines/people_per_dose reads the objects named by the latest raw_sources materialization back from
S3 (verifying their sha256), computes the table and publishes it with write-audit-publish (publish.py).
The publish records which raw_sources materialization (download) the tables reflect; a run holding an
older download than the published one (it read the latest before a newer run downloaded and published)
writes nothing, reports "superseded by ..." in an observation and materializes nothing.
"""

import hashlib
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pandas as pd

from covid_lakehouse.defs.vaccines import publish
from covid_lakehouse.defs.vaccines.resources import VaccinesSettings, max_body_bytes, public_url
from covid_lakehouse.defs.vaccines.sources import (
    SourceFormatError,
    is_truncated,
    parse_allocations,
    parse_population,
)
from covid_lakehouse.defs.vaccines.transform import STATES, Result, dose_column
from covid_lakehouse.defs.vaccines.transform import people_per_dose as compute_people_per_dose
from covid_lakehouse.lib.postgres import PostgresResource
from covid_lakehouse.lib.resources import HttpResource
from covid_lakehouse.lib.s3 import LakeS3Resource, ObjectExistsError
from covid_lakehouse.lib.source_versions import SourceVersion
from covid_lakehouse.lib.wap import audit_check_specs

GROUP = "vaccines"
RAW_BUCKET = "raw"
RAW_KEY = dg.AssetKey(["vaccines", "raw_sources"])
PEOPLE_PER_DOSE_KEY = dg.AssetKey(["vaccines", "people_per_dose"])
POPULATION = "population"
ALLOCATIONS = "allocations"


@dataclass(frozen=True)
class StoredSource:
    """One raw object, as recorded in raw_sources' metadata ("sources") and read by people_per_dose."""

    kind: str  # "allocations" or "population"
    name: str  # manufacturer, or "population"
    url: str  # public form (query values redacted)
    bucket: str
    key: str
    sha256: str
    bytes: int
    rows: int
    newly_stored: bool

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def raw_key(kind: str, name: str, sha256: str) -> str:
    folder = f"vaccines/{kind}" if kind == POPULATION else f"vaccines/{kind}/{name}"
    return f"{folder}/sha256={sha256}.csv"


def _parse(kind: str, name: str, body: bytes, source: str) -> pd.DataFrame:
    if kind == POPULATION:
        return parse_population(body, source=source)
    return parse_allocations(body, source=source, manufacturer=name)


def _bad_source(err: Exception, what: str) -> dg.Failure:
    """Bad data, not a flaky service: fail clearly and do not retry (a retry would read the same)."""
    return dg.Failure(
        description=f"{err}. {what}",
        metadata={"error": type(err).__name__},
        allow_retries=False,
    )


@dg.asset(
    key=RAW_KEY,
    group_name=GROUP,
    kinds={"s3"},
    io_manager_key="s3_object_io_manager",  # loads as {source name: verified bytes} (metadata "sources")
    retry_policy=dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS),
    description="CDC weekly vaccine allocations (one CSV per configured manufacturer) and 2018 county "
    "populations, downloaded, parsed, and kept write-once in S3 (bucket raw, content-addressed keys).",
)
def raw_sources(context: dg.AssetExecutionContext, vaccines_settings: VaccinesSettings, http: HttpResource,
                s3: LakeS3Resource) -> dg.MaterializeResult:
    try:
        wanted = [(ALLOCATIONS, name, url) for name, url in vaccines_settings.allocations().items()]
        wanted.append((POPULATION, POPULATION, vaccines_settings.population()))
    except ValueError as err:  # SourceConfigError, UnsafeIdentifierError: fix the configuration
        raise _bad_source(err, "Nothing was downloaded; see docs/vaccines.md for the configuration.") from None
    stored: list[StoredSource] = []
    with tempfile.TemporaryDirectory(prefix="vaccines-") as tmp, http.client(max_body_bytes=max_body_bytes()) as client:
        downloads = []
        # Download and parse everything first: one bad source stores nothing at all.
        for kind, name, url in wanted:
            path = Path(tmp) / f"{kind}-{name}.csv"
            with path.open("w+b") as sink:
                download = client.download(url, sink)
            try:
                rows = len(_parse(kind, name, path.read_bytes(), public_url(url)))
            except SourceFormatError as err:
                raise _bad_source(err, f"Nothing was stored in S3 and the published vaccines tables are "
                                       f"unchanged; fix the {name} source or point it elsewhere.") from None
            context.log.info("%s %s: %s bytes, %s rows, sha256 %s", kind, name, download.bytes, rows, download.sha256)
            downloads.append((kind, name, url, path, download, rows))
        for kind, name, url, path, download, rows in downloads:
            key = raw_key(kind, name, download.sha256)
            new = _store_write_once(s3, key, path, download.sha256, public_url(url))
            stored.append(StoredSource(kind, name, public_url(url), RAW_BUCKET, key, download.sha256,
                                       download.bytes, rows, new))
    version = hashlib.sha256("\n".join(sorted(f"{s.name}={s.sha256}" for s in stored)).encode()).hexdigest()
    new_objects = sum(s.newly_stored for s in stored)
    return dg.MaterializeResult(
        metadata={
            "sources": dg.MetadataValue.json([asdict(s) for s in stored]),
            "objects": dg.MetadataValue.md(_sources_markdown(stored)),
            "new_objects": new_objects,
            "unchanged": new_objects == 0,
        },
        data_version=dg.DataVersion(version[:16]),
    )


def _store_write_once(s3: LakeS3Resource, key: str, path: Path, sha256: str, url: str) -> bool:
    """True if stored now, False if the content-addressed key already held this body."""
    client = s3.get_client()
    if s3.object_exists(RAW_BUCKET, key, client=client):
        _verify_existing(client, key, sha256)
        return False
    try:
        with path.open("rb") as body:
            s3.put_write_once(RAW_BUCKET, key, body, metadata={"source-url": url})
        return True
    except ObjectExistsError:  # another run stored the same body in between
        _verify_existing(client, key, sha256)
        return False


def _verify_existing(client, key: str, sha256: str) -> None:
    stored = client.head_object(Bucket=RAW_BUCKET, Key=key).get("Metadata", {}).get("sha256")
    if stored != sha256:
        raise RuntimeError(f"s3://{RAW_BUCKET}/{key} holds sha256 {stored!r}, not {sha256}: the raw store is corrupt")


def _sources_markdown(stored: list[StoredSource]) -> str:
    lines = ["| source | rows | bytes | sha256 | object |", "|---|---:|---:|---|---|"]
    for s in stored:
        state = "stored now" if s.newly_stored else "already stored"
        lines.append(f"| {s.name} ({s.url}) | {s.rows:,} | {s.bytes:,} | `{s.sha256[:12]}` | {s.uri} ({state}) |")
    return "\n".join(lines)


# ---- people_per_dose -------------------------------------------------------------------------------


def latest_raw_sources(instance: dg.DagsterInstance) -> tuple[list[StoredSource], SourceVersion]:
    """The objects of the latest raw_sources materialization, and which download that is: its data
    version and run, fetched at the materialization's time (what the publish compares)."""
    event = instance.get_latest_materialization_event(RAW_KEY)
    if event is None or event.asset_materialization is None:
        raise dg.Failure(f"{RAW_KEY.to_user_string()} has never been materialized: materialize it first "
                         "(the vaccines_refresh job runs both)", allow_retries=False)
    materialization = event.asset_materialization
    data_version = materialization.tags.get("dagster/data_version", "?") if materialization.tags else "?"
    version = SourceVersion(f"{RAW_KEY.to_user_string()} data version {data_version} (run {event.run_id})",
                            datetime.fromtimestamp(event.timestamp, UTC))
    return [StoredSource(**s) for s in materialization.metadata["sources"].value], version


def _read_verified(s3: LakeS3Resource, source: StoredSource) -> bytes:
    body = s3.get_client().get_object(Bucket=source.bucket, Key=source.key)["Body"].read()
    digest = hashlib.sha256(body).hexdigest()
    if digest != source.sha256:
        raise RuntimeError(f"{source.uri}: content sha256 {digest} does not match its key")
    return body


def _source_totals(allocations: dict[str, pd.DataFrame], population: pd.DataFrame,
                   sources: list[StoredSource]) -> publish.SourceTotals:
    state_keys = {s.casefold() for s in STATES}
    outside = population[~population["state"].str.casefold().isin(state_keys)]
    warnings = [
        w for s in sources if s.kind == ALLOCATIONS
        if (w := is_truncated(allocations[s.name], source=s.url, manufacturer=s.name))
    ]
    return publish.SourceTotals(
        population=int(population["population"].sum()),
        population_outside={k: int(v) for k, v in outside.groupby("state")["population"].sum().items()},
        doses={dose_column(m): int((df["first_dose"] + df["second_dose"]).sum()) for m, df in allocations.items()},
        truncation_warnings=warnings,
    )


@dg.asset(
    key=PEOPLE_PER_DOSE_KEY,
    group_name=GROUP,
    deps=[RAW_KEY],
    kinds={"postgres"},
    check_specs=audit_check_specs(PEOPLE_PER_DOSE_KEY, publish.AUDITS),
    output_required=False,  # a run superseded by a newer download materializes nothing
    # Published by publish.write_audit_publish; loads as an input from this table.
    io_manager_key="warehouse_io_manager",
    metadata={"dagster/table_name": f"{publish.SCHEMA}.{publish.PEOPLE_TABLE}"},
    description="People per vaccine dose allocated, for the 50 states and DC: warehouse tables "
    "vaccines.people_per_dose and vaccines.excluded_jurisdictions (territories and federal entities), "
    "published together with write-audit-publish.",
)
def people_per_dose(context: dg.AssetExecutionContext, warehouse: PostgresResource, s3: LakeS3Resource):
    sources, version = latest_raw_sources(context.instance)
    try:
        allocations = {s.name: parse_allocations(_read_verified(s3, s), source=s.uri, manufacturer=s.name)
                       for s in sources if s.kind == ALLOCATIONS}
        population_source = next(s for s in sources if s.kind == POPULATION)
        population = parse_population(_read_verified(s3, population_source), source=population_source.uri)
        result = compute_people_per_dose(allocations, population)
    except ValueError as err:  # SourceFormatError, UnknownJurisdictionError, a state without counties...
        raise _bad_source(err, "Nothing was published; the vaccines tables are unchanged.") from None
    dose_columns = [dose_column(m) for m in allocations]
    expected = _source_totals(allocations, population, sources)

    with warehouse.connection() as conn:
        outcome = yield from publish.write_audit_publish(conn, result, dose_columns, expected,
                                                         asset_key=PEOPLE_PER_DOSE_KEY, version=version)
    if outcome.superseded is not None:  # not an error: the tables keep the newer download's rows
        context.log.info("%s: %s", version.identity, outcome.superseded)
        yield dg.AssetObservation(asset_key=PEOPLE_PER_DOSE_KEY, metadata={
            "outcome": f"skipped: {outcome.superseded}", "source_version": version.identity,
            "fetched_at": version.fetched_at.isoformat(), "superseded_by": outcome.superseded.identity,
            "superseded_by_fetched_at": outcome.superseded.fetched_at.isoformat()})
        return
    if outcome.changed:
        context.log.info("published: %s", outcome)
    else:
        context.log.info("sources unchanged: identical to the published tables, nothing written")
    yield dg.MaterializeResult(metadata=_metadata(result, dose_columns, expected, sources, version, outcome))


def _metadata(result: Result, dose_columns: list[str], expected: publish.SourceTotals,
              sources: list[StoredSource], version: SourceVersion, outcome: publish.PublishOutcome) -> dict:
    schema = dg.TableSchema(columns=[
        dg.TableColumn(name, sqltype, description=description)
        for name, sqltype, description in publish.people_columns(dose_columns)
    ])
    excluded = result.excluded
    metadata = {
        "dagster/row_count": len(result.table),
        "dagster/column_schema": schema,
        "dagster/table_name": f"{publish.SCHEMA}.{publish.PEOPLE_TABLE}",
        "preview": dg.MetadataValue.md(preview_markdown(result.table, dose_columns)),
        "chart": dg.MetadataValue.md(chart_markdown(result.table)),
        "excluded_jurisdictions": dg.MetadataValue.md(excluded_markdown(excluded, dose_columns)),
        "excluded_total_doses": int(excluded["total_doses"].sum()),
        "source_digests": dg.MetadataValue.json({s.name: {"sha256": s.sha256, "object": s.uri} for s in sources}),
        "source_version": version.identity,
        "fetched_at": version.fetched_at.isoformat(),
        "published": outcome.changed > 0,
        "rows_changed": outcome.changed,
        "publish": ("published: " + _counts(outcome)) if outcome.changed else
                   "unchanged: the sources give exactly the published rows; nothing written, loaded_at kept",
    }
    if expected.truncation_warnings:
        metadata["truncation_warning"] = dg.MetadataValue.text("\n".join(expected.truncation_warnings))
    return metadata


def _counts(o: publish.PublishOutcome) -> str:
    return (f"people_per_dose {o.people.inserted} inserted, {o.people.updated} updated, {o.people_deleted} deleted; "
            f"excluded_jurisdictions {o.excluded.inserted} inserted, {o.excluded.updated} updated, "
            f"{o.excluded_deleted} deleted")


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values(["people_per_dose", "state"], na_position="last", ignore_index=True)


def _fmt_ratio(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{value:.2f}"


def preview_markdown(table: pd.DataFrame, dose_columns: list[str], n: int = 10) -> str:
    """The n states with the fewest and the n with the most people per dose."""
    ordered = _sorted(table).reset_index(drop=True)
    header = ["rank", "state", "population", *[c.removeprefix("doses_") for c in dose_columns], "total doses",
              "people per dose"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|---|" + "---:|" * (len(header) - 2)]

    def row(i: int) -> str:
        r = ordered.iloc[i]
        cells = [str(i + 1), r["state"], f"{r['population']:,}", *[f"{r[c]:,}" for c in dose_columns],
                 f"{r['total_doses']:,}", _fmt_ratio(r["people_per_dose"])]
        return "| " + " | ".join(cells) + " |"

    indices = list(range(len(ordered)))
    top, bottom = indices[:n], indices[-n:] if len(indices) > 2 * n else indices[n:]
    lines += [row(i) for i in top]
    if len(indices) > 2 * n:
        lines.append("| … |" + " |" * (len(header) - 1))
    lines += [row(i) for i in bottom]
    return "\n".join(lines)


def chart_markdown(table: pd.DataFrame, width: int = 40) -> str:
    """People per dose of every state as a text bar chart (renders anywhere markdown does)."""
    ordered = _sorted(table)
    top = ordered["people_per_dose"].max()
    label = max(len(s) for s in ordered["state"])
    lines = []
    for state, value in zip(ordered["state"], ordered["people_per_dose"], strict=True):
        bar = "" if pd.isna(value) or not top else "█" * max(1, round(width * value / top))
        lines.append(f"{state:<{label}} {bar} {_fmt_ratio(value)}")
    return "People per dose allocated (fewer = more doses per person)\n```\n" + "\n".join(lines) + "\n```"


def excluded_markdown(excluded: pd.DataFrame, dose_columns: list[str]) -> str:
    header = ["jurisdiction", *[c.removeprefix("doses_") for c in dose_columns], "total doses"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for _, r in excluded.sort_values("total_doses", ascending=False).iterrows():
        lines.append("| " + " | ".join([r["jurisdiction"], *[f"{r[c]:,}" for c in dose_columns],
                                         f"{r['total_doses']:,}"]) + " |")
    lines.append(f"| **total** |{' |' * len(dose_columns)} **{int(excluded['total_doses'].sum()):,}** |")
    return ("Not in the table (no state population): territories and federal entities.\n\n" + "\n".join(lines))

