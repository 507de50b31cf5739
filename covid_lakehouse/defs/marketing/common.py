"""Pieces every marketing connector shares: settings from the environment, the HTTP client with a
per-API retry budget, raw pages landed write-once in S3, and the error raised on an unexpected schema."""

import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from typing import Any, TypeVar

import dagster as dg
import requests

from covid_lakehouse.lib.clock import Clock
from covid_lakehouse.lib.http import HttpClient, RetryHint
from covid_lakehouse.lib.s3 import LakeS3Resource, StoredObject

RAW_BUCKET = "raw"
RAW_PREFIX = "marketing"
_RETRY_LABEL = re.compile(r"^retry\d+-")
_RUN_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}(-retry\d+)?$")
T = TypeVar("T")
R = TypeVar("R")


class SettingError(ValueError):
    """A required setting is missing or malformed (names the environment variable)."""


def env_setting(configured: str | None, env_name: str, default: str | None = None) -> str:
    """Resource config, else the environment variable, else the default; read when a run starts so
    that the demo, tests and deployments can point an imported code location elsewhere."""
    value = configured if configured not in (None, "") else os.environ.get(env_name) or default
    if not value:
        raise SettingError(f"{env_name} is not set (and no value is configured on the resource)")
    return value


def env_list(configured: list[str] | None, env_name: str, default: str | None = None) -> list[str]:
    if configured:
        return [v.strip() for v in configured if v.strip()]
    raw = env_setting(None, env_name, default)
    values = [v.strip() for v in raw.split(",") if v.strip()]
    if not values:
        raise SettingError(f"{env_name} is empty")
    return values


class SourceSchemaError(dg.Failure):
    """An API answered with a shape the parser does not know. Not retried: the same bytes would fail
    again. The raw page stays in S3 so that a fixed parser can replay it."""

    def __init__(self, source: str, where: str, problem: str) -> None:
        super().__init__(
            description=f"{source}: unexpected response schema in {where}: {problem}. Nothing was published.",
            metadata={"source": source, "where": where, "problem": problem},
            allow_retries=False,
        )
        self.source, self.where, self.problem = source, where, problem


class SourceApiError(dg.Failure):
    """An API reported an error inside a successful HTTP response (e.g. CleverTap's status "fail")."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(description=f"{source}: {message}", allow_retries=False)


def load_json(source: str, where: str, body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as err:
        raise SourceSchemaError(source, where, f"body is not JSON ({err}); starts {body[:80]!r}") from None


def build_client(*, clock: Clock | None, auth_hint: str, retry_after_from: RetryHint | None,
                 max_attempts: int, max_total_wait_s: float, backoff_base_s: float,
                 session: requests.Session | None = None) -> HttpClient:
    """The platform HTTP client with this API's own retry budget (APIs differ: Facebook may ask for
    minutes, CleverTap wants quick retries)."""
    return HttpClient(clock=clock, max_attempts=max_attempts, max_total_wait=max_total_wait_s,
                      backoff_base=backoff_base_s, auth_hint=auth_hint, retry_after_from=retry_after_from,
                      session=session, safe_query_params={"after", "time_range", "batch_size"})


@dataclass(frozen=True)
class RawPage:
    """One API response body as received, with the parsed document and where it belongs."""

    source: str
    day: date
    label: str  # unique within a run and day, e.g. "act_123-p0002"
    body: bytes
    doc: Any
    meta: dict[str, str] = field(default_factory=dict)


class RawLanding:
    """Writes each page once to s3://raw/marketing/<source>/date=<day>/<run_id>-<label>.json before it
    is parsed, so any load can be replayed from exactly what the API returned."""

    def __init__(self, s3: LakeS3Resource, source: str, run_id: str) -> None:
        self._s3, self.source, self.run_id = s3, source, run_id

    def key(self, day: date, label: str) -> str:
        return f"{RAW_PREFIX}/{self.source}/date={day.isoformat()}/{self.run_id}-{label}.json"

    def land(self, page: RawPage) -> StoredObject:
        return self._s3.put_write_once(RAW_BUCKET, self.key(page.day, page.label), io.BytesIO(page.body),
                                       metadata={"source": self.source, "run-id": self.run_id, **page.meta})


def replay_pages(s3: LakeS3Resource, source: str, run_id: str, days: Iterable[date]) -> Iterator[tuple[RawPage, str]]:
    """The pages a run landed, read back from S3 in page order, with their URIs: a load can be redone
    from exactly what the API returned (after a parser fix, or once the API no longer serves the days)."""
    if not _RUN_ID.match(run_id):
        raise SettingError(f"replay_run_id {run_id!r} is not a run id (a UUID, optionally with -retry<N>)")
    client = s3.get_client()
    for day in days:
        prefix = f"{RAW_PREFIX}/{source}/date={day.isoformat()}/{run_id}-"
        keys: list[str] = []
        for listing in client.get_paginator("list_objects_v2").paginate(Bucket=RAW_BUCKET, Prefix=prefix):
            # "<run>-retry1-..." pages belong to the step's retry, not to this attempt
            keys += [o["Key"] for o in listing.get("Contents", []) if not _RETRY_LABEL.match(o["Key"][len(prefix):])]
        for key in sorted(keys):
            obj = client.get_object(Bucket=RAW_BUCKET, Key=key)
            body = obj["Body"].read()
            uri = f"s3://{RAW_BUCKET}/{key}"
            label = key[len(prefix):].removesuffix(".json")
            yield RawPage(source, day, label, body, load_json(source, uri, body), dict(obj.get("Metadata", {}))), uri


def ordered_parallel(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """fn over items on ``workers`` threads (network-bound work), results in input order."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="marketing")
    try:
        futures = [pool.submit(fn, item) for item in items]
        for future in futures:
            yield future.result()
    finally:  # on a failure, units not started yet are dropped instead of hitting the API for nothing
        pool.shutdown(wait=True, cancel_futures=True)


def int_metric(source: str, where: str, name: str, value: Any) -> int:
    """int64 metrics arrive as JSON strings ("185"); accept ints too, refuse anything else."""
    if isinstance(value, bool):
        raise SourceSchemaError(source, where, f"{name} is a boolean ({value!r}), expected an integer string")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise SourceSchemaError(source, where, f"{name} is {value!r} ({type(value).__name__}), expected an integer string")
