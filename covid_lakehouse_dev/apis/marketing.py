"""Offline stand-ins for the Facebook Marketing API, the Google Ads API (with its OAuth token endpoint)
and the CleverTap export API, in the response shapes of data/marketing/ (see data/marketing/SOURCES.md).

Rows are generated deterministically for any requested day from the real fixture records, so the demo
and the tests can ask for any window. Each API checks its credentials, pages like the real one, and
can be switched to failure modes: ``*_rate_limit_fault()`` with ``api.fail_next``, transient 5xx with
the harness' ``Fault.server_error`` and a changed response schema with ``change_schema``.
"""

import base64
import copy
import hashlib
import json
import random
import re
import threading
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from covid_lakehouse_dev.apis.harness import Fault, MockApi, MockRequest, MockResponse

DATA = Path(__file__).parent / "data" / "marketing"
FACEBOOK_PATH = "/facebook"  # + /<version>/act_<id>/insights
GOOGLE_PATH = "/google-ads"  # + /<version>/customers/<id>/googleAds:searchStream
GOOGLE_TOKEN_PATH = "/google-oauth/token"
CLEVERTAP_PATH = "/clevertap"

# Demo credentials the mocks accept (not secrets: they open nothing but this local mock).
FACEBOOK_TOKEN = "demo-facebook-token"
GOOGLE_DEVELOPER_TOKEN = "demo-developer-token"
GOOGLE_CLIENT_ID = "demo-client-id.apps.googleusercontent.com"
GOOGLE_CLIENT_SECRET = "demo-client-secret"
GOOGLE_REFRESH_TOKEN = "demo-refresh-token"
GOOGLE_ACCESS_TOKEN = "demo-google-access-token"
GOOGLE_MANAGER_ID = "9998887776"
CLEVERTAP_ACCOUNT = "DEMO-ACCOUNT-ID"
# Each ad account reports days in its own time zone (Facebook timezone_name, Google customer.time_zone).
FACEBOOK_TIMEZONES = {"798085168510957": "America/Los_Angeles", "798085168510958": "Europe/Berlin"}
GOOGLE_TIMEZONES = {"1234567890": "America/New_York", "2345678901": "Europe/London"}
CLEVERTAP_PASSCODE = "demo-passcode"


@cache
def _fixture(name: str) -> Any:
    """Parsed once; callers copy what they change."""
    return json.loads((DATA / name).read_text())


def _rng(*parts: object) -> random.Random:
    return random.Random(hashlib.sha256("|".join(map(str, parts)).encode()).digest())


def _day_range(since: str, until: str) -> list[date]:
    first, last = date.fromisoformat(since), date.fromisoformat(until)
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


# ---- fault helpers --------------------------------------------------------------------------------


def facebook_rate_limit_fault(minutes: int = 1, code: int = 80000) -> Fault:
    """HTTP 400 with Facebook's throttling error (fixture) and the usage header telling when to retry."""
    fixture = _fixture("facebook_rate_limit_error_fixture.json")
    body = copy.deepcopy(fixture["json"])
    body["error"]["code"] = code
    usage = {"798085168510957": [{"type": "ads_insights", "call_count": 100, "total_cputime": 40, "total_time": 60,
                                  "estimated_time_to_regain_access": minutes}]}
    headers = {"x-business-use-case-usage": json.dumps(usage), "x-app-usage": fixture["headers"]["x-app-usage"]}
    return Fault.custom(MockResponse.json_body(body, fixture["status_code"], headers))


def google_rate_limit_fault(retry_delay_s: int = 7) -> Fault:
    body = {"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED",
                      "details": [{"@type": "type.googleapis.com/google.ads.googleads.v21.errors.GoogleAdsFailure",
                                   "errors": [{"errorCode": {"quotaError": "RESOURCE_EXHAUSTED"},
                                               "message": "Too many requests. Retry in 7 seconds.",
                                               "details": {"quotaErrorDetails": {"rateScope": "DEVELOPER",
                                                                                 "rateName": "Number of operations for basic access",
                                                                                 "retryDelay": f"{retry_delay_s}s"}}}],
                                   "requestId": "mock-request"}]}}
    return Fault.custom(MockResponse.json_body(body, 429))


