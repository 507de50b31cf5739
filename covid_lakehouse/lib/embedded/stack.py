"""The embedded stack's lifecycle: start (or reuse) PostgreSQL and S3 under a home folder, record them
in ``<home>/stack.json``, stop them, delete their data."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from covid_lakehouse.lib.embedded.postgres import (
    ANALYST_ROLE,
    DATABASES,
    POSTGRES,
    provision_postgres,
    start_postgres,
    stop_postgres,
)
from covid_lakehouse.lib.embedded.processes import is_our_server, port_free, terminate_server
from covid_lakehouse.lib.embedded.s3 import WEED, provision_buckets, start_s3
from covid_lakehouse.lib.settings import ServiceSettings, sqlalchemy_url


@dataclass
class StackState:
    pg_port: int
    pg_password: str
    pg_pid: int  # 0 once stopped; only a hint (see processes.is_our_server)
    s3_port: int
    s3_pid: int
    s3_access_key: str
    s3_secret_key: str
    # Each role's own password (pg_password is the superuser's); empty in a state file written before
    # roles had their own, until the next provisioning.
    role_passwords: dict[str, str] = field(default_factory=dict)

    def password(self, role: str) -> str:
        return self.role_passwords.get(role, self.pg_password)

    def settings(self) -> ServiceSettings:
        def dsn(db: str) -> str:
            role = DATABASES[db]
            return f"postgresql://{role}:{self.password(role)}@127.0.0.1:{self.pg_port}/{db}"

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
        return f"postgresql://{ANALYST_ROLE}:{self.password(ANALYST_ROLE)}@127.0.0.1:{self.pg_port}/warehouse"

    def superuser_dsn(self, db: str = "postgres") -> str:
        return f"postgresql://postgres:{self.pg_password}@127.0.0.1:{self.pg_port}/{db}"


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
        # Data folders are private: the home, logs and S3 data 0700 (PostgreSQL's own folder is 0700 too;
        # as root, the home becomes 0711 so the server's system user can traverse it).
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o711 if os.name == "posix" and os.geteuid() == 0 else 0o700)
        for folder in (self.logs, self.s3_dir):
            folder.mkdir(exist_ok=True)
            folder.chmod(0o700)
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
        pg_port, pg_pid = start_postgres(self.home, self.pgdata, self.logs, password)
        try:
            s3_port, s3_pid = start_s3(self.s3_dir, self.logs, access_key, secret_key, avoid={pg_port})
        except BaseException:
            stop_postgres(self.pgdata, self.logs)
            raise
        # Distinct random passwords per role (as deploy/postgres/init.sh gets them from .env): one leaked
        # DSN opens one database, not the superuser.
        roles = [*DATABASES.values(), ANALYST_ROLE]
        kept = previous.role_passwords if previous else {}
        role_passwords = {role: kept.get(role) or secrets.token_urlsafe(18) for role in roles}
        self.state = StackState(pg_port, password, pg_pid, s3_port, s3_pid, access_key, secret_key, role_passwords)
        self.state_file.write_text(json.dumps(asdict(self.state), indent=2))
        self.state_file.chmod(0o600)
        self.started_here = True
        try:
            provision_postgres(self.state.superuser_dsn(), role_passwords)
            provision_buckets(self.state.settings())
        except BaseException:
            self.stop()
            raise
        return self.state.settings()

    def stop(self) -> None:
        """Stop our servers; PIDs in the state file that are no longer ours (0 after a stop, reused
        after a reboot) are never signalled."""
        state = self._read_state()
        if state is None:
            return
        stop_postgres(self.pgdata, self.logs)
        terminate_server(state.s3_pid, program=WEED, folder=self.s3_dir)
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
        if (state and is_our_server(state.pg_pid, program=POSTGRES, folder=self.pgdata)
                and is_our_server(state.s3_pid, program=WEED, folder=self.s3_dir)):
            if not port_free(state.pg_port) and not port_free(state.s3_port):
                return state
        return None
