"""Versioned, ordered warehouse migrations: `covid-lakehouse migrate` (and at start-up in compose/k8s).

Each scope keeps its own ordered files ``NNNN_description.sql``: the platform's in
``covid_lakehouse/lib/migrations`` and each domain's in ``covid_lakehouse/defs/<domain>/migrations``
(found by path, so the platform never imports a domain). A migration runs in its own transaction
together with its row in ``ops.schema_migrations``, so it is applied completely or not at all; a
transaction-level advisory lock lets several processes start at once; an applied file whose content
changed is an error, not silently skipped. A recorded migration whose schemas or tables are gone (dropped
by hand) is an error too: never re-applied onto an unknown state. Iceberg tables evolve through Iceberg schema evolution
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
# What a migration creates and drops, read from its SQL outside comments and $$-quoted bodies (a DO
# block's DDL may be conditional): schemas, and tables, sequences and views named schema.name.
_IDENT = r'"?([a-z_][a-z0-9_]*)"?'
_CREATES = re.compile(r"\bCREATE\s+(?:UNLOGGED\s+)?(SCHEMA|TABLE|SEQUENCE|(?:MATERIALIZED\s+)?VIEW)\s+"
                      rf"(?:IF\s+NOT\s+EXISTS\s+)?{_IDENT}(?:\.{_IDENT})?", re.IGNORECASE)
_DROPS = re.compile(r"\bDROP\s+(SCHEMA|TABLE|SEQUENCE|(?:MATERIALIZED\s+)?VIEW)\s+(?:IF\s+EXISTS\s+)?"
                    rf"{_IDENT}(?:\.{_IDENT})?", re.IGNORECASE)
_RENAMES = re.compile(rf"\bALTER\s+(?:TABLE|SEQUENCE|VIEW)\s+(?:IF\s+EXISTS\s+)?{_IDENT}\.{_IDENT}\s+RENAME\s+TO\s+{_IDENT}",
                      re.IGNORECASE)
_NOT_DDL = re.compile(r"--[^\n]*|/\*.*?\*/|\$([a-z_]*)\$.*?\$\1\$", re.IGNORECASE | re.DOTALL)


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

    @functools.cached_property
    def ddl(self) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """(created, dropped) objects as ("schema" | "relation", name); a rename drops and creates."""
        text = _NOT_DDL.sub(" ", self.sql)
        created, dropped = set(), set()
        for found, target in ((_CREATES.finditer(text), created), (_DROPS.finditer(text), dropped)):
            for match in found:
                kind, first, second = match.groups()
                if kind.upper() == "SCHEMA":
                    target.add(("schema", first.lower()))
                elif second:  # unqualified names depend on search_path: not checked
                    target.add(("relation", f"{first}.{second}".lower()))
        for schema, old, new in (m.groups() for m in _RENAMES.finditer(text)):
            dropped.add(("relation", f"{schema}.{old}".lower()))
            created.add(("relation", f"{schema}.{new}".lower()))
        return created, dropped


def expected_objects(migrations: list[Migration]) -> dict[tuple[str, str], Migration]:
    """Each object the migrations leave behind, with the migration that created it: created, and not
    dropped by a later migration of its scope."""
    objects: dict[tuple[str, str], Migration] = {}
    for migration in sorted(migrations, key=lambda m: (m.scope, m.version)):
        created, dropped = migration.ddl
        for obj in dropped:
            objects.pop(obj, None)
        for obj in created:
            objects[obj] = migration
    return objects


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
    objects = expected_objects(wanted)
    recorded: dict[tuple[str, int], str] = {}
    missing: list[tuple[str, str]] = []
    if conn.execute("SELECT to_regclass('ops.schema_migrations') IS NOT NULL").fetchone()[0]:
        # One query: the ledger rows, and which objects of a recorded migration are gone.
        kinds, names = [k for k, _ in objects], [n for _, n in objects]
        scopes, versions = [m.scope for m in objects.values()], [m.version for m in objects.values()]
        rows = conn.execute(
            "SELECT l.scope, l.version, l.checksum, (SELECT array_agg(o.kind || ':' || o.name) "
            "FROM unnest(%(kinds)s::text[], %(names)s::text[], %(scopes)s::text[], %(versions)s::int[]) "
            "AS o(kind, name, scope, version) WHERE o.scope = l.scope AND o.version = l.version AND CASE o.kind "
            "WHEN 'schema' THEN NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = o.name) "
            "ELSE to_regclass(o.name) IS NULL END) FROM ops.schema_migrations l WHERE l.scope IN ('platform', %(scope)s)",
            {"kinds": kinds, "names": names, "scopes": scopes, "versions": versions, "scope": scope}).fetchall()
        recorded = {(s, v): c for s, v, c, _ in rows}
        missing = [tuple(item.split(":", 1)) for *_, gone in rows for item in gone or []]
    if missing:
        raise _missing_objects_error(missing, objects)
    if all(recorded.get((m.scope, m.version)) == m.checksum for m in wanted):
        return []
    return _apply_pending(conn, wanted)


def _missing_objects_error(missing: list[tuple[str, str]], objects: dict[tuple[str, str], Migration]) -> MigrationError:
    gone = sorted(missing, key=lambda obj: (objects[obj].scope, objects[obj].version, obj))
    scopes = sorted({objects[obj].scope for obj in gone})
    listed = "; ".join(f"{kind} {name} (created by {objects[(kind, name)].scope} migration "
                       f"{objects[(kind, name)].version:04d}_{objects[(kind, name)].name})" for kind, name in gone)
    return MigrationError(
        f"ops.schema_migrations records migrations as applied whose objects are gone: {listed}. Not re-applying "
        "onto an unknown state. Restore them from a backup; or, to start the domain over empty, drop its "
        f"remaining schemas and forget its records (DELETE FROM ops.schema_migrations WHERE scope IN "
        f"({', '.join(repr(s) for s in scopes)})), then run `covid-lakehouse migrate`.")
