"""The product's configuration contract: every setting comes from the environment.

The same names are set by the embedded stack (laptop, tests, CI), by docker-compose.yml and by the
Kubernetes manifests, so one code path serves all three. Secrets are only ever read here or through
``dg.EnvVar`` and never logged.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Connection settings shared by every deployment mode.
WAREHOUSE_DSN = "WAREHOUSE_DSN"  # postgresql://user:pw@host:port/warehouse (psycopg 3)
LAKEHOUSE_CATALOG_DSN = "LAKEHOUSE_CATALOG_DSN"  # postgresql+psycopg2://... (pyiceberg SQL catalog)
LAKEHOUSE_WAREHOUSE = "LAKEHOUSE_WAREHOUSE"  # s3://lakehouse/warehouse
S3_ENDPOINT_URL = "S3_ENDPOINT_URL"  # http://127.0.0.1:8333 or https://minio.example
AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
AWS_REGION = "AWS_REGION"
DAGSTER_STORAGE_URL = "DAGSTER_STORAGE_URL"  # postgresql+psycopg2://... used by dagster.yaml
RUN_FAILURE_WEBHOOK_URL = "RUN_FAILURE_WEBHOOK_URL"  # optional: POSTed on every failed run
COVID_LAKEHOUSE_HOME = "COVID_LAKEHOUSE_HOME"  # project-local state (embedded data, DAGSTER_HOME)

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


def redact(url: str) -> str:
    """A URL safe to log: the password replaced."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
