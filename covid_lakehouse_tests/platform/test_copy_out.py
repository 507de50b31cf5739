"""lib.postgres.copy_out takes a COPY TO's rows from libpq in a plain loop (psycopg's read of one row, a
generator run by its wait loop, cost more CPU than the rest of the extract's copying): the same bytes as
iterating psycopg's Copy, and a query that fails after some rows still raises the server's error."""

from __future__ import annotations

import io

import psycopg
import pytest

from covid_lakehouse.lib.postgres import copy_out

# Rows with what CSV must quote (commas, quotes, newlines), non-ASCII text and NULLs, enough of them that
# the COPY both finds rows already received and waits for more.
ROWS = """COPY (SELECT i, 'name ' || i || CASE WHEN i % 7 = 0 THEN ', "quoted"' WHEN i % 11 = 0 THEN E'\\nline' ELSE '' END,
                       CASE WHEN i % 5 = 0 THEN NULL ELSE 'Zoë ' || repeat('x', i % 50) END
               FROM generate_series(1, 200000) i) TO STDOUT (FORMAT csv)"""


def test_copy_out_writes_the_same_bytes_as_psycopgs_copy(pg: psycopg.Connection):
    with pg.cursor().copy(ROWS) as copy:
        expected = b"".join(bytes(chunk) for chunk in copy)
    got = io.BytesIO()
    with pg.cursor().copy(ROWS) as copy:
        copy_out(copy, got)
    assert got.getvalue() == expected and expected.count(b"\n") > 200_000
    assert pg.execute("SELECT 1").fetchone() == (1,)  # the COPY's end was taken: the connection is free


def test_copy_out_raises_an_error_the_server_meets_after_some_rows(pg: psycopg.Connection):
    got = io.BytesIO()
    with pytest.raises(psycopg.errors.DivisionByZero), \
            pg.cursor().copy("COPY (SELECT 1 / (1000 - i) FROM generate_series(1, 2000) i) TO STDOUT") as copy:
        copy_out(copy, got)
    assert got.getvalue().count(b"\n") == 999
    assert pg.execute("SELECT 1").fetchone() == (1,)
