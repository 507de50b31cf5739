"""PostgreSQL side of the ads domain: tables, staging of API pages, the load checks and the upsert.

ads.ads holds one live row per ad_id. ``row_version`` (from a sequence) changes whenever the row's
values change, so the archive can delete exactly the version it archived and nothing newer."""

from collections.abc import Iterable
from datetime import datetime, timedelta

import psycopg
import pyarrow as pa
from psycopg import sql

from covid_lakehouse.defs.ads.api import AD_GROUPS, UNKNOWN_CAMPAIGN
from covid_lakehouse.defs.ads.settings import PG_SCHEMA
from covid_lakehouse.lib.migrate import ensure_migrated
from covid_lakehouse.lib.postgres import PostgresResource, UpsertCounts, table_ident
from covid_lakehouse.lib.wap import Audit, AuditResult

ADS = table_ident(PG_SCHEMA, "ads")
BATCHES = table_ident(PG_SCHEMA, "archive_batches")
PENDING = table_ident(PG_SCHEMA, "archive_pending")
ROW_VERSION_SEQ = f"{PG_SCHEMA}.ads_row_version"

VALUE_COLUMNS = ("ad_group", "ad_campaign", "ad_campaign_raw", "ad_scheme_origin", "ad_scheme_approved", "shown_at")
STAGING_COLUMNS = ("ad_id", *VALUE_COLUMNS, "backup_key")
FUTURE_TOLERANCE = timedelta(minutes=5)  # clock skew between the API's host and ours
UNKNOWN_SHARE_WARN = 0.65  # the API reports about half the campaigns as "__unknown"
UUID_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

MIGRATION_SCOPE = "ads"  # the tables' DDL: covid_lakehouse/defs/ads/migrations/


def ensure_tables(conn: psycopg.Connection) -> None:
    ensure_migrated(conn, MIGRATION_SCOPE)


def create_staging(conn: psycopg.Connection, name: str = "ads_staging") -> sql.Identifier:
    """A temporary table (gone at commit) with the page's values as received: ad_id stays text so a
    malformed id reaches the checks instead of failing the COPY."""
    staging = sql.Identifier(name)
    conn.execute(sql.SQL("""CREATE TEMP TABLE {} (
        ad_id text, ad_group text, ad_campaign integer, ad_campaign_raw text, ad_scheme_origin text,
        ad_scheme_approved boolean, shown_at timestamptz, backup_key text) ON COMMIT DROP""").format(staging))
    return staging


def stage_pages(conn: psycopg.Connection, staging: sql.Identifier, pages: Iterable[tuple[pa.Table, str]]) -> int:
    """COPY each (parsed page, backup key) into ``staging``; returns the rows staged."""
    rows = 0
    for ads, backup_key in pages:
        page = ads.append_column("backup_key", pa.array([backup_key] * ads.num_rows, pa.string()))
        rows += PostgresResource.copy_arrow(conn, staging, page, columns=STAGING_COLUMNS)
    return rows


def upsert_staged(conn: psycopg.Connection, staging: sql.Identifier,
                  source_filter: sql.Composable | None = None) -> UpsertCounts:
    """Insert new ads, update changed ones (new loaded_at, row_version and backup_key), leave identical
    ones untouched. ``source_filter`` may refer to the staged row as ``s``."""
    source = sql.SQL("(SELECT ad_id::uuid AS ad_id, {values}, backup_key FROM {staging}) AS s").format(
        values=sql.SQL(", ").join(map(sql.Identifier, VALUE_COLUMNS)), staging=staging)
    return PostgresResource.upsert(
        conn, target=ADS, source=source, key_columns=["ad_id"], value_columns=list(VALUE_COLUMNS),
        touch_columns={
            "backup_key": sql.Identifier("backup_key"),
            "loaded_at": sql.SQL("now()"),
            "row_version": sql.SQL("nextval({})").format(sql.Literal(ROW_VERSION_SEQ)),
        },
        source_filter=source_filter,
    )


