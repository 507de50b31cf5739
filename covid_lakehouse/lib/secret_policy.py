"""The start-up gate on secrets: `covid-lakehouse migrate` (compose's `migrate` service, the Kubernetes
code location's init container) refuses to start the platform while a secret setting still holds a
published placeholder or is too short to resist guessing.

The secrets are the settings declared with ``secret=True`` that are set (an access key id is not one):
WAREHOUSE_DSN, LAKEHOUSE_CATALOG_DSN, DAGSTER_STORAGE_URL (their passwords), AWS_SECRET_ACCESS_KEY,
RUN_FAILURE_WEBHOOK_URL and the marketing tokens. A DSN without a password (certificate or peer
authentication) has nothing to check.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from covid_lakehouse.lib.settings import SETTINGS, SettingError, dsn_passwords

MIN_SECRET_LENGTH = 16
# .env.example's placeholders are all `change-me-...`; the others are what people type when asked for one.
_PLACEHOLDER = re.compile(r"change[-_ ]?me|changeit|placeholder", re.IGNORECASE)
_DSN_SCHEME = re.compile(r"^postgres(ql)?(\+\w+)?://", re.IGNORECASE)


class WeakSecretError(SettingError):
    """A secret setting holds a placeholder or is too short: the message names every such variable."""


def _secret_parts(value: str) -> list[str]:
    """What has to be secret in a value: a DSN's password (none when it has no password), else all of it."""
    if _DSN_SCHEME.match(value) or re.search(r"\bpassword\s*=", value, re.IGNORECASE):
        passwords = dsn_passwords(value)
        # dsn_passwords gives the written and the percent-decoded form: judge the decoded (shortest) one.
        return [min(passwords, key=len)] if passwords else []
    return [value]


def weak_secrets(values: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every secret setting that is set and weak: {variable: the problem}; ``values`` (e.g. the embedded
    stack's settings) take precedence over the environment. The value is never shown."""
    problems: dict[str, str] = {}
    for setting in SETTINGS.values():
        if not setting.secret or "{}" in setting.name:  # a family's members are named by data (tenants file)
            continue
        value = (values or {}).get(setting.name) or setting.get()
        if not value:
            continue
        for part in _secret_parts(value):
            if _PLACEHOLDER.search(part):
                problems[setting.name] = "still holds a placeholder (from .env.example?)"
            elif len(part) < MIN_SECRET_LENGTH:
                problems[setting.name] = f"is shorter than {MIN_SECRET_LENGTH} characters"
    return problems


def check_secrets(values: Mapping[str, str] | None = None) -> None:
    """Raise WeakSecretError naming each weak secret (see the module docstring)."""
    problems = weak_secrets(values)
    if problems:
        lines = "; ".join(f"{name} {problem}" for name, problem in sorted(problems.items()))
        raise WeakSecretError(
            f"refusing to start with weak secrets: {lines}. Generate each with `openssl rand -hex 24` "
            "(for a DSN, its password)."
        )
