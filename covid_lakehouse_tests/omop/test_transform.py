"""The harmonization rules on the seed's sample file and a small source, in memory (DuckDB over Arrow):
every case of docs/data-quality.md, stable ids across runs, change detection and reconciliation."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.landing import parse_landing_file
from covid_lakehouse.defs.omop.rules import load_specialty_map
from covid_lakehouse.defs.omop.transform import ProviderBuild, build_care_sites, build_providers
from covid_lakehouse_dev.seeds.omop import CARE_SITES, PLANTED, PROVIDER_COLUMNS, provider_rows
from covid_lakehouse_tests.omop.support import SAMPLE_CSV, rows_by

T0 = datetime(2024, 5, 1, 6, tzinfo=UTC)
SPECIALTIES = load_specialty_map()
CARE_SITE_SOURCE = pa.table({"care_site_id": pa.array(range(1, 9), pa.int64()),
                             "care_site_name": [n for n, _ in CARE_SITES],
                             "care_site_source_value": [c for _, c in CARE_SITES]})
CARE_SITE_IDS = {row["care_site_name"]: row["care_site_id"] for row in
                 build_care_sites(CARE_SITE_SOURCE, tables.ID_MAP.empty_table(), now=T0).care_site.to_pylist()}


def source_table(extra: list[tuple] = (), generated: int = 0, drop: tuple[int, ...] = ()) -> pa.Table:
    """The planted sample providers (ids 1..6), optional extra rows, optional clean generated rows."""
    rows = [dict(zip(PROVIDER_COLUMNS, r, strict=True)) for r in [*PLANTED, *extra]]
    table = pa.Table.from_pylist(rows, schema=pa.schema([(c, pa.string()) for c in PROVIDER_COLUMNS]))
    if generated:
        table = pa.concat_tables([table, provider_rows(generated + len(PLANTED), 0.0, 1).slice(len(PLANTED))])
    table = table.add_column(0, "provider_id", pa.array(range(1, table.num_rows + 1), pa.int64()))
    return table.filter(pc.invert(pc.is_in(table["provider_id"], pa.array(drop, pa.int64()))))


@dataclass
class Tenant:
    """The state a tenant's runs carry from one to the next (the Iceberg tables, in memory)."""

    files: list[tuple[str, str, datetime, bytes]] = field(default_factory=list)
    id_map: pa.Table = field(default_factory=tables.ID_MAP.empty_table)
    provenance: pa.Table = field(default_factory=tables.PROVENANCE.empty_table)
    processed: list[str] = field(default_factory=list)

    def drop(self, key: str, body: bytes, when: datetime) -> None:
        self.files.append((key, f"etag-{len(self.files)}", when, body))

    def run(self, source: pa.Table, now: datetime = T0, duplicate_rows: bool = False) -> ProviderBuild:
        rows, manifest = [], []
        for key, etag, when, body in self.files:
            parsed = parse_landing_file(key, body)
            info = {"object_key": key, "etag": etag, "object_last_modified": when, "ingested_at": when}
            rows += [{**r, **info} for r in parsed.rows]
            manifest.append({**info, "status": "rejected" if parsed.reject_reason else "loaded",
                             "reason": parsed.reject_reason, "detail": parsed.detail})
        landing = tables.conform(pa.Table.from_pylist(rows), tables.LANDING_ROW) if rows else \
            tables.LANDING_ROW.empty_table()
        if duplicate_rows:  # a retried ingestion appended the same rows twice
            landing = pa.concat_tables([landing, landing])
        build = build_providers(
            source=source, source_object="postgres:src.provider", care_sites=build_care_sites(
                CARE_SITE_SOURCE, tables.ID_MAP.empty_table(), now=T0).care_site,
            landing_rows=landing, landing_files=tables.conform(pa.Table.from_pylist(manifest), tables.LANDING_FILE)
            if manifest else tables.LANDING_FILE.empty_table(),
            id_map=self.id_map, previous_provenance=self.provenance, processed_files=self.processed,
            specialties=SPECIALTIES, now=now)
        assert build.counts.balanced, build.counts.equations()
        self.id_map = pa.concat_tables([self.id_map, build.table("id_map_additions")])
        self.provenance = build.table("provenance")
        self.processed += build.run_files
        return build


def by_npi(build: ProviderBuild) -> dict:
    return rows_by(build.table("provider"), "npi")


def flags(build: ProviderBuild, flag: str) -> list[dict]:
    return [f for f in build.table("flags").to_pylist() if f["flag"] == flag]


