"""Which hosts a source URL may name.

Anyone who can launch a run can set a resource's URL fields in the run config. Without a check, that
is a way to make a run pod fetch any address it can reach (cloud metadata, cluster services, the
SeaweedFS filer, which serves objects without credentials) and store the answer as raw data, or to
send a source's credentials to a host of their choosing. So every source URL, wherever it comes
from, is checked against:

- the source's vendor hosts (declared next to the source's default URL);
- the host of the URL the operator set in the source's environment variable: the environment is the
  operator's, and this is how `make demo`, `make up` and compose's demo profile point sources at the
  offline mock APIs (loopback or ``mock-apis``) without allowing loopback anywhere else;
- ``SOURCE_ALLOWED_HOSTS``: extra ``host`` or ``host:port`` entries (``host:*``: any port) for every
  source, e.g. a forward proxy; the test session sets it to the loopback stand-ins.

An entry without a port allows only the scheme's default port, so an allowed host name never opens the
other services on the same address.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from covid_lakehouse.lib.settings import Setting, SettingError, setting

ALLOWED_HOSTS = setting(
    "SOURCE_ALLOWED_HOSTS",
    "extra hosts (host, host:port or host:* for any port; comma-separated) any source URL may name, besides "
    "each source's vendor hosts and the host of the URL set in the source's own variable",
    default="", scope="platform")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# The offline stand-ins (covid_lakehouse_dev's MockApi) on any loopback port: tests and demos only.
LOCAL_STAND_INS = "127.0.0.1:*,localhost:*"


class DisallowedUrlError(SettingError):
    """A source URL (run config or resource) names a host the source may not fetch from. Not retried."""


def _host_port(url: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(url.strip())
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:  # a port that is not a number
        return None
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname or port is None:
        return None
    return parts.hostname.lower().rstrip("."), port


def _entry_allows(entry: str, host: str, port: int, scheme_port: int) -> bool:
    name, _, entry_port = entry.strip().lower().partition(":")  # host names and IPv4 only
    if name.startswith("*."):  # a vendor's regional hosts: *.api.clevertap.com
        if not host.endswith(name[1:]):
            return False
    elif name != host:
        return False
    if entry_port == "*":
        return True
    return port == (int(entry_port) if entry_port.isdigit() else scheme_port)


def check_source_url(url: str, *, field: str, vendor_hosts: Iterable[str] = (), operator_url: str | None = None) -> str:
    """``url`` if its host is allowed for this source, else DisallowedUrlError naming ``field``.

    ``vendor_hosts``: the source's own hosts (``*.example.com`` for any subdomain); ``operator_url``:
    the value of the source's environment variable, whose host (and port) is allowed too."""
    where = _host_port(url)
    if where is None:
        raise DisallowedUrlError(f"{field}: {_shown(url)!r} is not an http(s) URL with a host")
    host, port = where
    scheme_port = _DEFAULT_PORTS[urlsplit(url.strip()).scheme.lower()]
    entries = [*vendor_hosts, *(h for h in (ALLOWED_HOSTS.get() or "").split(",") if h.strip())]
    operator = _host_port(operator_url) if operator_url else None
    if operator is not None:
        entries.append(f"{operator[0]}:{operator[1]}")
    if any(_entry_allows(entry, host, port, scheme_port) for entry in entries):
        return url
    allowed = ", ".join(sorted({e.strip().lower() for e in entries})) or "none"
    raise DisallowedUrlError(f"{field}: host {host}:{port} is not allowed for this source (allowed: {allowed}; "
                             f"add hosts with {ALLOWED_HOSTS.name} or the source's own variable)")


def _shown(url: str) -> str:
    """The URL without user info and query (either may hold a secret): enough to recognise it."""
    try:
        parts = urlsplit(url.strip())
        return f"{parts.scheme}://{parts.hostname or ''}{parts.path}"[:200] if parts.scheme else "(no scheme)"
    except ValueError:
        return "(unparseable)"


def source_url(url_setting: Setting, configured: str | None, *, field: str, vendor_hosts: Iterable[str] = ()) -> str:
    """The source URL from the resource's ``field`` (run config) or its environment variable, checked:
    the host of the setting's default (the vendor's live URL) and of the operator's value are allowed."""
    url = url_setting.require(configured)
    default_host = _host_port(url_setting.default) if url_setting.default else None
    hosts = [*vendor_hosts, *([f"{default_host[0]}:{default_host[1]}"] if default_host else [])]
    shown_field = f"{field} (resource config) / {url_setting.name}" if configured else url_setting.name
    return check_source_url(url, field=shown_field, vendor_hosts=hosts, operator_url=url_setting.get())
