"""Fixtures for the vaccines tests: the bundled demo snapshot parsed once, and one test per real file
of a kind (support.py has the files and the independent readers)."""

from __future__ import annotations

import pytest

from covid_lakehouse_tests.vaccines.support import (
    COMPLETE_FILES,
    LONG_FILES,
    MODERNA_DEMO,
    PEP_2018,
    PFIZER_DEMO,
    WIDE_FILES,
)


@pytest.fixture(scope="session")
def demo_inputs():
    """The bundled demo snapshot, parsed: ({manufacturer: allocations}, population)."""
    from covid_lakehouse.defs.vaccines.sources import parse_allocations, parse_population

    allocations = {
        "moderna": parse_allocations(MODERNA_DEMO.read_bytes(), source=MODERNA_DEMO.name, manufacturer="moderna"),
        "pfizer": parse_allocations(PFIZER_DEMO.read_bytes(), source=PFIZER_DEMO.name, manufacturer="pfizer"),
    }
    return allocations, parse_population(PEP_2018.read_bytes(), source=PEP_2018.name)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`long_file` / `complete_file` / `wide_file` arguments run once per real file of that kind."""
    for name, files in (("long_file", LONG_FILES), ("complete_file", COMPLETE_FILES), ("wide_file", WIDE_FILES)):
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, files, ids=[p.name for p in files])
