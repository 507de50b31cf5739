"""External-services mode: the product's own entry point run with exactly the environment
docker-compose gives the code location, against real PostgreSQL and S3 servers provisioned the way
compose provisions them (deploy/postgres/init.sh for roles and databases, the app's S3 key). Only the
service host names are rewritten, since there is no Docker network here."""

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from covid_lakehouse.lib.embedded import EmbeddedStack, pg_bin
from covid_lakehouse_tests.platform.support import compose_service_environment, write_placeholder_env

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose_like_services(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("external")
    secrets = write_placeholder_env(tmp / ".env")
    stack = EmbeddedStack(tmp / "servers",
                          s3_credentials=(secrets["S3_APP_ACCESS_KEY_ID"], secrets["S3_APP_SECRET_ACCESS_KEY"]))
    stack.start()
    state = stack.state
    # Provision exactly as the postgres container's init script does (it re-applies passwords).
    env = {**os.environ, "PATH": f"{pg_bin('psql').parent}:{os.environ['PATH']}", "PGHOST": "127.0.0.1",
           "PGPORT": str(state.pg_port), "PGPASSWORD": state.pg_password, "POSTGRES_USER": "postgres",
           **{k: secrets[k] for k in ("DAGSTER_DB_PASSWORD", "WAREHOUSE_DB_PASSWORD", "LAKEHOUSE_DB_PASSWORD",
                                      "ANALYST_DB_PASSWORD")}}
    subprocess.run(["bash", str(REPO / "deploy/postgres/init.sh")], env=env, check=True, capture_output=True,
                   timeout=120)
    try:
        yield tmp / ".env", secrets, state
    finally:
        stack.stop()


def _rewrite_hosts(env: dict[str, str], state) -> dict[str, str]:
    return {k: v.replace("@postgres:5432/", f"@127.0.0.1:{state.pg_port}/")
            .replace("http://minio:9000", f"http://127.0.0.1:{state.s3_port}") for k, v in env.items()}


def test_demo_runs_on_the_services_compose_describes_without_leaking_secrets(compose_like_services, tmp_path):
    env_file, secrets, state = compose_like_services
    compose_env = _rewrite_hosts(compose_service_environment("code-location", env_file), state)
    home = tmp_path / "home"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "COVID_LAKEHOUSE_HOME": str(home), **compose_env}
    result = subprocess.run([str(Path(sys.executable).parent / "covid-lakehouse"), "demo"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "warehouse (external PostgreSQL)" in result.stdout
    assert not (home / "stack.json").exists(), "nothing embedded may start in external-services mode"
    for name, value in secrets.items():
        assert value not in result.stdout + result.stderr, f"{name} leaked into the demo output"
    # The data landed where compose's settings say, under compose's roles.
    with psycopg.connect(compose_env["WAREHOUSE_DSN"]) as conn:
        assert conn.execute("select current_user").fetchone()[0] == "warehouse_writer"
        assert conn.execute("select count(*) from platform.smoke_warehouse").fetchone()[0] == 1000
    with psycopg.connect(compose_env["DAGSTER_STORAGE_URL"].replace("+psycopg2", "")) as conn:
        assert conn.execute("select count(*) from runs").fetchone()[0] >= 1  # run history in Dagster's DB
    # The analyst role from init.sh reads published tables and cannot write.
    analyst = f"postgresql://analyst:{secrets['ANALYST_DB_PASSWORD']}@127.0.0.1:{state.pg_port}/warehouse"
    with psycopg.connect(analyst) as conn:
        assert conn.execute("select count(*) from platform.smoke_warehouse").fetchone()[0] == 1000
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("delete from platform.smoke_warehouse")

