"""Google Ads API: ad-level daily metrics with a GAQL query through customers/<id>/googleAds:searchStream.

The REST response is a JSON array of batches {results[], fieldMask, summaryRow?, requestId}; field
names are lowerCamelCase and int64 values (ids, impressions, clicks, costMicros) arrive as strings;
zero metrics may be omitted. cost = costMicros / 1e6 in the account currency. Every call carries an
OAuth access token (refreshed from the refresh token), the developer-token header and, when access
goes through a manager account, login-customer-id. 429 RESOURCE_EXHAUSTED is retried after the
retryDelay Google names (or with backoff).
"""

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg
import pyarrow as pa
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
from covid_lakehouse.defs.marketing.tables import GOOGLE_ADS
from covid_lakehouse.defs.marketing.versions import UnsupportedApiVersion
from covid_lakehouse.lib.clock import Clock, SystemClock
from covid_lakehouse.lib.http import AUTH, HttpClient, HttpError, Outcome, parse_retry_after
from covid_lakehouse.lib.http.hosts import source_url
from covid_lakehouse.lib.settings import setting

SOURCE = "google_ads"
DEFAULT_API_URL = "https://googleads.googleapis.com"
DEFAULT_TOKEN_URL = "https://oauth2.googleapis.com/token"
API_URL = setting("GOOGLE_ADS_API_URL", "Google Ads REST host, without the version (see GOOGLE_ADS_API_VERSION)",
                  default=DEFAULT_API_URL, scope="marketing")
API_VERSION = setting("GOOGLE_ADS_API_VERSION", "Google Ads API version (vNN); move on before its sunset "
                      "(docs/marketing.md, 'API versions')", default=versions.newest("google_ads"), scope="marketing")
TOKEN_URL = setting("GOOGLE_OAUTH_TOKEN_URL", "OAuth 2.0 token endpoint", default=DEFAULT_TOKEN_URL, scope="marketing")
CUSTOMERS = setting("GOOGLE_ADS_CUSTOMER_IDS", "comma-separated customer ids (10 digits, dashes allowed)",
                    scope="marketing")
LOGIN_CUSTOMER = setting("GOOGLE_ADS_LOGIN_CUSTOMER_ID", "optional: the manager account the customers are read "
                         "through", scope="marketing")
DEVELOPER_TOKEN = setting("GOOGLE_ADS_DEVELOPER_TOKEN", "Google Ads API developer token", secret=True,
                          scope="marketing")
CLIENT_ID = setting("GOOGLE_ADS_CLIENT_ID", "OAuth client id", scope="marketing")
CLIENT_SECRET = setting("GOOGLE_ADS_CLIENT_SECRET", "OAuth client secret", secret=True, scope="marketing")
REFRESH_TOKEN = setting("GOOGLE_ADS_REFRESH_TOKEN", "OAuth refresh token", secret=True, scope="marketing")
API_URL_ENV, TOKEN_URL_ENV, CUSTOMERS_ENV, LOGIN_CUSTOMER_ENV = (API_URL.name, TOKEN_URL.name, CUSTOMERS.name,
                                                                 LOGIN_CUSTOMER.name)
DEVELOPER_TOKEN_ENV, CLIENT_ID_ENV, CLIENT_SECRET_ENV, REFRESH_TOKEN_ENV = (
    DEVELOPER_TOKEN.name, CLIENT_ID.name, CLIENT_SECRET.name, REFRESH_TOKEN.name)
CREDENTIALS_HINT = f"the environment variables {DEVELOPER_TOKEN_ENV}, {CLIENT_ID_ENV}, {CLIENT_SECRET_ENV}, {REFRESH_TOKEN_ENV}"

QUERY = (
    "SELECT customer.id, customer.descriptive_name, customer.currency_code, customer.time_zone, campaign.id, campaign.name, "
    "ad_group.id, ad_group.name, ad_group_ad.ad.id, segments.date, metrics.impressions, metrics.clicks, "
    "metrics.cost_micros, metrics.conversions FROM ad_group_ad WHERE segments.date BETWEEN '{day}' AND '{day}'"
)
METRICS = frozenset({"impressions", "clicks", "costMicros", "conversions"})
# A retired version: REST answers 404 on the versioned path, gRPC UNIMPLEMENTED (HTTP 501 through the gateway).
VERSION_GONE_STATUSES = frozenset({404, 501})
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")


