"""The provider and care_site audits on hand-made staged tables (provider's as parquet files): each passes on good data and fails,
with useful metadata, on the defect it exists for."""

import dataclasses
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.checks import CARE_SITE_AUDITS, provider_audits
from covid_lakehouse.defs.omop.transform import Reconciliation

BALANCED = Reconciliation(source_rows=3, source_new=3, source_published=3, providers=3)


def _providers(ids, names, npis, care_sites, specialties) -> pa.Table:
    return tables.conform(pa.table({"provider_id": pa.array(ids, pa.int64()), "provider_name": names, "npi": npis,
                                    "care_site_id": pa.array(care_sites, pa.int64()),
                                    "specialty_concept_id": pa.array(specialties, pa.int32())}), tables.PROVIDER)


def _run(table: pa.Table, counts: Reconciliation = BALANCED, flags: pa.Table | None = None) -> dict:
    """The provider audits run on staged parquet files, as the asset stages its outputs."""
    with tempfile.TemporaryDirectory() as tmp:
        staged, flag_file = Path(tmp) / "provider.parquet", Path(tmp) / "flags.parquet"
        pq.write_table(table, staged)
        pq.write_table(flags if flags is not None else tables.FLAG.empty_table(), flag_file)
        audits = provider_audits(counts, [1, 2], [flag_file], max_share=0.5)
        return {a.name: a.fn([staged]) for a in audits}


GOOD = _providers([1, 2, 3], ["Ann Lee", "Bob Roe", "Cid Poe"], ["1234567893", None, "2000000008"], [1, None, 2],
                  [38004451, 38004477, 38004458])


def test_all_provider_audits_pass_on_good_data():
    assert all(result.passed for result in _run(GOOD).values())


def test_blocking_provider_audits_catch_their_defect():
    bad = _providers([1, 1, None], ["Ann Lee", "", None], ["1234567893", None, None], [1, 7, 2], [1, 1, 1])
    results = _run(bad)
    assert not results["provider_id_unique"].passed
    assert results["provider_id_unique"].metadata == {"duplicates": 1, "nulls": 1}
    assert not results["provider_name_not_null"].passed and results["provider_name_not_null"].metadata["missing"] == 2
    assert not results["care_site_fk_resolves"].passed
    assert results["care_site_fk_resolves"].metadata["examples"] == "7"


def test_reconciliation_fails_naming_the_unbalanced_equation():
    result = _run(GOOD, dataclasses.replace(BALANCED, providers=4))["counts_reconcile"]
    assert not result.passed
    assert result.description == "providers = published source rows + file-only providers"
    assert "UNBALANCED" in result.metadata["equations"].value


def test_warn_audits_report_check_digits_and_unmapped_specialties():
    flags = tables.conform(pa.table({"provider_id": pa.array([3], pa.int64()), "flag": ["npi_check_digit"],
                                     "value": ["2000000008"]}), tables.FLAG)
    results = _run(_providers([1, 2, 3], ["A", "B", "C"], ["1", "2", "3"], [1, 1, 1], [0, 0, 38004458]), flags=flags)
    assert not results["npi_check_digit"].passed
    assert results["npi_check_digit"].metadata == {"failing": 1, "share": 0.3333, "example_provider_ids": "3"}
    assert not results["specialty_mapped_share"].passed
    assert results["specialty_mapped_share"].metadata == {"mapped": 1, "share": 0.3333}


def test_care_site_audits():
    good = tables.conform(pa.table({"care_site_id": pa.array([1, 2], pa.int64()), "care_site_name": ["A", "B"]}),
                          tables.CARE_SITE)
    bad = tables.conform(pa.table({"care_site_id": pa.array([1, 1], pa.int64()), "care_site_name": ["A", None]}),
                         tables.CARE_SITE)
    assert all(a.fn(good).passed for a in CARE_SITE_AUDITS)
    assert not any(a.fn(bad).passed for a in CARE_SITE_AUDITS)