def clevertap_rate_limit_fault() -> Fault:
    return Fault.custom(MockResponse.json_body(
        {"status": "fail", "error": "Too many concurrent requests for this account", "code": 429}, 429))


# ---- schema changes (the harness' transform switch) ------------------------------------------------


def _facebook_spend_as_object(body: bytes) -> bytes:
    doc = json.loads(body)
    for row in doc.get("data", []):
        if "spend" in row:
            row["spend"] = {"amount": row["spend"], "currency": row.get("account_currency", "USD")}
    return json.dumps(doc).encode()


def _google_cost_renamed(body: bytes) -> bytes:
    doc = json.loads(body)
    for batch in doc if isinstance(doc, list) else []:
        for result in batch.get("results", []):
            metrics = result.get("metrics", {})
            if "costMicros" in metrics:
                metrics["costAmountMicros"] = metrics.pop("costMicros")
    return json.dumps(doc).encode()


def _clevertap_ts_as_epoch(body: bytes) -> bytes:
    doc = json.loads(body)
    for record in doc.get("records", []) if isinstance(doc, dict) else []:
        record["ts"] = int(datetime.strptime(str(record["ts"]), "%Y%m%d%H%M%S").timestamp())
    return json.dumps(doc).encode()


SCHEMA_CHANGES = {
    "facebook": (FACEBOOK_PATH + "/*", _facebook_spend_as_object),  # spend becomes {amount, currency}
    "google_ads": (GOOGLE_PATH + "/*", _google_cost_renamed),  # metrics.costMicros renamed
    "clevertap": (CLEVERTAP_PATH + "/1/events.json", _clevertap_ts_as_epoch),  # ts becomes epoch seconds
}


def change_schema(api: MockApi, source: str, changed: bool = True) -> None:
    """Switch one API to a changed response shape (or back)."""
    path, fn = SCHEMA_CHANGES[source]
    api.transform(path, fn if changed else None)


# ---- the mock -------------------------------------------------------------------------------------


