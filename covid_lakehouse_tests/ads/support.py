"""Helpers shared by the ads tests (plain functions; fixtures live in conftest.py), and the crash
worker: run as a module, it runs the archive (or a restore) in its own process and SIGKILLs itself
right after a given step, so tests can crash the real code at every step against the real services:

    python -m covid_lakehouse_tests.ads.support archive <step> <now ISO> <retention hours> <chunk rows>
    python -m covid_lakehouse_tests.ads.support restore <step> <day ISO>
"""

import json
import os
import signal
import socket
import sys
import threading
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import psycopg

from covid_lakehouse.defs.ads.api import parse_ads
from covid_lakehouse.defs.ads.archive import archive_old_rows, restore_date
from covid_lakehouse.defs.ads.settings import ARCHIVE_NAMESPACE, ARCHIVE_TABLE
from covid_lakehouse.defs.ads.warehouse import create_staging, ensure_tables, stage_pages, upsert_staged
from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.postgres import PostgresResource
from covid_lakehouse.lib.settings import ServiceSettings
from covid_lakehouse_dev.apis.ads import AdsMock

NOW = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)  # the mock's clock in archive tests: shown_at spans ~28 h before


def materialize(assets, resources: dict, instance: dg.DagsterInstance, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize(assets, resources=resources, instance=instance, raise_on_error=False, **kwargs)


def load_rows(warehouse: PostgresResource, mock: AdsMock, pages: int = 1, key: str = "backup/test.json") -> set[str]:
    """Load mock pages through the load's own staging and upsert (no API, no backup): archive tests
    need rows, not the fetch. Returns the ad_ids loaded."""
    ids: set[str] = set()
    with warehouse.connection() as conn:
        ensure_tables(conn)
        staging = create_staging(conn)
        tables = [parse_ads(json.dumps(mock.ads()).encode()) for _ in range(pages)]
        stage_pages(conn, staging, [(t, key) for t in tables])
        upsert_staged(conn, staging)
    for t in tables:
        ids.update(t["ad_id"].to_pylist())
    return ids


def live_ids(pg: psycopg.Connection) -> set[str]:
    return {str(r[0]) for r in pg.execute("SELECT ad_id FROM ads.ads")}


def archived_rows(lakehouse: LakehouseResource) -> list[tuple[str, int, str]]:
    """(ad_id, row_version, batch_id) of every row in the archive's current snapshot."""
    if not lakehouse.table_exists(ARCHIVE_NAMESPACE, ARCHIVE_TABLE):
        return []
    table = lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE)
    data = table.scan(selected_fields=("ad_id", "row_version", "batch_id")).to_arrow()
    return list(zip(data["ad_id"].to_pylist(), data["row_version"].to_pylist(), data["batch_id"].to_pylist(),
                    strict=True))


def assert_invariant(pg: psycopg.Connection, lakehouse: LakehouseResource, loaded: set[str]) -> tuple[int, int]:
    """Every ad loaded is in exactly one place: live in ads.ads or once in the archive."""
    live = live_ids(pg)
    archived = [ad_id for ad_id, _, _ in archived_rows(lakehouse)]
    assert len(archived) == len(set(archived)), "an ad is archived more than once"
    assert live.isdisjoint(archived), "an ad is both live and archived"
    assert live | set(archived) == loaded, "an ad was lost (or appeared from nowhere)"
    return len(live), len(archived)


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

    def stop(self) -> None:
        """The outage: refuse new connections and drop the open ones."""
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        self._thread.join(5)


def die_after(step: str):
    def hook(done: str) -> None:
        if done == step:
            os.kill(os.getpid(), signal.SIGKILL)
    return hook


def crash_worker(argv: list[str]) -> int:
    settings = ServiceSettings.from_env()
    warehouse = PostgresResource(dsn=settings.warehouse_dsn)
    lakehouse = LakehouseResource.from_settings(settings)
    command, step = argv[0], argv[1]
    if command == "archive":
        archive_old_rows(warehouse, lakehouse, now=datetime.fromisoformat(argv[2]),
                         retention=timedelta(hours=float(argv[3])), chunk_rows=int(argv[4]), hook=die_after(step))
    else:
        restore_date(warehouse, lakehouse, date.fromisoformat(argv[2]), hook=die_after(step))
    return 0


if __name__ == "__main__":
    sys.exit(crash_worker(sys.argv[1:]))