def retry_hint(response: requests.Response) -> float | None:
    """Retry-After, else the longest retryDelay ("30s") anywhere in the error details."""
    header = parse_retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
    if header is not None:
        return header
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    delays = [float(m[1]) for d in _values_of(body, "retryDelay") if isinstance(d, str) and (m := _DURATION.match(d))]
    return max(delays) if delays else None


def classify(response: requests.Response) -> Outcome | None:
    """The client's classifier: the OAuth token endpoint answers HTTP 400/401 with a string ``error``
    (invalid_grant, invalid_client...: RFC 6749 section 5.2), an auth failure rather than a bad request.
    The Ads API's own errors carry an object there; those, and everything else, go by the status."""
    if response.status_code not in (400, 401):
        return None
    try:
        error = json.loads(response.content).get("error")
    except (ValueError, AttributeError):
        return None
    if isinstance(error, str):
        return Outcome.fail(f"Google OAuth refused {CLIENT_ID_ENV}/{CLIENT_SECRET_ENV}/{REFRESH_TOKEN_ENV} ({error})",
                            kind=AUTH)
    return None


def _values_of(node: Any, key: str) -> Iterator[Any]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _values_of(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from _values_of(item, key)


def customer_id_of(value: str) -> str:
    digits = value.strip().replace("-", "")
    if not digits.isascii() or not digits.isdigit():
        raise SettingError(f"{value!r} is not a Google Ads customer id (10 digits, dashes allowed)")
    return digits


class OAuthToken:
    """An access token from the refresh token, renewed a minute before it expires."""

    def __init__(self, http: HttpClient, token_url: str, clock: Clock) -> None:
        self._http, self._url, self._clock = http, token_url, clock
        self._token: str | None = None
        self._expires = datetime.min.replace(tzinfo=UTC)
        self._lock = threading.Lock()  # customers are fetched in parallel: refresh once

    def get(self) -> str:
        with self._lock:
            return self._current()

    def _current(self) -> str:
        if self._token is None or self._clock.now() >= self._expires:
            form = {"grant_type": "refresh_token", "client_id": CLIENT_ID.require(),
                    "client_secret": CLIENT_SECRET.require(), "refresh_token": REFRESH_TOKEN.require()}
            response = self._http.post(self._url, data=form)  # a refusal is an AuthError (classify)
            doc = load_json(SOURCE, "OAuth token response", response.content)
            if not isinstance(doc, dict) or "access_token" not in doc:
                raise SourceSchemaError(SOURCE, "OAuth token response", "no access_token in the response")
            self._token = doc["access_token"]
            self._expires = self._clock.now() + timedelta(seconds=int(doc.get("expires_in", 3600)) - 60)
        return self._token


@dataclass(frozen=True)
class Totals:
    impressions: int
    clicks: int
    cost_micros: int


class GoogleAdsReports:
    def __init__(self, http: HttpClient, api_url: str, version: str, token: OAuthToken, developer_token: str,
                 login_customer_id: str | None) -> None:
        self._http, self._token = http, token
        self.version, self._api = version, f"{api_url.rstrip('/')}/{version}"
        self._developer_token, self._login = developer_token, login_customer_id

    def version_notices(self, today: date) -> list[str]:
        return versions.sunset_warnings(SOURCE, self.version, today)

    def pages(self, customer_id: str, day: date) -> Iterator[RawPage]:
        """The searchStream response for one customer and day (one body: the stream is not paged)."""
        headers = {"Authorization": f"Bearer {self._token.get()}", "developer-token": self._developer_token}
        if self._login:
            headers["login-customer-id"] = self._login
        body = {"query": QUERY.format(day=day.isoformat()), "summaryRowSetting": "SUMMARY_ROW_WITH_RESULTS"}
        try:
            response = self._http.post(f"{self._api}/customers/{customer_id}/googleAds:searchStream",
                                       json=body, headers=headers)
        except HttpError as err:  # ClientError (404) or HttpError (501): neither is retried by the client
            if err.status in VERSION_GONE_STATUSES:
                raise UnsupportedApiVersion(SOURCE, self.version, API_VERSION, err.detail) from None
            raise
        label = f"{customer_id}-p0001"
        doc = load_json(SOURCE, f"{label} of {day}", response.content)
        yield RawPage(SOURCE, day, label, response.content, doc, {"customer-id": customer_id})


def _batches(doc: Any, where: str) -> list[dict]:
    if not isinstance(doc, list) or not all(isinstance(b, dict) for b in doc):
        raise SourceSchemaError(SOURCE, where, f"expected a JSON array of stream batches, got {type(doc).__name__}")
    return doc


def _path(row: dict, where: str, *path: str, required: bool = True) -> Any:
    node: Any = row
    for part in path:
        if not isinstance(node, dict) or part not in node:
            if not required:
                return None
            raise SourceSchemaError(SOURCE, where, f"missing field {'.'.join(path)}; top-level fields present: "
                                    f"{', '.join(sorted(row))}")
        node = node[part]
    return node


def flatten_stream(doc: Any, *, where: str = "response", day: date | None = None) -> list[dict[str, Any]]:
    rows = []
    for b, batch in enumerate(_batches(doc, where)):
        for i, result in enumerate(batch.get("results") or []):
            at = f"{where} [{b}].results[{i}]"
            if not isinstance(result, dict):
                raise SourceSchemaError(SOURCE, at, f"result is {type(result).__name__}, expected an object")
            metrics = _path(result, at, "metrics", required=False) or {}
            # Zero metrics are left out of the JSON, so a renamed metric would silently read as 0.
            unknown = sorted(set(metrics) - METRICS) if isinstance(metrics, dict) else ["(not an object)"]
            if unknown:
                raise SourceSchemaError(SOURCE, at, f"metrics has unexpected field(s) {', '.join(unknown)}; "
                                        f"expected only {', '.join(sorted(METRICS))}")
            raw_day = _path(result, at, "segments", "date")
            try:
                row_day = date.fromisoformat(raw_day)
            except (TypeError, ValueError):
                raise SourceSchemaError(SOURCE, at, f"segments.date {raw_day!r} is not YYYY-MM-DD") from None
            if day is not None and row_day != day:
                raise SourceSchemaError(SOURCE, at, f"segments.date {row_day} outside the requested day {day}")
            conversions = metrics.get("conversions", 0)
            if isinstance(conversions, bool) or not isinstance(conversions, int | float):
                raise SourceSchemaError(SOURCE, at, f"metrics.conversions is {conversions!r}, expected a number")
            rows.append({
                "customer_id": str(_path(result, at, "customer", "id")),
                "customer_name": _path(result, at, "customer", "descriptiveName", required=False),
                "currency_code": _path(result, at, "customer", "currencyCode"),
                # segments.date is the day in this zone (the account's, set when it was created)
                "account_timezone": _path(result, at, "customer", "timeZone"),
                "campaign_id": str(_path(result, at, "campaign", "id")),
                "campaign_name": _path(result, at, "campaign", "name", required=False),
                "ad_group_id": str(_path(result, at, "adGroup", "id")),
                "ad_group_name": _path(result, at, "adGroup", "name", required=False),
                "ad_id": str(_path(result, at, "adGroupAd", "ad", "id")),
                "date": row_day,
                "impressions": int_metric(SOURCE, at, "metrics.impressions", metrics.get("impressions", "0")),
                "clicks": int_metric(SOURCE, at, "metrics.clicks", metrics.get("clicks", "0")),
                "cost_micros": int_metric(SOURCE, at, "metrics.costMicros", metrics.get("costMicros", "0")),
                "conversions": float(conversions),
            })
    return rows


def summary_totals(doc: Any, where: str) -> Totals | None:
    """The totals Google reports for the query (summaryRow of the last batch), if any."""
    for batch in reversed(_batches(doc, where)):
        if "summaryRow" in batch:
            metrics = (batch["summaryRow"] or {}).get("metrics") or {}
            at = f"{where} summaryRow"
            return Totals(int_metric(SOURCE, at, "impressions", metrics.get("impressions", "0")),
                          int_metric(SOURCE, at, "clicks", metrics.get("clicks", "0")),
                          int_metric(SOURCE, at, "costMicros", metrics.get("costMicros", "0")))
    return None


def _describe_error(error: Any) -> str:
    if not isinstance(error, dict):
        return repr(error)[:300]
    codes = [f"{k}={v}" for e in _values_of(error, "errors") if isinstance(e, list) for item in e
             if isinstance(item, dict) for k, v in (item.get("errorCode") or {}).items()]
    text = f"{error.get('status', '?')} (code {error.get('code', '?')}): {error.get('message', 'no message')}"
    return text + (f" [{', '.join(codes)}]" if codes else "")


def check_stream(doc: Any, where: str, *, summary_expected: bool = True) -> None:
    """A stream that broke off is not a smaller load: an element with an ``error`` member (HTTP 200 was
    already sent when the error happened), or no summary row although the query asked for one, fails
    the customer-day, naming the error."""
    batches = _batches(doc, where)
    for i, batch in enumerate(batches):
        if "error" in batch:
            raise SourceApiError(SOURCE, f"{where} [{i}]: the stream carries an error after {i} batch(es), so it is "
                                 f"incomplete and nothing is published: {_describe_error(batch['error'])}")
    if summary_expected and not any("summaryRow" in b for b in batches):
        raise SourceApiError(SOURCE, f"{where}: no summaryRow although the query asked for SUMMARY_ROW_WITH_RESULTS: "
                             "the stream is incomplete and nothing is published")


def page_table(page: RawPage, raw_object: str) -> pa.Table:
    check_stream(page.doc, raw_object)
    rows = flatten_stream(page.doc, where=raw_object, day=page.day)
    for row in rows:
        row["raw_object"] = raw_object
    return pa.Table.from_pylist(rows, schema=GOOGLE_ADS.arrow_schema)


class GoogleAdsResource(dg.ConfigurableResource):
    """Google Ads API access. Credentials are read from the environment only: GOOGLE_ADS_DEVELOPER_TOKEN,
    GOOGLE_ADS_CLIENT_ID, GOOGLE_ADS_CLIENT_SECRET, GOOGLE_ADS_REFRESH_TOKEN."""

    api_url: str | None = Field(default=None, description=f"REST host, no version; unset: {API_URL_ENV}, else {DEFAULT_API_URL}")
    api_version: str | None = Field(default=None, description=f"API version; unset: {API_VERSION.name}, else {API_VERSION.default}")
    token_url: str | None = Field(default=None, description=f"OAuth token endpoint; unset: {TOKEN_URL_ENV}, else {DEFAULT_TOKEN_URL}")
    customer_ids: list[str] | None = Field(default=None, description=f"Customer ids; unset: {CUSTOMERS_ENV} (comma-separated)")
    login_customer_id: str | None = Field(default=None, description=f"Manager account id; unset: {LOGIN_CUSTOMER_ENV} (optional)")
    max_concurrent_customers: int = 4
    max_attempts: int = 6
    max_total_wait_s: float = 900.0
    backoff_base_s: float = 1.0

    def customers(self) -> list[str]:
        return [customer_id_of(c) for c in CUSTOMERS.values(self.customer_ids)]

    def connector(self, clock: Clock | None = None) -> GoogleAdsReports:
        http = build_client(clock=clock, auth_hint=CREDENTIALS_HINT, retry_after_from=retry_hint, classify=classify,
                            max_attempts=self.max_attempts, max_total_wait_s=self.max_total_wait_s,
                            backoff_base_s=self.backoff_base_s)
        login = LOGIN_CUSTOMER.get(self.login_customer_id)
        token = OAuthToken(http, source_url(TOKEN_URL, self.token_url, field="token_url"), clock or SystemClock())
        version = versions.version_setting_value(SOURCE, API_VERSION, self.api_version)
        return GoogleAdsReports(http, versions.base_url(API_URL, API_VERSION, self.api_url), version, token,
                                DEVELOPER_TOKEN.require(),
                                customer_id_of(login) if login else None)
