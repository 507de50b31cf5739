"""Facebook Marketing API: ad-level daily insights of each ad account.

GET {graph}/act_<id>/insights?level=ad&time_increment=1&time_range={"since","until"}&fields=...
with cursor paging (paging.cursors.after while paging.next is present), read directly or from an
async insights report run; and the account's daily totals (level=account) to reconcile with.
"""

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from covid_lakehouse.defs.marketing import versions
from covid_lakehouse.defs.marketing.common import (
    RawPage,
    SourceApiError,
    SourceSchemaError,
    int_metric,
    load_json,
)
from covid_lakehouse.defs.marketing.facebook.errors import (
    REDUCE_DATA,
    VERSION_GONE,
    VERSION_WARNING_HEADER,
    VersionWarnings,
)
from covid_lakehouse.defs.marketing.facebook.parse import _data_rows, _decimal_text, _iso_date, load_page
from covid_lakehouse.defs.marketing.facebook.settings import API_VERSION, SOURCE
from covid_lakehouse.defs.marketing.versions import UnsupportedApiVersion
from covid_lakehouse.lib.clock import Clock, SystemClock, poll_until
from covid_lakehouse.lib.http import ClientError, HttpClient, PageGuard

FIELDS = ("account_id", "account_name", "account_currency", "campaign_id", "campaign_name", "adset_id",
          "adset_name", "ad_id", "ad_name", "date_start", "date_stop", "impressions", "clicks", "spend", "actions")
MIN_PAGE_SIZE = 25
# Every ad status, DELETED and ARCHIVED included: level=ad leaves those ads out by default although Meta
# keeps their spend for 28 days (the list a public insights client passes; Meta's ad effective_status enum).
AD_STATUSES = ("ACTIVE", "PAUSED", "DELETED", "PENDING_REVIEW", "DISAPPROVED", "PREAPPROVED", "PENDING_BILLING_INFO",
               "CAMPAIGN_PAUSED", "ARCHIVED", "ADSET_PAUSED", "IN_PROCESS", "WITH_ISSUES")
EVERY_AD = json.dumps([{"field": "ad.effective_status", "operator": "IN", "value": list(AD_STATUSES)}])  # a call on an expired version, served auto-upgraded


class _ReduceData(Exception):
    def __init__(self, error: ClientError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class DayTotals:
    impressions: int
    clicks: int
    spend: str



class FacebookInsights:
    def __init__(self, http: HttpClient, graph_url: str, version: str, token: str, page_size: int,
                 warnings: VersionWarnings | None = None, clock: Clock | None = None, report_poll_s: float = 10.0,
                 report_budget_s: float = 1800.0) -> None:
        self._http, self._token, self._page_size = http, token, page_size
        self._clock = clock or SystemClock()
        self._report_poll_s, self._report_budget_s = report_poll_s, report_budget_s
        self.version, self._graph = version, f"{graph_url.rstrip('/')}/{version}"
        self._warnings = warnings or VersionWarnings()
        self._zones: dict[str, str] = {}
        self._lock = threading.Lock()

    def version_notices(self, today: date) -> list[str]:
        """Why the version in use needs attention: the sunset table, and the warning headers received."""
        return versions.sunset_warnings(SOURCE, self.version, today) + [
            f"{VERSION_WARNING_HEADER}: {w}" for w in sorted(self._warnings.seen)]

    def _get(self, account_id: str, params: dict[str, Any], where: str, *, path: str | None = None,
             method: str = "GET") -> tuple[bytes, Any]:
        """One call of the insights edge (or ``path``); Facebook's coded errors as this connector's errors."""
        try:
            response = self._http.request(method, f"{self._graph}/{path or f'act_{account_id}/insights'}",
                                          params=params, headers={"Authorization": f"Bearer {self._token}"})
        except ClientError as err:
            if err.kind == VERSION_GONE:
                raise UnsupportedApiVersion(SOURCE, self.version, API_VERSION, err.detail) from None
            if err.kind == REDUCE_DATA:
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
            if err.kind == VERSION_GONE:
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

        def finished(status: Any) -> bool:
            state = status.get("async_status") if isinstance(status, dict) else None
            if state in ("Job Failed", "Job Skipped"):
                raise SourceApiError(SOURCE, f"{where}: report run {run_id} ended with {state!r}")
            return state == "Job Completed" and status.get("async_percent_completion") == 100

        def still_running(status: Any, elapsed: float) -> SourceApiError:
            state, percent = ((status.get("async_status"), status.get("async_percent_completion"))
                              if isinstance(status, dict) else (None, None))
            return SourceApiError(SOURCE, f"{where}: report run {run_id} still {state!r} ({percent}%) after {elapsed:.0f}s")

        fields = {"fields": "async_status,async_percent_completion"}
        poll_until(lambda _: self._get(account_id, fields, where, path=run_id)[1], finished, clock=self._clock,
                   every_s=self._report_poll_s, within_s=self._report_budget_s, timed_out=still_running)
        return run_id

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
