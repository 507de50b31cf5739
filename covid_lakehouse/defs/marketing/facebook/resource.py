"""FacebookAdsResource: the Dagster resource that builds a FacebookInsights connector from its settings."""

import dagster as dg
import requests
from pydantic import Field

from covid_lakehouse.defs.marketing import versions
from covid_lakehouse.defs.marketing.common import SettingError, build_client
from covid_lakehouse.defs.marketing.facebook.connector import FacebookInsights
from covid_lakehouse.defs.marketing.facebook.errors import VersionWarnings, classify, retry_hint
from covid_lakehouse.defs.marketing.facebook.settings import (
    ACCOUNTS,
    ACCOUNTS_ENV,
    API_VERSION,
    API_VERSION_ENV,
    DEFAULT_GRAPH_URL,
    GRAPH_URL,
    GRAPH_URL_ENV,
    SOURCE,
    TOKEN,
    TOKEN_ENV,
)
from covid_lakehouse.lib.clock import Clock
from covid_lakehouse.lib.http import THROTTLED


def account_id_of(value: str) -> str:
    digits = value.strip().removeprefix("act_")
    if not digits.isascii() or not digits.isdigit():
        raise SettingError(f"{ACCOUNTS_ENV}: {value!r} is not an ad account id (digits, optionally act_<digits>)")
    return digits



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
        graph = versions.base_url(GRAPH_URL, API_VERSION, self.graph_url, field="graph_url")
        warnings, session = VersionWarnings(), requests.Session()
        session.hooks["response"].append(warnings)
        http = build_client(clock=clock, auth_hint=f"the environment variable {TOKEN_ENV}", retry_after_from=retry_hint,
                            max_attempts=self.max_attempts, max_total_wait_s=self.max_rate_limit_wait_s,
                            backoff_base_s=self.backoff_base_s, session=session, classify=classify,
                            min_waits={THROTTLED: self.min_throttle_wait_s})
        return FacebookInsights(http, graph, version, TOKEN.require(), self.page_size, warnings, clock,
                                self.report_poll_s, self.report_budget_s)

    def use_report_runs(self, days: int) -> bool:
        return 0 < self.report_run_min_days <= days
