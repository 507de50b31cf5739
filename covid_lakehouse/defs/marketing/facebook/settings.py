"""Facebook's source name and settings (declared once, read by the connector and the resource)."""

from covid_lakehouse.defs.marketing import versions
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
