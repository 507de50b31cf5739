"""The product's configuration contract: every setting comes from the environment, declared once here
or in the domain that reads it, with ``setting(...)``.

One mechanism: a resource field that must always be set is bound with ``dg.EnvVar(X.name)``; a value with
a default (or read when a run starts, so that tests, the demo and deployments can point an imported code
location elsewhere) goes through ``Setting.get``/``require``: the resource's configured value, else the
environment variable, else the declared default. Every declared setting is listed in the README's table
(``covid-lakehouse settings`` prints it; a test keeps the two equal). Secrets are only ever read here or
through ``dg.EnvVar`` and never logged.

The same names are set by the embedded stack (laptop, tests, CI), by docker-compose.yml and by the
Kubernetes manifests, so one code path serves all three.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg


class SettingError(dg.Failure):
    """A setting is missing or malformed; the message names the environment variable. Not retried:
    the same configuration would fail again."""

    def __init__(self, message: str) -> None:
        super().__init__(description=message, allow_retries=False)


@dataclass(frozen=True)
class Setting:
    """One environment variable the product reads. ``name`` may hold one ``{}`` for a family of
    variables (VACCINES_{}_URL, shown as VACCINES_<MANUFACTURER>_URL): ``named(part)`` gives one."""

    name: str
    doc: str
    default: str | None = None
    secret: bool = False
    scope: str = "platform"  # the domain that reads it; "platform" for lib/ and deployment settings
    placeholder: str = ""  # what fills the {} of a family, as the README shows it

    def named(self, part: str) -> Setting:
        return Setting(self.name.format(part.upper()), self.doc, self.default, self.secret, self.scope)

    @property
    def shown_name(self) -> str:
        return self.name.format(f"<{self.placeholder}>") if self.placeholder else self.name

    def get(self, configured: object = None) -> str | None:
        """The resource's configured value, else the environment variable, else the default."""
        if configured not in (None, ""):
            return str(configured)
        return os.environ.get(self.name) or self.default

    def require(self, configured: object = None) -> str:
        value = self.get(configured)
        if not value:
            raise SettingError(f"{self.name} is not set (and no value is configured on the resource): {self.doc}")
        return value

    def values(self, configured: list[str] | None = None) -> list[str]:
        """A comma-separated list (or the resource's configured list); empty entries dropped."""
        raw = configured if configured else self.require().split(",")
        values = [v.strip() for v in raw if v.strip()]
        if not values:
            raise SettingError(f"{self.name} is empty: {self.doc}")
        return values

    def number(self, configured: float | None = None, *, minimum: float | None = None) -> float | None:
        value = self.get(configured)
        if value is None:
            return None
        try:
            number = float(value)
        except ValueError:
            raise SettingError(f"{self.name}={value!r} is not a number: {self.doc}") from None
        if not math.isfinite(number):  # float() reads 'nan' and 'inf', which pass any minimum or round() badly
            raise SettingError(f"{self.name}={value!r} is not a finite number: {self.doc}")
        if minimum is not None and number < minimum:
            raise SettingError(f"{self.name} must be at least {minimum:g}, got {number:g}: {self.doc}")
        return number


SETTINGS: dict[str, Setting] = {}


def setting(name: str, doc: str, *, default: str | None = None, secret: bool = False,
            scope: str = "platform", placeholder: str = "") -> Setting:
    """Declare a setting (at import time of the module that reads it)."""
    if ("{}" in name) != bool(placeholder):
        raise ValueError(f"setting {name}: a family name has one {{}} and a placeholder, others neither")
    declared = Setting(name, doc, default, secret, scope, placeholder)
    if SETTINGS.get(name, declared) != declared:
        raise ValueError(f"setting {name} is declared twice with different attributes")
    SETTINGS[name] = declared
    return declared


def settings_table() -> str:
    """The README's table of every declared setting (import the code location first to declare all)."""
    lines = ["| variable | read by | default | secret | meaning |", "|---|---|---|---|---|"]
    for s in sorted(SETTINGS.values(), key=lambda s: (s.scope != "platform", s.scope, s.name)):
        default = f"`{s.default}`" if s.default else ""
        doc = s.doc.replace("|", "\\|")
        lines.append(f"| `{s.shown_name}` | {s.scope} | {default} | {'yes' if s.secret else ''} | {doc} |")
    return "\n".join(lines) + "\n"


# Connection settings shared by every deployment mode (the names, as other modules use them).
WAREHOUSE_DSN = setting("WAREHOUSE_DSN", "`postgresql://user:pw@host:port/warehouse`: the published tables",
                        secret=True).name
LAKEHOUSE_CATALOG_DSN = setting(
    "LAKEHOUSE_CATALOG_DSN", "`postgresql+psycopg2://…/lakehouse`: pyiceberg's SQL catalog (default: the "
    "warehouse database)", secret=True).name
LAKEHOUSE_WAREHOUSE = setting("LAKEHOUSE_WAREHOUSE", "where Iceberg data files are written",
                              default="s3://lakehouse/warehouse").name
S3_ENDPOINT_URL = setting("S3_ENDPOINT_URL", "S3 / MinIO endpoint, e.g. `http://127.0.0.1:8333`").name
AWS_ACCESS_KEY_ID = setting("AWS_ACCESS_KEY_ID", "S3 access key id").name
AWS_SECRET_ACCESS_KEY = setting("AWS_SECRET_ACCESS_KEY", "S3 secret key", secret=True).name
AWS_REGION = setting("AWS_REGION", "S3 region", default="us-east-1").name
DAGSTER_STORAGE_URL = setting(
    "DAGSTER_STORAGE_URL", "`postgresql+psycopg2://…/dagster`: Dagster's run storage (written into "
    "DAGSTER_HOME/dagster.yaml by `covid-lakehouse up`/`demo`; compose and Kubernetes set it)", secret=True).name
