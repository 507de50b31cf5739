"""Process memory: giving freed memory back to the system instead of keeping it for reuse, for steps that
parse or write large Arrow data and then do something else (omop's provider extract, the ads archive).

``release_freed_memory`` (once a phase is done): parsing a large COPY leaves freed memory behind in two
allocators: Arrow's pool (mimalloc) keeps its pages, and the C heap keeps what the parser's threads
allocated outside the pool in their own arenas, where the step's next phase (DuckDB, on other threads)
reuses only part of it. Measured on omop's provider step at 2M providers: ~80 MB less RSS entering the
transform; its peak, DuckDB's, moved less (2M: 843 -> 835 MB, mean of three runs; 8M: 891 -> 850 MB,
one run each).

``returning_memory_pool`` (while a block lasts): Arrow allocates from jemalloc with its dirty pages
returned to the OS at once, so the process holds about what it uses. pyarrow's default pool (mimalloc)
keeps the pages freed by each thread (the CSV reader's, the parquet writer's, the S3 and scan threads')
for reuse. Measured on the ads archive of 1,000,000 rows: Arrow never held more than 37 MB at a time,
but mimalloc's arena grew by 130 MB over the write and the read-back, and the process kept it (peak
~500 MB). The switch covers what pyarrow allocates for Python calls (CSV reader, parquet writer, compute,
dataset scans): peak ~460 MB. Arrow C++ internals that take the C++ default pool (S3 stream buffers,
parquet decompression) keep the pool chosen when pyarrow loaded; with ARROW_DEFAULT_MEMORY_POOL=jemalloc
in the process environment as well the peak was ~400 MB. The pool is process-wide in pyarrow, so the
previous one is restored when the block ends (buffers allocated meanwhile are freed to the pool they came
from). Without jemalloc (a pyarrow built without it) the block keeps the default pool.

``write_behind`` and ``read_ahead`` (while a stream of items is written or read): one helper thread
writes (or makes) one item while the caller's thread makes (or takes) the next, at most a few items
alive, so streaming stays bounded; on exit the helper has ended, whatever happened (an error, an
interrupt). omop's extract writes parquet behind the CSV parser (``write_behind``);
``PostgresResource.copy_arrow`` encodes CSV ahead of the COPY (``read_ahead``), which stays in the caller's
thread, so that an interrupt cancels it in the server (psycopg at Ctrl-C, copy_arrow at a run's
termination). A table of at most ``max_rows`` rows is one piece, sent without a thread."""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import pyarrow as pa

log = logging.getLogger(__name__)


def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):  # TypeError: no CDLL(None) on Windows
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Give the memory a finished phase freed back to the system: Arrow's pool, then the C heap (glibc)."""
    pa.default_memory_pool().release_unused()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@contextmanager
def returning_memory_pool() -> Iterator[pa.MemoryPool]:
    """Arrow's default pool is jemalloc with immediate decay inside the block, then the previous one."""
    previous = pa.default_memory_pool()
    try:
        pool = pa.jemalloc_memory_pool()
        pa.jemalloc_set_decay_ms(0)
    except NotImplementedError:  # pyarrow built without jemalloc
        log.info("pyarrow has no jemalloc: keeping the %s memory pool", previous.backend_name)
        yield previous
        return
    pa.set_memory_pool(pool)
    try:
        yield pool
    finally:
        pa.set_memory_pool(previous)
        previous.release_unused()


# Items a write_behind queues: with the one being written and the one being made, depth + 2 are alive at
# most, whatever the stream's length; their size is the caller's (omop's extract: one parsed CSV block).
WRITE_BEHIND_DEPTH = 1

_END = object()


