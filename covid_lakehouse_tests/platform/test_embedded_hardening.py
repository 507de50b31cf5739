"""The embedded stack is provisioned like deploy/postgres/init.sh: a password per role, no database open
to PUBLIC, the analyst's session defaults; its data folders are private and S3 listens on loopback only."""

from __future__ import annotations

import stat

import psutil
import psycopg
import pytest

from covid_lakehouse.lib.embedded import EmbeddedStack
from covid_lakehouse.lib.embedded.postgres import ANALYST_DEFAULTS, DATABASES


def test_every_role_has_its_own_password(embedded_stack: EmbeddedStack):
    state = embedded_stack.state
    roles = [*DATABASES.values(), "analyst"]
    passwords = [state.role_passwords[role] for role in roles]
    assert len(set(passwords)) == len(roles) and state.pg_password not in passwords
    assert all(len(p) >= 16 for p in passwords)
    # A role's DSN does not open another role, and the superuser's password opens no role.
    with psycopg.connect(state.settings().warehouse_dsn) as conn:
        assert conn.execute("select current_user").fetchone()[0] == "warehouse_writer"
    for role, db in (("warehouse_writer", "warehouse"), ("dagster", "dagster"), ("analyst", "warehouse")):
        for wrong in (state.pg_password, state.password("lakehouse_catalog")):
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(f"postgresql://{role}:{wrong}@127.0.0.1:{state.pg_port}/{db}").close()


def test_no_database_is_open_to_public_and_the_analyst_has_its_defaults(embedded_stack: EmbeddedStack):
    with psycopg.connect(embedded_stack.state.superuser_dsn(), autocommit=True) as admin:
        open_to_public = admin.execute(
            "SELECT datname FROM pg_database, aclexplode(coalesce(datacl, acldefault('d', datdba))) a "
            "WHERE datname = ANY(%s) AND a.grantee = 0", (list(DATABASES),)).fetchall()
        assert open_to_public == []
    with psycopg.connect(embedded_stack.state.analyst_dsn(), autocommit=True) as analyst:
        for name, value in ANALYST_DEFAULTS.items():
            assert analyst.execute(f"SHOW {name}").fetchone()[0] == value
    assert ANALYST_DEFAULTS["idle_in_transaction_session_timeout"]


def test_data_folders_are_private(embedded_stack: EmbeddedStack):
    for folder in (embedded_stack.pgdata, embedded_stack.s3_dir, embedded_stack.logs):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    # The home may be traversable (the PostgreSQL system user's way to its folder, as root), never listable.
    assert stat.S_IMODE(embedded_stack.home.stat().st_mode) & 0o066 == 0o000
    assert stat.S_IMODE(embedded_stack.state_file.stat().st_mode) == 0o600


def test_seaweedfs_listens_on_loopback_only(embedded_stack: EmbeddedStack):
    """S3, master, volume and filer ports and their gRPC ports (+10000): none reachable from another host.
    A regression guard: the stack already bound them to loopback when this test was written."""
    weed = psutil.Process(embedded_stack.state.s3_pid)
    listening = [c.laddr for p in (weed, *weed.children(recursive=True))
                 for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    ports = {addr.port for addr in listening}
    assert embedded_stack.state.s3_port in ports and len(ports) >= 8, sorted(ports)
    assert {addr.ip for addr in listening} == {"127.0.0.1"}, listening
