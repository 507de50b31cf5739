"""Tenants: the partners (or a partner's sub-sources) we harmonize for, read from a YAML file.

Each tenant names the environment variable that holds its source database DSN (never the DSN itself),
the schema of its provider/care_site tables and its landing prefix in S3. OMOP_TENANTS_FILE names the
file; unset, the deployment has no tenants (the demo points it at covid_lakehouse_dev's demo tenants
file). A federated deployment ships a file with its one tenant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import dagster as dg
import yaml

from covid_lakehouse.lib.postgres import UnsafeIdentifierError, validate_identifier
from covid_lakehouse.lib.settings import setting

TENANTS_FILE = setting("OMOP_TENANTS_FILE", "the tenants file (YAML): each tenant's source and landing prefix; "
                       "unset: no tenants (the demo points it at covid_lakehouse_dev's demo tenants)", scope="omop")
TENANTS_FILE_ENV = TENANTS_FILE.name
# The variable each tenant names in the tenants file (source_dsn_env) holds its source database DSN.
SOURCE_DSN = setting("{}", "a tenant's source database DSN, in the variable its tenants-file entry names",
                     secret=True, scope="omop", placeholder="source_dsn_env")
NAMESPACE_PREFIX = "omop_"
# "omop_" + name must stay a valid 63-character identifier (Iceberg namespace, SQL schema).
MAX_TENANT_NAME = 63 - len(NAMESPACE_PREFIX)
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
_PREFIX = re.compile(r"^[A-Za-z0-9_\-./]+/$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_FIELDS = {"name", "source_dsn_env", "source_schema", "landing_bucket", "landing_prefix", "demo"}


class TenantConfigError(ValueError):
    """The tenants file (or a tenant's environment) is unusable; the message names the problem."""


@dataclass(frozen=True)
class Tenant:
    name: str
    source_dsn_env: str
    source_schema: str = "public"
    landing_bucket: str = "raw"
    landing_prefix: str = ""
    demo: bool = False  # generated data: `covid-lakehouse seed omop` may replace its source tables

    @property
    def namespace(self) -> str:
        """The tenant's lakehouse namespace: omop_<tenant>."""
        return NAMESPACE_PREFIX + self.name

    @property
    def prefix(self) -> str:
        return self.landing_prefix or f"omop/landing/{self.name}/"

    def source_dsn(self) -> str:
        dsn = SOURCE_DSN.named(self.source_dsn_env).get()
        if not dsn:
            raise TenantConfigError(
                f"tenant {self.name!r}: environment variable {self.source_dsn_env} (its source database DSN) is not set")
        return dsn


def parse_tenants(text: str, *, origin: str = "tenants file") -> list[Tenant]:
    return list(_parse_tenants(text, origin))


@lru_cache(maxsize=16)
def _parse_tenants(text: str, origin: str) -> tuple[Tenant, ...]:
    """Parsed once per file content and process: every step of every tenant run looks its tenant up,
    and parsing a 100-tenant file costs more than the rest of an unchanged tenant's gate. A file
    that fails raises each time (exceptions are not cached); an edited file is parsed anew."""
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise TenantConfigError(f"{origin}: not valid YAML ({err})") from err
    entries = doc.get("tenants") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise TenantConfigError(f"{origin}: expected a mapping with a 'tenants' list")
    tenants: list[Tenant] = []
    for i, entry in enumerate(entries, start=1):
        where = f"{origin}: tenant #{i}"
        if not isinstance(entry, dict):
            raise TenantConfigError(f"{where}: expected a mapping, got {type(entry).__name__}")
        unknown = set(entry) - _FIELDS
        if unknown:
            raise TenantConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        if "name" not in entry or "source_dsn_env" not in entry:
            raise TenantConfigError(f"{where}: 'name' and 'source_dsn_env' are required")
        if not isinstance(entry.get("demo", False), bool):
            raise TenantConfigError(f"{where}: 'demo' must be true or false, got {entry['demo']!r}")
        tenant = Tenant(**{k: v if k == "demo" else str(v) for k, v in entry.items() if v is not None})
        _validate(tenant, where)
        tenants.append(tenant)
    names = [t.name for t in tenants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TenantConfigError(f"{origin}: tenant name(s) listed twice: {', '.join(duplicates)}")
    return tuple(tenants)


def _validate(tenant: Tenant, where: str) -> None:
    try:
        validate_identifier(tenant.name, what="tenant name")
        validate_identifier(tenant.source_schema, what="source_schema")
    except UnsafeIdentifierError as err:
        raise TenantConfigError(f"{where}: {err}") from err
    if len(tenant.name) > MAX_TENANT_NAME:
        raise TenantConfigError(f"{where}: tenant name {tenant.name!r} is longer than {MAX_TENANT_NAME} characters")
    if not _ENV_NAME.match(tenant.source_dsn_env):
        raise TenantConfigError(f"{where}: source_dsn_env {tenant.source_dsn_env!r} is not an environment variable name")
    if not _BUCKET.match(tenant.landing_bucket):
        raise TenantConfigError(f"{where}: landing_bucket {tenant.landing_bucket!r} is not a bucket name")
    if tenant.landing_prefix and (not _PREFIX.match(tenant.landing_prefix) or ".." in tenant.landing_prefix
                                  or tenant.landing_prefix.startswith("/")):
        raise TenantConfigError(f"{where}: landing_prefix {tenant.landing_prefix!r} must be a relative key prefix "
                                "ending in '/'")


class TenantsResource(dg.ConfigurableResource):
    """Where the tenants file is: ``tenants_file``, else $OMOP_TENANTS_FILE; neither: no tenants."""

    tenants_file: str = ""

    def path(self) -> Path | None:
        configured = TENANTS_FILE.get(self.tenants_file)
        return Path(configured) if configured else None

    def load(self) -> list[Tenant]:
        path = self.path()
        if path is None:
            return []
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise TenantConfigError(f"tenants file {path}: cannot be read ({err.strerror})") from err
        return parse_tenants(text, origin=f"tenants file {path}")

    def get(self, name: str) -> Tenant:
        path = self.path()
        if path is None:
            raise TenantConfigError(f"tenant {name!r}: no tenants file ({TENANTS_FILE_ENV} is not set)")
        for tenant in self.load():
            if tenant.name == name:
                return tenant
        raise TenantConfigError(f"tenant {name!r} is not in tenants file {path} (removed?)")
