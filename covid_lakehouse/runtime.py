"""How the product runs on one machine: services (embedded or external), DAGSTER_HOME, the stand-ins
(offline mock APIs and demo sources, from the development package covid_lakehouse_dev, imported
lazily), and the demo that materializes everything once and summarises it.

Used by the CLI; tests drive the same functions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from covid_lakehouse.lib.embedded import EmbeddedStack
from covid_lakehouse.lib.settings import (
    DAGSTER_STORAGE_URL,
    ServiceSettings,
    exported,
    external_services_configured,
    project_home,
    redact,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Services:
    settings: ServiceSettings
    embedded: EmbeddedStack | None
    home: Path
    mock_api_url: str | None = None
    demo_env: dict[str, str] = field(default_factory=dict)
    demo_sources_created: dict[str, dict] = field(default_factory=dict)  # what the stand-ins created now

    def describe(self) -> list[str]:
        kind = "embedded" if self.embedded else "external"
        lines = [
            f"warehouse ({kind} PostgreSQL): {redact(self.settings.warehouse_dsn)}",
            f"S3 ({kind}): {self.settings.s3_endpoint_url}  buckets raw, lakehouse, ad-data",
            f"lakehouse: Iceberg tables under {self.settings.lakehouse_warehouse}, catalog in PostgreSQL",
        ]
        if self.embedded:
            lines.append(f"data folder: {self.home} (kept until `covid-lakehouse clean`)")
        if self.mock_api_url:
            lines.append(f"third-party APIs: bundled snapshots served offline at {self.mock_api_url}")
        return lines


class DevPackageMissing(RuntimeError):
    """The stand-ins are needed but covid_lakehouse_dev is not installed (e.g. the production image)."""


def dev_package(command: str):
    """covid_lakehouse_dev, imported only here and only when a command needs the stand-ins."""
    try:
        import covid_lakehouse_dev.apis
        import covid_lakehouse_dev.sources
    except ModuleNotFoundError as err:
        if err.name is None or not err.name.startswith("covid_lakehouse_dev"):
            raise
        raise DevPackageMissing(f"covid-lakehouse {command} needs the development package covid_lakehouse_dev: "
                                "install the project from a checkout with `make venv`") from None
    return covid_lakehouse_dev


@contextmanager
def services(*, stand_ins: bool = True, home: Path | None = None, command: str = "up") -> Iterator[Services]:
    """Use the configured external services, or start the embedded ones (stopped on exit only if
    started here). With ``stand_ins``, serve the bundled API snapshots and prepare the demo sources
    (before the caller runs anything), pointing the domains at both; an explicitly configured
    setting wins over its stand-in."""
    dev = dev_package(command) if stand_ins else None  # before starting anything
    home = home or project_home()
    with ExitStack() as stack:
        if external_services_configured():
            settings = ServiceSettings.from_env()
            embedded = None
        else:
            embedded = EmbeddedStack(home)
            settings = stack.enter_context(embedded)
        from covid_lakehouse.lib.migrate import migrate

        migrate(settings.warehouse_dsn)  # the same start-up step compose and k8s run
        svc = Services(settings=settings, embedded=embedded, home=home)
        env = dict(settings.as_env())
        if dev:
            url, api_env = stack.enter_context(dev.apis.serve())
            prepared = dev.sources.prepare(settings)
            svc.mock_api_url, svc.demo_sources_created = url, prepared.done
            svc.demo_env = {**api_env, **prepared.env}
            # An explicitly configured setting wins over its stand-in.
            env.update({k: v for k, v in svc.demo_env.items() if not os.environ.get(k)})
        with exported(env):
            yield svc


def prepare_dagster_home(home: Path, settings: ServiceSettings) -> Path:
    """DAGSTER_HOME with the repo's dagster.yaml; run storage in PostgreSQL when we have one."""
    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    source = REPO_ROOT / "dagster.yaml"
    if not source.exists():
        raise FileNotFoundError(f"{source} not found: run covid-lakehouse from the repository checkout")
    config = yaml.safe_load(source.read_text())
    # Without a Dagster database (external services without one) run history stays on local disk.
    if settings.dagster_storage_url:
        os.environ[DAGSTER_STORAGE_URL] = settings.dagster_storage_url
        # postgresql+psycopg2://: SQLAlchemy 2.1 would pick psycopg 3 for postgresql://, and
        # dagster-postgres' LISTEN/NOTIFY needs psycopg2.
        config["storage"] = {"postgres": {"postgres_url": {"env": DAGSTER_STORAGE_URL}}}
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dagster_home


