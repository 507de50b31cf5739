"""Facebook Marketing API: ad-level daily insights of each ad account.

GET {graph}/act_<id>/insights?level=ad&time_increment=1&time_range={"since","until"}&fields=...
with cursor paging (paging.cursors.after while paging.next is present). Metrics arrive as JSON
strings, ``actions`` as a list of {action_type, value} (absent when there are none).

Modules: ``settings`` (source name and settings), ``errors`` (coded errors -> HTTP statuses, retry
hints), ``connector`` (FacebookInsights: paging, report runs, daily totals), ``parse`` (flattening
insights pages), ``resource`` (FacebookAdsResource).
"""

from covid_lakehouse.defs.marketing.facebook.connector import (
    AD_STATUSES,
    EVERY_AD,
    FIELDS,
    MIN_PAGE_SIZE,
    DayTotals,
    FacebookInsights,
)
from covid_lakehouse.defs.marketing.facebook.errors import (
    NOT_TRANSIENT_STATUS,
    REDUCE_DATA_STATUS,
    THROTTLE_CODES,
    THROTTLE_SUBCODES,
    TOKEN_CODES,
    TRANSIENT_CODES,
    VERSION_GONE_CODES,
    VERSION_GONE_STATUS,
    VERSION_WARNING_HEADER,
    ResponseHooks,
    retry_hint,
    throttle_hint,
    translate_error_status,
)
from covid_lakehouse.defs.marketing.facebook.parse import REQUIRED, flatten_insights, load_page, page_table
from covid_lakehouse.defs.marketing.facebook.resource import FacebookAdsResource, account_id_of
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

__all__ = [
    "ACCOUNTS", "ACCOUNTS_ENV", "AD_STATUSES", "API_VERSION", "API_VERSION_ENV", "DEFAULT_GRAPH_URL", "EVERY_AD",
    "FIELDS", "GRAPH_URL", "GRAPH_URL_ENV", "MIN_PAGE_SIZE", "NOT_TRANSIENT_STATUS", "REDUCE_DATA_STATUS", "REQUIRED",
    "SOURCE", "THROTTLE_CODES", "THROTTLE_SUBCODES", "TOKEN", "TOKEN_CODES", "TOKEN_ENV", "TRANSIENT_CODES",
    "VERSION_GONE_CODES", "VERSION_GONE_STATUS", "VERSION_WARNING_HEADER", "DayTotals", "FacebookAdsResource",
    "FacebookInsights", "ResponseHooks", "account_id_of", "flatten_insights", "load_page", "page_table",
    "retry_hint", "throttle_hint", "translate_error_status",
]
