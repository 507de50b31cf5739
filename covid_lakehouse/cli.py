"""`covid-lakehouse`: run, inspect and clean the product on one machine."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time

from covid_lakehouse import runtime
from covid_lakehouse.lib.embedded import EmbeddedStack, pg_bin
from covid_lakehouse.lib.settings import (
    ServiceSettings,
    exported,
    external_services_configured,
    project_home,
    redact_text,
)


def _settings(start: bool = True) -> ServiceSettings:
    if external_services_configured():
        return ServiceSettings.from_env()
    return EmbeddedStack(project_home()).start() if start else ServiceSettings.from_env()


def cmd_env(_: argparse.Namespace) -> int:
    """Print export lines (the embedded stack is started and left running if needed)."""
    for name, value in _settings().as_env().items():
        print(f"export {name}={_single_quoted(value)}")
    return 0


def _single_quoted(value: str) -> str:
    """Shell-safe: inside '...' nothing is special; an embedded ' closes, is escaped and reopens."""
    return "'" + value.replace("'", "'\\''") + "'"


def psql_invocation(dsn: str) -> tuple[list[str], dict[str, str]]:
    """psql's arguments without the password (a command line is visible to every user in `ps`) and the
    environment that carries it (PGPASSWORD, read only by psql itself)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from covid_lakehouse.lib.postgres import check_dsn

    params = conninfo_to_dict(check_dsn(dsn))
    password = params.pop("password", None)
    env = {"PGPASSWORD": str(password)} if password else {}
    return [make_conninfo(**params)], env


def cmd_psql(args: argparse.Namespace) -> int:
    settings = _settings()
    psql = pg_bin("psql")
    argv, env = psql_invocation(settings.warehouse_dsn)
    extra = args.psql_args[1:] if args.psql_args[:1] == ["--"] else args.psql_args  # `psql -- -c ...`
    with exported(env):
        os.execv(str(psql), [str(psql), *argv, *extra])
    return 0  # not reached


TABLE_REF = re.compile(r"\b(warehouse|lakehouse)\.([a-z_][a-z0-9_]*)\.([a-z_][a-z0-9_]*)\b")


def cmd_sql(args: argparse.Namespace) -> int:
    """Query warehouse and lakehouse tables with DuckDB: name them warehouse.<schema>.<table> and
    lakehouse.<namespace>.<table>. DuckDB cannot reach S3 or PostgreSQL offline, so each referenced
    table is read with pyarrow/psycopg and handed to DuckDB as Arrow."""
    from dagster_duckdb import DuckDBResource
    from psycopg import sql as pgsql

    from covid_lakehouse.lib.lakehouse import LakehouseResource
    from covid_lakehouse.lib.postgres import PostgresResource, connect

    settings = _settings()
    os.environ.update(settings.as_env())
    with DuckDBResource(database=":memory:").get_connection() as duck:
        for catalog in ("warehouse", "lakehouse"):
            duck.execute(f"ATTACH ':memory:' AS {catalog}")
        for catalog, schema, table in sorted(set(TABLE_REF.findall(args.query))):
            if catalog == "lakehouse":
                data = LakehouseResource.from_settings(settings).read(schema, table)
            else:
                with connect(settings.warehouse_dsn) as conn:
                    data = PostgresResource.fetch_arrow(conn, pgsql.SQL("SELECT * FROM {}").format(
                        pgsql.Identifier(schema, table)))
            duck.register("_incoming", data)
            duck.execute(f'CREATE SCHEMA IF NOT EXISTS {catalog}."{schema}"')
            duck.execute(f'CREATE TABLE {catalog}."{schema}"."{table}" AS SELECT * FROM _incoming')
            duck.unregister("_incoming")
        result = duck.execute(args.query).fetchdf()
    print(result.to_string(index=False, max_rows=args.max_rows))
    return 0


def cmd_demo(_: argparse.Namespace) -> int:
    import dagster as dg

    started = time.monotonic()
    with runtime.services(stand_ins=True, command="demo") as svc:
        runtime.prepare_dagster_home(svc.home, svc.settings)
        from covid_lakehouse.definitions import code_location

        with dg.DagsterInstance.get() as instance:
            report = runtime.run_demo(code_location(), instance)
        rows = runtime.table_row_counts(svc.settings) + runtime.lakehouse_row_counts(svc.settings)
        _print_demo_summary(svc, report, rows, time.monotonic() - started)
    return 0 if report.ok else 1


def _print_demo_summary(svc: runtime.Services, report: runtime.DemoReport, rows, seconds: float) -> None:
    print("\n=== covid_lakehouse demo ===")
    print(f"runs: {sum(ok for _, ok in report.runs)}/{len(report.runs)} succeeded in {seconds:.1f}s")
    for label, ok in report.runs:
        print(f"  {'ok  ' if ok else 'FAIL'} {label}")
    print(f"assets materialized: {len(report.materialized)}")
    for key in sorted(set(report.materialized)):
        print(f"  {key} ({report.materialized.count(key)}x)")
    passed = sum(1 for *_, p, _ in report.checks if p)
    warned = sum(1 for *_, p, sev in report.checks if not p and sev == "WARN")
    failed = len(report.checks) - passed - warned
    print(f"checks: {passed} passed, {warned} warned, {failed} failed")
    for asset, check, ok, severity in report.checks:
        if not ok:
            print(f"  {'WARN' if severity == 'WARN' else 'FAIL'} {asset}:{check}")
    print("rows per table:")
    for name, n in _collapse_wide_schemas(rows):
        print(f"  {name}: {n:,}")
    print("where the data lives:")
    for line in svc.describe():
        print(f"  {line}")
    print("next: `make up` opens the Dagster UI on http://127.0.0.1:3000 with this run history;")
    print("      `covid-lakehouse sql \"select ...\"` and `covid-lakehouse psql` query the data.")


def _collapse_wide_schemas(rows: list[tuple[str, int]], limit: int = 6) -> list[tuple[str, int]]:
    """One line for a schema with many tables (62 county tables), one line per table otherwise."""
    by_schema: dict[str, list[tuple[str, int]]] = {}
    for name, n in rows:
        by_schema.setdefault(name.rsplit(".", 1)[0], []).append((name, n))
    out = []
    for schema, tables in by_schema.items():
        if len(tables) > limit:
            out.append((f"{schema}.* ({len(tables)} tables)", sum(n for _, n in tables)))
        else:
            out += tables
    return out


def cmd_up(args: argparse.Namespace) -> int:
    """Dagster UI + daemon on the embedded (or configured) services until Ctrl-C. The demo sources are
    prepared (by runtime.services) before the daemon starts, so its first sensor ticks find them."""
    with runtime.services(stand_ins=not args.live, command="up") as svc:
        runtime.prepare_dagster_home(svc.home, svc.settings)
        procs = runtime.start_dagster(args.host, args.port)
        for line in svc.describe():
            print(line)
        print(f"Dagster UI: http://{args.host}:{args.port}  (Ctrl-C stops everything)", flush=True)
        stop = runtime.wait_for_signal_or_exit(procs)
        runtime.terminate_tree(procs)
    return 0 if stop else 1


def cmd_report(args: argparse.Namespace) -> int:
    """Print a published data product for people who want the numbers, not the UI."""
    from covid_lakehouse.defs.vaccines.report import ReportUnavailable, people_per_dose_report
    from covid_lakehouse.lib.postgres import connect

    settings = _settings()
    with connect(settings.warehouse_dsn) as conn:
        try:
            print(people_per_dose_report(conn))
        except ReportUnavailable as err:
            print(err, file=sys.stderr)
            return 1
    return 0


def cmd_ads(args: argparse.Namespace) -> int:
    """Operate the ads archive: rebuild ads.ads from the raw backups, or restore an archived day."""
    import datetime as dt

    from covid_lakehouse.lib.lakehouse import LakehouseResource
    from covid_lakehouse.lib.postgres import PostgresResource
    from covid_lakehouse.lib.s3 import s3_client

    settings = _settings()
    warehouse = PostgresResource(dsn=settings.warehouse_dsn)
    lakehouse = LakehouseResource.from_settings(settings)
    if args.ads_command == "replay":
        from covid_lakehouse.defs.ads.replay import replay_from_backup

        with warehouse.connection() as conn:
            counts = replay_from_backup(conn, s3_client(settings), lakehouse)
        print(counts)
    else:
        from covid_lakehouse.defs.ads.archive import restore_date

        print(restore_date(warehouse, lakehouse, dt.date.fromisoformat(args.date)))
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    """Generate a tenant's omop source database (the seed's schema), deterministic for the same arguments."""
    from covid_lakehouse.defs.omop.tenants import TENANTS_FILE_ENV, TenantConfigError

    runtime.dev_package("seed")
    from covid_lakehouse_dev.seeds.omop import seed_tenant
    from covid_lakehouse_dev.sources.omop import TENANTS_FILE

    settings = _settings()
    # The demo tenants point at WAREHOUSE_DSN: make it (and the other service settings) visible.
    env = {**settings.as_env(), TENANTS_FILE_ENV: os.environ.get(TENANTS_FILE_ENV) or str(TENANTS_FILE)}
    with exported(env):
        try:
            report = seed_tenant(args.tenant, providers=args.providers, dirt_rate=args.dirt_rate, seed=args.seed)
        except (TenantConfigError, ValueError) as err:
            print(f"seed omop: {err}", file=sys.stderr)
            return 2
    print(f"seeded tenant {args.tenant}: {report.providers:,} providers ({report.planted} planted from the sample "
          f"file), {report.care_sites} care sites in schema {report.schema} in {report.seconds}s")
    return 0


def cmd_mock_apis(args: argparse.Namespace) -> int:
    """Serve every domain's mock third-party API (compose `demo` profile)."""
    dev = runtime.dev_package("mock-apis")
    with dev.apis.serve(host=args.host, port=args.port) as (url, env):
        print(f"mock APIs on {url}")
        for name, value in env.items():
            print(f"  {name}={value}")
        sys.stdout.flush()
        signal.sigwait([signal.SIGINT, signal.SIGTERM])
    return 0


