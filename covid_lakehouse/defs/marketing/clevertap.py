"""CleverTap events export (Get Events API) and the event count used to reconcile it.

POST {api}/1/events.json?batch_size=N with {"event_name", "from", "to"} (dates as YYYYMMDD integers)
answers with a cursor that is already URL-encoded; GET {api}/1/events.json?cursor=<cursor> returns a
batch of records and ``next_cursor`` until the export is exhausted; ``{"status": "fail", "code": 2}``
means the batch is not ready yet, and the same cursor is asked again within a bounded budget. Exports
are asked without the profile's event summaries (``events=false``, as public clients pass). ``ts`` is
YYYYMMDDHHMMSS in the account's time zone (a REQUIRED setting), not epoch seconds.

Records carry no id. The event's identity is what identifies the event and nothing else: event name,
``profile.objectId``, ``ts`` (as sent), ``event_props`` and ``session_props``; its key is the SHA-256 of
their canonical JSON plus an occurrence number for exact repeats within one export. ``profile`` is NOT
part of it: CleverTap fills it at export time (event summaries, last-seen fields), so the same event
read again tomorrow would get a new key. Rows loaded with the old whole-record key (key_version 1) are
re-keyed before the next load (``rekey_legacy_rows``).

Only pseudonymous profile fields (objectId, platform, app version) reach the warehouse; anything else
in ``profile`` (name, email, phone when an app sends them) stays in the raw page. ``platform`` and
``app_version`` are the profile's values at export time, not necessarily at the event.
"""

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dagster as dg
import pyarrow as pa
from pydantic import Field

from covid_lakehouse.defs.marketing.common import (
    RawPage,
    SettingError,
    SourceApiError,
    SourceSchemaError,
    build_client,
    load_json,
)
from covid_lakehouse.defs.marketing.tables import CLEVERTAP
from covid_lakehouse.lib.clock import Clock, SystemClock, poll_until
from covid_lakehouse.lib.http import HttpClient, PageGuard
from covid_lakehouse.lib.http.hosts import check_source_url
from covid_lakehouse.lib.settings import setting

SOURCE = "clevertap"
# CleverTap's data centres (https://developer.clevertap.com/docs/api-quickstart-guide, "region"); the
# region-less api.clevertap.com is not one of them for most accounts.
REGIONS = ("eu1", "in1", "us1", "sg1", "aps3", "mec1")
VENDOR_HOSTS = ("*.api.clevertap.com", "api.clevertap.com")
REGION = setting("CLEVERTAP_REGION", f"the account's data centre, one of {', '.join(REGIONS)} (or set CLEVERTAP_API_URL)",
                 scope="marketing")
API_URL = setting("CLEVERTAP_API_URL", "full API base URL instead of CLEVERTAP_REGION (https://<region>.api.clevertap.com)",
                  scope="marketing")
ACCOUNT = setting("CLEVERTAP_ACCOUNT_ID", "CleverTap account id", scope="marketing")
PASSCODE = setting("CLEVERTAP_PASSCODE", "CleverTap passcode", secret=True, scope="marketing")
EVENTS = setting("CLEVERTAP_EVENT_NAMES", "comma-separated events to export", default="App Launched",
                 scope="marketing")
TIMEZONE = setting("CLEVERTAP_TIMEZONE", "REQUIRED: the account's IANA time zone, e.g. Asia/Kolkata (event "
                   "timestamps are local to it; no default: a wrong zone shifts every event)", scope="marketing")
REKEY_TIMEZONE = setting("CLEVERTAP_REKEY_TIMEZONE", "the zone rows loaded before the event-identity change were read "
                         "with (UTC if CLEVERTAP_TIMEZONE was unset then); default: CLEVERTAP_TIMEZONE", scope="marketing")
API_URL_ENV, ACCOUNT_ENV, PASSCODE_ENV, EVENTS_ENV, TIMEZONE_ENV = (API_URL.name, ACCOUNT.name, PASSCODE.name,
                                                                    EVENTS.name, TIMEZONE.name)
COUNT_POLL_INTERVAL_S = 2.0
COUNT_BUDGET_S = 60.0  # how long a "partial" count may be polled (30 polls)
NOT_READY_CODE = 2  # {"status": "fail", "code": 2}: the export batch is still being prepared
KEY_VERSION = 2  # event identity without ``profile``; 1 = the whole record