# ---- load checks, run on the staged rows before anything is published ----------------------------
def _ad_id_valid_unique(conn: psycopg.Connection, staging: sql.Identifier, _now: datetime) -> AuditResult:
    total, invalid, duplicated, samples = conn.execute(sql.SQL(
        "SELECT count(*), count(*) FILTER (WHERE ad_id IS NULL OR ad_id !~* %(re)s), "
        "count(*) - count(DISTINCT lower(ad_id)), "
        "(SELECT array_agg(ad_id) FROM (SELECT ad_id FROM {s} WHERE ad_id IS NULL OR ad_id !~* %(re)s LIMIT 5) x) "
        "FROM {s}").format(s=staging), {"re": UUID_PATTERN}).fetchone()
    return AuditResult(invalid == 0 and duplicated == 0,
                       f"{invalid} of {total} ad_ids are not uuids, {duplicated} are duplicates",
                       {"invalid_ids": invalid, "duplicate_ids": duplicated, "invalid_samples": str(samples or [])})


def _ad_group_known(conn: psycopg.Connection, staging: sql.Identifier, _now: datetime) -> AuditResult:
    total, unknown, values = conn.execute(sql.SQL(
        "SELECT count(*), count(*) FILTER (WHERE NOT (ad_group = ANY(%(known)s))), "
        "(SELECT array_agg(DISTINCT ad_group) FROM {s} WHERE NOT (ad_group = ANY(%(known)s))) FROM {s}"
    ).format(s=staging), {"known": list(AD_GROUPS)}).fetchone()
    return AuditResult(unknown == 0, f"{unknown} of {total} ads have an ad_group outside {', '.join(AD_GROUPS)}",
                       {"unknown_groups": unknown, "unknown_values": str(values or [])})


def _shown_at_not_future(conn: psycopg.Connection, staging: sql.Identifier, now: datetime) -> AuditResult:
    limit = now + FUTURE_TOLERANCE
    total, future, latest = conn.execute(sql.SQL(
        "SELECT count(*), count(*) FILTER (WHERE shown_at > %s), max(shown_at) FROM {}").format(staging),
        (limit,)).fetchone()
    return AuditResult(future == 0, f"{future} of {total} ads shown after {limit.isoformat()}",
                       {"future_rows": future, "latest_shown_at": str(latest)})


def _unknown_campaign_share(conn: psycopg.Connection, staging: sql.Identifier, _now: datetime) -> AuditResult:
    total, unknown, other = conn.execute(sql.SQL(
        "SELECT count(*), count(*) FILTER (WHERE ad_campaign_raw = %s), "
        "count(*) FILTER (WHERE ad_campaign IS NULL AND ad_campaign_raw <> %s) FROM {}").format(staging),
        (UNKNOWN_CAMPAIGN, UNKNOWN_CAMPAIGN)).fetchone()
    share = unknown / total if total else 0.0
    return AuditResult(share <= UNKNOWN_SHARE_WARN,
                       f"{share:.0%} of {total} ads have campaign {UNKNOWN_CAMPAIGN!r} (warns above {UNKNOWN_SHARE_WARN:.0%})",
                       {"unknown_share": round(share, 4), "unknown_campaigns": unknown,
                        "other_non_integer_campaigns": other})


LOAD_AUDITS = [
    Audit("ad_id_valid_unique", _ad_id_valid_unique, blocking=True,
          description="every ad_id is a uuid and appears once in the load"),
    Audit("ad_group_known", _ad_group_known, blocking=True,
          description=f"ad_group is one of {', '.join(AD_GROUPS)}"),
    Audit("shown_at_not_future", _shown_at_not_future, blocking=True,
          description=f"no ad is shown in the future (allowing {int(FUTURE_TOLERANCE.total_seconds() // 60)} min of clock skew)"),
    Audit("unknown_campaign_share", _unknown_campaign_share, blocking=False,
          description=f"warns when more than {UNKNOWN_SHARE_WARN:.0%} of ads have campaign {UNKNOWN_CAMPAIGN!r}"),
]