@pytest.fixture
def sample() -> tuple[Tenant, ProviderBuild]:
    tenant = Tenant()
    tenant.drop("omop/landing/t/E4_sample_providers.csv", SAMPLE_CSV, T0)
    return tenant, tenant.run(source_table())


def test_one_provider_under_three_name_variants_is_one_provider_with_the_system_of_record_name(sample):
    _, build = sample
    john = by_npi(build)["1234567890"]
    assert john["provider_name"] == "John Doe" and john["provider_id"] == 1
    assert john["provider_type_concept_id"] == 32817  # known to the EHR (the source database)
    files = [p for p in build.table("provenance").to_pylist() if p["provider_id"] == 1 and p["source_system"] == "client_file"]
    assert [(p["source_key"], p["id_source"]) for p in files] == [("001", "JD-NPI")]  # 3 rows, one provenance
    assert not [f for f in build.table("flags").to_pylist() if f["provider_id"] == 1 and f["flag"] == "value_conflict"]


def test_a_look_alike_with_another_npi_stays_a_separate_provider(sample):
    _, build = sample
    providers = by_npi(build)
    assert providers["3456789012"]["provider_name"] == "Johnathan Doe"
    assert providers["3456789012"]["provider_id"] != providers["1234567890"]["provider_id"]
    assert not [f for f in flags(build, "possible_duplicate") if f["value"] == "Johnathan Doe"]


def test_a_row_without_any_name_is_quarantined_with_its_record(sample):
    _, build = sample
    (row,) = [q for q in build.table("quarantine").to_pylist() if q["source_system"] == "client_file"]
    assert row["reason"] == "missing_provider_name" and row["source_key"] == "9"  # line 9 of the file
    assert '"ProviderID":"006"' in row["record"] and '"ProviderName":"NULL"' in row["record"]
    assert "7890123456" not in by_npi(build)


def test_null_npi_provider_is_kept_and_flagged_as_possible_duplicate_not_merged(sample):
    _, build = sample
    jane_s = rows_by(build.table("provider"), "provider_name")["Jane S."]
    jane_smith = by_npi(build)["2345678901"]
    assert jane_s["npi"] is None and jane_s["provider_id"] != jane_smith["provider_id"]
    (flag,) = flags(build, "possible_duplicate")
    assert (flag["provider_id"], flag["related_provider_id"], flag["other_value"]) == (
        jane_s["provider_id"], jane_smith["provider_id"], "Jane Smith")


def test_abbreviated_specialties_map_and_keep_their_source_value(sample):
    _, build = sample
    providers = by_npi(build)
    assert (providers["0123456789"]["specialty_concept_id"], providers["0123456789"]["specialty_source_value"]) == (
        38004456, "Int Med")  # Laura Taylor, SpecSource is "Int Med" too
    assert providers["3456789018"]["specialty_concept_id"] == 38004458  # Neuro
    assert providers["4567890127"]["specialty_concept_id"] == 38004452  # Derma
    assert providers["2345678909"]["specialty_concept_id"] == 38004477  # Peds
    assert not flags(build, "specialty_unmapped")


def test_site_name_variants_resolve_to_the_care_site(sample):
    _, build = sample
    providers = by_npi(build)
    assert providers["8901234567"]["care_site_id"] == CARE_SITE_IDS["Metro Medical Center"]  # "Metro Med", gap fill
    assert providers["6789012345"]["care_site_id"] == CARE_SITE_IDS["North Health Institute"]
    assert providers["3456789018"]["care_site_id"] == CARE_SITE_IDS["Eastside Clinic"]
    assert not flags(build, "care_site_unmapped")


def test_zero_padded_ids_and_npis_keep_their_zeros(sample):
    _, build = sample
    laura = by_npi(build)["0123456789"]
    assert laura["provider_source_value"] == "LT010"
    (prov,) = [p for p in build.table("provenance").to_pylist() if p["provider_id"] == laura["provider_id"]]
    assert (prov["source_key"], prov["id_source"], prov["source_object"]) == (
        "009", "LT-NPI", "omop/landing/t/E4_sample_providers.csv")


def test_npis_failing_the_check_digit_are_flagged_and_kept(sample):
    _, build = sample
    flagged = {f["value"] for f in flags(build, "npi_check_digit")}
    file_npis = {"1234567890", "2345678901", "3456789012", "6789012345", "8901234567", "9012345678", "0123456789",
                 "2345678909", "3456789018", "4567890127"}
    assert file_npis <= flagged and file_npis <= set(by_npi(build))
    assert "1234567802" not in flagged  # Kevin Garcia's NPI in the source is valid


