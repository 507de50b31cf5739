"""People per vaccine dose for each US state (50 states + DC), from parsed allocations and populations.

Pure pandas: takes what sources.parse_allocations / parse_population return.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

STATES: tuple[str, ...] = (
    "Alabama", "Alaska", "Arizona", "Arkansas", "California", "Colorado", "Connecticut", "Delaware",
    "District of Columbia", "Florida", "Georgia", "Hawaii", "Idaho", "Illinois", "Indiana", "Iowa",
    "Kansas", "Kentucky", "Louisiana", "Maine", "Maryland", "Massachusetts", "Michigan", "Minnesota",
    "Mississippi", "Missouri", "Montana", "Nebraska", "Nevada", "New Hampshire", "New Jersey",
    "New Mexico", "New York", "North Carolina", "North Dakota", "Ohio", "Oklahoma", "Oregon",
    "Pennsylvania", "Rhode Island", "South Carolina", "South Dakota", "Tennessee", "Texas", "Utah",
    "Vermont", "Virginia", "Washington", "West Virginia", "Wisconsin", "Wyoming",
)
# Cities the CDC allocates to directly; their people are counted in the state's county population,
# so their doses belong to the state too. Houston and San Antonio appear (all "N/A") in the early tables.
FOLDED_CITIES: dict[str, str] = {
    "New York City": "New York", "Philadelphia": "Pennsylvania", "Chicago": "Illinois",
    "Houston": "Texas", "San Antonio": "Texas",
}
# Allocation jurisdictions with no state population: reported in Result.excluded, not dropped silently.
# Includes the spellings other CDC tables use for the same places.
NON_STATES: frozenset[str] = frozenset({
    "Federal Entities", "Puerto Rico", "U.S. Virgin Islands", "US Virgin Islands", "Virgin Islands", "Guam",
    "American Samoa", "Mariana Islands", "Northern Mariana Islands", "Marshall Islands",
    "Republic of Marshall Islands", "Micronesia", "Federated States of Micronesia", "Palau",
    "Republic of Palau", "Bureau of Prisons", "Dept of Defense", "Indian Health Svc", "Veterans Health",
})


def _key(name: str) -> str:
    """Case- and spacing-insensitive lookup key ('NEW YORK  CITY' matches 'New York City')."""
    return " ".join(str(name).split()).casefold()


_STATE_KEYS = {_key(s): s for s in STATES}
_TARGET_STATE = _STATE_KEYS | {_key(city): state for city, state in FOLDED_CITIES.items()}
_NON_STATE_KEYS = frozenset(_key(n) for n in NON_STATES)


class UnknownJurisdictionError(ValueError):
    """A name that is neither a state, DC, a folded city nor a known territory or federal entity."""


@dataclass(frozen=True)
class Result:
    table: pd.DataFrame  # one row per state (51), sorted by state
    excluded: pd.DataFrame  # non-state jurisdictions with their doses
    source_total_doses: int  # 1st + 2nd doses over every source row of every manufacturer

    @property
    def unaccounted_doses(self) -> int:
        """Source doses in neither table nor excluded: 0 unless rows were lost."""
        return self.source_total_doses - int(self.table["total_doses"].sum()) - int(self.excluded["total_doses"].sum())


def dose_column(manufacturer: str) -> str:
    """'Moderna' -> 'doses_moderna'."""
    return "doses_" + re.sub(r"[^0-9a-z]+", "_", manufacturer.lower()).strip("_")


def people_per_dose(allocations: dict[str, pd.DataFrame], population: pd.DataFrame) -> Result:
    """Population / (1st + 2nd dose allocations summed over all weeks and manufacturers), per state.

    `allocations` maps a manufacturer to parse_allocations' output; `population` is parse_population's.
    people_per_dose is NaN (NULL) where a state has no doses.
    """
    if not allocations:
        raise ValueError("no allocation sources given")
    columns = {m: dose_column(m) for m in allocations}
    if len(set(columns.values())) != len(columns):
        raise ValueError(f"manufacturer names collide as columns: {sorted(allocations)}")

    rows = pd.concat(
        [df.assign(manufacturer=columns[m], doses=df["first_dose"] + df["second_dose"]) for m, df in allocations.items()],
        ignore_index=True,
    )
    keys = rows["jurisdiction"].map(_key)
    _reject_unknown(rows["jurisdiction"][~keys.isin(_TARGET_STATE.keys() | _NON_STATE_KEYS)], "allocations")
    rows["state"] = keys.map(_TARGET_STATE)  # NaN for territories and federal entities

    included = rows[rows["state"].notna()]
    doses = _pivot(included, "state", list(columns.values())).reindex(STATES, fill_value=0)
    # Weeks with a non-zero allocation: all-zero rows are placeholders, not allocations.
    weeks = included[included["doses"] > 0].groupby("state")["week"].agg(["min", "max"]).reindex(list(STATES))
    pop = _state_population(population)
    total = doses.sum(axis=1)
    table = pd.DataFrame({"state": pd.Series(STATES, dtype=str), "population": pop.to_numpy()})
    for column in columns.values():
        table[column] = doses[column].to_numpy()
    table["total_doses"] = total.to_numpy()
    table["people_per_dose"] = (pop / total.where(total > 0)).astype("float64").to_numpy()
    table["first_allocation_week"] = weeks["min"].to_numpy()
    table["last_allocation_week"] = weeks["max"].to_numpy()

    excluded = _pivot(rows[rows["state"].isna()], "jurisdiction", list(columns.values()))
    excluded["total_doses"] = excluded.sum(axis=1)
    return Result(
        table=table.sort_values("state", ignore_index=True),
        excluded=excluded.reset_index().sort_values("jurisdiction", ignore_index=True),
        source_total_doses=int(rows["doses"].sum()),
    )


def _pivot(rows: pd.DataFrame, index: str, columns: list[str]) -> pd.DataFrame:
    """Dose sums, one column per manufacturer (0 where a manufacturer has none), int64."""
    sums = rows.groupby([index, "manufacturer"])["doses"].sum().unstack(fill_value=0)
    return sums.reindex(columns=columns, fill_value=0).astype("int64").rename_axis(columns=None)


def _state_population(population: pd.DataFrame) -> pd.Series:
    """Sum of county populations for each of the 51 states, in STATES order."""
    keys = population["state"].map(_key)
    _reject_unknown(population["state"][~keys.isin(_STATE_KEYS.keys() | _NON_STATE_KEYS)], "population")
    totals = population.groupby(keys.map(_STATE_KEYS))["population"].sum()  # territories drop out (NaN key)
    missing = [s for s in STATES if s not in totals.index]
    if missing:
        raise ValueError(f"population has no counties for: {', '.join(missing)}")
    return totals.reindex(list(STATES)).astype("int64")


def _reject_unknown(names: pd.Series, what: str) -> None:
    if len(names):
        raise UnknownJurisdictionError(
            f"unknown jurisdiction(s) in {what}: {', '.join(map(repr, sorted(set(names))))}; "
            "add them to STATES, FOLDED_CITIES or NON_STATES in vaccines/transform.py"
        )
