"""Care sites: OMOP care_site rows with stable ids.

Reads ``source`` (care sites from PostgreSQL) and ``id_map_rows`` (the append-only id map); writes the
view ``id_map``, ``care_site_candidates`` (cleaned rows with their natural key) and ``care_site_ids``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.transform.session import connect, to_arrow


class CareSiteKeyError(ValueError):
    """Source care sites without a natural key, or several sharing one: they would get no
    care_site_id, or one between them."""


# Sites and keys named in the error (the rest are counted).
_NAMED = 5


@dataclass
class CareSiteBuild:
    care_site: pa.Table
    id_map_additions: pa.Table
    new_ids: int


def build_care_sites(source: pa.Table, id_map: pa.Table, *, now: datetime) -> CareSiteBuild:
    """Natural key: care_site_source_value (the site code), else the normalised name."""
    con = connect()
    con.register("source", source)
    con.register("id_map_rows", id_map)
    # A key appended twice by overlapping runs counts with its lowest id (see assign_ids). A NULL key
    # (appended before sites without a key were refused) would make every NOT IN below false.
    con.execute("CREATE VIEW id_map AS SELECT natural_key, min(id) AS id FROM id_map_rows WHERE natural_key IS NOT NULL "
                "GROUP BY natural_key")
    con.execute("""
        CREATE TABLE care_site_candidates AS
        SELECT care_site_id AS src_id, clean_text(care_site_name) AS name, clean_text(care_site_source_value) AS code,
               coalesce('code:' || upper(clean_text(care_site_source_value)),
                        'name:' || name_key(clean_text(care_site_name))) AS natural_key
        FROM source""")
    _refuse_unidentified(con)
    con.execute("""
        CREATE TABLE care_site_ids AS
        SELECT care_site_candidates.natural_key, m.id FROM care_site_candidates JOIN id_map m USING (natural_key)
        UNION ALL
        SELECT natural_key, (SELECT coalesce(max(id), 0) FROM id_map) + row_number() OVER (ORDER BY min(src_id))
        FROM care_site_candidates WHERE natural_key NOT IN (SELECT natural_key FROM id_map) GROUP BY natural_key""")
    care_site = to_arrow(con, """
        SELECT care_site_ids.id AS care_site_id, care_site_candidates.name AS care_site_name, care_site_candidates.code AS care_site_source_value
        FROM care_site_candidates LEFT JOIN care_site_ids USING (natural_key) ORDER BY care_site_id""", tables.CARE_SITE)
    additions = to_arrow(con, """
        SELECT natural_key, id, $now AS first_seen_at FROM care_site_ids
        WHERE natural_key NOT IN (SELECT natural_key FROM id_map) ORDER BY id""", tables.ID_MAP, {"now": now})
    return CareSiteBuild(care_site, additions, additions.num_rows)


def _refuse_unidentified(con) -> None:
    """A site code (else a normalised name) identifies one care site. A site with neither would get
    no care_site_id, two sharing one key would publish two rows with one care_site_id; the blocking
    check would stop either without saying why: stop here, before any id is reserved, naming the sites."""
    keyless = con.execute("SELECT list(src_id ORDER BY src_id)[1:$n], count(*) FROM care_site_candidates "
                          "WHERE natural_key IS NULL", {"n": _NAMED}).fetchone()
    if keyless[1]:
        raise CareSiteKeyError(
            f"{keyless[1]} care site(s) with neither a code (care_site_source_value) nor a name, e.g. care_site_id "
            f"{', '.join(map(str, keyless[0]))}: a care site is identified by its code, else by its name. Give each "
            "site a code or a name in the source.")
    shared = con.execute("""
        SELECT natural_key, list(coalesce(name, '(no name)') ORDER BY src_id)[1:$n], count(*), count(*) OVER ()
        FROM care_site_candidates WHERE natural_key IS NOT NULL
        GROUP BY natural_key HAVING count(*) > 1 ORDER BY natural_key LIMIT $n""", {"n": _NAMED}).fetchall()
    if shared:
        named = "; ".join(
            f"{key.split(':', 1)[0]} {key.split(':', 1)[1]!r}: {', '.join(map(repr, names))}"
            + (f" and {sites - len(names)} more" if sites > len(names) else "") for key, names, sites, _ in shared)
        raise CareSiteKeyError(
            f"{shared[0][3]} key(s) shared by several care sites ({named}): a care site is identified by its code "
            "(care_site_source_value; case ignored, runs of spaces collapsed), else by its normalised name, so these "
            "would share one care_site_id. Give each site its own code in the source.")