def test_the_files_fill_the_gaps_of_the_system_of_record(sample):
    _, build = sample
    jane = by_npi(build)["2345678901"]
    assert (jane["specialty_concept_id"], jane["specialty_source_value"]) == (38004477, "Pediatrics")
    assert jane["provider_type_concept_id"] == 32817


def test_disagreements_keep_the_system_of_record_value_and_record_both(sample):
    _, build = sample
    providers = by_npi(build)
    emily, kevin = providers["6789012345"], providers["1234567802"]
    assert emily["specialty_concept_id"] == 38004502 and emily["provider_name"] == "Emily Johnson"
    assert kevin["provider_name"] == "Kevin Garcia" and "1234567800" not in providers  # joined by source id KG011
    conflicts = {(f["provider_id"], f["column_name"]): f for f in flags(build, "value_conflict")}
    assert set(conflicts) == {(emily["provider_id"], "specialty_concept_id"), (kevin["provider_id"], "npi")}
    assert conflicts[(emily["provider_id"], "specialty_concept_id")]["value"] == "38004502 (Hematology/Oncology)"
    assert conflicts[(emily["provider_id"], "specialty_concept_id")]["other_value"] == "38004507 (Oncology)"
    npi = conflicts[(kevin["provider_id"], "npi")]
    assert (npi["value"], npi["other_value"], npi["source_key"]) == ("1234567802", "1234567800", "13")


def test_counts_reconcile_read_new_merged_quarantined(sample):
    _, build = sample
    c = build.counts
    assert (c.run_file_rows_read, c.run_file_rows_new, c.run_file_rows_merged, c.run_file_rows_quarantined) == (
        15, 6, 8, 1)
    assert (c.source_rows, c.source_new, c.source_published, c.providers) == (6, 6, 6, 12)


def test_a_rerun_keeps_every_id_and_sees_nothing_new(sample):
    tenant, first = sample
    second = tenant.run(source_table(), now=T0 + timedelta(days=1))
    assert second.table("provider").sort_by("provider_id").equals(first.table("provider").sort_by("provider_id"))
    c = second.counts
    assert (c.source_unchanged, c.source_new, c.source_changed, c.run_files, c.run_file_rows_read) == (6, 0, 0, 0, 0)
    assert second.table("id_map_additions").num_rows == 0


def test_changed_deleted_and_new_source_rows_are_told_apart_by_hash(sample):
    tenant, first = sample
    edited = source_table(extra=[("Amy Stone", "1234567893", "Cardiology", "City Hospital", "AS100", "Cardiology",
                                  "AS-NPI")], drop=(5,))
    edited = edited.set_column(4, "care_site", pc.if_else(pc.equal(edited["provider_id"], 3),
                                                          "Village Clinic", edited["care_site"]))
    later = T0 + timedelta(days=1)
    build = tenant.run(edited, now=later)
    c = build.counts
    assert (c.source_new, c.source_changed, c.source_unchanged, c.source_deleted) == (1, 1, 4, 1)
    prov = {p["source_key"]: p for p in build.table("provenance").to_pylist() if p["source_system"] == "postgres"}
    assert prov["3"]["last_changed_at"] == later and prov["1"]["last_changed_at"] == T0
    assert prov["5"]["status"] == "deleted" and prov["5"]["first_seen_at"] == T0
    old_ids = {r["npi"]: r["provider_id"] for r in first.table("provider").to_pylist()}
    new_ids = {r["npi"]: r["provider_id"] for r in build.table("provider").to_pylist()}
    assert all(new_ids[npi] == pid for npi, pid in old_ids.items() if npi in new_ids)
    assert new_ids["1234567893"] == max(old_ids.values()) + 1  # a new id, never a reused one


def test_a_file_only_provider_keeps_its_id_when_it_appears_in_the_source(sample):
    tenant, first = sample
    chris_id = by_npi(first)["9012345678"]["provider_id"]
    build = tenant.run(source_table(extra=[("Christopher Davis", "9012345678", "General Practice", "City Hospital",
                                            "CD009", "General Practice", "CD-NPI")]))
    chris = by_npi(build)["9012345678"]
    assert chris["provider_id"] == chris_id and chris["provider_name"] == "Christopher Davis"
    assert chris["provider_type_concept_id"] == 32817


