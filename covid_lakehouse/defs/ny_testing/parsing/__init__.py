"""Streaming parser for the NYS COVID-19 testing dataset (Socrata ``rows.json`` of xdss-u53e).

Pure: no database, no network. ``open_rows_json`` checks the body and reads ``meta`` (``meta``), matches
its columns to ours (``columns``); ``RowsJsonReader.batches`` then streams the rows into Arrow batches
(``rows``). ``counties`` turns county names into safe table names.
"""

from covid_lakehouse.defs.ny_testing.parsing.columns import ALIASES, MEASURES, REQUIRED, SCHEMA
from covid_lakehouse.defs.ny_testing.parsing.counties import county_slug
from covid_lakehouse.defs.ny_testing.parsing.errors import SourceFormatError, UnsafeIdentifierError
from covid_lakehouse.defs.ny_testing.parsing.rows import BATCH_ROWS, BadRows, RowsJsonReader, open_rows_json

__all__ = [
    "ALIASES",
    "BATCH_ROWS",
    "MEASURES",
    "REQUIRED",
    "SCHEMA",
    "BadRows",
    "RowsJsonReader",
    "SourceFormatError",
    "UnsafeIdentifierError",
    "county_slug",
    "open_rows_json",
]
