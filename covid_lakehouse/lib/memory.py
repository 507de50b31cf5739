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

``write_behind`` (while a stream of batches is written): the writer writes one item in a thread of its
own while the producer makes the next, holding at most a few items, so streaming stays bounded. The one
such hand-off of the platform: omop's extract (parquet behind the CSV parser) and every COPY into
PostgreSQL (``PostgresResource.copy_arrow``, the COPY behind the CSV encoder) run on it."""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
from collections.abc import Callable, Iterator
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


# Batches a write_behind may hold beyond the one being written: a few MB, whatever the table's size.
WRITE_BEHIND_DEPTH = 1


@contextmanager
def write_behind(write: Callable[[object], None], depth: int = WRITE_BEHIND_DEPTH, *,
                 name: str = "write-behind") -> Iterator[Callable[[object], None]]:
    """A function that hands each item to ``write`` in a thread of its own, in order, at most ``depth``
    items waiting: the producer makes the next item while the writer writes the last one (omop's extract
    parses CSV while parquet is encoded; ``PostgresResource.copy_arrow`` encodes CSV while the COPY sends),
    both releasing the GIL, where one thread did each in turn. On exit every item is written and the
    thread has ended; the first error of ``write`` is raised (to the producer at its next item, or on
    exit), and an error of the producer stops the writing: what is queued is dropped then, not written."""
    if depth < 1:  # Queue(maxsize=0) is unbounded: the producer would never wait
        raise ValueError(f"write_behind depth must be at least 1, got {depth}")
    pending: queue.Queue = queue.Queue(maxsize=depth)
    failure: list[BaseException] = []
    done = object()

    def drain() -> None:
        while (item := pending.get()) is not done:
            if not failure:  # after a failure: keep taking items, so that the producer never blocks
                try:
                    write(item)
                except BaseException as err:  # noqa: BLE001 - raised in the producer's thread
                    failure.append(err)
            del item  # not held while waiting for the next one

    writer = threading.Thread(target=drain, name=name, daemon=True)
    writer.start()

    def submit(item: object) -> None:
        if failure:
            raise failure[0]
        pending.put(item)

    try:
        yield submit
    except BaseException as err:
        if failure and failure[0] is not err:  # the writer failed first (a full disk): said beside the producer's error
            err.add_note(f"{name}: the writer had failed before: {failure[0]!r}")
        failure.append(_Stopped())  # the writer skips what it takes from now on
        _drop_queued(pending)  # and finds nothing queued: dropped here, at the failure, not written
        raise
    finally:
        pending.put(done)
        writer.join()
    if failure:
        raise failure[0]


def _drop_queued(pending: queue.Queue) -> None:
    while True:
        try:
            pending.get_nowait()
        except queue.Empty:
            return


class _Stopped(Exception):
    """The producer failed: its queued items are not written."""
