"""Facebook Marketing API: ad-level daily insights of each ad account.

GET {graph}/act_<id>/insights?level=ad&time_increment=1&time_range={"since","until"}&fields=...
with cursor paging (paging.cursors.after while paging.next is present). Metrics arrive as JSON
strings, ``actions`` as a list of {action_type, value} (absent when there are none).

Facebook answers throttling, bad tokens and missing permissions with HTTP 400/403 and an error code in
the body, so a response hook translates those codes into the HTTP statuses the platform client acts on
(429: back off as told, 401/403: fail at once). How long to wait comes from the
x-business-use-case-usage header (estimated_time_to_regain_access, in minutes).
"""

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from operator import itemgetter
from typing import Any

import dagster as dg
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import requests
from pydantic import Field

from covid_lakehouse.defs.marketing import versions
from covid_lakehouse.defs.marketing.common import (
    RawPage,
    SettingError,
    SourceApiError,
    SourceSchemaError,
    build_client,
    int_metric,
    load_json,
)
from covid_lakehouse.defs.marketing.tables import FACEBOOK
from covid_lakehouse.defs.marketing.versions import UnsupportedApiVersion
from covid_lakehouse.lib.clock import Clock, SystemClock
from covid_lakehouse.lib.http import ClientError, HttpClient, PageGuard, parse_retry_after
from covid_lakehouse.lib.settings import setting

SOURCE = "facebook"
DEFAULT_GRAPH_URL = "https://graph.facebook.com"
TOKEN = setting("FACEBOOK_ACCESS_TOKEN", "Marketing API access token (a system user's, ads_read)", secret=True,
                scope="marketing")
GRAPH_URL = setting("FACEBOOK_GRAPH_URL", "Graph API host, without the version (see FACEBOOK_GRAPH_API_VERSION)",
                    default=DEFAULT_GRAPH_URL, scope="marketing")
API_VERSION = setting("FACEBOOK_GRAPH_API_VERSION", "Marketing API version (vNN.N); move on before its sunset "
                      "(docs/marketing.md, 'API versions')", default=versions.newest("facebook"), scope="marketing")
ACCOUNTS = setting("FACEBOOK_AD_ACCOUNT_IDS", "comma-separated ad accounts (act_<id> or <id>)", scope="marketing")
TOKEN_ENV, GRAPH_URL_ENV, ACCOUNTS_ENV, API_VERSION_ENV = TOKEN.name, GRAPH_URL.name, ACCOUNTS.name, API_VERSION.name

FIELDS = ("account_id", "account_name", "account_currency", "campaign_id", "campaign_name", "adset_id",
          "adset_name", "ad_id", "ad_name", "date_start", "date_stop", "impressions", "clicks", "spend", "actions")
REQUIRED = ("account_id", "account_currency", "campaign_id", "ad_id", "date_start", "date_stop",
            "impressions", "clicks", "spend")

_TEXT = ("account_id", "account_name", "account_currency", "campaign_id", "campaign_name", "adset_id", "adset_name",
         "ad_id", "ad_name")
_REQUIRED_TEXT = ("account_id", "account_currency", "campaign_id", "ad_id")
_DIGITS = r"^[0-9]+$"
_DECIMAL = r"^-?[0-9]+(\.[0-9]+)?$"
_FLAT_SCHEMA = pa.schema([f for f in FACEBOOK.arrow_schema if f.name not in ("raw_object", "account_timezone")])

# Error codes (body error.code) -> meaning. https://developers.facebook.com/docs/graph-api/overview/rate-limiting
THROTTLE_CODES = frozenset({4, 17, 32, 613, *range(80000, 80015)})
THROTTLE_SUBCODES = frozenset({2446079})
TOKEN_CODES = frozenset({102, 190, 463, 467})
TRANSIENT_CODES = frozenset({1, 2})
VERSION_GONE_CODES = frozenset({2635})  # "You are calling a deprecated version of the Ads API"
VERSION_GONE_STATUS = 410  # what the hook gives #2635: a 4xx is never retried; the connector names the setting
VERSION_WARNING_HEADER = "X-Ad-Api-Version-Warning"
# Code 1 "Please reduce the amount of data you're asking for": a smaller request, never the same again
REDUCE_DATA_STATUS = 413
NOT_TRANSIENT_STATUS = 422  # the body says is_transient: false: a 4xx the client never retries
MIN_PAGE_SIZE = 25
# Every ad status, DELETED and ARCHIVED included: level=ad leaves those ads out by default although Meta
# keeps their spend for 28 days (the list a public insights client passes; Meta's ad effective_status enum).
AD_STATUSES = ("ACTIVE", "PAUSED", "DELETED", "PENDING_REVIEW", "DISAPPROVED", "PREAPPROVED", "PENDING_BILLING_INFO",
               "CAMPAIGN_PAUSED", "ARCHIVED", "ADSET_PAUSED", "IN_PROCESS", "WITH_ISSUES")
