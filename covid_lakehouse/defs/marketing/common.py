"""Pieces every marketing connector shares: settings from the environment, the HTTP client with a
per-API retry budget, raw pages landed write-once in S3, and the error raised on an unexpected schema."""

import io
import json
import logging
import re
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from typing import Any, BinaryIO, TypeVar

import dagster as dg
import requests

from covid_lakehouse.lib.clock import Clock
from covid_lakehouse.lib.http import Classifier, HttpClient, RetryHint
from covid_lakehouse.lib.s3 import LakeS3Resource, StoredObject
from covid_lakehouse.lib.settings import SettingError

RAW_BUCKET = "raw"
RAW_PREFIX = "marketing"
RAW_UPLOADS = 2  # background PUT threads of a run's RawLanding: S3 answers in parallel, readers never wait on it
_RETRY_LABEL = re.compile(r"^retry\d+-")
_RUN_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}(-retry\d+)?$")
logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


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
                 session: requests.Session | None = None, classify: Classifier | None = None,
                 min_waits: Mapping[str, float] | None = None) -> HttpClient:
    """The platform HTTP client with this API's own retry budget (APIs differ: Facebook may ask for
    minutes, CleverTap wants quick retries) and, where the status misleads, its own classifier."""
    return HttpClient(clock=clock, max_attempts=max_attempts, max_total_wait=max_total_wait_s,
                      backoff_base=backoff_base_s, auth_hint=auth_hint, retry_after_from=retry_after_from,
                      session=session, safe_query_params={"after", "time_range", "batch_size", "filtering", "events"},
                      classify=classify, min_waits=min_waits)


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
    """Lands the pages a run receives, exactly as received, write-once in S3 for replay: the pages of one
    unit (account, customer, event) and day go into ONE object,
    s3://raw/marketing/<source>/date=<day>/<run_id>-<first page label>.tar, a tar archive with one
    member per page (<label>.json). One PUT per unit and day rather than per page: at volume a PUT
    costs more CPU than parsing the page.

    With ``uploads`` > 0 the PUTs run on that many background threads, so a reading thread goes on to
    its next request instead of waiting for S3 (a rate-limited API does not give back the slots a reader
    missed): use it as a context manager, whose exit waits until every bundle handed over has landed and
    raises the first failed PUT. At most 2 x ``uploads`` bundles wait for a thread (back-pressure on the
    readers: finished bundles are temporary files, not unbounded memory). Without, a bundle lands in
    the thread that finished it."""

    def __init__(self, s3: LakeS3Resource, source: str, run_id: str, max_bundle_bytes: int = 16 << 20,
                 uploads: int = 0) -> None:
        self._s3, self.source, self.run_id, self.max_bundle_bytes = s3, source, run_id, max_bundle_bytes
        self._pool = ThreadPoolExecutor(max_workers=uploads, thread_name_prefix=f"land-{source}") if uploads else None
        self._slots = threading.BoundedSemaphore(2 * uploads) if uploads else None
        self._lock = threading.Lock()
        self._error: BaseException | None = None

    def key(self, day: date, first_label: str) -> str:
        return f"{RAW_PREFIX}/{self.source}/date={day.isoformat()}/{self.run_id}-{first_label}.tar"

    def bundle(self) -> "RawBundle":
        return RawBundle(self)

    def put(self, archive: BinaryIO, first: RawPage, pages: int) -> StoredObject:
        """One finished tar archive, under the key of its first page."""
        return self._s3.put_write_once(RAW_BUCKET, self.key(first.day, first.label), archive,
                                       metadata={"source": self.source, "run-id": self.run_id, "pages": str(pages), **first.meta})

    def land(self, archive: BinaryIO, first: RawPage, pages: int) -> None:
        """PUT a finished archive (now, or on an upload thread), then close it."""
        if self._pool is None:
            self._put_and_close(archive, first, pages)
            return
        try:
            self._raise_if_failed()  # a PUT already failed: the run fails, stop reading
        except BaseException:
            archive.close()
            raise
        self._slots.acquire()
        try:
            future = self._pool.submit(self._put_and_close, archive, first, pages)
        except BaseException:
            self._slots.release()
            archive.close()
            raise
        future.add_done_callback(self._finished)

    def _put_and_close(self, archive: BinaryIO, first: RawPage, pages: int) -> None:
        try:
            self.put(archive, first, pages)
        finally:
            archive.close()

    def _finished(self, future: Future) -> None:
        with self._lock:
            if self._error is None and not future.cancelled() and future.exception() is not None:
                self._error = future.exception()
        self._slots.release()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def __enter__(self) -> "RawLanding":
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if self._pool is None:
            return
        self._pool.shutdown(wait=True)  # after a failure too: what was received still lands
        if exc is None:
            self._raise_if_failed()
        elif self._error is not None:  # the original error is the one to report
            logger.error("%s: could not land raw pages received before the failure: %s", self.source, self._error)


