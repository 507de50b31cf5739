"""The marketing assets: one typed warehouse table per source, and the cross-platform model.

Each API asset, for the days of its run (one day, or a look-back range in ONE run):
1. reads the API unit by unit (account / customer / event) on a few threads, landing the pages of each
   unit and day write-once in s3://raw/marketing/<source>/date=<day>/<run_id>-<first page>.tar (one
   member per page, as received; landed also when a page fails to parse, for replay);
2. parses each page into typed rows (an unexpected shape fails the run naming page, record and field);
3. stages the rows, audits them (blocking checks + WARN reconciliation with the API's own totals) and
   merges them on the natural key in one transaction: reruns and overlapping windows never duplicate.
   Facebook and Google restate past days: each account/customer and day is merged only when this run
   fetched it later than the pages already merged for it (load.SliceVersions), so a slow or retried
   run committing last never puts older values back; the slices it leaves alone are in its metadata.
"""

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import dagster as dg
import pyarrow as pa
from psycopg import sql
from pydantic import Field

from covid_lakehouse.defs.marketing import checks, clevertap, facebook, google_ads
from covid_lakehouse.defs.marketing.clevertap import CleverTapResource
from covid_lakehouse.defs.marketing.clevertap_rekey import rekey_legacy_rows
from covid_lakehouse.defs.marketing.common import (
    RAW_UPLOADS,
    RawLanding,
    RawPage,
    ordered_parallel,
    replay_pages,
)
from covid_lakehouse.defs.marketing.facebook import FacebookAdsResource
from covid_lakehouse.defs.marketing.google_ads import GoogleAdsResource
from covid_lakehouse.defs.marketing.load import (
    Published,
    SliceVersions,
    StagingWriter,
    StreamingMerge,
    publish_lock_timeout_ms,
    stage_audit_publish,
)
from covid_lakehouse.defs.marketing.partitions import DAILY, window_days
from covid_lakehouse.defs.marketing.rds import CUSTOMERS, ORDERS, Extract, RdsSourceResource
from covid_lakehouse.defs.marketing.tables import (
    AD_PERFORMANCE,
    CLEVERTAP,
    FACEBOOK,
    GOOGLE_ADS,
    RDS_CUSTOMERS,
    RDS_ORDERS,
    SCHEMA,
    TableSpec,
    ensure_tables,
)
from covid_lakehouse.lib.postgres import PostgresResource
from covid_lakehouse.lib.s3 import LakeS3Resource
from covid_lakehouse.lib.wap import Audit, audit_check_specs

GROUP = "marketing"
# Alert in the UI when a source has not loaded for a day and a bit (the schedule runs daily).
FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=30), warn_window=timedelta(hours=26))


def key(name: str) -> dg.AssetKey:
    return dg.AssetKey([GROUP, name])


FACEBOOK_KEY, GOOGLE_ADS_KEY, CLEVERTAP_KEY = key(FACEBOOK.name), key(GOOGLE_ADS.name), key(CLEVERTAP.name)
RDS_CUSTOMERS_KEY, RDS_ORDERS_KEY, AD_PERFORMANCE_KEY = key(RDS_CUSTOMERS.name), key(RDS_ORDERS.name), key(AD_PERFORMANCE.name)


class ApiAssetConfig(dg.Config):
    replay_run_id: str = Field(
        default="", description="Instead of calling the API, parse the raw pages that run landed in S3 for these days "
                                "(e.g. after a parser fix for an API change). Reconciliation totals are skipped.")


Parse = Callable[[RawPage, str], pa.Table]  # (page, its raw object URI) -> typed rows
Reported = dict[tuple[str, date], dict[str, Any]]  # (account/customer/event, day) -> what the API reports


def _land_and_parse(landing: RawLanding, pages: Iterator[RawPage], parse: Parse, staging: StagingWriter) -> None:
    with landing.bundle() as bundle:  # lands even when a page fails to parse: replayable once fixed
        for page in pages:
            staging.write(parse(page, bundle.add(page)), pages=1)


def _landing(s3: LakeS3Resource, source: str, context: dg.AssetExecutionContext) -> RawLanding:
    """The run's raw landing, PUTs on background threads: a reader waiting for S3 misses rate-limit slots
    of its unit that no later request gets back (the landing's exit waits for every PUT)."""
    return RawLanding(s3, source, _run_label(context), uploads=RAW_UPLOADS)