EVERY_AD = json.dumps([{"field": "ad.effective_status", "operator": "IN", "value": list(AD_STATUSES)}])  # a call on an expired version, served auto-upgraded


def _is_permission_code(code: int) -> bool:
    return code == 10 or 200 <= code <= 299


def translate_error_status(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
    """requests response hook: give Facebook's coded errors the HTTP status that means the same."""
    if response.status_code not in (400, 403, 500):
        return response
    try:
        error = json.loads(response.content).get("error") or {}
        code = int(error.get("code"))
    except (ValueError, TypeError, AttributeError):
        return response
    subcode, transient = error.get("error_subcode"), error.get("is_transient")
    if code in VERSION_GONE_CODES:
        status, reason = VERSION_GONE_STATUS, f"Facebook no longer serves this API version (error code {code})"
    elif code in THROTTLE_CODES or subcode in THROTTLE_SUBCODES:
        status, reason = 429, f"Facebook rate limit (error code {code})"
    elif code in TOKEN_CODES:
        status, reason = 401, f"Facebook rejected the access token (error code {code})"
    elif _is_permission_code(code):
        status, reason = 403, f"Facebook permission missing (error code {code})"
    elif code == 1 and "reduce the amount of data" in str(error.get("message", "")).lower():
        status, reason = REDUCE_DATA_STATUS, f"Facebook asks for less data per request (error code {code})"
    elif transient is False:  # Facebook says so: retrying the same request cannot help
        status, reason = NOT_TRANSIENT_STATUS, f"Facebook error code {code}, is_transient false"
    elif code in TRANSIENT_CODES or transient is True:
        status, reason = 503, f"Facebook temporary error (error code {code})"
    else:
        return response
    response.status_code, response.reason = status, f"{reason}, HTTP {response.status_code}"
    return response


class ResponseHooks:
    """The session's response hook: translates coded errors (translate_error_status) and keeps every
    version warning header seen, for the run's WARN check."""

    def __init__(self) -> None:
        self.version_warnings: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        warning = response.headers.get(VERSION_WARNING_HEADER)
        if warning:
            with self._lock:
                self.version_warnings.add(warning)
        return translate_error_status(response)


def throttle_hint(floor_s: float):
    """retry_hint, but a throttled call (429 after the hook) without usage headers waits at least
    ``floor_s``: Facebook's throttles last minutes, and a few seconds of backoff only burn attempts."""

    def hint(response: requests.Response) -> float | None:
        asked = retry_hint(response)
        if response.status_code == 429:
            return max(asked or 0.0, floor_s)
        return asked

    return hint


def retry_hint(response: requests.Response) -> float | None:
    """Seconds Facebook asks us to wait: the longest estimated_time_to_regain_access (minutes) in
    x-business-use-case-usage, reset_time_duration (seconds) in x-ad-account-usage, or Retry-After."""
    waits: list[float] = []
    try:
        usage = json.loads(response.headers.get("x-business-use-case-usage") or "{}")
        for entries in usage.values():
            waits += [60.0 * float(e.get("estimated_time_to_regain_access") or 0) for e in entries]
    except (ValueError, TypeError, AttributeError):
        pass
    try:
        account = json.loads(response.headers.get("x-ad-account-usage") or "{}")
        waits.append(float(account.get("reset_time_duration") or 0))
    except (ValueError, TypeError, AttributeError):
        pass
    header = parse_retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
    waits.append(header or 0.0)
    longest = max(waits)
    return longest if longest > 0 else None


class _ReduceData(Exception):
    def __init__(self, error: ClientError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class DayTotals:
    impressions: int
    clicks: int
    spend: str


def account_id_of(value: str) -> str:
    digits = value.strip().removeprefix("act_")
    if not digits.isascii() or not digits.isdigit():
        raise SettingError(f"{ACCOUNTS_ENV}: {value!r} is not an ad account id (digits, optionally act_<digits>)")
    return digits


class FacebookInsights:
    def __init__(self, http: HttpClient, graph_url: str, version: str, token: str, page_size: int,
                 hooks: ResponseHooks | None = None, clock: Clock | None = None, report_poll_s: float = 10.0,
                 report_budget_s: float = 1800.0) -> None:
        self._http, self._token, self._page_size = http, token, page_size
        self._clock = clock or SystemClock()
        self._report_poll_s, self._report_budget_s = report_poll_s, report_budget_s
        self.version, self._graph = version, f"{graph_url.rstrip('/')}/{version}"
        self._hooks = hooks or ResponseHooks()
        self._zones: dict[str, str] = {}
        self._lock = threading.Lock()

    def version_notices(self, today: date) -> list[str]:
        """Why the version in use needs attention: the sunset table, and the warning headers received."""
        return versions.sunset_warnings(SOURCE, self.version, today) + [
            f"{VERSION_WARNING_HEADER}: {w}" for w in sorted(self._hooks.version_warnings)]

    def _get(self, account_id: str, params: dict[str, Any], where: str, *, path: str | None = None,
             method: str = "GET") -> tuple[bytes, Any]:
        """One call of the insights edge (or ``path``); Facebook's coded errors as this connector's errors."""
        try:
            response = self._http.request(method, f"{self._graph}/{path or f'act_{account_id}/insights'}",
                                          params=params, headers={"Authorization": f"Bearer {self._token}"})
        except ClientError as err:
            if err.status == VERSION_GONE_STATUS:
                raise UnsupportedApiVersion(SOURCE, self.version, API_VERSION, err.detail) from None
            if err.status == REDUCE_DATA_STATUS:
                raise _ReduceData(err) from None
            raise
        return response.content, load_page(where, response.content)

    def _get_page(self, account_id: str, params: dict[str, Any], where: str, path: str | None = None) -> tuple[bytes, Any]:
        """One page; asked for less data, the same page again with half the rows, down to MIN_PAGE_SIZE."""
        while True:
            try:
                return self._get(account_id, params, where, path=path)
            except _ReduceData as reduce:
                if params["limit"] <= MIN_PAGE_SIZE:
                    raise SourceApiError(SOURCE, f"{where}: Facebook still asks for less data at {params['limit']} rows "
                                         f"per page ({reduce.error.detail})") from None
                params["limit"] = max(params["limit"] // 2, MIN_PAGE_SIZE)

    def account_timezone(self, account_id: str) -> str:
        """The ad account's time zone (timezone_name): the zone of date_start. Asked once per account."""
        with self._lock:
            known = self._zones.get(account_id)
        if known:
            return known
        where = f"ad account act_{account_id}"
        try:
            response = self._http.get(f"{self._graph}/act_{account_id}", params={"fields": "timezone_name"},
                                      headers={"Authorization": f"Bearer {self._token}"})
        except ClientError as err:
            if err.status == VERSION_GONE_STATUS:
                raise UnsupportedApiVersion(SOURCE, self.version, API_VERSION, err.detail) from None
            raise
        doc = load_json(SOURCE, where, response.content)
        zone = doc.get("timezone_name") if isinstance(doc, dict) else None
        if not isinstance(zone, str) or not zone:
            raise SourceSchemaError(SOURCE, where, f"no timezone_name in {sorted(doc) if isinstance(doc, dict) else doc!r}")
        with self._lock:
            self._zones[account_id] = zone
        return zone

    def pages(self, account_id: str, day: date, *, report_run: bool = False) -> Iterator[RawPage]:
        """Every page of one account's ad-level insights for one day (the account's own day): read
        directly, or with ``report_run`` from an async insights report run (for large windows, as
        production connectors do: Facebook computes the report at its pace instead of timing out)."""
        query: dict[str, Any] = {
            "level": "ad", "time_increment": 1, "fields": ",".join(FIELDS),
            "time_range": json.dumps({"since": day.isoformat(), "until": day.isoformat()}), "filtering": EVERY_AD,
        }
        if not report_run:
            yield from self._paged(account_id, day, {**query, "limit": self._page_size}, None)
            return
        run_id = self._report_run(account_id, query, f"report run of act_{account_id} for {day}")
        yield from self._paged(account_id, day, {"limit": self._page_size}, f"{run_id}/insights")

    def _report_run(self, account_id: str, query: dict[str, Any], where: str) -> str:
        """POST the insights query as an async report run and wait until Facebook completed it."""
        _, doc = self._get(account_id, query, where, method="POST")
        run_id = str(doc.get("report_run_id", "")) if isinstance(doc, dict) else ""
        if not run_id.isascii() or not run_id.isdigit():
            raise SourceSchemaError(SOURCE, where, f"expected a numeric report_run_id, got {doc!r}"[:300])
        waited = 0.0
        while True:
            _, status = self._get(account_id, {"fields": "async_status,async_percent_completion"}, where, path=run_id)
            state = status.get("async_status") if isinstance(status, dict) else None
            if state == "Job Completed" and status.get("async_percent_completion") == 100:
                return run_id
            if state in ("Job Failed", "Job Skipped"):
                raise SourceApiError(SOURCE, f"{where}: report run {run_id} ended with {state!r}")
            if waited + self._report_poll_s > self._report_budget_s:
                raise SourceApiError(SOURCE, f"{where}: report run {run_id} still {state!r} "
                                     f"({status.get('async_percent_completion')}%) after {waited:.0f}s")
            self._clock.sleep(self._report_poll_s)
            waited += self._report_poll_s

    def _paged(self, account_id: str, day: date, params: dict[str, Any], path: str | None) -> Iterator[RawPage]:
        meta: dict[str, str] = {}
        number, guard = 0, PageGuard(f"{SOURCE} act_{account_id} insights of {day}")
        while True:
            number += 1
            label = f"act_{account_id}-p{number:04d}"
            body, doc = self._get_page(account_id, params, f"{label} of {day}", path)
            # the zone after the first page: an error of the insights call (version, token) is the one to see
            meta = meta or {"account-id": account_id, "account-timezone": self.account_timezone(account_id)}
            yield RawPage(SOURCE, day, label, body, doc, meta)
            paging = doc.get("paging") if isinstance(doc, dict) else None
            if not isinstance(paging, dict) or not paging.get("next"):
                return
            after = (paging.get("cursors") or {}).get("after")
            if not after:
                raise SourceSchemaError(SOURCE, f"{label} of {day}", "paging.next is present but paging.cursors.after is not")
            guard.advance(after)  # a repeated cursor or too many pages: fail instead of looping forever
            params["after"] = after

    def daily_totals(self, account_id: str, first: date, last: date) -> dict[date, DayTotals]:
        """What Facebook reports for the whole account per day (level=account), to reconcile with.
        Asked for less data, each half of the date range is asked on its own."""
        try:
            return self._daily_totals(account_id, first, last)
        except _ReduceData as reduce:
            if first == last:
                raise SourceApiError(SOURCE, f"account totals of act_{account_id} on {first}: Facebook asks for less "
                                     f"data even for one day ({reduce.error.detail})") from None
            middle = first + (last - first) // 2
            return {**self.daily_totals(account_id, first, middle),
                    **self.daily_totals(account_id, middle + timedelta(days=1), last)}

    def _daily_totals(self, account_id: str, first: date, last: date) -> dict[date, DayTotals]:
        params: dict[str, Any] = {
            "level": "account", "time_increment": 1, "fields": "impressions,clicks,spend,date_start",
            "limit": 500, "time_range": json.dumps({"since": first.isoformat(), "until": last.isoformat()}),
        }
        totals: dict[date, DayTotals] = {}
        guard = PageGuard(f"{SOURCE} account totals of act_{account_id}")
        while True:
            _, doc = self._get(account_id, params, f"account totals of act_{account_id}")
            for i, row in enumerate(_data_rows(doc, f"account totals of act_{account_id}")):
                where = f"account totals of act_{account_id} data[{i}]"
                day = _iso_date(where, row.get("date_start"))
                totals[day] = DayTotals(int_metric(SOURCE, where, "impressions", row.get("impressions", "0")),
                                        int_metric(SOURCE, where, "clicks", row.get("clicks", "0")),
                                        _decimal_text(where, "spend", row.get("spend", "0")))
            paging = doc.get("paging") or {}
            if not paging.get("next") or not (paging.get("cursors") or {}).get("after"):
                return totals
            guard.advance(paging["cursors"]["after"])
            params["after"] = paging["cursors"]["after"]


def load_page(where: str, body: bytes) -> Any:
    """orjson: ~2.5x faster than json on insights pages. Safe here because the Graph API sends every
    metric and id as a string (orjson would turn an integer beyond 64 bits into a float)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return load_json(SOURCE, where, body)  # json's leniency (NaN), or its precise error


def _data_rows(doc: Any, where: str) -> list[dict]:
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        keys = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise SourceSchemaError(SOURCE, where, f"expected an object with a 'data' list, got {keys}")
    return doc["data"]


def _iso_date(where: str, value: Any) -> date:
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise SourceSchemaError(SOURCE, where, f"date {value!r} is not YYYY-MM-DD") from None


def _decimal_text(where: str, name: str, value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    body = text.removeprefix("-")
    whole, _, frac = body.partition(".")
    if not (whole.isascii() and whole.isdigit() and (not frac or (frac.isascii() and frac.isdigit()))):
        raise SourceSchemaError(SOURCE, where, f"{name} is {value!r}, expected a decimal string such as \"14.35\"")
    return text


def _actions(where: str, value: Any) -> str:
    if value is None:
        return "[]"
    if not isinstance(value, list) or not all(isinstance(a, dict) and "action_type" in a and "value" in a for a in value):
        raise SourceSchemaError(SOURCE, where, f"actions is {type(value).__name__}, expected a list of {{action_type, value}}")
    return json.dumps(value, separators=(",", ":"))


def _typed_rows(rows: list, where: str, day: date | None) -> list[dict[str, Any]]:
    """Row by row: the reference semantics, and the precise error when a page is refused."""
    typed = []
    for i, row in enumerate(rows):
        at = f"{where} data[{i}]"
        if not isinstance(row, dict):
            raise SourceSchemaError(SOURCE, at, f"record is {type(row).__name__}, expected an object")
        missing = [f for f in REQUIRED if f not in row]
        if missing:
            raise SourceSchemaError(SOURCE, at, f"missing field(s) {', '.join(missing)}; present: {', '.join(sorted(row))}")
        for name in _REQUIRED_TEXT:
            if row[name] is None:
                raise SourceSchemaError(SOURCE, at, f"{name} is null")
        start, stop = _iso_date(at, row["date_start"]), _iso_date(at, row["date_stop"])
        if start != stop or (day is not None and start != day):
            raise SourceSchemaError(SOURCE, at, f"date_start {start} / date_stop {stop}: expected one row per day"
                                    + (f" for {day}" if day else ""))
        typed.append({
            **{name: None if row.get(name) is None else str(row[name]) for name in _TEXT},
            "date": start,
            "impressions": int_metric(SOURCE, at, "impressions", row["impressions"]),
            "clicks": int_metric(SOURCE, at, "clicks", row["clicks"]),
            "spend": _decimal_text(at, "spend", row["spend"]),
            "actions": _actions(at, row.get("actions")),
        })
    return typed


class _SlowPath(Exception):
    """The vectorised checks found something: let the row-by-row pass name it (or accept it)."""


def _columns(rows: list, day: date | None) -> pa.Table:
    """Column by column, validated with Arrow kernels: the same result as _typed_rows, fast."""
    names = (*_TEXT, "date_start", "date_stop", "impressions", "clicks", "spend")
    get = itemgetter(*names)
    try:
        columns = list(zip(*map(get, rows), strict=True)) or [()] * len(names)
    except (KeyError, TypeError):
        raise _SlowPath from None  # a record that is not an object, or lacks a field
    actions: list[bytes] = []
    dumps = orjson.dumps  # compact UTF-8 JSON; the column is jsonb, so only the content matters
    for row in rows:
        acts = row.get("actions")
        if acts is None:
            actions.append(b"[]")
        elif type(acts) is list and all(type(a) is dict and "action_type" in a and "value" in a for a in acts):
            try:
                actions.append(dumps(acts))
            except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits: json can encode it
                raise _SlowPath from None
        else:
            raise _SlowPath
    values = dict(zip(names, columns, strict=True))
    try:
        arrays = {name: pa.array(column, pa.string()) for name, column in values.items()}
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        raise _SlowPath from None  # e.g. numbers where strings were expected
    required = [arrays[n] for n in (*_REQUIRED_TEXT, "date_start", "date_stop", "impressions", "clicks", "spend")]
    checks = [pc.match_substring_regex(arrays["impressions"], _DIGITS), pc.match_substring_regex(arrays["clicks"], _DIGITS),
              pc.match_substring_regex(arrays["spend"], _DECIMAL), pc.equal(arrays["date_start"], arrays["date_stop"])]
    if day is not None:
        checks.append(pc.equal(arrays["date_start"], pa.scalar(day.isoformat())))
    if any(a.null_count for a in required) or not all(pc.all(c).as_py() is not False for c in checks):
        raise _SlowPath
    try:
        dates = pc.cast(arrays["date_start"], pa.date32())
    except pa.ArrowInvalid:
        raise _SlowPath from None
    return pa.table({**{n: arrays[n] for n in _TEXT}, "date": dates,
                     "impressions": pc.cast(arrays["impressions"], pa.int64()),
                     "clicks": pc.cast(arrays["clicks"], pa.int64()), "spend": arrays["spend"],
                     "actions": pa.array(actions, pa.string())})


def flatten_insights(doc: Any, *, where: str = "response", day: date | None = None) -> pa.Table:
    """One flat, typed row per ad and day from an insights response (the nested ``actions`` kept as
    JSON text). Refuses, naming the record and field, anything it does not recognise."""
    rows = _data_rows(doc, where)
    try:
        return _columns(rows, day)
    except _SlowPath:
        return pa.Table.from_pylist(_typed_rows(rows, where, day), schema=_FLAT_SCHEMA)


def page_table(page: RawPage, raw_object: str) -> pa.Table:
    """The page's rows; ``date`` is the day in the ad account's time zone (date_start), which the page's
    meta names (None for pages landed before it was kept)."""
    table = flatten_insights(page.doc, where=raw_object, day=page.day)
    zone = page.meta.get("account-timezone")
    table = table.append_column("account_timezone", pa.array([zone] * table.num_rows, pa.string()))
    return table.append_column("raw_object", pa.array([raw_object] * table.num_rows, pa.string()))


class FacebookAdsResource(dg.ConfigurableResource):
    """Facebook Marketing API access. The token is read from FACEBOOK_ACCESS_TOKEN only (never config)."""

    graph_url: str | None = Field(default=None, description=f"Graph API host, no version; unset: {GRAPH_URL_ENV}, else {DEFAULT_GRAPH_URL}")
    api_version: str | None = Field(default=None, description=f"Marketing API version; unset: {API_VERSION_ENV}, else {API_VERSION.default}")
    ad_account_ids: list[str] | None = Field(default=None, description=f"Ad accounts (act_<id> or <id>); unset: {ACCOUNTS_ENV} (comma-separated)")
    page_size: int = Field(default=500, description="rows per insights page (limit)")
    max_concurrent_accounts: int = Field(default=4, description="accounts fetched in parallel (rate limits are per account)")
    max_attempts: int = 8
    max_rate_limit_wait_s: float = Field(default=3600.0, description="total seconds one call may wait on rate limits before failing")
    backoff_base_s: float = 2.0
    report_run_min_days: int = Field(default=14, description="windows of at least this many days are read through "
                                     "async insights report runs (0: never)")
    report_poll_s: float = Field(default=10.0, description="seconds between polls of a report run")
    report_budget_s: float = Field(default=1800.0, description="how long one report run may take")
    min_throttle_wait_s: float = Field(default=60.0, description="a throttled call without usage headers waits at least this")

    def accounts(self) -> list[str]:
        return [account_id_of(a) for a in ACCOUNTS.values(self.ad_account_ids)]

    def connector(self, clock: Clock | None = None) -> FacebookInsights:
        version = versions.version_setting_value(SOURCE, API_VERSION, self.api_version)
        graph = versions.base_url(GRAPH_URL, API_VERSION, self.graph_url)
        hooks, session = ResponseHooks(), requests.Session()
        session.hooks["response"].append(hooks)
        http = build_client(clock=clock, auth_hint=f"the environment variable {TOKEN_ENV}", retry_after_from=throttle_hint(self.min_throttle_wait_s),
                            max_attempts=self.max_attempts, max_total_wait_s=self.max_rate_limit_wait_s,
                            backoff_base_s=self.backoff_base_s, session=session)
        return FacebookInsights(http, graph, version, TOKEN.require(), self.page_size, hooks, clock,
                                self.report_poll_s, self.report_budget_s)

    def use_report_runs(self, days: int) -> bool:
        return 0 < self.report_run_min_days <= days
