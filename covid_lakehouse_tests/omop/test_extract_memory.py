"""The provider extract gives back the memory its parse freed before the transform starts: the C heap
keeps freed pages for reuse (and Arrow's pool its own), which the DuckDB phase after it barely reuses,
so left alone they sat under the tenant step's peak."""

from __future__ import annotations

import ctypes
import os

import pyarrow.parquet as pq
import pytest

from covid_lakehouse.defs.omop import extract as extract_module
from covid_lakehouse.defs.omop.extract import PROVIDER_SOURCE, extract_parquet
from covid_lakehouse.lib.memory import release_freed_memory

MB = 1 << 20


def _rss() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) * 1024


def _glibc_with_proc() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "malloc_trim") and os.path.exists("/proc/self/status")
    except (OSError, TypeError):
        return False


# What this test measures exists on Linux with glibc only (elsewhere release_freed_memory trims Arrow's
# pool alone); CI and the docker images are glibc.
@pytest.mark.skipif(not _glibc_with_proc(), reason="needs glibc's malloc_trim and /proc (Linux)")
def test_release_freed_memory_returns_freed_heap_pages_to_the_system():
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # 64 MB in small blocks (below the mmap threshold: on the heap, as a parser's allocations are),
    # written so the pages are resident, then freed but the last, which keeps the heap's top in use:
    # free() alone cannot shrink the heap, the pages stay resident. (A separate small pin allocated
    # afterwards may come from a hole lower in a heap earlier tests fragmented: then free() itself
    # trimmed the top and this test failed in a full session; the last block is above the others.)
    blocks = [libc.malloc(4096) for _ in range(16_384)]
    for block in blocks:
        ctypes.memset(block, 1, 4096)
    *freed, pin = blocks
    try:
        for block in freed:
            libc.free(block)
        before = _rss()
        release_freed_memory()
        assert before - _rss() >= 48 * MB
    finally:
        libc.free(pin)


def test_the_provider_extract_releases_freed_memory_once_its_file_is_complete(make_tenants, tmp_path, monkeypatch):
    tenant = make_tenants(providers=3_000).tenant
    path = tmp_path / "provider.parquet"
    rows_when_released: list[int] = []
    monkeypatch.setattr(extract_module, "release_freed_memory",
                        lambda: rows_when_released.append(pq.read_metadata(path).num_rows))
    extract_parquet(tenant, "provider", PROVIDER_SOURCE, path, block_size=64 << 10)
    assert rows_when_released == [3_000]  # once, after the last block was written and the file closed