def test_new_files_merge_into_known_providers_and_count_only_their_rows(sample):
    tenant, first = sample
    tenant.drop("omop/landing/t/day2.json", (
        b'[{"ProviderName": "Chris Davis", "ProviderID": "008", "NPI": "9012345678", "Specialty": "General Practice"},'
        b' {"ProviderName": "Nora Quinn", "ProviderID": "014", "NPI": "1234567893", "SiteName": "Downtown Hlth"}]'),
        T0 + timedelta(days=1))
    build = tenant.run(source_table())
    c = build.counts
    assert (c.run_files, c.run_file_rows_read, c.run_file_rows_new, c.run_file_rows_merged) == (1, 2, 1, 1)
    assert by_npi(build)["9012345678"]["provider_id"] == by_npi(first)["9012345678"]["provider_id"]
    nora = by_npi(build)["1234567893"]
    assert nora["care_site_id"] == CARE_SITE_IDS["Downtown Health"]
    assert nora["provider_id"] == max(r["provider_id"] for r in first.table("provider").to_pylist()) + 1


def test_a_nameless_source_row_takes_its_name_from_a_file_and_is_quarantined_without_one():
    tenant = Tenant()
    tenant.drop("f.csv", b"ProviderName,ProviderID,NPI\nAnn Lee,1,1234567893\n", T0)
    build = tenant.run(source_table(extra=[("NULL", "1234567893", None, None, "AL1", None, None),
                                           ("  ", "2000000008", None, None, "XX1", None, None)]))
    assert by_npi(build)["1234567893"]["provider_name"] == "Ann Lee"
    (quarantined,) = [q for q in build.table("quarantine").to_pylist() if q["source_system"] == "postgres"]
    assert quarantined["reason"] == "missing_provider_name" and quarantined["source_key"] == "8"
    statuses = {p["source_key"]: p["status"] for p in build.table("provenance").to_pylist() if p["source_system"] == "postgres"}
    assert statuses["8"] == "quarantined" and statuses["7"] == "published"


def test_unusable_rows_are_quarantined_with_reason_codes():
    tenant = Tenant()
    tenant.drop("bad.csv", b"ProviderName,ProviderID,NPI,SourceID\n"
                           b"Ann Lee,,12345,\n"  # malformed NPI and no other identifier
                           b"Bob Roe,B1,1234567893,S9\n"
                           b"Bob Roe,B2,2000000008,S9\n"
                           b"Bo Roe,,NULL,S9\n"  # S9 belongs to two NPIs: ambiguous
                           b"Cid Poe,C1,12-3\n"  # wrong field count
                           b"Dee Fox,D1,99,\n", T0)  # malformed NPI, but a client id: kept and flagged
    tenant.drop("missing.csv", b"ProviderName,Specialty\nEve,Peds\n", T0)
    build = tenant.run(source_table())
    reasons = {(q["source_object"], q["source_key"]): q["reason"] for q in build.table("quarantine").to_pylist()}
    assert reasons == {("bad.csv", "2"): "no_identifier", ("bad.csv", "5"): "ambiguous_match",
                       ("bad.csv", "6"): "wrong_field_count", ("missing.csv", None): "missing_columns"}
    (dee,) = [p for p in build.table("provider").to_pylist() if p["provider_name"] == "Dee Fox"]
    assert dee["npi"] is None
    assert [(f["provider_id"], f["other_value"]) for f in flags(build, "npi_malformed")] == [(dee["provider_id"], "99")]


def test_rows_appended_twice_by_a_retried_ingestion_count_once():
    tenant = Tenant()
    tenant.drop("f.csv", SAMPLE_CSV, T0)
    build = tenant.run(source_table(), duplicate_rows=True)
    assert build.counts.file_rows == 15 and build.table("provider").num_rows == 12


def test_source_only_run_at_a_few_hundred_providers_balances_and_keeps_the_source_order():
    build = Tenant().run(source_table(generated=300))
    assert build.table("provider").num_rows == 306 and build.counts.source_published == 306
    assert sorted(zip(build.table("provider")["provider_id"].to_pylist(), build.table("provider")["provider_source_value"].to_pylist(),
                      strict=True))[:6] == [(i + 1, row[4]) for i, row in enumerate(PLANTED)]  # source order
    assert sorted(build.table("provider")["provider_id"].to_pylist()) == list(range(1, 307))
    assert not build.table("quarantine").num_rows


def test_a_tenant_without_any_provider_publishes_nothing_and_flags_nothing():
    """No source row and no file: the provider output has no batch, so the NPI check's (empty) table comes
    from the same check over none of its rows; every output is empty, the counts balance."""
    build = Tenant().run(source_table().slice(0, 0))
    assert build.rows == {"provider": 0, "provenance": 0, "quarantine": 0, "flags": 0, "id_map_additions": 0}
    assert build.table("flags").schema == tables.FLAG and build.counts.providers == 0
