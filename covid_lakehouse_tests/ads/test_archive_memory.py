"""The archive's Arrow memory: while it writes and reads back, Arrow allocates from a pool that returns
freed pages to the OS (jemalloc, decay 0; the default mimalloc kept ~130 MB it no longer used at 1M
rows), and the process's previous pool is back when the run ends, also when the run fails."""

from datetime import timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from covid_lakehouse.defs.ads.archive import ArchiveError, archive_old_rows
from covid_lakehouse.lib.memory import returning_memory_pool
from covid_lakehouse_dev.apis.ads import AdsMock
from covid_lakehouse_tests.ads.support import NOW, load_rows

pytestmark = pytest.mark.integration

RETENTION = timedelta(hours=12)


def test_the_archive_allocates_from_a_pool_that_returns_memory_and_restores_the_previous_one(
        ads_clean, warehouse, lakehouse):
    load_rows(warehouse, AdsMock(seed=11, now=NOW.timestamp), pages=2)
    before = pa.default_memory_pool()
    seen = {}

    def hook(step: str) -> None:
        if step in ("chunk_written", "verified"):
            seen[step] = pa.default_memory_pool().backend_name

    [report] = archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW, chunk_rows=40, hook=hook)
    assert report.archived_rows > 0
    assert seen == {"chunk_written": "jemalloc", "verified": "jemalloc"}
    assert pa.default_memory_pool().backend_name == before.backend_name


def test_a_failed_archive_restores_the_previous_pool(ads_clean, warehouse, lakehouse):
    load_rows(warehouse, AdsMock(seed=11, now=NOW.timestamp), pages=1)
    before = pa.default_memory_pool().backend_name

    def fail(step: str) -> None:
        if step == "chunk_written":
            raise ArchiveError("stop here")

    with pytest.raises(ArchiveError):
        archive_old_rows(warehouse, lakehouse, retention=RETENTION, now=NOW, chunk_rows=40, hook=fail)
    assert pa.default_memory_pool().backend_name == before


def test_freed_arrow_memory_leaves_the_process_inside_the_block():
    """Under pyarrow's default mimalloc pool the same 200 MB stay resident after they are freed."""
    def anon_mb() -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:")) // 1024

    with returning_memory_pool() as pool:
        before = anon_mb()
        # 25 arrays of 8 MB written by Arrow (pages touched), like a chunk's CSV blocks and columns
        arrays = [pc.fill_null(pa.nulls(1 << 20, pa.int64()), 1) for _ in range(25)]
        assert pool.bytes_allocated() >= 200 << 20
        assert anon_mb() >= before + 150
        del arrays
        assert anon_mb() < before + 50
