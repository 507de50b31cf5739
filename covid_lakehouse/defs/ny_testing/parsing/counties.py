"""County names -> safe table-name parts ("St. Lawrence" -> "st_lawrence"), one table per county."""

from __future__ import annotations

import re
import unicodedata

from covid_lakehouse.defs.ny_testing.parsing.errors import UnsafeIdentifierError

_SLUG_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")  # 63 = PostgreSQL's identifier limit


def county_slug(name: str) -> str:
    """Table-name part for a county: "St. Lawrence" -> "st_lawrence". Raises UnsafeIdentifierError."""
    # NFKD then ASCII keeps "Doña Ana" readable ("dona_ana") instead of dropping the letter.
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "_", ascii_name.lower()).strip("_")
    if not _SLUG_RE.fullmatch(slug):
        raise UnsafeIdentifierError(f"county {name!r} gives no safe identifier (got {slug!r})")
    return slug
