"""Redaction for the HTTP client: query values (except a safe list), userinfo and credential-like
header values are hidden in messages, exception texts and body excerpts; urllib3's DEBUG request lines
are redacted process-wide."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from urllib.parse import unquote_plus, urlsplit, urlunsplit

# Query parameters whose values are shown in messages. Every other value is redacted, so a secret
# under a parameter name nobody anticipated stays hidden; extend per client with safe_query_params.
SAFE_QUERY_PARAMS = frozenset(
    {
        "limit", "offset", "page", "page_size", "per_page", "count", "format", "fields", "level",
        "date", "start_date", "end_date", "since", "until", "from", "to", "time_increment",
        "$limit", "$offset", "$order", "$select",
    }
)  # fmt: skip
_CREDENTIAL_HEADER = re.compile(r"auth|token|key|secret|cookie|pass|signature", re.IGNORECASE)
_QUERY_PAIR = re.compile(r"([?&])([^=&\s'\"#]+)=([^&\s'\"#)]*)")
_MIN_SECRET_LEN = 4  # shorter values are not worth scrubbing from free text (and would mangle it)
REDACTED = "REDACTED"
# Values hidden from urllib3's DEBUG lines too (a secret URL path), registered by the clients that use them.
_LOGGED_SECRETS: set[str] = set()


class Redactor:
    """Hides one request's query values (except safe ones), userinfo and credential headers."""

    def __init__(self, url: str, safe_params: frozenset[str], headers: Mapping[str, str],
                 secret_headers: frozenset[str] = frozenset(), secret_path: bool = False) -> None:
        self._safe = safe_params
        self._secret_path = secret_path
        secrets: set[str] = set()
        parts = urlsplit(url)
        if secret_path:  # e.g. a Slack webhook, whose path is its credential
            secrets |= {parts.path, unquote_plus(parts.path), *(s for s in parts.path.split("/") if s)}
            if len(parts.path) >= _MIN_SECRET_LEN:
                _LOGGED_SECRETS.add(parts.path)
        for key_raw, _, value_raw in (p.partition("=") for p in parts.query.split("&") if p):
            if unquote_plus(key_raw) not in safe_params:
                secrets |= {value_raw, unquote_plus(value_raw)}
        if parts.password:
            secrets.add(parts.password)
        for name, value in headers.items():
            if _CREDENTIAL_HEADER.search(name) or name.lower() in secret_headers:
                secrets |= {value, *value.split()}  # "Bearer abc" -> also "abc"
        self._secrets = sorted((s for s in secrets if len(s) >= _MIN_SECRET_LEN), key=len, reverse=True)
        self.url = self.redact_url(url)

    def redact_url(self, url: str) -> str:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port is not None:
            netloc += f":{parts.port}"
        path = f"/{REDACTED}" if self._secret_path and parts.path not in ("", "/") else parts.path
        return urlunsplit((parts.scheme, netloc, path, self._redact_pairs(parts.query), ""))

    def scrub(self, text: str) -> str:
        text = _QUERY_PAIR.sub(lambda m: m[1] + m[2] + "=" + self._shown(m[2], m[3]), text)
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def _redact_pairs(self, query: str) -> str:
        pairs = (p.partition("=") for p in query.split("&") if p)
        return "&".join(key + sep + (self._shown(key, value) if sep else "") for key, sep, value in pairs)

    def _shown(self, key_raw: str, value: str) -> str:
        return value if unquote_plus(key_raw) in self._safe else REDACTED


class _UrllibQueryRedactor(logging.Filter):
    """urllib3 logs each request line with its full query at DEBUG ("GET /rows?api_key=... HTTP/1.1");
    anyone turning on DEBUG logging (or a handler at DEBUG on the root logger) would print secrets.
    Every query value but the generally safe ones is redacted in those records, process-wide, and so
    are secret paths (a webhook's) that a client registered."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        redacted = _QUERY_PAIR.sub(
            lambda m: m[1] + m[2] + "=" + (m[3] if unquote_plus(m[2]) in SAFE_QUERY_PARAMS else REDACTED), text)
        for secret in list(_LOGGED_SECRETS):
            redacted = redacted.replace(secret, f"/{REDACTED}")
        if redacted != text:
            record.msg, record.args = redacted, None
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_UrllibQueryRedactor())