def _replay(context: dg.AssetExecutionContext, s3: LakeS3Resource, source: str, run_id: str,
            parser_for: Callable[[RawPage], Parse], notices: dict[str, Any],
            decode: Callable[[str, bytes], Any] | None = None,
            reported_of: Callable[[RawPage, str], Reported] | None = None) -> Callable[[StagingWriter], Reported]:
    """Read from the raw pages of ``run_id``. The reconciliation uses what the pages themselves carry
    (``reported_of``: Google's summary rows); totals fetched by separate calls (Facebook's account
    insights, CleverTap's count) were not landed, and the check says so."""
    notices["replayed_run"] = run_id

    def read(staging: StagingWriter) -> Reported:
        context.log.info("%s: replaying the raw pages of run %s", source, run_id)
        reported: Reported = {}
        for page, uri in replay_pages(s3, source, run_id, window_days(context), decode):
            if reported_of is not None:
                reported.update(reported_of(page, uri))
            staging.write(parser_for(page)(page, uri), pages=1)
        if not staging.pages:
            raise dg.Failure(f"{source}: run {run_id} landed no raw pages for these days", allow_retries=False)
        return reported

    return read


@contextmanager
def _old_objects_left_alone() -> Iterator[None]:
    """While a source is read, the garbage collector's passes skip the objects that existed before it
    (gc.freeze: the modules, Dagster's definitions and run state, a few million objects). Parsing a million
    rows allocates tens of millions of short-lived objects, and each full pass they set off walked that whole
    heap again: a quarter of the Facebook load's CPU. The read's own objects are collected as usual. Freezing
    is process-wide and not counted per caller: when something else froze objects already (another read in
    this process), this one leaves the heap as it is rather than unfreezing theirs."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _publish(context: dg.AssetExecutionContext, warehouse: PostgresResource, spec: TableSpec, audits: list[Audit],
             asset_key: dg.AssetKey, read: Callable[[StagingWriter], Reported], extra: dict[str, Any],
             notices: dict[str, Any] | None = None, versions: SliceVersions | None = None, stream: bool = False):
    """Read the source, its rows COPYed into a staging table as they come, then audit and merge them;
    yields the check results, then the materialization. ``stream``: merge each staged chunk while the
    source is still read, in the publish transaction that commits after the audits (load.StreamingMerge)."""
    publish_lock_timeout_ms()  # a bad setting fails the step now, before any vendor call, not after the read
    with warehouse.connection() as conn:
        ensure_tables(conn)
    slice_columns = (versions.unit_column, versions.day_column) if versions is not None else None
    with StagingWriter(warehouse, spec, slice_columns=slice_columns) as staging:
        if stream:
            with warehouse.connection() as publish:  # commits after the audits passed; rolls back otherwise
                merging = StreamingMerge(publish, spec, versions, key_unique_audit=checks.KEY_UNIQUE.name)
                staging.merge_into(merging)
                # the row audits and totals follow the chunks: verdicts ready at the last page; a fold giving up
                # (its audits then scan the staging table) is said in the run's log, where operators look
                staging.fold_audits(audits, log=context.log)
                try:
                    with _old_objects_left_alone():
                        reported = read(staging)
                    published: Published = yield from stage_audit_publish(
                        warehouse, spec, audits=audits, asset_key=asset_key, staged=staging, reported=reported,
                        notices=notices, merging=merging)
                except BaseException:  # a failing read, audit or cancel: what is still queued is not merged
                    staging.abandon()
                    raise
                finally:
                    staging.finish_quietly()  # no chunk is merged once the transaction has ended
        else:
            with _old_objects_left_alone():
                reported = read(staging)
            published = yield from stage_audit_publish(
                warehouse, spec, audits=audits, asset_key=asset_key, staged=staging, reported=reported,
                notices=notices, versions=versions)
    counts = published.counts
    superseded = {f"{unit} {day.isoformat()}": str(newer) for (unit, day), newer in sorted(published.superseded.items())}
    for slice_, newer in superseded.items():  # not an error: a later run already merged newer pages
        context.log.info("%s %s: %s", spec.name, slice_, newer)
    if superseded:
        extra = {**extra, "superseded_slices": dg.MetadataValue.json(superseded)}
    if published.staged_rows > counts.total:  # superseded slices, or rows older than the published version
        extra = {**extra, "rows_left_out_as_older": published.staged_rows - counts.total}
    context.log.info("%s: %d rows from %d page(s): %d inserted, %d updated, %d unchanged", spec.name,
                     published.staged_rows, staging.pages, counts.inserted, counts.updated, counts.unchanged)
    yield dg.MaterializeResult(metadata={
        "dagster/row_count": published.staged_rows, "pages": staging.pages, "inserted": counts.inserted,
        "updated": counts.updated, "unchanged": counts.unchanged, "table": f"{SCHEMA}.{spec.name}", **extra,
    })


def _in_parallel(fn: Callable[[str], Reported], units: list[str], workers: int) -> Reported:
    reported: Reported = {}
    for part in ordered_parallel(fn, units, workers):
        reported.update(part)
    return reported


def _raw_prefix(source: str) -> str:
    return f"s3://raw/marketing/{source}/"


def _asset(spec: TableSpec, audits: list[Audit], description: str, kinds: set[str], pool: str, **kwargs: Any):
    return dg.asset(key=key(spec.name), group_name=GROUP, partitions_def=DAILY, backfill_policy=dg.BackfillPolicy.single_run(),
                    check_specs=audit_check_specs(key(spec.name), audits), description=description, kinds=kinds,
                    pool=pool, freshness_policy=FRESHNESS, **kwargs)


@_asset(FACEBOOK, checks.FACEBOOK_AUDITS, "Facebook ad-level insights per day (level=ad, time_increment=1), "
        "merged on (account_id, ad_id, date); raw pages in s3://raw/marketing/facebook/.",
        {"facebook", "postgres", "s3"}, "marketing_facebook")
def facebook_ad_insights_daily(context: dg.AssetExecutionContext, config: ApiAssetConfig,
                               marketing_facebook: FacebookAdsResource, s3: LakeS3Resource, warehouse: PostgresResource):
    extra = {"raw_prefix": _raw_prefix(facebook.SOURCE), "replayed_run": config.replay_run_id}
    days = window_days(context)
    versions = _slice_versions(context, config, facebook.SOURCE, "account_id")

    notices: dict[str, Any] = {}

    def read(staging: StagingWriter) -> Reported:
        api = marketing_facebook.connector()
        notices["api_version"] = api.version
        landing = _landing(s3, facebook.SOURCE, context)

        report_run = marketing_facebook.use_report_runs(len(days))  # e.g. the daily 28-day look-back
        notices["report_runs"] = report_run

        def read_account(account: str) -> Reported:  # rate limits are per ad account: one thread each
            for day in days:
                versions.fetching(account, day)
                _land_and_parse(landing, api.pages(account, day, report_run=report_run), facebook.page_table, staging)
            return {(account, d): vars(t) for d, t in api.daily_totals(account, days[0], days[-1]).items()}

        with landing:  # every raw page in S3 before anything is published
            reported = _in_parallel(read_account, marketing_facebook.accounts(), marketing_facebook.max_concurrent_accounts)
        notices["api_version_notices"] = api.version_notices(_today())
        return reported

    if config.replay_run_id:
        read = _replay(context, s3, facebook.SOURCE, config.replay_run_id, lambda _: facebook.page_table, notices,
                       decode=facebook.load_page)
    # a million rows over the 28-day look-back: merged while the pages are read (the merge once took a third of the run)
    yield from _publish(context, warehouse, FACEBOOK, checks.FACEBOOK_AUDITS, FACEBOOK_KEY, read, extra, notices, versions,
                        stream=True)


@_asset(GOOGLE_ADS, checks.GOOGLE_ADS_AUDITS, "Google Ads ad_group_ad metrics per day (GAQL via searchStream), "
        "cost = cost_micros / 1e6 in the account currency; merged on (customer_id, ad_group_id, ad_id, date).",
        {"googleads", "postgres", "s3"}, "marketing_google_ads")
def google_ads_ad_daily(context: dg.AssetExecutionContext, config: ApiAssetConfig,
                        marketing_google_ads: GoogleAdsResource, s3: LakeS3Resource, warehouse: PostgresResource):
    extra = {"raw_prefix": _raw_prefix(google_ads.SOURCE), "replayed_run": config.replay_run_id}
    days = window_days(context)
    versions = _slice_versions(context, config, google_ads.SOURCE, "customer_id")

    notices: dict[str, Any] = {}

    def read(staging: StagingWriter) -> Reported:
        api = marketing_google_ads.connector()
        notices.update(api_version=api.version, api_version_notices=api.version_notices(_today()))
        landing = _landing(s3, google_ads.SOURCE, context)

        def read_customer(customer: str) -> Reported:
            reported: Reported = {}

            def parse(page: RawPage, raw_object: str) -> pa.Table:
                table = google_ads.page_table(page, raw_object)  # refuses a broken stream first
                reported.update(_summary_of(page, raw_object))
                return table

            for day in days:
                versions.fetching(customer, day)
                _land_and_parse(landing, api.pages(customer, day), parse, staging)
            return reported

        with landing:
            return _in_parallel(read_customer, marketing_google_ads.customers(), marketing_google_ads.max_concurrent_customers)

    if config.replay_run_id:
        read = _replay(context, s3, google_ads.SOURCE, config.replay_run_id, lambda _: google_ads.page_table, notices,
                       reported_of=_summary_of)
    yield from _publish(context, warehouse, GOOGLE_ADS, checks.GOOGLE_ADS_AUDITS, GOOGLE_ADS_KEY, read, extra, notices,
                        versions)


def _slice_versions(context: dg.AssetExecutionContext, config: ApiAssetConfig, source: str,
                    unit_column: str) -> SliceVersions:
    """Per account/customer and day, when this run fetched it; a replay reloads old pages on purpose."""
    if config.replay_run_id:
        return SliceVersions(f"{source} pages of run {config.replay_run_id}, replayed by run {_run_label(context)}",
                             unit_column, "date", replay=True)
    return SliceVersions(f"{source} pages of run {_run_label(context)}", unit_column, "date")


def _summary_of(page: RawPage, raw_object: str) -> Reported:
    totals = google_ads.summary_totals(page.doc, raw_object)
    return {} if totals is None else {(page.meta.get("customer-id") or page.label.split("-", 1)[0], page.day): vars(totals)}


@_asset(CLEVERTAP, checks.CLEVERTAP_AUDITS, "CleverTap events per name and day (Get Events export), keyed by the "
        "SHA-256 of the event's identity (name, objectId, ts, event_props, session_props) + occurrence; only "
        "pseudonymous profile fields are kept.",
        {"clevertap", "postgres", "s3"}, "marketing_clevertap")
def clevertap_events(context: dg.AssetExecutionContext, config: ApiAssetConfig,
                     marketing_clevertap: CleverTapResource, s3: LakeS3Resource, warehouse: PostgresResource):
    zone = marketing_clevertap.zone()
    notices: dict[str, Any] = {}
    with warehouse.connection() as conn:  # before anything is staged: the old keys would duplicate the window
        ensure_tables(conn)
        rekeyed = rekey_legacy_rows(conn, marketing_clevertap.rekey_zone())
    if rekeyed["rekeyed"] or rekeyed["deleted"]:
        context.log.info("clevertap: re-keyed %d row(s) to the event identity, removed %d duplicate(s) of the old keys",
                         rekeyed["rekeyed"], rekeyed["deleted"])
    extra = {"raw_prefix": _raw_prefix(clevertap.SOURCE), "replayed_run": config.replay_run_id,
             "rekeyed_legacy_rows": rekeyed["rekeyed"], "removed_legacy_duplicates": rekeyed["deleted"]}
    days = window_days(context)

    def read(staging: StagingWriter) -> Reported:
        api = marketing_clevertap.connector()
        landing = _landing(s3, clevertap.SOURCE, context)

        def read_event(event_name: str) -> Reported:
            reported: Reported = {}
            for day in days:
                parser = clevertap.RecordParser(event_name, zone)  # occurrences count within one export
                _land_and_parse(landing, api.pages(event_name, day), parser.page_table, staging)
                reported[(event_name, day)] = {"count": api.reported_count(event_name, day)}
            return reported

        with landing:
            return _in_parallel(read_event, marketing_clevertap.events(), marketing_clevertap.max_concurrent_requests)

    if config.replay_run_id:
        parsers: dict[tuple[str, date], clevertap.RecordParser] = {}

        def parser_for(page: RawPage) -> Parse:
            event_name = unquote(page.meta["event-name"])  # one parser per export: occurrences count within it
            return parsers.setdefault((event_name, page.day), clevertap.RecordParser(event_name, zone)).page_table

        read = _replay(context, s3, clevertap.SOURCE, config.replay_run_id, parser_for, notices)
    yield from _publish(context, warehouse, CLEVERTAP, checks.CLEVERTAP_AUDITS, CLEVERTAP_KEY, read, extra, notices)


def _rds_asset(extract: Extract, asset_key: dg.AssetKey):
    @_asset(extract.spec, checks.RDS_AUDITS, f"Application table {extract.table} rows whose updated_at falls in the "
            f"run's days, merged on the primary key.", {"postgres"}, "marketing_rds")
    def rds_table(context: dg.AssetExecutionContext, marketing_rds: RdsSourceResource, warehouse: PostgresResource):
        start, end = context.partition_time_window
        source = marketing_rds.source()

        def read(staging: StagingWriter) -> Reported:
            for batch in source.batches(extract, start, end):
                staging.write(pa.Table.from_batches([batch]))
            return {}

        yield from _publish(context, warehouse, extract.spec, checks.RDS_AUDITS, asset_key, read,
                            {"source": source.describe(), "updated_at_from": start.isoformat(),
                             "updated_at_before": end.isoformat()})

    return rds_table


rds_customers = _rds_asset(CUSTOMERS, RDS_CUSTOMERS_KEY)
rds_orders = _rds_asset(ORDERS, RDS_ORDERS_KEY)


class AdPerformanceConfig(dg.Config):
    facebook_conversion_action_types: list[str] = Field(
        default=["offsite_conversion.fb_pixel_purchase"],
        description="Facebook action types counted as conversions (summed from `actions`); do not list both an "
                    "aggregate (purchase) and its parts (offsite_conversion.fb_pixel_purchase): that double counts.")


_MODEL_SQL = sql.SQL("""
SELECT 'facebook', account_id, account_name, campaign_id, campaign_name, ad_id, date, impressions, clicks, spend,
       account_currency,
       COALESCE((SELECT sum((a ->> 'value')::numeric) FROM jsonb_array_elements(actions) a
                 WHERE a ->> 'action_type' = ANY(%(action_types)s)), 0), account_timezone
