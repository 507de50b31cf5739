"""Passes over a tenant's rows the transform no longer makes (issue #18: a tenant's first run <= 2x its
floor), each checked on a small tenant by the plan DuckDB runs for the output's query: the id map's
additions are not sorted; the quarantine does not scan the source extract again for its nameless rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyarrow.parquet as pq

from covid_lakehouse.defs.omop.transform import build_providers, ids, quarantine, session
from covid_lakehouse_tests.omop.support import first_build_inputs

T0 = datetime(2024, 5, 1, 6, tzinfo=UTC)


def _plans_of(module, monkeypatch) -> list[str]:
    """The physical plans of the queries ``module`` writes with ``write_parquet`` (filled as it runs)."""
    plans, write = [], module.write_parquet

    def explained_write(con, query, schema, path, params=None, **kwargs):
        plan = con.execute(f"EXPLAIN {query}", session.used_params(query, params)).fetchall()[0][1]
        plans.append(plan.upper().replace(" ", "_"))  # an operator's name either way: "Order By", ORDER_BY
        return write(con, query, schema, path, params, **kwargs)

    monkeypatch.setattr(module, "write_parquet", explained_write)
    return plans


def test_the_id_map_additions_are_written_unsorted_with_the_same_keys(make_tenants, tmp_path, monkeypatch):
    inputs = first_build_inputs(make_tenants(providers=2_000, dirt_rate=0.05).tenant, tmp_path, T0)
    plans = _plans_of(ids, monkeypatch)
    build = build_providers(**inputs)

    (plan,) = plans
    # the map is read by key (lowest id per key), never in row order: sorting 2M keys by id cost ~0.5 s
    assert "ORDER_BY" not in plan and "TOP_N" not in plan, plan
    additions = build.table("id_map_additions").to_pylist()
    provider_ids = {r["provider_id"] for r in build.table("provider").to_pylist()}
    assert len({r["natural_key"] for r in additions}) == len(additions) == build.rows["id_map_additions"]
    assert {r["id"] for r in additions} == provider_ids  # every new provider's id keyed, nothing else


def test_the_quarantine_takes_nameless_source_rows_from_cleaning_without_scanning_the_extract(
        make_tenants, tmp_path, monkeypatch):
    inputs = first_build_inputs(make_tenants(providers=2_000, dirt_rate=0.05).tenant, tmp_path, T0)
    plans = _plans_of(quarantine, monkeypatch)
    build = build_providers(**inputs)

    (plan,) = plans
    # that scan read every column of every source row (~0.25 s at 2M providers) for a few rows
    assert "PARQUET" not in plan and "SOURCE.PARQUET" not in plan, plan
    source = {row["provider_id"]: row for row in pq.read_table(inputs["source"]).to_pylist()}
    nameless = [q for q in build.table("quarantine").to_pylist() if q["source_system"] == "postgres"]
    assert nameless  # the tenant has source rows without a name, so the plan had them to find
    quarantined = {p["source_key"] for p in build.table("provenance").to_pylist()
                   if p["source_system"] == "postgres" and p["status"] == "quarantined"}
    assert {row["source_key"] for row in nameless} == quarantined
    for row in nameless:
        assert row["reason"] == "missing_provider_name" and row["source_object"] == inputs["source_object"]
        assert row["detected_at"] == T0
        assert json.loads(row["record"]) == source[int(row["source_key"])]  # the raw row, every column
