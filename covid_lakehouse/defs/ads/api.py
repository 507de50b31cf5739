"""The third-party ad API: one call returns a JSON list of ads. Fetched through the platform's HTTP
client (which retries 429/5xx/connection errors), then parsed strictly: a body that is not the
documented shape (malformed JSON, a renamed or retyped field) is fetched again a few times, then the
run fails naming what changed."""

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from covid_lakehouse.lib.clock import Clock
from covid_lakehouse.lib.http import HttpClient

log = logging.getLogger(__name__)

AD_GROUPS = ("marketing", "recruiting", "brand", "investment")
UNKNOWN_CAMPAIGN = "__unknown"
REQUIRED_FIELDS = ("ad_id", "ad_group", "ad_campaign", "shown_at")
_INT32 = (-(2**31), 2**31 - 1)
_MAX_PROBLEMS_SHOWN = 5

# What a page becomes: the warehouse row minus what the load adds (backup_key, loaded_at, version).
ADS_ARROW_SCHEMA = pa.schema([
    pa.field("ad_id", pa.string(), nullable=False),
    pa.field("ad_group", pa.string(), nullable=False),
    pa.field("ad_campaign", pa.int32()),
    pa.field("ad_campaign_raw", pa.string(), nullable=False),
    pa.field("ad_scheme_origin", pa.string()),
    pa.field("ad_scheme_approved", pa.bool_()),
    pa.field("shown_at", pa.timestamp("us", tz="UTC"), nullable=False),
])


class AdsPayloadError(ValueError):
    """The body is not the documented list of ads; the message says what differs."""


class AdsApiError(dg.Failure):
    """The API kept returning unusable bodies. Not retried by Dagster: this call already retried."""

    def __init__(self, description: str):
        super().__init__(description=description, allow_retries=False)


@dataclass(frozen=True)
class FetchedPage:
    body: bytes  # exactly as received: this is what the backup stores
    ads: pa.Table  # ADS_ARROW_SCHEMA
    fetched_at: datetime


def parse_ads(body: bytes) -> pa.Table:
    """Parse one API response into ADS_ARROW_SCHEMA, or raise AdsPayloadError naming every problem.

    Values the data-quality checks judge (ad_id a uuid, ad_group known, shown_at not in the future)
    are kept as they are; only shape and types are enforced here. Unknown extra fields are ignored."""
    try:
        items = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdsPayloadError(f"body is not valid JSON ({err}); starts with {body[:80]!r}") from None
    if not isinstance(items, list):
        raise AdsPayloadError(f"expected a JSON list of ads, got a JSON {type(items).__name__}")
    columns: dict[str, list[Any]] = {f.name: [] for f in ADS_ARROW_SCHEMA}
    problems: Counter[str] = Counter()
    seen_fields: set[str] = set()
    for item in items:
        if not isinstance(item, dict):
            problems[f"an item is a JSON {type(item).__name__}, not an object"] += 1
            continue
        seen_fields.update(item)
        row_problems = _row_problems(item)
        if row_problems:
            problems.update(row_problems)
            continue
        _append_row(columns, item)
    if problems:
        details = "; ".join(f"{what} in {n} of {len(items)} ads" for what, n in problems.most_common(_MAX_PROBLEMS_SHOWN))
        raise AdsPayloadError(f"{details} (fields present: {', '.join(sorted(seen_fields)) or 'none'})")
    arrays: dict[str, Any] = dict(columns)
    arrays["shown_at"] = _epoch_to_timestamp(columns["shown_at"])
    return pa.table(arrays, schema=ADS_ARROW_SCHEMA)


def _row_problems(item: dict[str, Any]) -> list[str]:
    problems = [f"field '{name}' missing" for name in REQUIRED_FIELDS if name not in item]
    if problems:
        return problems
    if not isinstance(item["ad_id"], str):
        problems.append(f"ad_id is a {_json_type(item['ad_id'])}, not a string")
    if not isinstance(item["ad_group"], str):
        problems.append(f"ad_group is a {_json_type(item['ad_group'])}, not a string")
    campaign = item["ad_campaign"]
    if isinstance(campaign, int) and not isinstance(campaign, bool):
        if not _INT32[0] <= campaign <= _INT32[1]:
            problems.append("ad_campaign is an integer outside the 32-bit range")
    elif not isinstance(campaign, str):
        problems.append(f"ad_campaign is a {_json_type(campaign)}, not an integer or a string")
    shown_at = item["shown_at"]
    if not isinstance(shown_at, int | float) or isinstance(shown_at, bool) or not math.isfinite(shown_at):
        problems.append(f"shown_at is a {_json_type(shown_at)}, not epoch seconds")
    scheme = item.get("ad_scheme")
    if scheme is not None:
        if not isinstance(scheme, dict):
            problems.append(f"ad_scheme is a {_json_type(scheme)}, not an object")
        else:
            if not isinstance(scheme.get("origin"), str | None):
                problems.append("ad_scheme.origin is not a string")
            if not isinstance(scheme.get("approved"), bool | None):
                problems.append("ad_scheme.approved is not a boolean")
    return problems


def _append_row(columns: dict[str, list[Any]], item: dict[str, Any]) -> None:
    campaign = item["ad_campaign"]
    scheme = item.get("ad_scheme") or {}
    columns["ad_id"].append(item["ad_id"])
    columns["ad_group"].append(item["ad_group"])
    # "__unknown" (or any other text) is not a campaign number; the raw value is kept beside it.
    columns["ad_campaign"].append(campaign if isinstance(campaign, int) else None)
    columns["ad_campaign_raw"].append(str(campaign))
    columns["ad_scheme_origin"].append(scheme.get("origin"))
    columns["ad_scheme_approved"].append(scheme.get("approved"))
    columns["shown_at"].append(float(item["shown_at"]))


def _epoch_to_timestamp(seconds: list[float]) -> pa.Array:
    micros = pc.round(pc.multiply(pa.array(seconds, pa.float64()), 1_000_000))
    return pc.cast(micros, pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)


def safe_url(url: str) -> str:
    """The URL without userinfo, query or fragment, for messages (a query may carry a key)."""
    parts = urlsplit(url)
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def fetch_page(client: HttpClient, url: str, *, clock: Clock, attempts: int = 3,
               backoff_s: float = 2.0) -> FetchedPage:
    """One API call, repeated (up to ``attempts``) while the body is unusable. HTTP failures are
    retried inside ``client`` and raise its own errors when its budget is spent."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    last: AdsPayloadError | None = None
    for attempt in range(1, attempts + 1):
        response = client.get(url)
        fetched_at = clock.now()
        try:
            return FetchedPage(body=response.content, ads=parse_ads(response.content), fetched_at=fetched_at)
        except AdsPayloadError as err:
            last = err
            if attempt < attempts:
                wait = backoff_s * 2 ** (attempt - 1)
                log.warning("ads API %s: unusable body (attempt %d/%d: %s); calling again in %.1fs",
                            safe_url(url), attempt, attempts, err, wait)
                clock.sleep(wait)
    raise AdsApiError(f"ads API {safe_url(url)} returned an unusable body {attempts} time(s) in a row; "
                      f"nothing was backed up or loaded. Last problem: {last}")
