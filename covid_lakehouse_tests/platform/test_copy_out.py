"""lib.postgres.copy_out takes a COPY TO's rows from libpq in a plain loop (psycopg's read of one row, a
generator run by its wait loop, cost more CPU than the rest of omop's extract): the same bytes as
iterating psycopg's Copy, a query that fails after some rows still raises the server's error, and an
interrupt while it takes the COPY's end (psycopg internals, past where the Copy's exit can clean up)
leaves no connection that refuses every later statement."""

from __future__ import annotations

import io

import psycopg
import psycopg.generators
import pytest

from covid_lakehouse.lib.postgres import copy_out
from covid_lakehouse.lib.settings import ServiceSettings

# Rows with what CSV must quote (commas, quotes, newlines), non-ASCII text and NULLs, enough of them that
# the COPY both finds rows already received and waits for more.
ROWS = """COPY (SELECT i, 'name ' || i || CASE WHEN i % 7 = 0 THEN ', "quoted"' WHEN i % 11 = 0 THEN E'\\nline' ELSE '' END,
                       CASE WHEN i % 5 = 0 THEN NULL ELSE 'Zoë ' || repeat('x', i % 50) END
               FROM generate_series(1, 200000) i) TO STDOUT (FORMAT csv)"""
# Small enough that the server sends it whole with the COPY's start: its end is always already received
# when the loop meets it (the branch that takes the end through psycopg's internals).
FEW_ROWS = "COPY (SELECT i FROM generate_series(1, 10) i) TO STDOUT"


class Interrupted(BaseException):
    """Stands for a run's termination (Dagster raises a BaseException that psycopg does not handle)."""


def _end_takes(monkeypatch: pytest.MonkeyPatch, *, interrupt: bool = False) -> list[int]:
    """psycopg's fetch_many (how copy_out takes an already received end) counted, or interrupted."""
    calls, fetch_many = [], psycopg.generators.fetch_many

    def counted(pgconn):
        calls.append(1)
        if interrupt:
            raise Interrupted
        return fetch_many(pgconn)

    monkeypatch.setattr(psycopg.generators, "fetch_many", counted)
    return calls


def test_copy_out_writes_the_same_bytes_as_psycopgs_copy(pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch):
    with pg.cursor().copy(ROWS) as copy:
        expected = b"".join(bytes(chunk) for chunk in copy)
    got = io.BytesIO()
    with pg.cursor().copy(ROWS) as copy:
        copy_out(copy, got)
    assert got.getvalue() == expected and expected.count(b"\n") > 200_000
    assert pg.execute("SELECT 1").fetchone() == (1,)  # the COPY's end was taken: the connection is free

    ends = _end_takes(monkeypatch)
    got = io.BytesIO()
    with pg.cursor().copy(FEW_ROWS) as copy:
        copy_out(copy, got)
    assert got.getvalue() == b"".join(b"%d\n" % i for i in range(1, 11)) and ends == [1]
    assert pg.execute("SELECT 1").fetchone() == (1,)


def test_copy_out_raises_an_error_the_server_meets_after_some_rows(pg: psycopg.Connection):
    got = io.BytesIO()
    with pytest.raises(psycopg.errors.DivisionByZero), \
            pg.cursor().copy("COPY (SELECT 1 / (1000 - i) FROM generate_series(1, 2000) i) TO STDOUT") as copy:
        copy_out(copy, got)
    assert got.getvalue().count(b"\n") == 999
    assert pg.execute("SELECT 1").fetchone() == (1,)


def test_an_interrupt_while_taking_the_copys_end_closes_the_connection(services: ServiceSettings,
                                                                        monkeypatch: pytest.MonkeyPatch):
    ends = _end_takes(monkeypatch, interrupt=True)
    with psycopg.connect(services.warehouse_dsn) as conn:
        with pytest.raises(Interrupted), conn.transaction(), conn.cursor().copy(FEW_ROWS) as copy:
            copy_out(copy, io.BytesIO())
        # Left open, it would refuse every statement ("another command is already in progress") and a
        # pool would hand it out again; closed, whoever holds it sees so at once.
        assert ends == [1] and conn.closed
