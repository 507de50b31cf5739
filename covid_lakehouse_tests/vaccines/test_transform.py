"""people_per_dose on the bundled demo snapshot, with expected figures computed from the raw files."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from covid_lakehouse.defs.vaccines.sources import parse_allocations, parse_population
from covid_lakehouse.defs.vaccines.transform import (
    STATES,
    UnknownJurisdictionError,
    people_per_dose,
)
from covid_lakehouse_tests.vaccines import support as ref

TERRITORIES_AND_FEDERAL = {
    "Federal Entities", "Puerto Rico", "U.S. Virgin Islands", "Guam", "American Samoa", "Mariana Islands",
    "Marshall Islands", "Micronesia", "Palau",
}


@pytest.fixture(scope="module")
def demo(demo_inputs):
    return people_per_dose(*demo_inputs)


@pytest.fixture(scope="module")
def raw_doses() -> dict[str, int]:
    return ref.raw_doses_by_jurisdiction(ref.MODERNA_DEMO, ref.PFIZER_DEMO)


def test_one_row_per_state_and_dc_sorted(demo) -> None:
    table = demo.table
    assert len(table) == 51 and list(table["state"]) == sorted(STATES)
    assert "District of Columbia" in set(table["state"])
    assert list(table.columns) == [
        "state", "population", "doses_moderna", "doses_pfizer", "total_doses", "people_per_dose",
        "first_allocation_week", "last_allocation_week",
    ]
    assert table["population"].sum() == 327_167_434
    assert (table["doses_moderna"] + table["doses_pfizer"] == table["total_doses"]).all()


@pytest.mark.parametrize(
    "state, parts",
    [
        ("New York", ["New York", "New York City"]),
        ("Pennsylvania", ["Pennsylvania", "Philadelphia"]),
        ("Illinois", ["Illinois", "Chicago"]),
        ("Wyoming", ["Wyoming"]),
        ("District of Columbia", ["District of Columbia"]),
    ],
)
def test_state_figures_match_the_raw_files(demo, raw_doses, state: str, parts: list[str]) -> None:
    expected_doses = sum(raw_doses[p] for p in parts)
    expected_population = ref.raw_pep_population_by_state()[state]
    row = demo.table.set_index("state").loc[state]
    assert row["total_doses"] == expected_doses
    assert row["population"] == expected_population
    assert row["people_per_dose"] == pytest.approx(expected_population / expected_doses)


def test_new_york_includes_new_york_city(demo, raw_doses) -> None:
    new_york = demo.table.set_index("state").loc["New York", "total_doses"]
    assert raw_doses["New York City"] > 0
    assert new_york == raw_doses["New York"] + raw_doses["New York City"]
    assert "New York City" not in set(demo.excluded["jurisdiction"])


def test_territories_and_federal_entities_are_excluded_and_reported(demo, raw_doses) -> None:
    excluded = demo.excluded.set_index("jurisdiction")
    assert set(excluded.index) == TERRITORIES_AND_FEDERAL
    assert excluded["total_doses"].to_dict() == {j: raw_doses[j] for j in TERRITORIES_AND_FEDERAL}
    assert (excluded["doses_moderna"] + excluded["doses_pfizer"] == excluded["total_doses"]).all()
    assert not TERRITORIES_AND_FEDERAL & set(demo.table["state"])


def test_included_plus_excluded_equals_every_source_row(demo, raw_doses) -> None:
    assert demo.source_total_doses == sum(raw_doses.values())
    assert demo.table["total_doses"].sum() + demo.excluded["total_doses"].sum() == demo.source_total_doses
    assert demo.unaccounted_doses == 0


def test_allocation_weeks(demo) -> None:
    table = demo.table.set_index("state")
    assert table["last_allocation_week"].eq(pd.Timestamp("2021-06-21")).all()
    assert table.loc["New York", "first_allocation_week"] == pd.Timestamp("2021-03-08")


def test_three_manufacturers_from_the_complete_series() -> None:
    allocations = {}
    for name in ("moderna", "pfizer", "janssen"):
        path = ref.FIXTURES / f"cdc_full_Rwritecsv_{name}_thru_2021-06-21.csv"
        allocations[name] = parse_allocations(path.read_bytes(), source=path.name, manufacturer=name)
    population = parse_population(ref.COUNTY_POPULATION.read_bytes(), source="County_Population.csv")
    result = people_per_dose(allocations, population)

    raw = {
        name: ref.raw_doses_by_jurisdiction(ref.FIXTURES / f"cdc_full_Rwritecsv_{name}_thru_2021-06-21.csv")
        for name in allocations
    }
    texas = result.table.set_index("state").loc["Texas"]
    for name in allocations:
        assert texas[f"doses_{name}"] == raw[name]["Texas"]
    assert texas["total_doses"] == sum(raw[name]["Texas"] for name in allocations)
    assert texas["first_allocation_week"] == pd.Timestamp("2020-12-14")  # Pfizer's first week
    assert result.source_total_doses == sum(sum(r.values()) for r in raw.values())
    assert result.unaccounted_doses == 0


def test_footnoted_names_count_for_their_state() -> None:
    """The Pfizer long_complete file writes "Minnesota***" and "Federal Entities ****"."""
    path = ref.FIXTURES / "soda_saz5-9hgg_pfizer_long_complete_2021-02-24.csv"
    allocations = {"pfizer": parse_allocations(path.read_bytes(), source=path.name, manufacturer="pfizer")}
    population = parse_population(ref.PEP_2018.read_bytes(), source="pep")
    result = people_per_dose(allocations, population)
    raw = ref.raw_doses_by_jurisdiction(path)
    assert result.table.set_index("state").loc["Minnesota", "total_doses"] == raw["Minnesota***"] > 0
    assert result.excluded.set_index("jurisdiction").loc["Federal Entities", "total_doses"] == raw["Federal Entities ****"]


def test_state_without_doses_has_null_ratio(demo_inputs) -> None:
    allocations, population = demo_inputs
    without_wyoming = {m: df[df["jurisdiction"] != "Wyoming"] for m, df in allocations.items()}
    row = people_per_dose(without_wyoming, population).table.set_index("state").loc["Wyoming"]
    assert row["total_doses"] == 0
    assert math.isnan(row["people_per_dose"])
    assert pd.isna(row["first_allocation_week"])


@pytest.mark.parametrize("name", ["Atlantis", "Total", "Houston, TX"])
def test_unknown_jurisdiction_is_an_error_not_dropped(demo_inputs, name: str) -> None:
    allocations, population = demo_inputs
    moderna = allocations["moderna"]
    extra = moderna.iloc[:1].assign(jurisdiction=name)
    with pytest.raises(UnknownJurisdictionError, match=repr(name)):
        people_per_dose({"moderna": pd.concat([moderna, extra])}, population)


def test_jurisdiction_names_match_regardless_of_case(demo_inputs) -> None:
    allocations, population = demo_inputs
    moderna = allocations["moderna"]
    shouted = moderna.assign(jurisdiction=moderna["jurisdiction"].str.upper())
    assert people_per_dose({"moderna": shouted}, population).table.equals(
        people_per_dose({"moderna": moderna}, population).table
    )


def test_population_missing_a_state_is_an_error(demo_inputs) -> None:
    allocations, population = demo_inputs
    with pytest.raises(ValueError, match="no counties for: Vermont"):
        people_per_dose(allocations, population[population["state"] != "Vermont"])


def test_population_unknown_state_is_an_error(demo_inputs) -> None:
    allocations, population = demo_inputs
    typo = population.copy()
    typo.loc[0, "state"] = "Alabamma"
    with pytest.raises(UnknownJurisdictionError, match="'Alabamma'"):
        people_per_dose(allocations, typo)
