"""settle_claims on claims made by hand: which provider keeps a contested id of the map."""

from __future__ import annotations

import duckdb

from covid_lakehouse.defs.omop.transform.ids import settle_claims


def test_a_losing_claim_without_a_provider_id_leaves_the_other_kept_ids_alone() -> None:
    """A source row with a NULL provider_id (gid NULL) whose NPI is in the map loses id 5 to provider 1
    (same strength, the NULL gid sorts last); provider 2 claims id 7 alone: both keep their ids. The NULL-gid
    claim keeps no id: none is given twice. Such a source is kept from publishing by the provider_id_unique check; the transform still must
    not take every kept id away (the code before: ``gid NOT IN (SELECT gid FROM losers)`` was NULL for
    every claim once a loser's gid was NULL, and every provider got a new id)."""
    con = _settled("('pg:1', 5), ('npi:1234567893', 5), ('npi:1111111111', 7)",
                   "(1, NULL, 5, NULL), (NULL, 1234567893, 5, NULL), (2, 1111111111, 7, NULL)")
    ids = dict(con.execute("SELECT gid, id FROM provider_ids").fetchall())
    assert (ids[1], ids[2]) == (5, 7)
    # and the losing NULL-gid claim does not keep id 5 beside provider 1 (NOT EXISTS alone let it)
    assert con.execute("SELECT id FROM provider_ids WHERE gid IS NULL AND id IS NOT NULL").fetchall() == []


def test_a_stronger_claim_without_a_provider_id_takes_no_id_away() -> None:
    """The NULL-gid claim holds id 5 by its key (strength 0), provider 1 by its previous id (strength 1):
    provider 1 keeps id 5 (the code before let the NULL-gid claim win the contest and keep nothing, and
    provider 1 got a new id)."""
    con = _settled("('pg:1', 5), ('npi:1234567893', 5)", "(1, NULL, NULL, 5), (NULL, 1234567893, 5, NULL)")
    assert con.execute("SELECT gid, id FROM provider_ids WHERE id IS NOT NULL ORDER BY gid").fetchall() == [(1, 5)]


def _settled(id_map: str, source_claims: str) -> duckdb.DuckDBPyConnection:
    """settle_claims over the id map's rows (natural_key, id) and the source rows' claims (gid,
    key_npi_num, key_id, previous_id), given as SQL VALUES; no file claims."""
    con = duckdb.connect()
    con.execute("CREATE TABLE id_map (natural_key VARCHAR, id BIGINT)")
    con.execute(f"INSERT INTO id_map VALUES {id_map}")
    con.execute("CREATE TABLE source_claims (gid BIGINT, key_npi_num BIGINT, key_id BIGINT, previous_id BIGINT)")
    con.execute(f"INSERT INTO source_claims VALUES {source_claims}")
    con.execute("CREATE TABLE file_keys (gid BIGINT, key VARCHAR, strength INTEGER, mapped_id BIGINT)")
    con.execute("CREATE TABLE chosen (gid BIGINT, founding_fid BIGINT)")
    settle_claims(con)
    return con