def cmd_settings(_: argparse.Namespace) -> int:
    """Print the table of every setting (the README's Configuration table is this output)."""
    from covid_lakehouse.definitions import code_location
    from covid_lakehouse.lib.settings import settings_table

    code_location()  # every domain declares its settings when its modules load
    print(settings_table(), end="")
    return 0


def cmd_migrate(_: argparse.Namespace) -> int:
    from covid_lakehouse.lib.migrate import migrate

    applied = migrate(_settings().warehouse_dsn)
    for m in applied:
        print(f"applied {m.scope} {m.version:04d}_{m.name}")
    print(f"warehouse schema up to date ({len(applied)} applied now)")
    return 0


def cmd_stop(_: argparse.Namespace) -> int:
    EmbeddedStack(project_home()).stop()
    print("embedded services stopped")
    return 0


def cmd_clean(_: argparse.Namespace) -> int:
    home = project_home()
    EmbeddedStack(home).clean()
    print(f"removed {home}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="covid-lakehouse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="materialize every asset on bundled data and print a summary").set_defaults(fn=cmd_demo)
    up = sub.add_parser("up", help="start the Dagster UI and daemon (Ctrl-C stops everything)")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=3000)
    up.add_argument("--live", action="store_true",
                    help="use the live public APIs and the configured sources, no stand-ins (no covid_lakehouse_dev)")
    up.set_defaults(fn=cmd_up)
    sub.add_parser("env", help="print export lines for the warehouse, S3 and lakehouse").set_defaults(fn=cmd_env)
    psql = sub.add_parser("psql", help="open psql on the warehouse")
    psql.add_argument("psql_args", nargs=argparse.REMAINDER)
    psql.set_defaults(fn=cmd_psql)
    q = sub.add_parser("sql", help="query warehouse.<schema>.<table> and lakehouse.<ns>.<table> with DuckDB")
    q.add_argument("query")
    q.add_argument("--max-rows", type=int, default=50)
    q.set_defaults(fn=cmd_sql)
    report = sub.add_parser("report", help="print a published data product")
    report.add_argument("name", choices=["people-per-dose"])
    report.set_defaults(fn=cmd_report)
    ads = sub.add_parser("ads", help="ads archive operations")
    ads_sub = ads.add_subparsers(dest="ads_command", required=True)
    replay = ads_sub.add_parser("replay", help="rebuild ads.ads from the raw backups in s3://ad-data/backup")
    replay.add_argument("--from-backup", action="store_true", required=True)
    restore = ads_sub.add_parser("restore", help="move one shown date back from the archive into ads.ads")
    restore.add_argument("--date", required=True, help="shown date, YYYY-MM-DD")
    ads.set_defaults(fn=cmd_ads)
    seed = sub.add_parser("seed", help="generate a source database for a domain")
    seed_sub = seed.add_subparsers(dest="seed_domain", required=True)
    omop_seed = seed_sub.add_parser("omop", help="a tenant's provider and care_site source tables")
    omop_seed.add_argument("--tenant", required=True, help="a tenant of the tenants file (e.g. demo)")
    omop_seed.add_argument("--providers", type=int, required=True, help="number of providers (seed scale: 2000000)")
    omop_seed.add_argument("--dirt-rate", type=float, default=0.02, help="share of dirty rows (default 0.02)")
    omop_seed.add_argument("--seed", type=int, default=0, help="random seed (same seed, same rows)")
    seed.set_defaults(fn=cmd_seed)
    mock = sub.add_parser("mock-apis", help="serve the mock third-party APIs")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=8080)
    mock.set_defaults(fn=cmd_mock_apis)
    sub.add_parser("settings", help="print every environment variable the product reads (markdown)").set_defaults(
        fn=cmd_settings)
    sub.add_parser("migrate", help="apply pending warehouse migrations").set_defaults(fn=cmd_migrate)
    sub.add_parser("stop", help="stop the embedded services").set_defaults(fn=cmd_stop)
    sub.add_parser("clean", help="stop the embedded services and delete their data").set_defaults(fn=cmd_clean)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except runtime.DevPackageMissing as err:
        print(err, file=sys.stderr)
        return 2
    except Exception as err:
        import psycopg

        from covid_lakehouse.lib.postgres import DsnError

        if not isinstance(err, psycopg.Error | DsnError):
            raise
        # libpq echoes parts of a malformed connection string, the password included: print it without.
        print(f"covid-lakehouse: {type(err).__name__}: {redact_text(str(err), *_known_dsns())}", file=sys.stderr)
        return 1


def _known_dsns() -> list[str]:
    from covid_lakehouse.lib.settings import (
        DAGSTER_STORAGE_URL,
        LAKEHOUSE_CATALOG_DSN,
        SETTINGS,
        WAREHOUSE_DSN,
    )

    return [v for v in (SETTINGS[n].get() for n in (WAREHOUSE_DSN, LAKEHOUSE_CATALOG_DSN, DAGSTER_STORAGE_URL)) if v]


if __name__ == "__main__":
    sys.exit(main())