@dataclass
class MarketingMock:
    facebook_accounts: dict[str, str] = field(default_factory=lambda: {"798085168510957": "USD", "798085168510958": "EUR"})
    facebook_ads_per_account: int = 5
    facebook_default_limit: int = 25
    facebook_revision: int = 0  # bump to restate conversions (late attribution)
    # Real Meta behaviour the mock keeps: level=ad leaves out DELETED/ARCHIVED ads unless asked for with
    # filtering on ad.effective_status, while the account totals include them.
    facebook_deleted_ads: int = 0  # the last N ads of each account are deleted (half) or archived
    facebook_max_rows_per_call: int | None = None  # level=ad limit above: code 1 "Please reduce the amount of data"
    facebook_report_polls: int = 1  # an async report run answers "Job Running" this many times first
    facebook_report_outcome: str = "Job Completed"  # or "Job Failed"
    _facebook_runs: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    facebook_max_days_per_call: int | None = None  # level=account ranges longer: the same code 1
    google_customers: dict[str, str] = field(default_factory=lambda: {"1234567890": "USD", "2345678901": "GBP"})
    google_ads_per_customer: int = 4
    google_batch_rows: int = 10_000
    clevertap_events_per_day: dict[str, int] = field(default_factory=lambda: {"App Launched": 7, "UTM Visited": 3})
    clevertap_max_concurrent: int = 3
    clevertap_count_partial: bool = False  # answer counts with "partial" + req_id first, to be polled
    clevertap_honour_events_param: bool = True  # False: summaries even with events=false (other export-time fields)
    clevertap_not_ready_polls: int = 0  # the first N GETs of each cursor answer code 2 "not ready"
    clevertap_exports: int = field(default=0, repr=False)  # profiles are filled at export time: they change per export
    # Versions past their sunset. Facebook (data/marketing/facebook_errors_DOC_DERIVED.json):
    # "reject" answers error #2635, "upgrade" serves the call as the newest version with the warning header.
    facebook_expired_versions: dict[str, str] = field(default_factory=lambda: {"v21.0": "reject", "v22.0": "upgrade"})
    # searchStream broken off mid-stream: "error" ends the array after the first batch (shape:
    # data/marketing/google_ads_stream_error_DOC_DERIVED.json), or "no_summary" drops the summary row.
    google_stream_fault: str | None = None
    google_sunset_versions: frozenset[str] = frozenset({"v19", "v20", "v21", "v22"})  # 404 on the versioned path
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _in_flight: int = field(default=0, repr=False)
    _not_ready_seen: dict[str, int] = field(default_factory=dict, repr=False)

    def install(self, api: MockApi) -> dict[str, str]:
        api.route("GET", FACEBOOK_PATH + "/*", self._facebook)
        api.route("POST", FACEBOOK_PATH + "/*", self._facebook_report_start)
        api.route("POST", GOOGLE_TOKEN_PATH, self._google_token)
        api.route("POST", GOOGLE_PATH + "/*", self._google_search_stream)
        api.route("POST", CLEVERTAP_PATH + "/1/events.json", self._clevertap_cursor)
        api.route("GET", CLEVERTAP_PATH + "/1/events.json", self._clevertap_records)
        api.route("POST", CLEVERTAP_PATH + "/1/counts/events.json", self._clevertap_count)
        api.route("GET", CLEVERTAP_PATH + "/1/counts/events.json", self._clevertap_count_result)
        return {
            "FACEBOOK_GRAPH_URL": "{base}" + FACEBOOK_PATH,
            "FACEBOOK_GRAPH_API_VERSION": "v27.0",
            "FACEBOOK_ACCESS_TOKEN": FACEBOOK_TOKEN,
            "FACEBOOK_AD_ACCOUNT_IDS": ",".join(f"act_{a}" for a in self.facebook_accounts),
            "GOOGLE_ADS_API_URL": "{base}" + GOOGLE_PATH,
            "GOOGLE_ADS_API_VERSION": "v26",
            "GOOGLE_OAUTH_TOKEN_URL": "{base}" + GOOGLE_TOKEN_PATH,
            "GOOGLE_ADS_DEVELOPER_TOKEN": GOOGLE_DEVELOPER_TOKEN,
            "GOOGLE_ADS_CLIENT_ID": GOOGLE_CLIENT_ID,
            "GOOGLE_ADS_CLIENT_SECRET": GOOGLE_CLIENT_SECRET,
            "GOOGLE_ADS_REFRESH_TOKEN": GOOGLE_REFRESH_TOKEN,
            "GOOGLE_ADS_LOGIN_CUSTOMER_ID": GOOGLE_MANAGER_ID,
            "GOOGLE_ADS_CUSTOMER_IDS": ",".join(self.google_customers),
            "CLEVERTAP_API_URL": "{base}" + CLEVERTAP_PATH,
            "CLEVERTAP_ACCOUNT_ID": CLEVERTAP_ACCOUNT,
            "CLEVERTAP_PASSCODE": CLEVERTAP_PASSCODE,
            "CLEVERTAP_EVENT_NAMES": ",".join(self.clevertap_events_per_day),
            "CLEVERTAP_TIMEZONE": "UTC",
            "MARKETING_BOOTSTRAP_DAYS": "3",
        }

    # -- Facebook --------------------------------------------------------------------------------

    def facebook_status(self, ad: int) -> str:
        from_end = self.facebook_ads_per_account - ad
        return "ACTIVE" if from_end > self.facebook_deleted_ads else ("DELETED" if from_end % 2 else "ARCHIVED")

    def facebook_rows(self, account: str, day: date) -> list[dict[str, Any]]:
        template = _fixture("facebook_insights_level_ad_airbyte_fixture.json")["data"][0]
        rows = []
        for ad in range(self.facebook_ads_per_account):
            rng = _rng("facebook", account, ad, day)
            impressions = rng.randint(150, 6000)
            clicks = rng.randint(0, impressions // 15)
            purchases = _rng("facebook-purchases", account, ad, day, self.facebook_revision).randint(0, clicks // 4)
            row = dict(template)
            row.update({
                "account_id": account, "account_currency": self.facebook_accounts[account],
                "account_name": f"{template['account_name']} {account[-2:]}",
                "campaign_id": f"2385440{account[-3:]}{ad // 2:04d}", "campaign_name": f"Campaign {ad // 2}",
                "adset_id": f"2385441{account[-3:]}{ad // 2:04d}", "adset_name": f"Ad set {ad // 2}",
                "ad_id": f"2385469{account[-3:]}{ad:04d}", "ad_name": f"Ad {ad}",
                "date_start": day.isoformat(), "date_stop": day.isoformat(),
                "impressions": str(impressions), "clicks": str(clicks),
                "spend": str((Decimal(rng.randint(200, 1500)) * impressions / 100_000).quantize(Decimal("0.01"))),
                "actions": [{"action_type": "link_click", "value": str(clicks)},
                            {"action_type": "offsite_conversion.fb_pixel_purchase", "value": str(purchases)},
                            {"action_type": "page_engagement", "value": str(clicks + rng.randint(0, 9))}],
            })
            rows.append(row)
        return rows

    def _facebook(self, req: MockRequest) -> MockResponse:
        def error(status: int, code: int, message: str, subcode: int | None = None) -> MockResponse:
            body: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "mock"}
            if subcode:
                body["error_subcode"] = subcode
            return MockResponse.json_body({"error": body}, status)

        query = {k: v[-1] for k, v in req.query.items()}
        token = req.headers.get("Authorization", "").removeprefix("Bearer ") or query.get("access_token", "")
        if token != FACEBOOK_TOKEN:
            return error(400, 190, "Invalid OAuth access token - Cannot parse access token")
        report_run = re.fullmatch(re.escape(FACEBOOK_PATH) + r"/(v\d+\.\d+)/(\d+)(/insights)?", req.path)
        if report_run and report_run[2] in self._facebook_runs:
            return self._facebook_report_run(req, report_run[1], report_run[2], bool(report_run[3]), query)
        account_object = re.fullmatch(re.escape(FACEBOOK_PATH) + r"/v\d+\.\d+/act_(\d+)", req.path)
        if account_object and account_object[1] in self.facebook_accounts:  # GET act_<id>?fields=timezone_name
            return MockResponse.json_body({"timezone_name": FACEBOOK_TIMEZONES.get(account_object[1], "America/Los_Angeles"),
                                           "id": f"act_{account_object[1]}"})
        match = re.fullmatch(re.escape(FACEBOOK_PATH) + r"/(v\d+\.\d+)/act_(\d+)/insights", req.path)
        if not match or match[2] not in self.facebook_accounts:
            return error(400, 100, f"Unsupported get request. Object with ID '{req.path.split('/')[-2]}' does not "
                         "exist, cannot be loaded due to missing permissions, or does not support this operation", 33)
        return self._facebook_insights(req, match[1], match[2], query)

    def _facebook_insights(self, req: MockRequest, version: str, account: str, query: dict[str, str]) -> MockResponse:
        def error(status: int, code: int, message: str) -> MockResponse:
            return MockResponse.json_body({"error": {"message": message, "type": "OAuthException", "code": code,
                                                     "fbtrace_id": "mock"}}, status)

        expired = self.facebook_expired_versions.get(version)
        if expired == "reject":
            doc = copy.deepcopy(_fixture("facebook_errors_DOC_DERIVED.json")["deprecated_version_error"])
            return MockResponse.json_body(doc["json"], doc["status_code"])
        extra_headers = {}
        if expired == "upgrade":
            header = _fixture("facebook_errors_DOC_DERIVED.json")["auto_upgrade_header"]
            extra_headers[header["name"]] = header["value"].format(version=version)
        try:
            window = json.loads(query["time_range"])
            days = _day_range(window["since"], window["until"])
        except (KeyError, ValueError, TypeError):
            return error(400, 100, "(#100) time_range must be {'since': 'YYYY-MM-DD', 'until': 'YYYY-MM-DD'}")
        if query.get("time_increment") != "1":
            return error(400, 100, "(#100) this mock serves time_increment=1 only")
        fields = set(query.get("fields", "").split(",")) | {"date_start", "date_stop"}
        if query.get("level") == "account":
            rows = [self._facebook_account_total(account, d) for d in days]
        elif query.get("level") == "ad":
            try:
                asked = {s for f in json.loads(query.get("filtering", "[]")) if f.get("field") == "ad.effective_status"
                         for s in f.get("value", [])} or {"ACTIVE"}
            except (ValueError, AttributeError):
                return error(400, 100, "(#100) filtering must be a JSON list of {field, operator, value}")
            rows = [r for d in days for ad, r in enumerate(self.facebook_rows(account, d))
                    if self.facebook_status(ad) in asked]
        else:
            return error(400, 100, "(#100) this mock serves level=ad and level=account")
        rows = [{k: v for k, v in r.items() if k in fields} for r in rows]
        limit = int(query.get("limit", self.facebook_default_limit))
        too_much = (query.get("level") == "ad" and self.facebook_max_rows_per_call is not None
                    and limit > self.facebook_max_rows_per_call) or (
            query.get("level") == "account" and self.facebook_max_days_per_call is not None
            and len(days) > self.facebook_max_days_per_call)
        if too_much:
            doc = _fixture("facebook_errors_DOC_DERIVED.json")["reduce_data_error"]
            return MockResponse.json_body(doc["json"], doc["status_code"])
        offset = int(base64.b64decode(query["after"]).decode()) if "after" in query else 0
        page = rows[offset: offset + limit]
        doc: dict[str, Any] = {"data": page}
        if page:
            cursors = {"before": base64.b64encode(str(offset).encode()).decode(),
                       "after": base64.b64encode(str(offset + len(page)).encode()).decode()}
            doc["paging"] = {"cursors": cursors}
            if offset + len(page) < len(rows):
                nxt = {**query, "after": cursors["after"]}
                nxt.pop("access_token", None)
                doc["paging"]["next"] = f"http://{req.headers.get('Host')}{req.path}?{urlencode(nxt)}"
        return MockResponse.json_body(doc, headers=extra_headers)

    def _facebook_report_start(self, req: MockRequest) -> MockResponse:
        """POST act_<id>/insights: an async report run of the query (its parameters in the query string)."""
        match = re.fullmatch(re.escape(FACEBOOK_PATH) + r"/v\d+\.\d+/act_(\d+)/insights", req.path)
        if req.headers.get("Authorization") != f"Bearer {FACEBOOK_TOKEN}" or not match or match[1] not in self.facebook_accounts:
            return MockResponse.json_body({"error": {"message": "Invalid request", "type": "OAuthException", "code": 100}}, 400)
        with self._lock:
            run_id = str(6_000_000_000_000 + len(self._facebook_runs))
            self._facebook_runs[run_id] = {"account": match[1], "query": {k: v[-1] for k, v in req.query.items()}, "polls": 0}
        return MockResponse.json_body({"report_run_id": run_id})

    def _facebook_report_run(self, req: MockRequest, version: str, run_id: str, results: bool,
                             query: dict[str, str]) -> MockResponse:
        """GET <report_run_id>: the run's status (Running for facebook_report_polls polls, then Completed
        or facebook_report_outcome); GET <report_run_id>/insights: its rows, paged like the sync edge."""
        run = self._facebook_runs[run_id]
        if not results:
            with self._lock:
                run["polls"] += 1
                running = run["polls"] <= self.facebook_report_polls
            state = "Job Running" if running else self.facebook_report_outcome
            doc = copy.deepcopy(_fixture("facebook_report_run_DOC_DERIVED.json")["status"])
            doc.update(id=run_id, account_id=run["account"], async_status=state,
                       async_percent_completion=50 if running else 100)
            return MockResponse.json_body(doc)
        paging = {k: query[k] for k in ("limit", "after") if k in query}
        return self._facebook_insights(req, version, run["account"], {**run["query"], **paging})

    def _facebook_account_total(self, account: str, day: date) -> dict[str, Any]:
        rows = self.facebook_rows(account, day)
        return {"account_id": account, "date_start": day.isoformat(), "date_stop": day.isoformat(),
                "impressions": str(sum(int(r["impressions"]) for r in rows)),
                "clicks": str(sum(int(r["clicks"]) for r in rows)),
                "spend": str(sum(Decimal(r["spend"]) for r in rows))}

    # -- Google Ads ------------------------------------------------------------------------------

    def google_results(self, customer: str, day: date) -> list[dict[str, Any]]:
        results = []
        for ad in range(self.google_ads_per_customer):
            rng = _rng("google", customer, ad, day)
            impressions = rng.randint(0, 4000) if ad else rng.randint(100, 4000)
            if impressions == 0:
                continue  # the API omits rows without impressions
            clicks = rng.randint(0, max(impressions // 12, 0))
            campaign, group, ad_id = f"11{ad // 2}", f"22{ad // 2}", f"33{ad}"
            metrics: dict[str, Any] = {"impressions": str(impressions), "costMicros": str(rng.randint(0, 90) * impressions * 10)}
            if clicks:  # proto3 JSON leaves zero values out
                metrics["clicks"] = str(clicks)
                metrics["conversions"] = float(rng.randint(0, clicks // 5))
            result = copy.deepcopy(_fixture("google_ads_rest_shapes_DOC_DERIVED.json")["searchStream_response"][0]["results"][0])
            result["customer"] = {"resourceName": f"customers/{customer}", "id": customer,
                                  "descriptiveName": f"Demo customer {customer[-4:]}", "currencyCode": self.google_customers[customer],
                                  "timeZone": GOOGLE_TIMEZONES.get(customer, "America/New_York")}
            result["campaign"].update(resourceName=f"customers/{customer}/campaigns/{campaign}", id=campaign, name=f"Brand {ad // 2}")
            result["adGroup"].update(resourceName=f"customers/{customer}/adGroups/{group}", id=group, name=f"Group {ad // 2}")
            result["adGroupAd"].update(resourceName=f"customers/{customer}/adGroupAds/{group}~{ad_id}",
                                       ad={"resourceName": f"customers/{customer}/ads/{ad_id}", "id": ad_id})
            result["metrics"] = metrics
            result["segments"] = {"date": day.isoformat()}
            results.append(result)
        return results

    def _google_token(self, req: MockRequest) -> MockResponse:
        form = {k: v[-1] for k, v in parse_qs(req.body.decode()).items()}
        if (form.get("grant_type"), form.get("client_id"), form.get("client_secret"), form.get("refresh_token")) != (
                "refresh_token", GOOGLE_CLIENT_ID, GOOGLE_CLIENT_SECRET, GOOGLE_REFRESH_TOKEN):
            return MockResponse.json_body({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}, 400)
        return MockResponse.json_body({"access_token": GOOGLE_ACCESS_TOKEN, "expires_in": 3599,
                                       "scope": "https://www.googleapis.com/auth/adwords", "token_type": "Bearer"})

    def _google_search_stream(self, req: MockRequest) -> MockResponse:
        def error(status: int, state: str, message: str, code: dict[str, str]) -> MockResponse:
            return MockResponse.json_body({"error": {"code": status, "message": message, "status": state, "details": [
                {"@type": "type.googleapis.com/google.ads.googleads.v21.errors.GoogleAdsFailure",
                 "errors": [{"errorCode": code, "message": message}], "requestId": "mock"}]}}, status)

        if req.headers.get("Authorization") != f"Bearer {GOOGLE_ACCESS_TOKEN}":
            return error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.",
                         {"authenticationError": "OAUTH_TOKEN_INVALID"})
        if req.headers.get("developer-token") != GOOGLE_DEVELOPER_TOKEN:
            return error(401, "UNAUTHENTICATED", "The developer token is not valid.", {"authenticationError": "DEVELOPER_TOKEN_INVALID"})
        version = req.path.removeprefix(GOOGLE_PATH + "/").split("/", 1)[0]
        if version in self.google_sunset_versions:  # the versioned path no longer exists: Google's HTML 404 page
            page = (DATA / "google_ads_404_DOC_DERIVED.html").read_bytes()
            return MockResponse(404, page, {"Content-Type": "text/html; charset=UTF-8"})
        match = re.fullmatch(re.escape(GOOGLE_PATH) + r"/v\d+/customers/(\d+)/googleAds:searchStream", req.path)
        if not match or match[1] not in self.google_customers or req.headers.get("login-customer-id") != GOOGLE_MANAGER_ID:
            return error(403, "PERMISSION_DENIED", "User doesn't have permission to access customer.",
                         {"authorizationError": "USER_PERMISSION_DENIED"})
        body = req.json()
        dates = re.search(r"segments\.date BETWEEN '([\d-]{10})' AND '([\d-]{10})'", body.get("query", ""))
        if not dates:
            return error(400, "INVALID_ARGUMENT", "Query error: a finite date range is required.", {"queryError": "EXPECTED_FILTERS_ON_DATE_RANGE"})
        results = [r for d in _day_range(dates[1], dates[2]) for r in self.google_results(match[1], d)]
        mask = "customer.id,customer.descriptiveName,customer.currencyCode,customer.timeZone,campaign.id,campaign.name,adGroup.id,adGroup.name," \
               "adGroupAd.ad.id,segments.date,metrics.impressions,metrics.clicks,metrics.costMicros,metrics.conversions"
        size = self.google_batch_rows
        batches = [{"results": results[i: i + size], "fieldMask": mask, "requestId": "mock"}
                   for i in range(0, len(results), size)] or [{"fieldMask": mask, "requestId": "mock"}]
        if body.get("summaryRowSetting") == "SUMMARY_ROW_WITH_RESULTS":
            batches[-1]["summaryRow"] = {"metrics": {
                "impressions": str(sum(int(r["metrics"]["impressions"]) for r in results)),
                "clicks": str(sum(int(r["metrics"].get("clicks", "0")) for r in results)),
                "costMicros": str(sum(int(r["metrics"]["costMicros"]) for r in results)),
                "conversions": sum(r["metrics"].get("conversions", 0.0) for r in results)}}
        if self.google_stream_fault == "error":
            batches = [*batches[:1], _fixture("google_ads_stream_error_DOC_DERIVED.json")["stream_element"]]
            batches[0].pop("summaryRow", None)
        elif self.google_stream_fault == "no_summary":
            batches[-1].pop("summaryRow", None)
        return MockResponse.json_body(batches)

    # -- CleverTap ---------------------------------------------------------------------------------

    def clevertap_records(self, event: str, day: date, export: int = 0, summaries: bool = True) -> list[dict[str, Any]]:
        """The day's records as export number ``export`` sends them: CleverTap fills ``profile`` when it
        exports (the event summaries' count / last_seen grow), and leaves the summaries out when the
        export was asked with events=false."""
        template = _fixture("clevertap_get_events_records_fixture.json")["records"][0]
        records = []
        for i in range(self.clevertap_events_per_day.get(event, 0)):
            rng = _rng("clevertap", event, i, day)
            record = copy.deepcopy(template)
            if summaries:
                for summary in record["profile"]["events"].values():
                    summary["count"] += export
                    summary["last_seen"] += 86_400 * export
            else:
                del record["profile"]["events"]
            record["profile"]["objectId"] = f"__g{hashlib.md5(f'{event}{i}{day}'.encode()).hexdigest()}"
            record["profile"]["app_version"] = f"1.1.{rng.randint(5, 9)}"
            record["ts"] = int(f"{day:%Y%m%d}{rng.randint(0, 23):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}")
            record["event_props"] = {"Install": rng.choice(["y", "n"]), "screen": f"s{rng.randint(1, 4)}"}
            records.append(record)
        if records and event == "App Launched":
            records.append(copy.deepcopy(records[0]))  # an exact repeat, as exports contain
        return records

    def _clevertap_authorized(self, req: MockRequest) -> MockResponse | None:
        if (req.headers.get("X-CleverTap-Account-Id"), req.headers.get("X-CleverTap-Passcode")) != (CLEVERTAP_ACCOUNT, CLEVERTAP_PASSCODE):
            return MockResponse.json_body({"status": "fail", "error": "Account Id and Passcode invalid", "code": 401}, 401)
        return None

    def _clevertap_limited(self, handler):
        """CleverTap caps concurrent requests per account and answers 429 above it."""
        with self._lock:
            if self._in_flight >= self.clevertap_max_concurrent:
                return clevertap_rate_limit_fault().response
            self._in_flight += 1
        try:
            return handler()
        finally:
            with self._lock:
                self._in_flight -= 1

    def _clevertap_cursor(self, req: MockRequest) -> MockResponse:
        def handle() -> MockResponse:
            if denied := self._clevertap_authorized(req):
                return denied
            body = req.json()
            start, end = (datetime.strptime(str(body.get(k)), "%Y%m%d").date() for k in ("from", "to"))
            with self._lock:
                self.clevertap_exports += 1
                export = self.clevertap_exports
            state = {"e": body["event_name"], "f": start.isoformat(), "t": end.isoformat(), "o": 0,
                     "b": int(req.query.get("batch_size", ["5000"])[-1]), "x": export,
                     "s": req.query.get("events", ["true"])[-1] != "false" or not self.clevertap_honour_events_param}
            return MockResponse.json_body({"status": "success", "cursor": _encode_cursor(state)})

        return self._clevertap_limited(handle)

    def _clevertap_records(self, req: MockRequest) -> MockResponse:
        def handle() -> MockResponse:
            if denied := self._clevertap_authorized(req):
                return denied
            try:  # parse_qs decoded the URL-encoding once; a cursor encoded twice does not decode here
                state = _decode_cursor(req.query["cursor"][-1])
            except (KeyError, ValueError):
                return MockResponse.json_body({"status": "fail", "error": "Invalid cursor", "code": 400}, 400)
            with self._lock:  # "not ready" answers per cursor, counted here
                polls = self._not_ready_seen.get(req.query["cursor"][-1], 0)
                self._not_ready_seen[req.query["cursor"][-1]] = polls + 1
            if polls < self.clevertap_not_ready_polls:
                return MockResponse.json_body(_fixture("clevertap_not_ready_DOC_DERIVED.json")["json"])
            records = [r for d in _day_range(state["f"], state["t"])
                       for r in self.clevertap_records(state["e"], d, state.get("x", 0), state.get("s", True))]
            batch = records[state["o"]: state["o"] + state["b"]]
            doc: dict[str, Any] = {"status": "success", "records": batch}
            if state["o"] + state["b"] < len(records):
                doc["next_cursor"] = _encode_cursor({**state, "o": state["o"] + state["b"]})
            return MockResponse.json_body(doc)

        return self._clevertap_limited(handle)

    def _clevertap_count(self, req: MockRequest) -> MockResponse:
        if denied := self._clevertap_authorized(req):
            return denied
        body = req.json()
        state = {"e": body["event_name"], "f": str(body["from"]), "t": str(body["to"])}
        if self.clevertap_count_partial:
            return MockResponse.json_body({"status": "partial",
                                           "req_id": base64.urlsafe_b64encode(json.dumps(state).encode()).decode()})
        return self._count(state)

    def _clevertap_count_result(self, req: MockRequest) -> MockResponse:
        if denied := self._clevertap_authorized(req):
            return denied
        return self._count(json.loads(base64.urlsafe_b64decode(req.query["req_id"][-1])))

    def _count(self, state: dict[str, str]) -> MockResponse:
        first, last = (datetime.strptime(state[k], "%Y%m%d").date().isoformat() for k in ("f", "t"))
        count = sum(len(self.clevertap_records(state["e"], d)) for d in _day_range(first, last))
        return MockResponse.json_body({"status": "success", "count": count})


_CURSOR_MAGIC = b"\xfb\xef"  # makes the base64 text start with "++8": characters that need URL-encoding


def _encode_cursor(state: dict[str, Any]) -> str:
    """Standard base64 (with + / =) sent URL-encoded, as CleverTap's cursors are."""
    return quote(base64.b64encode(_CURSOR_MAGIC + json.dumps(state).encode()).decode(), safe="")


def _decode_cursor(text: str) -> dict[str, Any]:
    raw = base64.b64decode(text, validate=True)
    if not raw.startswith(_CURSOR_MAGIC):
        raise ValueError("not a cursor of this mock")
    return json.loads(raw[len(_CURSOR_MAGIC):])


def register(api: MockApi) -> dict[str, str]:
    """Routes for the three marketing APIs; the env vars pointing the domain at them and holding the
    mocks' demo credentials ("{base}" is replaced by the server's URL)."""
    return MarketingMock().install(api)