# ---- demo ---------------------------------------------------------------------------------------
@dataclass
class DemoReport:
    runs: list[tuple[str, bool]] = field(default_factory=list)
    materialized: list[str] = field(default_factory=list)
    checks: list[tuple[str, str, bool, str]] = field(default_factory=list)  # asset, check, passed, severity

    def record(self, label: str, result) -> None:
        self.runs.append((label, result.success))
        for event in result.all_events:
            if event.event_type_value == "ASSET_MATERIALIZATION":
                self.materialized.append(event.asset_key.to_user_string())
        for evaluation in result.get_asset_check_evaluations():
            self.checks.append((evaluation.asset_key.to_user_string(), evaluation.check_name,
                                evaluation.passed, evaluation.severity.value))

    @property
    def ok(self) -> bool:
        return all(ok for _, ok in self.runs) and all(p or sev == "WARN" for *_, p, sev in self.checks)


def run_demo(defs, instance) -> DemoReport:
    """Materialize every asset once, the way the daemon would: unpartitioned assets first, then
    one tick of every sensor (which registers dynamic partitions and requests their runs)."""
    import dagster as dg

    report = DemoReport()
    graph = defs.resolve_asset_graph()
    job = defs.resolve_implicit_global_asset_job_def()
    unpartitioned = [k for k in graph.materializable_asset_keys if not graph.get(k).is_partitioned]
    if unpartitioned:
        result = job.execute_in_process(instance=instance, asset_selection=unpartitioned, raise_on_error=False,
                                        tags={"covid_lakehouse/trigger": "demo"})
        report.record("unpartitioned assets", result)
    for sensor in defs.sensors or []:
        if isinstance(sensor, dg.RunStatusSensorDefinition):
            continue
        # evaluate_tick does not bind the code location's resources (the daemon does): pass them.
        # evaluate_tick resolves partitioned run requests only with an instance_ref (as the daemon has).
        with dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(), definitions=defs,
                                     resources=dict(defs.resources or {})) as context:
            data = sensor.evaluate_tick(context)
        for request in data.dynamic_partitions_requests or []:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        for request in data.run_requests or []:
            selection = request.asset_selection or []
            tags = {**(request.tags or {}), "covid_lakehouse/trigger": "demo"}
            result = job.execute_in_process(instance=instance, asset_selection=list(selection),
                                            partition_key=request.partition_key, tags=tags, raise_on_error=False)
            report.record(f"sensor {sensor.name}", result)
    return report


def table_row_counts(settings: ServiceSettings) -> list[tuple[str, int]]:
    import psycopg
    from psycopg import sql

    counts = []
    with psycopg.connect(settings.warehouse_dsn) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2").fetchall()
        for schema, table in tables:
            n = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))).fetchone()[0]
            counts.append((f"warehouse {schema}.{table}", n))
    return counts


def lakehouse_row_counts(settings: ServiceSettings) -> list[tuple[str, int]]:
    from covid_lakehouse.lib.lakehouse import LakehouseResource

    catalog = LakehouseResource.from_settings(settings).catalog()
    counts = []
    for namespace in catalog.list_namespaces():
        for ident in catalog.list_tables(namespace):
            snapshot = catalog.load_table(ident).current_snapshot()
            total = int(snapshot.summary.get("total-records", 0)) if snapshot and snapshot.summary else 0
            counts.append((f"lakehouse {'.'.join(ident)}", total))
    return counts


def start_dagster(host: str, port: int) -> list[subprocess.Popen]:
    """The webserver and the daemon on the workspace, each in a session of its own (stopped with
    terminate_tree)."""
    workspace = str(REPO_ROOT / "workspace.yaml")
    bin_dir = os.path.dirname(sys.executable)
    return [
        subprocess.Popen([os.path.join(bin_dir, "dagster-webserver"), "-h", host, "-p", str(port), "-w", workspace],
                         start_new_session=True),
        subprocess.Popen([os.path.join(bin_dir, "dagster-daemon"), "run", "-w", workspace], start_new_session=True),
    ]


def terminate_tree(procs: list[subprocess.Popen]) -> None:
    """Stop the webserver and daemon and every process they spawned (their gRPC code servers run in
    sessions of their own and would otherwise linger until a heartbeat times out)."""
    import psutil

    tree = []
    for proc in procs:
        try:
            tree += [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for p in tree:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=20)
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=5)
    for proc in procs:
        proc.wait()


def wait_for_signal_or_exit(procs: list[subprocess.Popen]) -> bool:
    """Block until SIGINT/SIGTERM (True) or a child exits on its own (False)."""
    received: list[int] = []

    def handler(signum, _frame):
        received.append(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not received:
            if any(p.poll() is not None for p in procs):
                print("a Dagster process exited; stopping the rest", file=sys.stderr)
                return False
            time.sleep(0.5)  # polling the children; the signal handler ends the loop
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return True
