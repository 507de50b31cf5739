"""Published source versions: a published table (or a slice of one) never goes back to older source data.

A load pins the source data it publishes (a raw download, a set of API pages) and when it was fetched.
Runs can publish out of order: a retry of a crashed run, or a slow run that read its source before
another run fetched newer data and published first. Each publisher therefore records, per published
unit, the version it reflects in a small table of its domain, and claims it inside the publishing
transaction before writing:

    CREATE TABLE <schema>.<versions> (<key columns> ..., source_version text NOT NULL,
                                      fetched_at timestamptz NOT NULL, published_at timestamptz NOT NULL,
                                      PRIMARY KEY (<key columns>))

``claim`` upserts the candidate's row only when it is not older than the recorded one. INSERT .. ON
CONFLICT DO UPDATE locks the conflicting row even when its WHERE is false, so two publishers of one
unit take turns and the later fetch wins whatever the commit order. An older candidate gets back the
newer version (``Superseded``) and must write nothing for that unit. A ``replay`` (an operator's choice
to load old data again) always claims.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from covid_lakehouse.lib.postgres import validate_identifier


@dataclass(frozen=True)
class SourceVersion:
    """The source data a load publishes: what it is (``identity``, e.g. a raw key or a run) and when it
    was fetched. ``replay``: publish it even over newer data (an operator replaying an old fetch)."""

    identity: str
    fetched_at: datetime
    replay: bool = False


@dataclass(frozen=True)
class Superseded:
    """The unit already reflects a newer fetch: nothing may be written for it."""

    identity: str
    fetched_at: datetime

    def __str__(self) -> str:
        return f"superseded by {self.identity} (fetched {self.fetched_at.isoformat()}): nothing written"


def claim(conn: psycopg.Connection, table: sql.Composable, key: Mapping[str, Any], version: SourceVersion,
          published_at: datetime, *, identity_column: str = "source_version",
          also_set: Mapping[str, Any] | None = None) -> Superseded | None:
    """Record ``version`` as the one the unit ``key`` (column -> value) reflects, in ``conn``'s open
    transaction; or return the newer version already recorded (the row stays locked until commit).

    ``identity_column``: where the table keeps ``version.identity`` (a table made before this module
    names it after its domain's identity, e.g. ny_testing's ``raw_key``). ``also_set`` (column -> value):
    more the unit records with its version, written only when the claim succeeds."""
    columns = [validate_identifier(c, what="version key column") for c in key]
    identity = validate_identifier(identity_column, what="version identity column")
    extra = {validate_identifier(c, what="version column"): v for c, v in (also_set or {}).items()}
    updated = [*extra, identity, "fetched_at", "published_at"]
    names = [*columns, *updated]
    claimed = conn.execute(sql.SQL(
        "INSERT INTO {t} AS v ({cols}) VALUES ({vals}) ON CONFLICT ({keys}) DO UPDATE SET {sets} "
        "WHERE v.fetched_at <= EXCLUDED.fetched_at OR %s RETURNING 1").format(
            t=table, cols=sql.SQL(", ").join(map(sql.Identifier, names)),
            vals=sql.SQL(", ").join(sql.Placeholder() * len(names)),
            keys=sql.SQL(", ").join(map(sql.Identifier, columns)),
            sets=sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in updated)),
        (*key.values(), *extra.values(), version.identity, version.fetched_at, published_at,
         version.replay)).fetchone()
    if claimed is not None:
        return None
    where = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in columns)
    recorded, fetched_at = conn.execute(sql.SQL("SELECT {}, fetched_at FROM {} WHERE {}").format(
        sql.Identifier(identity), table, where), tuple(key.values())).fetchone()
    return Superseded(recorded, fetched_at)