def yyyymmdd(day: date) -> int:
    return int(day.strftime("%Y%m%d"))


def event_label(event_name: str) -> str:
    """A file-name-safe label per event name ("App Launched" -> "app_launched-3f2a1c")."""
    slug = re.sub(r"[^a-z0-9]+", "_", event_name.lower()).strip("_")[:40] or "event"
    return f"{slug}-{hashlib.sha256(event_name.encode()).hexdigest()[:6]}"


def event_identity(event_name: str, object_id: Any, ts: Any, event_props: Any, session_props: Any) -> str:
    """The event's key: SHA-256 of the canonical JSON of what identifies it (never ``profile``)."""
    canonical = json.dumps({"event_name": event_name, "objectId": object_id, "ts": str(ts), "event_props": event_props,
                            "session_props": session_props}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def legacy_key(event_name: str, record: Any) -> str:
    """The key of releases before KEY_VERSION 2: the whole record, ``profile`` included."""
    canonical = json.dumps({"event_name": event_name, "record": record}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class CleverTapEvents:
    def __init__(self, http: HttpClient, api_url: str, account_id: str, passcode: str, batch_size: int,
                 clock: Clock, not_ready_budget_s: float = 600.0, not_ready_poll_s: float = 15.0) -> None:
        self._http, self._api, self._batch = http, api_url.rstrip("/"), batch_size
        self._headers = {"X-CleverTap-Account-Id": account_id, "X-CleverTap-Passcode": passcode,
                         "Content-Type": "application/json"}
        self._clock = clock
        self._not_ready_budget_s, self._not_ready_poll_s = not_ready_budget_s, not_ready_poll_s

    def _checked(self, body: bytes, where: str, *, not_ready_ok: bool = False) -> dict:
        doc = load_json(SOURCE, where, body)
        if not isinstance(doc, dict) or "status" not in doc:
            raise SourceSchemaError(SOURCE, where, f"expected an object with a status, got {type(doc).__name__}")
        if not_ready_ok and doc["status"] == "fail" and doc.get("code") == NOT_READY_CODE:
            return doc
        if doc["status"] not in ("success", "partial"):
            raise SourceApiError(SOURCE, f"{where}: status {doc['status']!r}: {doc.get('error', 'no error text')} "
                                 f"(code {doc.get('code', '?')})")
        return doc

    def pages(self, event_name: str, day: date) -> Iterator[RawPage]:
        """Every batch of one event's records for one day (account timezone)."""
        where = f"events cursor for {event_name!r} on {day}"
        # events=false: no profile event summaries (export-time state, and most of the page's bytes)
        response = self._http.post(f"{self._api}/1/events.json", params={"batch_size": self._batch, "events": "false"},
                                   json={"event_name": event_name, "from": yyyymmdd(day), "to": yyyymmdd(day)},
                                   headers=self._headers)
        cursor = self._checked(response.content, where).get("cursor")
        label, number = event_label(event_name), 0
        guard = PageGuard(f"{SOURCE} {where} on {day}")
        while cursor:
            guard.advance(cursor)  # a repeated cursor or too many pages: fail instead of looping forever
            number += 1
            page_label = f"{label}-p{number:04d}"
            response, doc = self._batch_when_ready(cursor, f"{page_label} of {day}")
            yield RawPage(SOURCE, day, page_label, response.content, doc,
                          {"event-name": quote(event_name), "page": str(number)})
            cursor = doc.get("next_cursor")

    def _batch_when_ready(self, cursor: str, where: str) -> tuple[Any, dict]:
        """GET one batch; while CleverTap says it is not ready (code 2), ask the same cursor again every
        not_ready_poll_s, for at most not_ready_budget_s."""
        # The cursor arrives URL-encoded: encoding it again (params=) would break it. quote() with "%" safe
        # leaves an encoded cursor as it is and still encodes one sent raw.
        url = f"{self._api}/1/events.json?cursor={quote(cursor, safe='%')}"

        def ask(_: Any) -> tuple[Any, dict]:
            response = self._http.get(url, headers=self._headers)
            return response, self._checked(response.content, where, not_ready_ok=True)

        def not_ready(answer: tuple[Any, dict], elapsed: float) -> SourceApiError:
            return SourceApiError(SOURCE, f"{where}: the export batch was still not ready (code {NOT_READY_CODE}: "
                                  f"{answer[1].get('error', 'no error text')}) after {elapsed:.0f}s of waiting "
                                  f"(budget {self._not_ready_budget_s:.0f}s)")

        return poll_until(ask, lambda answer: answer[1]["status"] != "fail", clock=self._clock,
                          every_s=self._not_ready_poll_s, within_s=self._not_ready_budget_s, timed_out=not_ready)

    def reported_count(self, event_name: str, day: date) -> int:
        """CleverTap's own count of the event that day (Get Event Count: may answer "partial" with a
        req_id to poll)."""
        where = f"event count for {event_name!r} on {day}"

        def ask(previous: dict | None) -> dict:
            if previous is None:
                response = self._http.post(f"{self._api}/1/counts/events.json", headers=self._headers,
                                           json={"event_name": event_name, "from": yyyymmdd(day), "to": yyyymmdd(day)})
            else:
                response = self._http.get(f"{self._api}/1/counts/events.json", params={"req_id": previous["req_id"]},
                                          headers=self._headers)
            return self._checked(response.content, where)

        def counted(doc: dict) -> bool:
            if doc["status"] != "success" and not doc.get("req_id"):
                raise SourceSchemaError(SOURCE, where, "status partial without a req_id")
            return doc["status"] == "success"

        doc = poll_until(ask, counted, clock=self._clock, every_s=COUNT_POLL_INTERVAL_S, within_s=COUNT_BUDGET_S,
                         timed_out=lambda _, elapsed: SourceApiError(SOURCE, f"{where}: still partial after {elapsed:.0f}s"))
        count = doc.get("count")
        if isinstance(count, bool) or not isinstance(count, int):
            raise SourceSchemaError(SOURCE, where, f"count is {count!r}, expected an integer")
        return count


def parse_ts(value: Any, where: str, tz: ZoneInfo) -> tuple[date, datetime]:
    """ts is YYYYMMDDHHMMSS (an integer) in the account's timezone -> (local date, UTC instant)."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or len(text) != 14 or not text.isdigit():
        hint = " (looks like epoch seconds)" if isinstance(value, int) and 9 <= len(str(value)) <= 10 else ""
        raise SourceSchemaError(SOURCE, where, f"ts is {value!r}{hint}, expected YYYYMMDDHHMMSS")
    try:
        local = datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=tz)
    except ValueError:
        raise SourceSchemaError(SOURCE, where, f"ts {text} is not a valid date and time") from None
    return local.date(), local


class RecordParser:
    """Turns the pages of ONE export (event name, day) into rows; counts exact repeats across pages."""

    def __init__(self, event_name: str, tz: ZoneInfo) -> None:
        self._event, self._tz = event_name, tz
        self._seen: Counter[str] = Counter()

    def rows(self, doc: dict, where: str, day: date) -> list[dict[str, Any]]:
        records = doc.get("records")
        if not isinstance(records, list):
            raise SourceSchemaError(SOURCE, where, f"expected a 'records' list; fields present: {', '.join(sorted(doc))}")
        rows = []
        for i, record in enumerate(records):
            at = f"{where} records[{i}]"
            if not isinstance(record, dict):
                raise SourceSchemaError(SOURCE, at, f"record is {type(record).__name__}, expected an object")
            if "ts" not in record:
                raise SourceSchemaError(SOURCE, at, f"missing field ts; present: {', '.join(sorted(record))}")
            local_day, local_ts = parse_ts(record["ts"], at, self._tz)
            if local_day != day:
                raise SourceSchemaError(SOURCE, at, f"ts {record['ts']} is outside the requested day {day}")
            profile, event_props, session_props = (record.get(k) or {} for k in ("profile", "event_props", "session_props"))
            for name, value in (("profile", profile), ("event_props", event_props), ("session_props", session_props)):
                if not isinstance(value, dict):
                    raise SourceSchemaError(SOURCE, at, f"{name} is {type(value).__name__}, expected an object")
            key = event_identity(self._event, profile.get("objectId"), record["ts"], event_props, session_props)
            occurrence = self._seen[key]
            self._seen[key] += 1
            rows.append({
                "event_key": key, "occurrence": occurrence, "event_name": self._event, "event_date": local_day,
                "event_ts": local_ts, "profile_object_id": profile.get("objectId"),
                "platform": profile.get("platform"), "app_version": profile.get("app_version"),
                "event_props": json.dumps(event_props, ensure_ascii=False),
                "session_props": json.dumps(session_props, ensure_ascii=False),
                "key_version": KEY_VERSION, "account_timezone": self._tz.key,
            })
        return rows

    def page_table(self, page: RawPage, raw_object: str) -> pa.Table:
        rows = self.rows(page.doc, raw_object, page.day)
        for row in rows:
            row["raw_object"] = raw_object
        return pa.Table.from_pylist(rows, schema=CLEVERTAP.arrow_schema)


class CleverTapResource(dg.ConfigurableResource):
    """CleverTap API access. Credentials are read from CLEVERTAP_ACCOUNT_ID / CLEVERTAP_PASSCODE only."""

    region: str | None = Field(default=None, description=f"Data centre ({', '.join(REGIONS)}); unset: {REGION.name}")
    api_url: str | None = Field(default=None, description=f"Full API base instead of the region; unset: {API_URL_ENV}")
    event_names: list[str] | None = Field(default=None, description=f"Events to export; unset: {EVENTS_ENV} (comma-separated), else 'App Launched'")
    timezone: str | None = Field(default=None, description=f"The account's time zone (ts is local time); unset: {TIMEZONE_ENV} (required)")
    batch_size: int = Field(default=5000, description="records per batch (CleverTap's maximum is 5000)")
    max_concurrent_requests: int = Field(default=2, description="CleverTap answers 429 above a per-account cap on concurrent requests")
    max_attempts: int = 6
    max_total_wait_s: float = 300.0
    backoff_base_s: float = 1.0
    not_ready_budget_s: float = Field(default=600.0, description="how long one batch may stay 'not ready' (code 2)")
    not_ready_poll_s: float = Field(default=15.0, description="seconds between asks for a batch that is not ready")

    def events(self) -> list[str]:
        return EVENTS.values(self.event_names)

    def zone(self) -> ZoneInfo:
        name = TIMEZONE.get(self.timezone)
        if not name:
            raise SettingError(f"{TIMEZONE_ENV} is not set: CleverTap sends event times in the account's time zone "
                               "(Settings > Account in the dashboard); set it to that IANA zone, e.g. Asia/Kolkata. "
                               "There is no default: a wrong zone shifts every event.")
        return _zone(TIMEZONE_ENV, name)

    def rekey_zone(self) -> ZoneInfo:
        name = REKEY_TIMEZONE.get()
        return _zone(REKEY_TIMEZONE.name, name) if name else self.zone()

    def api_base(self) -> str:
        url, region = API_URL.get(self.api_url), REGION.get(self.region)
        if url:
            return url
        if not region:
            raise SettingError(f"{REGION.name} is not set: set the account's data centre ({', '.join(REGIONS)}) or "
                               f"{API_URL_ENV}; the region-less api.clevertap.com is not a data centre for most accounts")
        if region.strip().lower() not in REGIONS:
            raise SettingError(f"{REGION.name}={region!r} is not a CleverTap region: one of {', '.join(REGIONS)}")
        return f"https://{region.strip().lower()}.api.clevertap.com"

    def connector(self, clock: Clock | None = None) -> CleverTapEvents:
        http = build_client(clock=clock, auth_hint=f"the environment variables {ACCOUNT_ENV} and {PASSCODE_ENV}",
                            retry_after_from=None, max_attempts=self.max_attempts,
                            max_total_wait_s=self.max_total_wait_s, backoff_base_s=self.backoff_base_s)
        # Only CleverTap's data centres, or the host the operator set in CLEVERTAP_API_URL (lib/http/hosts.py).
        base = check_source_url(self.api_base(), field="api_url (resource config) / " + API_URL_ENV if self.api_url
                                else API_URL_ENV, vendor_hosts=VENDOR_HOSTS, operator_url=API_URL.get())
        return CleverTapEvents(http, base, ACCOUNT.require(), PASSCODE.require(), self.batch_size,
                               clock or SystemClock(), self.not_ready_budget_s, self.not_ready_poll_s)


def _zone(variable: str, name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingError(f"{variable}: {name!r} is not an IANA time zone (e.g. Asia/Kolkata)") from None
