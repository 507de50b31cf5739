"""Mapping rules applied to distinct source values (a few dozen per run, whatever the row count): NPI
check digits, care site name resolution and specialty concepts. Row-level cleaning runs in DuckDB
(transform/); every rule is documented in docs/data-quality.md."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).parent / "data"
SPECIALTY_MAP_FILE = DATA_DIR / "specialty_map.csv"

# OMOP conventions: 0 = "No matching concept"; 32817 = Type Concept "EHR".
NO_MATCHING_CONCEPT = 0
EHR_TYPE_CONCEPT = 32817

# ---- NPI ------------------------------------------------------------------------------------------
# The NPI check digit is the Luhn digit of "80840" + the first 9 digits; the prefix contributes 24.
NPI_PREFIX_SUM = 24


def npi_check_digit(first9: str) -> int:
    total = NPI_PREFIX_SUM
    for i, ch in enumerate(reversed(first9)):
        digit = int(ch)
        if i % 2 == 0:  # the rightmost payload digit is doubled
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return (10 - total % 10) % 10


def npi_is_valid(npi: str | None) -> bool:
    """The reference rule (the transform and the generator use the vectorised npi_check_digits)."""
    return bool(npi) and len(npi) == 10 and npi.isdigit() and npi_check_digit(npi[:9]) == int(npi[9])


def npi_check_digits(bases: np.ndarray) -> np.ndarray:
    """Vectorised npi_check_digit over 9-digit bases (as integers)."""
    total = np.full(bases.shape, NPI_PREFIX_SUM, dtype=np.int64)
    for k in range(9):  # k = 0 is the rightmost digit, which is doubled
        digit = (bases // 10 ** k) % 10
        total += np.where(digit > 4, digit * 2 - 9, digit * 2) if k % 2 == 0 else digit
    return (10 - total % 10) % 10


# ---- care sites -----------------------------------------------------------------------------------
# Abbreviations that are not prefixes of the word they stand for (prefixes such as "Med", "Inst",
# "Hosp" are matched by the prefix rule).
SITE_ABBREVIATIONS = {"ctr": "center", "cntr": "center", "hlth": "health", "hsp": "hospital", "st": "saint",
                      "mt": "mount", "univ": "university", "fp": "family practice"}


def site_tokens(name: str) -> tuple[str, ...]:
    text = name.lower().replace("&", " and ")
    text = re.sub(r"[^a-z0-9 ]+", " ", text)
    words: list[str] = []
    for word in text.split():
        words.extend(SITE_ABBREVIATIONS.get(word, word).split())
    return tuple(words)


def resolve_sites(raw_names: Iterable[str], care_sites: Mapping[int, str]) -> dict[str, int | None]:
    """Map each raw site name to a care_site_id: exact match after normalisation (case, punctuation,
    spacing, known abbreviations), else the single site whose leading words the name abbreviates
    word by word ("Metro Med" -> "Metro Medical Center", "North Health Inst" -> "North Health
    Institute"). No match, or more than one, gives None: the provider keeps a NULL care_site_id and a
    care_site_unmapped flag rather than a guess."""
    canonical = {site_tokens(name): site_id for site_id, name in care_sites.items()}
    resolved: dict[str, int | None] = {}
    for raw in raw_names:
        tokens = site_tokens(raw)
        if tokens in canonical:
            resolved[raw] = canonical[tokens]
            continue
        matches = {site_id for canon, site_id in canonical.items() if _abbreviates(tokens, canon)}
        resolved[raw] = matches.pop() if len(matches) == 1 else None
    return resolved


def _abbreviates(tokens: tuple[str, ...], canon: tuple[str, ...]) -> bool:
    if not tokens or len(tokens) > len(canon) or len(tokens) < min(2, len(canon)):
        return False
    return all(word.startswith(part) for part, word in zip(tokens, canon, strict=False))


# ---- specialties ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Specialty:
    concept_id: int
    concept_name: str


def specialty_key(raw: str) -> str:
    return " ".join(re.sub(r"[.\s]+", " ", raw.lower()).split())


def load_specialty_map(path: Path = SPECIALTY_MAP_FILE) -> dict[str, Specialty]:
    """Source label (case, dots and spacing ignored) -> Medicare Specialty concept. Derived from the
    bundled specialty_concepts.csv (see data/SOURCES.md)."""
    with path.open(newline="", encoding="utf-8") as handle:
        return {specialty_key(row["source_label"]): Specialty(int(row["concept_id"]), row["concept_name"])
                for row in csv.DictReader(handle)}


def map_specialties(raw_values: Iterable[str], mapping: Mapping[str, Specialty]) -> dict[str, int]:
    """Raw specialty -> concept id, NO_MATCHING_CONCEPT when the label is unknown."""
    return {raw: (mapping.get(specialty_key(raw)) or Specialty(NO_MATCHING_CONCEPT, "")).concept_id
            for raw in raw_values}