FROM {facebook} WHERE date >= %(first)s AND date <= %(last)s
UNION ALL
SELECT 'google_ads', customer_id, customer_name, campaign_id, campaign_name, ad_group_id || '~' || ad_id, date,
       impressions, clicks, cost, currency_code, conversions, account_timezone
FROM {google} WHERE date >= %(first)s AND date <= %(last)s
""").format(facebook=FACEBOOK.ident, google=GOOGLE_ADS.ident)


@_asset(AD_PERFORMANCE, checks.AD_PERFORMANCE_AUDITS, "One row per platform, account, ad and day (the day in the ad account's "
        "own time zone, kept in account_timezone): impressions, clicks, spend in the account's currency (no FX conversion) and conversions (Facebook: the configured action types; "
        "Google: metrics.conversions). Google's ad is ad_group_id~ad_id.", {"postgres"}, "marketing_model",
        deps=[FACEBOOK_KEY, GOOGLE_ADS_KEY],
        # Merged by stage_audit_publish; loads as an input (the run's days) through the warehouse IO manager.
        io_manager_key="warehouse_io_manager",
        metadata={"dagster/table_name": f"{SCHEMA}.{AD_PERFORMANCE.name}", "partition_expr": "date"})
def ad_performance_daily(context: dg.AssetExecutionContext, config: AdPerformanceConfig, warehouse: PostgresResource):
    days = window_days(context)
    with warehouse.connection() as conn:
        ensure_tables(conn)
    published: Published = yield from stage_audit_publish(
        warehouse, AD_PERFORMANCE, audits=checks.AD_PERFORMANCE_AUDITS, asset_key=AD_PERFORMANCE_KEY, fill=_MODEL_SQL,
        fill_params={"action_types": config.facebook_conversion_action_types, "first": days[0], "last": days[-1]})
    counts = published.counts
    yield dg.MaterializeResult(metadata={
        "dagster/row_count": published.staged_rows, "inserted": counts.inserted, "updated": counts.updated,
        "unchanged": counts.unchanged, "table": f"{SCHEMA}.{AD_PERFORMANCE.name}"})


def _today() -> date:
    return datetime.now(UTC).date()


def _run_label(context: dg.AssetExecutionContext) -> str:
    """The run id, plus the step attempt when retried (raw keys are write-once)."""
    retry = context.retry_number
    return context.run_id if not retry else f"{context.run_id}-retry{retry}"


ASSETS = [facebook_ad_insights_daily, google_ads_ad_daily, clevertap_events, rds_customers, rds_orders,
          ad_performance_daily]
SOURCE_KEYS = {"facebook": [FACEBOOK_KEY, AD_PERFORMANCE_KEY], "google_ads": [GOOGLE_ADS_KEY, AD_PERFORMANCE_KEY],
               "clevertap": [CLEVERTAP_KEY], "rds": [RDS_CUSTOMERS_KEY, RDS_ORDERS_KEY]}
