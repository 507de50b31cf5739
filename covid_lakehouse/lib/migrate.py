"""Versioned, ordered warehouse migrations: `covid-lakehouse migrate` (and at start-up in compose/k8s).

Each scope keeps its own ordered files ``NNNN_description.sql``: the platform's in
``covid_lakehouse/lib/migrations`` and each domain's in ``covid_lakehouse/defs/<domain>/migrations``
(found by path, so the platform never imports a domain). A migration runs in its own transaction
together with its row in ``ops.schema_migrations``, so it is applied completely or not at all; a
transaction-level advisory lock lets several processes start at once; an applied file whose content
changed is an error, not silently skipped. Iceberg tables evolve through Iceberg schema evolution
(LakehouseResource.ensure_table unions new columns).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

PACKAGE = Path(__file__).resolve().parent.parent
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_ID = 0x636F7669  # "covi": one migrator at a time per database


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    scope: str
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @functools.cached_property  # compared on every ensure_migrated: read and hashed once per process
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(roots: dict[str, Path] | None = None) -> list[Migration]:
    """Platform first, then domains alphabetically; versions ordered within a scope."""
    if roots is None:
        roots = {"platform": PACKAGE / "lib" / "migrations"}
        for folder in sorted((PACKAGE / "defs").glob("*/migrations")):
            roots[folder.parent.name] = folder
    found = []
    for scope, folder in roots.items():
        versions: dict[int, Path] = {}
        for path in sorted(folder.glob("*.sql")):
            match = _FILE.match(path.name)
            if not match:
                raise MigrationError(f"{path}: migration files are named NNNN_description.sql")
            version = int(match.group(1))
            if version in versions:
                raise MigrationError(f"{scope}: two migrations with version {version}: {versions[version].name}, {path.name}")
            versions[version] = path
            found.append(Migration(scope, version, match.group(2), path))
    return sorted(found, key=lambda m: (m.scope != "platform", m.scope, m.version))


@functools.cache
def _packaged() -> tuple[Migration, ...]:
    """The package's migrations, found once per process: ensure_migrated runs on every asset run."""
    return tuple(discover())


_CREATE_LEDGER = (
    "CREATE TABLE IF NOT EXISTS ops.schema_migrations (scope text NOT NULL, version int NOT NULL, "
    "name text NOT NULL, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), "
    "PRIMARY KEY (scope, version))"
)


def _apply_pending(conn: psycopg.Connection, migrations: list[Migration]) -> list[Migration]:
    """Apply each migration not yet recorded, each in its own transaction (a savepoint inside an open one)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        conn.execute("CREATE SCHEMA IF NOT EXISTS ops")
        conn.execute(_CREATE_LEDGER)
    applied_now = []
    for migration in migrations:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            row = conn.execute("SELECT checksum FROM ops.schema_migrations WHERE scope = %s AND version = %s",
                               (migration.scope, migration.version)).fetchone()
            if row:
                if row[0] != migration.checksum:
                    raise MigrationError(
                        f"{migration.scope} migration {migration.version:04d}_{migration.name} was changed after "
                        "it was applied; write a new migration instead")
                continue
            conn.execute(migration.sql)
            conn.execute("INSERT INTO ops.schema_migrations (scope, version, name, checksum) VALUES (%s, %s, %s, %s)",
                         (migration.scope, migration.version, migration.name, migration.checksum))
            applied_now.append(migration)
    return applied_now


def migrate(dsn: str, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply every pending migration; returns those applied now. Idempotent."""
    migrations = discover() if migrations is None else migrations
    with psycopg.connect(dsn) as conn:
        return _apply_pending(conn, migrations)


def ensure_migrated(conn: psycopg.Connection, scope: str, migrations: list[Migration] | None = None) -> list[Migration]:
    """Called by a domain before it touches its tables: a no-op (one query, no lock) when its scope is up
    to date, else applies the platform's and the scope's pending migrations on ``conn``. So an asset run
    in-process (tests, `dagster dev` without `covid-lakehouse migrate`) still finds its tables, while the
    DDL itself lives only in migration files."""
    wanted = [m for m in (_packaged() if migrations is None else migrations) if m.scope in ("platform", scope)]
    recorded: dict[tuple[str, int], str] = {}
    if conn.execute("SELECT to_regclass('ops.schema_migrations') IS NOT NULL").fetchone()[0]:
        recorded = {(s, v): c for s, v, c in conn.execute(
            "SELECT scope, version, checksum FROM ops.schema_migrations WHERE scope IN ('platform', %s)", (scope,))}
    if all(recorded.get((m.scope, m.version)) == m.checksum for m in wanted):
        return []
    return _apply_pending(conn, wanted)
