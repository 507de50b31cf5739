"""The ads advisory lock: the load (assets.py), archive, restore and replay (replay.py) take it, so they
never interleave: a load holds it from its API call to its commit, so loads publish in the order they
fetched and an archive never deletes between a sighting's fetch and its upsert. The lock lives in a
dedicated autocommit session; a killed holder's session ends and releases it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import psycopg
from psycopg import sql

from covid_lakehouse.defs.ads.archive.errors import ArchiveBusyError

LOCK_KEY = 0x6164735F61726368  # "ads_arch": load, archive, restore and replay exclude each other
LOCK_WAIT = timedelta(seconds=30)
# The hourly load waits longer: an archive of a large backlog holds the lock for minutes, and a load
# that gives up loses an hour's ads (the API serves each call once).
LOAD_LOCK_WAIT = timedelta(minutes=15)
APPLICATION_NAME = "covid_lakehouse.ads"


@contextmanager
def exclusive_connection(dsn: str, wait: timedelta = LOCK_WAIT) -> Iterator[psycopg.Connection]:
    """An autocommit session holding the ads advisory lock until it closes (also when the process
    dies: the server then ends the session and releases the lock)."""
    conn = psycopg.connect(dsn, autocommit=True, application_name=APPLICATION_NAME)
    try:
        conn.execute("SET TIME ZONE 'UTC'")
        conn.execute("SET datestyle = 'ISO, YMD'")
        acquire_lock(conn, wait)
        yield conn
    finally:
        conn.close()


def acquire_lock(conn: psycopg.Connection, wait: timedelta, *, transaction_level: bool = False) -> None:
    """Wait up to ``wait`` for the ads lock (a killed holder's session takes a moment to end)."""
    function = "pg_advisory_xact_lock" if transaction_level else "pg_advisory_lock"
    conn.execute(sql.SQL("SET {} lock_timeout = {}").format(
        sql.SQL("LOCAL") if transaction_level else sql.SQL(""), sql.Literal(f"{int(wait.total_seconds() * 1000)}ms")))
    try:
        conn.execute(sql.SQL("SELECT {}(%s)").format(sql.Identifier(function)), (LOCK_KEY,))
    except psycopg.errors.LockNotAvailable:
        raise ArchiveBusyError(f"another ads load, archive, restore or replay held the lock for more than {wait}; "
                               "try again when it has finished") from None
    finally:
        if not transaction_level:
            conn.execute("RESET lock_timeout")
