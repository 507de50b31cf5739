"""Every resource the product uses, chosen in one place and configured only from the environment."""

from __future__ import annotations

import dagster as dg

from covid_lakehouse.lib.clock import Clock
from covid_lakehouse.lib.http import HttpClient, RetryHint
from covid_lakehouse.lib.io_managers import LakehouseIOManager, PostgresIOManager, S3ObjectIOManager
from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.postgres import PostgresResource
from covid_lakehouse.lib.s3 import LakeS3Resource


class HttpResource(dg.ConfigurableResource):
    """The retry budget for third-party HTTP calls. It is the only retry layer for HTTP errors:
    exhausted retries raise a dagster Failure that RetryPolicy and run retries do not repeat."""

    max_attempts: int = 5
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    backoff_base_s: float = 0.5
    max_total_wait_s: float = 300.0

    def client(self, *, clock: Clock | None = None, auth_hint: str | None = None,
               retry_after_from: RetryHint | None = None, max_body_bytes: int | None = None,
               secret_path: bool = False) -> HttpClient:
        """``max_body_bytes``: a source's own cap on decoded bytes (default HTTP_MAX_BODY_MB); the call
        deadline and redirect policy are the client's (see covid_lakehouse.lib.http.limits)."""
        return HttpClient(clock=clock, timeout=(self.connect_timeout_s, self.read_timeout_s),
                          max_attempts=self.max_attempts, backoff_base=self.backoff_base_s,
                          max_total_wait=self.max_total_wait_s, auth_hint=auth_hint,
                          retry_after_from=retry_after_from, max_body_bytes=max_body_bytes,
                          secret_path=secret_path)


def platform_resources() -> dict[str, object]:
    return {
        "warehouse": PostgresResource.from_env(),
        "warehouse_io_manager": PostgresIOManager.from_env(),
        "lakehouse_io_manager": LakehouseIOManager.from_env(),
        "s3_object_io_manager": S3ObjectIOManager.from_env(),
        "s3": LakeS3Resource.from_env(),
        "lakehouse": LakehouseResource.from_env(),
        "http": HttpResource(),
    }
