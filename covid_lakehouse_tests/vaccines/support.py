"""Helpers shared by the vaccines tests (fixtures live in conftest.py): where the real files are, and
an independent reader.

The independent reader uses only the csv module and hard-coded header spellings, so the expected
figures in the tests do not go through the parsers under test. Tests import this module as ``ref``.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path

from covid_lakehouse.defs.vaccines.resources import VaccinesSettings
from covid_lakehouse_dev.apis.vaccines import (
    DATA,  # the bundled demo snapshot the offline API serves
    register,
)

FIXTURES = Path(__file__).parent / "fixtures"

MODERNA_DEMO = DATA / "soda_b7pe-5nws_moderna_limit1000_2022-02-20.csv"
PFIZER_DEMO = DATA / "soda_saz5-9hgg_pfizer_limit1000_2022-02-21.csv"
PEP_2018 = DATA / "PEP_2018_PEPANNRES_with_ann.csv"
COUNTY_POPULATION = FIXTURES / "County_Population.DERIVED_from_PEP2018.csv"

# Every long-layout allocation file we have (the wide ones and outage bodies are rejected).
LONG_FILES = sorted(
    [MODERNA_DEMO, PFIZER_DEMO]
    + [p for p in FIXTURES.glob("*.csv") if "WIDE" not in p.name and "Population" not in p.name]
)
COMPLETE_FILES = [p for p in LONG_FILES if "limit1000" not in p.name]
WIDE_FILES = sorted(FIXTURES.glob("*WIDE*.csv"))

_JURISDICTION = ("jurisdiction", "Jurisdiction")
_WEEK = ("week_of_allocations", "Week of Allocations", "Week.of.Allocations")
_FIRST = ("_1st_dose_allocations", "1st Dose Allocations", "X1st.Dose.Allocations")
_SECOND = ("_2nd_dose_allocations", "2nd Dose Allocations", "X2nd.Dose.Allocations")


def manufacturer_of(path: Path) -> str:
    name = path.name.lower()
    return next(m for m in ("moderna", "pfizer", "janssen") if m in name)


def raw_rows(path: Path) -> list[dict[str, object]]:
    """Rows as {jurisdiction, week (the raw string), first, second} straight from the csv module."""
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig")))

    def pick(row: dict[str, str], names: tuple[str, ...]) -> str | None:
        return next((row[n] for n in names if n in row), None)

    return [
        {
            "jurisdiction": pick(row, _JURISDICTION),
            "week": pick(row, _WEEK),
            "first": int(pick(row, _FIRST)),
            "second": int(pick(row, _SECOND) or 0),
        }
        for row in reader
    ]


def raw_doses_by_jurisdiction(*paths: Path) -> dict[str, int]:
    """1st + 2nd dose allocations per jurisdiction, summed over the given files."""
    totals: dict[str, int] = defaultdict(int)
    for path in paths:
        for row in raw_rows(path):
            totals[row["jurisdiction"]] += row["first"] + row["second"]
    return dict(totals)


def raw_pep_population_by_state() -> dict[str, int]:
    """respop72018 summed per state from the AFF export, read with the csv module."""
    rows = list(csv.reader(io.StringIO(PEP_2018.read_bytes().decode("latin-1"))))
    header = rows[0]
    label, value = header.index("GEO.display-label"), header.index("respop72018")
    totals: dict[str, int] = defaultdict(int)
    for row in rows[2:]:  # rows[1] is the description header
        totals[row[label].rsplit(", ", 1)[1]] += int(row[value])
    return dict(totals)


def csv_bytes(header: list[str], rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def lake_settings(api) -> VaccinesSettings:
    """The vaccines settings pointing at the bundled CDC lake files served by ``api`` (a MockApi)."""
    env = {k: v.replace("{base}", api.url) for k, v in register(api).items()}
    return VaccinesSettings(allocation_urls={"moderna": env["VACCINES_MODERNA_URL"], "pfizer": env["VACCINES_PFIZER_URL"]},
                            population_url=env["VACCINES_POPULATION_URL"])