RUN_FAILURE_WEBHOOK_URL = setting(
    "RUN_FAILURE_WEBHOOK_URL", "optional: every failed run is POSTed here (Slack-compatible JSON) and recorded "
    "in `ops.run_failures`", secret=True).name
COVID_LAKEHOUSE_HOME = setting(
    "COVID_LAKEHOUSE_HOME", "where embedded data and DAGSTER_HOME live", default="./.covid_lakehouse").name

# What the embedded stack needs from outside to count as "external services mode".
EXTERNAL_SERVICE_VARS = (WAREHOUSE_DSN, S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)

# Buckets every deployment has: raw (write-once downloads), lakehouse (Iceberg), ad-data (ads domain).
BUCKETS = ("raw", "lakehouse", "ad-data")


@contextmanager
def exported(env: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a block, restoring the previous values."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def external_services_configured(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return all(env.get(name) for name in EXTERNAL_SERVICE_VARS)


def project_home() -> Path:
    """Where embedded data, logs and DAGSTER_HOME live (kept between runs until `clean`)."""
    configured = os.environ.get(COVID_LAKEHOUSE_HOME)
    if configured:
        return Path(configured).expanduser().resolve()
    return (Path.cwd() / ".covid_lakehouse").resolve()


@dataclass(frozen=True)
class ServiceSettings:
    warehouse_dsn: str
    lakehouse_catalog_dsn: str
    lakehouse_warehouse: str
    s3_endpoint_url: str
    aws_access_key_id: str
    aws_secret_access_key: str
    aws_region: str
    dagster_storage_url: str | None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServiceSettings:
        env = os.environ if environ is None else environ
        missing = [name for name in EXTERNAL_SERVICE_VARS if not env.get(name)]
        if missing:
            raise RuntimeError(
                "covid_lakehouse needs these environment variables: " + ", ".join(missing)
                + " (run `covid-lakehouse env` to get the embedded stack's values)"
            )
        warehouse = env[WAREHOUSE_DSN]
        return cls(
            warehouse_dsn=warehouse,
            lakehouse_catalog_dsn=env.get(LAKEHOUSE_CATALOG_DSN) or sqlalchemy_url(warehouse),
            lakehouse_warehouse=env.get(LAKEHOUSE_WAREHOUSE, "s3://lakehouse/warehouse"),
            s3_endpoint_url=env[S3_ENDPOINT_URL],
            aws_access_key_id=env[AWS_ACCESS_KEY_ID],
            aws_secret_access_key=env[AWS_SECRET_ACCESS_KEY],
            aws_region=env.get(AWS_REGION, "us-east-1"),
            dagster_storage_url=env.get(DAGSTER_STORAGE_URL),
        )

    def as_env(self) -> dict[str, str]:
        env = {
            WAREHOUSE_DSN: self.warehouse_dsn,
            LAKEHOUSE_CATALOG_DSN: self.lakehouse_catalog_dsn,
            LAKEHOUSE_WAREHOUSE: self.lakehouse_warehouse,
            S3_ENDPOINT_URL: self.s3_endpoint_url,
            AWS_ACCESS_KEY_ID: self.aws_access_key_id,
            AWS_SECRET_ACCESS_KEY: self.aws_secret_access_key,
            AWS_REGION: self.aws_region,
        }
        if self.dagster_storage_url:
            env[DAGSTER_STORAGE_URL] = self.dagster_storage_url
        return env


def sqlalchemy_url(dsn: str) -> str:
    """SQLAlchemy 2.1 picks psycopg 3 for plain postgresql://, whose LISTEN/NOTIFY dagster-postgres
    cannot use; pin psycopg2 explicitly."""
    for prefix in ("postgresql+psycopg2://", "postgresql+psycopg://", "postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg2://" + dsn[len(prefix):]
    raise ValueError(f"not a PostgreSQL URL: {redact(dsn)}")


_URI_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*:)(?P<pw>[^\s'\"]*)@")
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'?|\S+)", re.IGNORECASE)


def redact(url: str) -> str:
    """A URL or connection string safe to log: the password replaced, even when it is malformed (no
    parsing that could fail; a password containing '@' is hidden up to the last '@')."""
    return redact_text(url, url)


def redact_text(text: str, *dsns: str) -> str:
    """``text`` (an error message, a command line) with every password hidden: those of ``dsns``
    wherever they appear (libpq echoes parts of a malformed DSN), and any URI userinfo or password=..."""
    for dsn in dsns:
        for secret in dsn_passwords(dsn):
            text = text.replace(secret, "***")
    text = _URI_PASSWORD.sub(lambda m: m["head"] + "***@", text)
    return _KV_PASSWORD.sub(lambda m: m["head"] + "***", text)


def dsn_passwords(dsn: str) -> set[str]:
    """The password(s) a DSN holds, as written and percent-decoded (without parsing it)."""
    from urllib.parse import unquote

    found: set[str] = set()
    scheme, sep, rest = dsn.partition("://")
    if sep:
        userinfo = rest.rpartition("@")[0]
        if ":" in userinfo:
            password = userinfo.split(":", 1)[1]
            found |= {password, unquote(password)}
    for match in _KV_PASSWORD.finditer(dsn):
        found |= {match["pw"], match["pw"].strip("'")}
    return {s for s in found if len(s) >= 3}