class _Handoff:
    """A bounded queue between the caller's thread and one helper thread. ``put`` waits while ``depth``
    items wait; ``end`` never waits (the caller must never block on it at an exit); ``fail`` (either side)
    drops what is queued and makes the other side stop: its next ``put`` raises the first failure, its
    next ``get`` returns the end. At most depth + 2 items are alive: the queued ones, one being made, one
    being taken."""

    def __init__(self, depth: int) -> None:
        if depth < 1:  # an unbounded queue: the producer would never wait
            raise ValueError(f"hand-off depth must be at least 1, got {depth}")
        self._slots = threading.Semaphore(depth)
        self._items: queue.SimpleQueue = queue.SimpleQueue()
        self.failures: list[BaseException] = []

    def put(self, item: object) -> None:
        self._slots.acquire()
        if self.failures:
            self._slots.release()
            raise self.failures[0]
        self._items.put(item)

    def get(self) -> object:
        item = self._items.get()
        if item is _END or self.failures:
            return _END
        self._slots.release()
        return item

    def end(self) -> None:
        self._items.put(_END)

    def fail(self, err: BaseException) -> None:
        self.failures.append(err)
        while True:  # dropped here, at the failure, not written
            try:
                self._items.get_nowait()
            except queue.Empty:
                break
        self._items.put(_END)  # wakes a get waiting
        self._slots.release()  # wakes a put waiting

    def start(self, target: Callable[[], None], name: str) -> Callable[[], BaseException | None]:
        """Runs ``target`` in a daemon thread (its error fails the hand-off) and returns the function
        that waits for the thread's end: an interrupt while waiting fails the hand-off, so the thread
        stops after its current item, and is waited for again; the function returns the interrupt.
        (It waits on an event: an interrupted Thread.join marks a running thread ended in Python 3.11.)"""
        ended = threading.Event()

        def run() -> None:
            try:
                target()
            except BaseException as err:  # noqa: BLE001 - raised in the caller's thread
                self.fail(err)
            finally:
                ended.set()

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()

        def finish() -> BaseException | None:
            interrupt = None
            while True:
                try:
                    ended.wait()
                    thread.join()
                    return interrupt
                except BaseException as err:  # noqa: BLE001 - Ctrl-C or a run's termination: stop, then wait
                    self.fail(err)
                    interrupt = interrupt or err
        return finish

    def noted(self, err: BaseException, name: str) -> BaseException:
        for other in self.failures:  # a failure of the other side is said beside err (a full disk)
            if other is not err and not isinstance(other, _Stopped):
                err.add_note(f"{name}: also failed: {other!r}")
        return err


@contextmanager
def write_behind(write: Callable[[object], None], depth: int = WRITE_BEHIND_DEPTH, *,
                 name: str = "write-behind") -> Iterator[Callable[[object], None]]:
    """A function that hands each item to ``write`` in a thread of its own, in order, at most ``depth``
    items waiting: the producer makes the next item while the writer writes the last one (omop's extract
    parses CSV while parquet is encoded), both releasing the GIL, where one thread did each in turn. On
    exit, whatever happened (an error, an interrupt, a second interrupt while waiting), the writer has
    ended: every item is written, or after a failure what was queued is dropped. The first error of
    ``write`` is raised (to the producer at its next item, or on exit), with the other side's noted."""
    handoff = _Handoff(depth)

    def drain() -> None:
        while (item := handoff.get()) is not _END:
            write(item)
            del item  # not held while waiting for the next one

    finish = handoff.start(drain, name)
    try:
        yield handoff.put
    except BaseException as err:
        handoff.fail(_Stopped())  # the writer ends after its current item; what is queued is dropped
        finish()
        raise handoff.noted(err, name)  # noqa: B904 - err itself
    handoff.end()
    if (interrupt := finish()) is not None:
        raise handoff.noted(interrupt, name)
    if handoff.failures:
        raise handoff.failures[0]


@contextmanager
def read_ahead(items: Iterable[object], depth: int, *, name: str = "read-ahead") -> Iterator[Iterator[object]]:
    """``items`` made in a thread of its own, at most ``depth`` ahead of the caller, who takes them in order
    (``PostgresResource.copy_arrow`` sends a CSV piece while the next is encoded; the COPY stays in the
    caller's thread, where psycopg cancels it on an interrupt). The mirror of ``write_behind``: on exit the
    thread has ended, an error of ``items`` is raised to the caller at its next item (what was made before
    is dropped), and a failure of the caller stops the thread after its current item."""
    handoff = _Handoff(depth)

    def fill() -> None:
        for item in items:
            handoff.put(item)
            del item
        handoff.end()

    def taken() -> Iterator[object]:
        while (item := handoff.get()) is not _END:
            yield item
        if handoff.failures:
            raise handoff.failures[0]

    finish = handoff.start(fill, name)
    try:
        yield taken()
    except BaseException as err:
        handoff.fail(_Stopped())
        finish()
        raise handoff.noted(err, name)  # noqa: B904 - err itself
    handoff.fail(_Stopped())  # the caller may stop before the end: the thread stops too
    if (interrupt := finish()) is not None:
        raise interrupt


class _Stopped(Exception):
    """The other side failed or stopped: the helper thread stops."""
