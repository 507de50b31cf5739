"""The provider audits share one DuckDB session and one query over the staged files (a session and a
scan per audit were a large part of a small tenant's fixed cost), and still answer for exactly the
files each receives."""

import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from covid_lakehouse.defs.omop import checks, tables
from covid_lakehouse.defs.omop.transform import Reconciliation


def _providers(ids, names, care_sites) -> pa.Table:
    return tables.conform(pa.table({"provider_id": pa.array(ids, pa.int64()), "provider_name": names,
                                    "npi": ["1234567893"] * len(ids), "care_site_id": pa.array(care_sites, pa.int64()),
                                    "specialty_concept_id": pa.array([38004451] * len(ids), pa.int32())}),
                          tables.PROVIDER)


def test_the_provider_audits_open_one_session_and_answer_for_the_files_they_receive(monkeypatch):
    sessions = []
    real = checks.connect

    def counted():
        sessions.append(real())
        return sessions[-1]

    monkeypatch.setattr(checks, "connect", counted)
    counts = Reconciliation(source_rows=2, source_new=2, source_published=2, providers=2)
    with tempfile.TemporaryDirectory() as tmp:
        good, bad, flags = Path(tmp) / "good.parquet", Path(tmp) / "bad.parquet", Path(tmp) / "flags.parquet"
        pq.write_table(_providers([1, 2], ["Ann", "Bob"], [1, 2]), good)
        pq.write_table(_providers([3, 3], ["Cid", ""], [1, 9]), bad)
        pq.write_table(tables.conform(pa.table({"provider_id": pa.array([2], pa.int64()), "flag": ["npi_check_digit"],
                                                "value": ["x"]}), tables.FLAG), flags)
        audits = checks.provider_audits(counts, [1, 2], [flags], max_share=0.5)
        on_good = {a.name: a.fn([good]) for a in audits}
        assert len(sessions) == 1  # six audits, one session
        assert all(r.passed for name, r in on_good.items() if name != "npi_check_digit")
        assert on_good["npi_check_digit"].metadata == {"failing": 1, "share": 0.5, "example_provider_ids": "2"}
        # the same audits on other staged files: their figures, not the first files'
        on_bad = {a.name: a.fn([bad]) for a in audits}
        assert len(sessions) == 2
        assert on_bad["provider_id_unique"].metadata == {"duplicates": 1, "nulls": 0}
        assert on_bad["provider_name_not_null"].metadata == {"missing": 1}
        assert on_bad["care_site_fk_resolves"].metadata == {"dangling": 1, "examples": "9"}


def test_flags_it_cannot_read_fail_the_warning_audit_alone():
    """Only npi_check_digit (WARN) reads the transform's flag files: when they cannot be read, that audit
    fails with the reason and the blocking audits still answer from the staged files."""
    counts = Reconciliation(source_rows=2, source_new=2, source_published=2, providers=2)
    with tempfile.TemporaryDirectory() as tmp:
        good, flags = Path(tmp) / "good.parquet", Path(tmp) / "flags.parquet"
        pq.write_table(_providers([1, 2], ["Ann", "Bob"], [1, 2]), good)
        flags.write_bytes(b"not a parquet file")
        audits = checks.provider_audits(counts, [1, 2], [flags], max_share=0.5)
        outcomes = {}
        for audit in audits:
            try:
                outcomes[audit.name] = audit.fn([good]).passed
            except Exception as err:  # noqa: BLE001 - run_audits turns it into a failed audit
                outcomes[audit.name] = type(err).__name__
    assert isinstance(outcomes.pop("npi_check_digit"), str)  # it raised: the error's name, not a verdict
    assert all(outcomes[a.name] is True for a in audits if a.blocking)


def test_the_flag_files_are_read_once_whatever_staged_files_the_audits_receive():
    """The flags depend on the transform alone: audits answering for other staged files (a retried
    publish) do not read them again."""
    counts = Reconciliation(source_rows=2, source_new=2, source_published=2, providers=2)
    with tempfile.TemporaryDirectory() as tmp:
        good, other, flags = Path(tmp) / "good.parquet", Path(tmp) / "other.parquet", Path(tmp) / "flags.parquet"
        pq.write_table(_providers([1, 2], ["Ann", "Bob"], [1, 2]), good)
        pq.write_table(_providers([1, 2, 4], ["Ann", "Bob", "Dee"], [1, 2, 2]), other)
        pq.write_table(tables.conform(pa.table({"provider_id": pa.array([2], pa.int64()), "flag": ["npi_check_digit"],
                                                "value": ["x"]}), tables.FLAG), flags)
        audit = {a.name: a for a in checks.provider_audits(counts, [1, 2], [flags], max_share=0.5)}["npi_check_digit"]
        assert audit.fn([good]).metadata["failing"] == 1
        flags.write_bytes(b"not a parquet file any more")  # a second read would fail
        on_other = audit.fn([other])
    assert on_other.metadata == {"failing": 1, "share": 0.3333, "example_provider_ids": "2"}
