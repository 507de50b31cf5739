"""Helpers shared by the ads tests (plain functions; fixtures live in conftest.py), and the crash
worker: run as a module, it runs the archive (or a restore) in its own process and SIGKILLs itself
right after a given step, so tests can crash the real code at every step against the real services:

    python -m covid_lakehouse_tests.ads.support archive <step> <now ISO> <retention hours> <chunk rows>
    python -m covid_lakehouse_tests.ads.support restore <step> <day ISO>
"""

import json
import os
import signal
import sys
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
