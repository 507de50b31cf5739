"""Runs the archive (or a restore) in its own process and SIGKILLs itself right after a given step,
so tests can crash the real code at every step against the real services:

    python -m covid_lakehouse_tests.ads.archive_worker archive <step> <now ISO> <retention hours> <chunk rows>
    python -m covid_lakehouse_tests.ads.archive_worker restore <step> <day ISO>
"""

import os
import signal
import sys
from datetime import date, datetime, timedelta

from covid_lakehouse.defs.ads.archive import archive_old_rows, restore_date
from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.postgres import PostgresResource
from covid_lakehouse.lib.settings import ServiceSettings


def _die_after(step: str):
    def hook(done: str) -> None:
        if done == step:
            os.kill(os.getpid(), signal.SIGKILL)
    return hook


def main(argv: list[str]) -> int:
    settings = ServiceSettings.from_env()
    warehouse = PostgresResource(dsn=settings.warehouse_dsn)
    lakehouse = LakehouseResource.from_settings(settings)
    command, step = argv[0], argv[1]
    if command == "archive":
        archive_old_rows(warehouse, lakehouse, now=datetime.fromisoformat(argv[2]),
                         retention=timedelta(hours=float(argv[3])), chunk_rows=int(argv[4]), hook=_die_after(step))
    else:
        restore_date(warehouse, lakehouse, date.fromisoformat(argv[2]), hook=_die_after(step))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
