"""The transform's numpy fast paths hold a bounded slice of a tenant's keys at a time (issue #18: the 8M
tenant's peak grew past the 2M one's by its whole-tenant id arrays), and slicing changes no output."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from covid_lakehouse.defs.omop.transform import build_providers, session
from covid_lakehouse_tests.omop.support import first_build_inputs

T0 = datetime(2024, 5, 1, 6, tzinfo=UTC)
OUTPUTS = ("provider", "provenance", "quarantine", "flags", "id_map_additions")
SLICE = 300


def _rerun_inputs(inputs: dict, first) -> dict:
    """A second run over the first's state, with the id map's keys recorded twice (as two overlapping
    runs leave them): the lowest-id-per-key path runs too."""
    id_map = first.table("id_map_additions")
    return {**inputs, "id_map": pa.concat_tables([id_map, id_map]), "previous_provenance": first.table("provenance"),
            "processed_files": first.run_files, "now": T0 + timedelta(days=1)}


def _builds(inputs: dict):
    first = build_providers(**inputs)
    return first, build_providers(**_rerun_inputs(inputs, first))


def _same(built, expected) -> None:
    assert built.counts == expected.counts and built.run_files == expected.run_files
    for name in OUTPUTS:
        got, want = built.table(name), expected.table(name)
        assert got.schema == want.schema and got.num_rows == built.rows[name], name
        assert sorted(got.to_pylist(), key=repr) == sorted(want.to_pylist(), key=repr), name


def test_the_numpy_fast_paths_hold_one_key_slice_at_a_time_and_change_no_output(make_tenants, tmp_path, monkeypatch):
    tenant = make_tenants(providers=2_000, dirt_rate=0.05).tenant
    inputs = first_build_inputs(tenant, tmp_path, T0)
    whole = _builds(inputs)

    held = []
    int_column, lookup_init = session.int_column, session.IdLookup.__init__

    def recording_int_column(con, query):
        values = int_column(con, query)
        held.append(("int_column", len(values)))
        return values

    def recording_lookup_init(self, *args, **kwargs):
        lookup_init(self, *args, **kwargs)
        held.append(("IdLookup", len(self.gids)))

    monkeypatch.setattr(session, "SLICE_ROWS", SLICE)
    monkeypatch.setattr(session, "int_column", recording_int_column)
    monkeypatch.setattr(session.IdLookup, "__init__", recording_lookup_init)
    sliced = _builds(inputs)

    for built, expected in zip(sliced, whole, strict=True):
        _same(built, expected)
    # ~2,000 providers in slices of about SLICE keys (by hash: a little uneven), never all at once
    assert held and max(n for _, n in held) < 1.5 * SLICE, held
    # every provider id loaded (and sorted) once in each run: one lookup serves the provider output and provenance
    assert sum(n for kind, n in held if kind == "IdLookup") == sum(b.rows["provider"] for b in whole)


def test_id_lookup_never_gives_a_null_gids_id_to_gid_0():
    """A NULL gid in provider_ids (a source row without provider_id) fetched into numpy reads as 0: taken
    as in order, gid 0 would get its id (review of h20xform)."""
    con = session.connect()
    try:
        con.execute("CREATE TABLE provider_ids AS SELECT * FROM (VALUES (-2::BIGINT, 20::BIGINT), (NULL, 99), (3, 30)) "
                    "t(gid, id)")
        lookup = session.IdLookup(con)
        assert lookup(pa.array([0, -2, 3, None], pa.int64())).to_pylist() == [None, 20, 30, None]
    finally:
        con.close()


def test_id_lookup_takes_provider_ids_in_any_row_order():
    """IdLookup uses provider_ids as it is when told it is in gid order (a first run writes it so; checked)
    and sorts it otherwise (a rerun's kept ids come first): the same ids either way, in every slice."""
    con = session.connect()
    try:
        gids = [-3, -1, 2, 5, 7, 11]
        for order in (gids, [7, -1, 11, 2, -3, 5]):
            con.execute("CREATE OR REPLACE TABLE provider_ids AS SELECT * FROM "
                        "(SELECT unnest($g::BIGINT[]) AS gid) t, LATERAL (SELECT t.gid * 10 + 1 AS id)", {"g": order})
            for parts in (1, 2):
                for part in range(parts):
                    for in_gid_order in (True, False):
                        lookup = session.IdLookup(con, part, parts, in_gid_order=in_gid_order)
                        assert lookup.gids.tolist() == sorted(lookup.gids.tolist())
                        found = lookup(pa.array(gids + [4, None], pa.int64())).to_pylist()
                        assert all(f in (None, g * 10 + 1) for f, g in zip(found[:len(gids)], gids, strict=True)) and found[-2:] == [None, None]
                        assert sum(f is not None for f in found) == len(lookup.gids)
    finally:
        con.close()


def test_id_lookup_refuses_a_provider_without_an_id():
    """A NULL id fetched into numpy would read as 0 (the mask dropped), the way a NULL gid did: every
    published provider has an id, so one without fails, named, rather than publishing id 0."""
    con = session.connect()
    try:
        con.execute("CREATE TABLE provider_ids AS SELECT * FROM (VALUES (-2::BIGINT, 20::BIGINT), (3, NULL), (4, 40)) "
                    "t(gid, id)")
        for in_gid_order in (True, False):
            with pytest.raises(ValueError, match=r"1 provider\(s\) without an id \(gid \[3\]"):
                session.IdLookup(con, in_gid_order=in_gid_order)
    finally:
        con.close()


def test_provider_ids_are_fetched_once_a_slice_in_the_order_settle_claims_knows(make_tenants, tmp_path, monkeypatch):
    """A first run's provider_ids is in gid order (settle_claims says so: taken as it is); a rerun's is not
    (its kept ids come first): fetched at once sorted, not first as it is only to find it unordered."""
    tenant = make_tenants(providers=2_000, dirt_rate=0.05).tenant
    inputs = first_build_inputs(tenant, tmp_path, T0)
    fetched, fetch = [], session.IdLookup._fetch

    def recording_fetch(con, query):
        fetched.append("ORDER BY" in query)
        return fetch(con, query)

    monkeypatch.setattr(session, "SLICE_ROWS", SLICE)
    monkeypatch.setattr(session.IdLookup, "_fetch", staticmethod(recording_fetch))
    first = build_providers(**inputs)
    in_order, fetched[:] = list(fetched), []
    build_providers(**_rerun_inputs(inputs, first))
    parts = -(-first.rows["provider"] // SLICE)
    assert in_order == [False] * parts  # each slice once, as it is: in gid order
    assert fetched == [True] * parts  # each slice once, sorted by DuckDB