class RawBundle:
    """The pages of one unit and day being read, appended to a tar archive as they arrive (in memory up
    to 1 MiB, then in a temporary file: a reading thread holds one page, not the day's). ``add`` returns
    the page's raw URI (bundle object + '#member') before the page is parsed; the bundle lands when the
    unit-day is done, when it would exceed max_bundle_bytes, and also when reading or parsing fails, so
    that the page that failed is in S3 to be replayed once the parser is fixed. Nothing is published
    before every page has landed."""

    def __init__(self, landing: RawLanding) -> None:
        self._landing = landing
        self._reset()

    def _reset(self) -> None:
        self._archive: tempfile.SpooledTemporaryFile | None = None
        self._tar: tarfile.TarFile | None = None
        self._first: RawPage | None = None
        self._pages = self._bytes = 0

    def add(self, page: RawPage) -> str:
        if self._first and (page.day != self._first.day or self._bytes + len(page.body) > self._landing.max_bundle_bytes):
            self.land()
        if self._first is None:
            self._archive = tempfile.SpooledTemporaryFile(max_size=1 << 20, prefix="raw-bundle-")
            # copybufsize: a page goes into the archive in one write, not in 16 KiB pieces
            self._tar = tarfile.open(fileobj=self._archive, mode="w", format=tarfile.PAX_FORMAT, copybufsize=4 << 20)
            self._first = page
        member = tarfile.TarInfo(_member(page.label))
        member.size, member.mtime = len(page.body), int(time.time())
        whole = self._tar.offset
        try:
            self._tar.addfile(member, io.BytesIO(page.body))
        except BaseException:
            # only whole pages land: a half-written member would make the whole unit-day unreadable
            self._archive.seek(whole)
            self._archive.truncate()
            raise
        self._pages += 1
        self._bytes += len(page.body)
        return f"s3://{RAW_BUCKET}/{self._landing.key(self._first.day, self._first.label)}#{_member(page.label)}"

    def land(self) -> None:
        if self._first is None:
            return
        first, archive, pages = self._first, self._archive, self._pages
        try:
            self._tar.close()
            archive.seek(0)
        except BaseException:
            archive.close()
            self._reset()
            raise
        self._reset()
        if pages:  # none when the bundle's first page could not be written
            self._landing.land(archive, first, pages)  # closes the archive
        else:
            archive.close()

    def __enter__(self) -> "RawBundle":
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            self.land()
        except Exception:
            if exc is None:
                raise
            # after a failure, keep what was received if we can; the original error is the one to report
            logger.exception("%s: could not land the raw pages received before the failure", self._landing.source)


def _member(label: str) -> str:
    return f"{label}.json"


def replay_pages(s3: LakeS3Resource, source: str, run_id: str, days: Iterable[date],
                 decode: Callable[[str, bytes], Any] | None = None) -> Iterator[tuple[RawPage, str]]:
    """The pages a run landed, read back from S3 in page order, with their URIs: a load can be redone
    from exactly what the API returned (after a parser fix, or once the API no longer serves the days).
    Reads the tar bundles, and the one-object-per-page .json layout of earlier releases. ``decode``
    (where, body) -> document is the source's own decoder, the one its live reads use."""
    decode = decode or (lambda where, body: load_json(source, where, body))
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
            body, meta = obj["Body"].read(), dict(obj.get("Metadata", {}))
            uri = f"s3://{RAW_BUCKET}/{key}"
            if key.endswith(".json"):
                label = key[len(prefix):].removesuffix(".json")
                yield RawPage(source, day, label, body, decode(uri, body), meta), uri
                continue
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as tar:
                for member in tar:
                    page_body = tar.extractfile(member).read()
                    page_uri = f"{uri}#{member.name}"
                    yield RawPage(source, day, member.name.removesuffix(".json"), page_body,
                                  decode(page_uri, page_body), meta), page_uri


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
