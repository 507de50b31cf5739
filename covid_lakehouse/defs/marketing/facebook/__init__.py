"""Facebook Marketing API: ad-level daily insights of each ad account.

GET {graph}/act_<id>/insights?level=ad&time_increment=1&time_range={"since","until"}&fields=...
with cursor paging (paging.cursors.after while paging.next is present). Metrics arrive as JSON
strings, ``actions`` as a list of {action_type, value} (absent when there are none).

Modules: ``settings`` (source name and settings), ``errors`` (coded errors classified for the client,
retry hints), ``connector`` (FacebookInsights: paging, report runs, daily totals), ``parse`` (flattening
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
    NOT_TRANSIENT,
    REDUCE_DATA,
    THROTTLE_CODES,
    THROTTLE_SUBCODES,
    TOKEN_CODES,
    TRANSIENT_CODES,
    VERSION_GONE,
    VERSION_GONE_CODES,
    VERSION_WARNING_HEADER,
    VersionWarnings,
    classify,
    retry_hint,
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
    "FIELDS", "GRAPH_URL", "GRAPH_URL_ENV", "MIN_PAGE_SIZE", "NOT_TRANSIENT", "REDUCE_DATA", "REQUIRED", "SOURCE",
    "THROTTLE_CODES", "THROTTLE_SUBCODES", "TOKEN", "TOKEN_CODES", "TOKEN_ENV", "TRANSIENT_CODES", "VERSION_GONE",
    "VERSION_GONE_CODES", "VERSION_WARNING_HEADER", "DayTotals", "FacebookAdsResource", "FacebookInsights",
    "VersionWarnings", "account_id_of", "classify", "flatten_insights", "load_page", "page_table", "retry_hint",
]
