"""The columns we load, the schema they become, and how rows.json's ``meta.view.columns`` are matched
to them: by fieldName, then by display name, never by position (the dataset gained and renamed columns)."""

from __future__ import annotations

import re

import pyarrow as pa

from covid_lakehouse.defs.ny_testing.parsing.errors import SourceFormatError

MEASURES = (
    "new_positives",
    "cumulative_number_of_positives",
    "total_number_of_tests_performed",
    "cumulative_number_of_tests_performed",
)
REQUIRED = ("test_date", "county", *MEASURES)

# Our name -> every fieldName or display name the dataset has used for it.
ALIASES: dict[str, tuple[str, ...]] = {
    "test_date": ("test_date", "Test Date"),
    "county": ("county", "County"),
    "new_positives": ("new_positives", "New Positives", "Total New Positives"),
    "cumulative_number_of_positives": ("cumulative_number_of_positives", "Cumulative Number of Positives"),
    "total_number_of_tests_performed": (
        "total_number_of_tests",
        "total_number_of_tests_performed",
        "Total Number of Tests Performed",
    ),
    "cumulative_number_of_tests_performed": (
        "cumulative_number_of_tests",
        "cumulative_number_of_tests_performed",
        "Cumulative Number of Tests Performed",
    ),
    "test_positive": ("test_positive", "Test % Positive"),  # known, not loaded: derivable from measures
    "geography": ("geography", "Geography"),
}

SCHEMA = pa.schema(
    [
        pa.field("geography", pa.string(), nullable=False),
        pa.field("county", pa.string(), nullable=False),
        pa.field("test_date", pa.date32(), nullable=False),
        *(pa.field(m, pa.int64(), nullable=False) for m in MEASURES),
    ]
)

def _norm(label: str) -> str:
    # "Total New Positives", "total_new_positives" and "TOTAL  NEW POSITIVES" are one name.
    return re.sub(r"[\s_]+", " ", label).strip().lower()


def resolve_columns(columns: list[dict], source: str) -> tuple[dict[str, int], list[str]]:
    """Our column -> index in each data row, by fieldName first, then by display name."""
    user = [(i, c) for i, c in enumerate(columns) if not str(c.get("fieldName", "")).startswith(":")]
    index: dict[str, int] = {}
    for key in ("fieldName", "name"):
        for ours, aliases in ALIASES.items():
            if ours in index:
                continue
            wanted = {_norm(a) for a in aliases}
            hits = [i for i, c in user if _norm(str(c.get(key) or "")) in wanted and i not in index.values()]
            if len(hits) > 1:
                names = [columns[i].get(key) for i in hits]
                raise SourceFormatError(source, f"column {ours} is ambiguous: {key}s {names} all match")
            if hits:
                index[ours] = hits[0]
    missing = [r for r in REQUIRED if r not in index]
    if missing:
        found = [f"{c.get('fieldName')} ({c.get('name')})" for _, c in user]
        raise SourceFormatError(source, f"missing required column(s) {missing}; found columns: {found}")
    ignored = [str(c.get("fieldName")) for i, c in user if i not in index.values()]
    return index, ignored
