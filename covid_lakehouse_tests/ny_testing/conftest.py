"""Fixtures for the ny_testing domain."""

from __future__ import annotations

import gzip
from importlib import resources

import pytest

SNAPSHOT = resources.files("covid_lakehouse.defs.ny_testing") / "data" / "xdss-u53e_rows.json.gz"


@pytest.fixture(scope="session")
def snapshot_body() -> bytes:
    """The bundled rows.json snapshot, decompressed (67,671 rows, 13 MB)."""
    return gzip.decompress(SNAPSHOT.read_bytes())
