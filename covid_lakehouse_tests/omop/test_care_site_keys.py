"""A care site is identified by its code, else its normalised name (docs/data-quality.md): sites the
key cannot tell apart, or without any key, are refused naming them, before any id is reserved."""

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.transform import CareSiteKeyError, build_care_sites

NOW = datetime(2026, 12, 6, tzinfo=UTC)


def _sites(*rows) -> pa.Table:
    return pa.table({"care_site_id": pa.array([r[0] for r in rows], pa.int64()),
                     "care_site_name": pa.array([r[1] for r in rows], pa.string()),
                     "care_site_source_value": pa.array([r[2] for r in rows], pa.string())})


def _ids(build) -> dict:
    return dict(zip(build.care_site["care_site_name"].to_pylist(), build.care_site["care_site_id"].to_pylist(),
                    strict=True))


def test_sites_without_code_or_name_are_refused_naming_them():
    with pytest.raises(CareSiteKeyError, match=r"2 care site\(s\) with neither a code .* care_site_id 4, 7"):
        build_care_sites(_sites((1, "City Hospital", None), (4, "N/A", None), (7, "", "-")), tables.ID_MAP.empty_table(),
                         now=NOW)


def test_sites_sharing_a_key_are_refused_with_their_names_capped():
    rows = [(i, f"Clinic {i}", "unk") for i in range(1, 9)] + [(20, "Metro Med", None), (21, " metro  med", None)]
    with pytest.raises(CareSiteKeyError) as refused:
        build_care_sites(_sites(*rows), tables.ID_MAP.empty_table(), now=NOW)
    message = str(refused.value)
    assert message.startswith("2 key(s) shared by several care sites (")
    assert "code 'UNK': 'Clinic 1', 'Clinic 2', 'Clinic 3', 'Clinic 4', 'Clinic 5' and 3 more" in message
    assert "name 'metro med': 'Metro Med', 'metro med'" in message


def test_names_alike_with_different_codes_and_codes_differing_in_inner_spaces_are_different_sites():
    build = build_care_sites(_sites((1, "City Hospital", "A1"), (2, "city  hospital", "B2"), (3, "North", "CL1"),
                                    (4, "South", "CL 1")), tables.ID_MAP.empty_table(), now=NOW)
    assert sorted(_ids(build).values()) == [1, 2, 3, 4]


def test_a_null_key_left_in_the_id_map_does_not_stop_new_sites_getting_ids():
    """Before sites without a key were refused, a run appended (NULL, id) to care_site_id_map; NOT IN
    over it was never true, so no new site got an id again."""
    poisoned = tables.conform(pa.Table.from_pylist([{"natural_key": None, "id": 1, "first_seen_at": NOW},
                                                    {"natural_key": "code:A1", "id": 2, "first_seen_at": NOW}]),
                              tables.ID_MAP)
    build = build_care_sites(_sites((1, "City Hospital", "A1"), (2, "New Site", "N1")), poisoned, now=NOW)
    assert _ids(build) == {"City Hospital": 2, "New Site": 3}
    assert build.id_map_additions["natural_key"].to_pylist() == ["code:N1"]
