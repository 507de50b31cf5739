"""The warehouse: PostgreSQL through psycopg 3, with a pool, COPY in/out, safe identifiers and the
staging + upsert helper every domain uses for idempotent loads."""

from __future__ import annotations

import io
import os
import re
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import IO

import dagster as dg
import psycopg
import psycopg.generators
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from covid_lakehouse.lib.memory import read_ahead
from covid_lakehouse.lib.settings import redact, redact_text, setting

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class UnsafeIdentifierError(ValueError):
    pass


def validate_identifier(name: str, *, what: str = "identifier") -> str:
    """Identifiers built from data (county, tenant) must be plain lower-case names; they are also
    quoted wherever used, this is the second line of defence and gives a clear error."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise UnsafeIdentifierError(
            f"{what} {name!r} is not a safe SQL identifier (expected ^[a-z_][a-z0-9_]{{0,62}}$)"
        )
    return name


def table_ident(schema: str, table: str) -> sql.Composed:
    return sql.Identifier(validate_identifier(schema, what="schema"), validate_identifier(table, what="table"))


class DsnError(dg.Failure):
    """A connection string is malformed or its server refused: the message never holds the password
    (libpq echoes parts of a malformed DSN, the password included). Not retried: same DSN, same error."""

    def __init__(self, message: str) -> None:
        super().__init__(description=message, allow_retries=False)


DDL_LOCK_TIMEOUT_S = setting(
    "WAREHOUSE_DDL_LOCK_TIMEOUT_S", "how long one DDL statement on a published relation (a view rebuild, an "
    "ADD COLUMN) waits for a lock another session holds before it gives up and tries again", default="10")
DDL_LOCK_ATTEMPTS = setting(
    "WAREHOUSE_DDL_LOCK_ATTEMPTS", "attempts of such a DDL statement (each waiting WAREHOUSE_DDL_LOCK_TIMEOUT_S) "
    "before the step fails, naming the "
    "blocking sessions", default="3")


class DdlLockTimeoutError(dg.Failure):
    """A DDL statement could not get its lock within the bounded attempts: another session (typically
    an analyst's open transaction) holds the relation. Not retried by the step's RetryPolicy: the
    attempts were the retry, and the blocker needs a person (or its idle_in_transaction timeout)."""

    def __init__(self, message: str) -> None:
        super().__init__(description=message, allow_retries=False)


def run_ddl(conn: psycopg.Connection, statement: sql.Composable, *, relation: str, what: str) -> None:
    """Execute a statement that takes a strong lock on ``relation`` ("schema.name") with a lock_timeout
    (WAREHOUSE_DDL_LOCK_TIMEOUT_S) and bounded attempts (WAREHOUSE_DDL_LOCK_ATTEMPTS), each in a
    savepoint so the caller's transaction survives a timeout. Without this, one idle open transaction
    reading the relation makes the statement, and every later reader queued behind it, wait forever.
    Past the attempts: DdlLockTimeoutError naming the sessions holding locks on the relation (pid, user,
    application, state; never their query text, which may hold data)."""
    timeout_ms = max(1, round(DDL_LOCK_TIMEOUT_S.number(minimum=0.001) * 1000))
    attempts = int(DDL_LOCK_ATTEMPTS.number(minimum=1))
    for _ in range(attempts):
        if execute_within_lock_timeout(conn, statement, timeout_ms):
            return  # else the wait itself was the back-off
    holders = lock_holders(conn, relation)
    raise DdlLockTimeoutError(
        f"{what}: could not lock {relation} in {attempts} attempt(s) of {timeout_ms / 1000:g}s "
        f"(WAREHOUSE_DDL_LOCK_TIMEOUT_S, WAREHOUSE_DDL_LOCK_ATTEMPTS); held by "
        + ("; ".join(holders) if holders else "a session that has since ended")
        + ". End or commit that session (an administrator can run SELECT pg_terminate_backend(pid)), then rerun.")


def execute_within_lock_timeout(conn: psycopg.Connection, statement: sql.Composable, timeout_ms: int) -> bool:
    """Execute ``statement`` waiting at most ``timeout_ms`` for its locks, in a savepoint, so that the
    caller's transaction survives a timeout (and keeps its own lock_timeout): True when it ran, False
    when the lock wait expired (``lock_holders`` can then say who held the relation)."""
    previous = conn.execute("SELECT current_setting('lock_timeout')").fetchone()[0]
    try:
        with conn.transaction():  # a savepoint inside the caller's transaction
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{timeout_ms}ms",))
            conn.execute(statement)
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (previous,))
        return True
    except psycopg.errors.LockNotAvailable:
        return False


def lock_holders(conn: psycopg.Connection, relation: str) -> list[str]:
    """Who holds a lock on ``relation`` (sessions other than ours), as 'pid N (user U, application A,
    state S)'. pg_blocking_pids needs a session that is still waiting, so the granted locks are read
    instead; usename and application_name are visible to every role, the query text is never read."""
    rows = conn.execute(
        "SELECT DISTINCT a.pid, a.usename, a.application_name, a.state "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'relation' AND l.granted AND l.relation = to_regclass(%s) "
        "AND l.pid <> pg_backend_pid() ORDER BY a.pid", (relation,)).fetchall()
    return [f"pid {pid} (user {user or '?'}, application {app or '-'!r}"
            + (f", state {state!r}" if state else "") + ")" for pid, user, app, state in rows]


def check_dsn(dsn: str, name: str = "WAREHOUSE_DSN") -> str:
    """``dsn`` if libpq can parse it, else DsnError naming the setting, with the password hidden."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error as err:
        problem = redact_text(str(err).strip(), dsn)
    else:  # libpq parses but does not check numbers until it connects (a pool would retry for 30 s)
        port = str(params.get("port") or "")
        if not port or all(p.strip().isdigit() for p in port.split(",")):
            return dsn
        problem = f"port {port!r} is not a number"
    raise DsnError(f"{name} is not a valid PostgreSQL connection string ({redact(dsn)}): {problem}")


def connect(dsn: str, name: str = "WAREHOUSE_DSN", **kwargs: object) -> psycopg.Connection:
    """psycopg.connect with the password kept out of every error (malformed DSN, refused connection)."""
    check_dsn(dsn, name)
    try:
        return psycopg.connect(dsn, **kwargs)  # type: ignore[arg-type]
    except psycopg.Error as err:
        raise DsnError(f"cannot connect with {name} ({redact(dsn)}): {redact_text(str(err).strip(), dsn)}") from None


# One pool per DSN per process: Dagster builds resources per step, pools must outlive them.
_POOLS: dict[str, ConnectionPool] = {}
_POOLS_LOCK = threading.Lock()


def _pool(dsn: str, max_size: int) -> ConnectionPool:
    with _POOLS_LOCK:
        pool = _POOLS.get(dsn)
        if pool is None or pool.closed:
            check_dsn(dsn)  # before the pool's workers log libpq's error, which echoes the DSN
            pool = ConnectionPool(dsn, min_size=0, max_size=max_size, open=True, timeout=30,
                                  kwargs={"application_name": "covid_lakehouse"})
            _POOLS[dsn] = pool
        return pool


def close_pools() -> None:
    with _POOLS_LOCK:
        for pool in _POOLS.values():
            pool.close()
        _POOLS.clear()


def _csv(data: pa.Table | pa.RecordBatch) -> io.BytesIO:
    buf = io.BytesIO()
    pacsv.write_csv(data, buf, pacsv.WriteOptions(include_header=False))
    return buf


def cancel_quietly(conn: psycopg.Connection, *, timeout: float = 5.0) -> Exception | None:
    """Cancel the statement ``conn`` runs, in the server (from any thread: psycopg's cancel opens a
    connection of its own), waiting at most ``timeout`` seconds for the server to take the request. Never
    raises (it is called while another error is on its way): a cancel that fails (the server unreachable,
    the timeout) shuts the connection's socket down instead, so whatever waits on it ends, its owner
    finding the connection broken, and is returned. Shut down, not closed: closing belongs to the thread
    using the connection; closed from another, its socket's number could go to a new connection while
    that thread still polls it (it hung, or read another connection's bytes)."""
    try:
        conn.cancel_safe(timeout=timeout)
    except Exception as err:  # noqa: BLE001 - the caller's error is what is raised
        try:
            with socket.socket(fileno=os.dup(conn.fileno())) as sock:  # a duplicate: the number stays taken
                sock.shutdown(socket.SHUT_RDWR)
        except (OSError, psycopg.Error):  # already closed
            pass
        return err
    return None


@contextmanager
def _cancelled_at_interrupt(conn: psycopg.Connection, *, close: bool) -> Iterator[None]:
    """At an interrupt (Ctrl-C, or Dagster's DagsterExecutionInterruptedError at a run's termination, a
    BaseException psycopg does not cancel on) while a statement still runs, cancel it in the server:
    ending a COPY would otherwise wait for a server stalled on a row lock. psycopg cancels a Ctrl-C only
    while in its own wait, not while the caller waits elsewhere (for the encoder). ``close``: nothing will
    read the statement's answer (the COPY already ended or failed to): the connection is closed, and the
    pool discards it; so is one whose cancel failed (the server unreachable)."""
    try:
        yield
    except BaseException as err:
        if not isinstance(err, Exception) and conn.info.transaction_status == pq.TransactionStatus.ACTIVE:
            if (cancel_error := cancel_quietly(conn)) is not None:
                err.add_note(f"cancelling the statement failed ({cancel_error!r}): connection closed")
            if close or cancel_error is not None:  # this thread's connection: closed, the COPY's end won't wait
                conn.close()
        raise

# Rows per CSV piece a COPY sends by default, and the encoded pieces that may wait for the COPY (read_ahead:
# depth + 2 pieces alive at most, tens of MB each at 200,000 rows).
COPY_PIECE_ROWS = 200_000
COPY_QUEUE_DEPTH = 2


def _pieces(batches: Iterable[pa.RecordBatch], max_rows: int) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        if batch.num_rows <= max_rows:
            yield batch
        else:
            for start in range(0, batch.num_rows, max_rows):
                yield batch.slice(start, max_rows)


def _send_pieces(copy: psycopg.Copy, data: pa.Table | Iterable[pa.RecordBatch], pieces: Iterator[pa.RecordBatch],
                 max_rows: int) -> int:
    """Write the pieces' CSV to an open COPY; returns the rows sent."""
    if isinstance(data, pa.Table) and data.num_rows <= max_rows:  # one piece: nothing to overlap with
        copy.write(_csv(data).getbuffer())
        return data.num_rows
    # A thread encodes the next piece (pyarrow releases the GIL) while this one sends the last: encoding
    # and the server's parsing overlap instead of taking turns. The COPY stays in the caller's thread, the
    # one an interrupt reaches (a run's main thread): copy_arrow then cancels it in the server, which a
    # COPY waiting in a thread of its own (on a row lock) would never get.
    rows = 0
    encoded = ((piece.num_rows, _csv(piece)) for piece in pieces if piece.num_rows)
    with read_ahead(encoded, depth=COPY_QUEUE_DEPTH, name="copy-encoder") as ready:
        for n, csv in ready:
            copy.write(csv.getbuffer())
            rows += n
            del csv  # not held while the next piece is awaited
    return rows


@dataclass(frozen=True)
class UpsertCounts:
    inserted: int
    updated: int
    unchanged: int

    @property
    def total(self) -> int:
        return self.inserted + self.updated + self.unchanged


# ---- COPY out -> Arrow: one exact round trip for every reader of PostgreSQL's CSV ---------------------
# PostgreSQL writes NULL as an unquoted empty field. With FORCE_QUOTE * every other value is quoted, and
# pyarrow is told that only an unquoted empty field is NULL: its default null words (NA, N/A, NULL, null,
# nan, ...) would turn real text into NULL, and '' must stay ''.
COPY_OUT_OPTIONS = sql.SQL("(FORMAT csv, FORCE_QUOTE *, ENCODING 'UTF8')")
COPY_OUT_OPTIONS_WITH_HEADER = sql.SQL("(FORMAT csv, HEADER, FORCE_QUOTE *, ENCODING 'UTF8')")


def copy_out_sql(source: sql.Composable, *, header: bool = False) -> sql.Composed:
    """``COPY <source> TO STDOUT`` in the CSV dialect :func:`copy_csv_options` reads back exactly;
    ``source`` is ``table (columns)`` or ``(query)``."""
    return sql.SQL("COPY {} TO STDOUT {}").format(source, COPY_OUT_OPTIONS_WITH_HEADER if header else COPY_OUT_OPTIONS)


def copy_out(copy: psycopg.Copy, sink: IO[bytes]) -> None:
    """Every row of ``copy`` (a COPY TO, one CopyData message a row) into ``sink``. The rows libpq has
    already received are taken from it in a plain loop; only when it holds none does psycopg's read
    wait for the next (interruptible, as before). psycopg's read runs a generator in its wait loop for
    every row, which cost more CPU than the rest of omop's extract (figures: docs/omop.md). The cursor's
    rowcount is not set (nothing reads it), and the Copy must not be read after this returns."""
    pgconn = copy.connection.pgconn
    while True:
        nbytes, data = pgconn.get_copy_data(1)  # 1: never blocks (0: nothing received yet)
        if nbytes > 0:
            sink.write(data)
        elif nbytes == 0:
            if not (data := copy.read()):  # it waits, then takes the next row, or the end and its result
                return
            sink.write(data)
        else:  # -1: the end, already received: its result checked as psycopg's read checks it
            # (fetch_many and wait are psycopg 3 internals, not its documented API: test_copy_out guards them)
            try:
                result, *_ = copy.connection.wait(psycopg.generators.fetch_many(pgconn))
            except BaseException:
                # Interrupted with the end half read: libpq is past the COPY, so the Copy's exit can no
                # longer cancel and drain it, and the connection would refuse every later statement.
                copy.connection.close()
                raise
            if result.status != pq.ExecStatus.COMMAND_OK:  # e.g. the query failed after some rows
                raise psycopg.errors.error_from_result(result, encoding=copy.connection.info.encoding)
            return


def copy_csv_options(schema: pa.Schema | None = None, *, header: bool = False, block_size: int = 4 << 20,
                     ) -> dict[str, object]:
    """pyarrow.csv read/parse/convert options for :func:`copy_out_sql` output, as keyword arguments of
    ``pacsv.read_csv`` / ``pacsv.open_csv``. ``schema`` names and types the columns (without it the header
    names them and pyarrow infers types); booleans are PostgreSQL's t/f; values may hold newlines."""
    read = (pacsv.ReadOptions(block_size=block_size) if header or schema is None
            else pacsv.ReadOptions(column_names=schema.names, block_size=block_size))
    types = {f.name: f.type for f in schema} if schema is not None else None
    return {
        "read_options": read,
        "parse_options": pacsv.ParseOptions(newlines_in_values=True),
        "convert_options": pacsv.ConvertOptions(
            column_types=types, null_values=[""], true_values=["t"], false_values=["f"],
            strings_can_be_null=True, quoted_strings_can_be_null=False),
    }


class PostgresResource(dg.ConfigurableResource):
    """Warehouse connections. ``dsn`` comes from the WAREHOUSE_DSN environment variable."""

    dsn: str
    pool_size: int = 8


    @classmethod
    def from_env(cls) -> PostgresResource:
        return cls(dsn=dg.EnvVar("WAREHOUSE_DSN"))

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection inside one transaction: committed on success, rolled back on error."""
        with _pool(self.dsn, self.pool_size).connection() as conn:
            yield conn

    # ---- COPY --------------------------------------------------------------------------------
    @staticmethod
    def copy_arrow(conn: psycopg.Connection, target: sql.Composable, data: pa.Table | Iterable[pa.RecordBatch],
                   columns: Sequence[str] | None = None, *, max_rows: int = COPY_PIECE_ROWS) -> int:
        """COPY Arrow data into ``target`` as CSV (pyarrow writes the CSV in C: the fast path), in pieces of
        at most ``max_rows`` rows, a table's and a stream's batches alike (zero-copy slices): the CSV
        buffers in flight are a few pieces, whatever the size of the batches."""
        if max_rows < 1:
            raise ValueError(f"copy_arrow max_rows must be at least 1, got {max_rows}")
        pieces = _pieces(data.to_batches(max_chunksize=max_rows) if isinstance(data, pa.Table) else data, max_rows)
        first = next(pieces, None)
        if first is None:
            return 0
        copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
            target, sql.SQL(", ").join(map(sql.Identifier, columns or first.schema.names)))
        pieces = chain([first], pieces)
        del first  # a slice keeps its whole batch alive: not for the length of the COPY
        # Around the sending (the COPY's end then reads the cancelled statement's answer) and around the
        # COPY's end itself (its __exit__ waits for the server's answer, which nothing reads after it).
        with _cancelled_at_interrupt(conn, close=True), conn.cursor() as cur, cur.copy(copy_sql) as copy, \
                _cancelled_at_interrupt(conn, close=False):
            return _send_pieces(copy, data, pieces, max_rows)

    @staticmethod
    def fetch_arrow(conn: psycopg.Connection, query: sql.Composable, params: Sequence | None = None,
                    batch_rows: int = 100_000) -> pa.Table:
        """Run a query and return an Arrow table, types taken from the Python values psycopg gives."""
        with conn.cursor() as cur:
            cur.execute(query, params)
            names = [d.name for d in cur.description]
            chunks = []
            while rows := cur.fetchmany(batch_rows):
                chunks.append(pa.Table.from_pylist([dict(zip(names, r, strict=True)) for r in rows]))
        if not chunks:
            return pa.table({n: pa.array([], pa.null()) for n in names})
        return pa.concat_tables(chunks, promote_options="permissive")

    # ---- staging + upsert ----------------------------------------------------------------------
    @staticmethod
    def create_staging_like(conn: psycopg.Connection, target: sql.Composable, name: str,
                            columns: Sequence[str] | None = None) -> sql.Identifier:
        """A temporary table shaped like ``target`` (gone at commit), for COPY then merge."""
        staging = sql.Identifier(validate_identifier(name, what="staging table"))
        cols = sql.SQL(", ").join(map(sql.Identifier, columns)) if columns else sql.SQL("*")
        conn.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
            staging, cols, target))
        return staging

    @staticmethod
    def upsert(conn: psycopg.Connection, *, target: sql.Composable, source: sql.Composable,
               key_columns: Sequence[str], value_columns: Sequence[str],
               touch_columns: dict[str, sql.Composable] | None = None,
               source_filter: sql.Composable | None = None, source_rows: int | None = None) -> UpsertCounts:
        """Merge ``source`` into ``target`` on the key: new rows inserted, changed rows updated (and their
        ``touch_columns`` set), identical rows untouched, so a rerun writes nothing and load timestamps keep
        meaning "first loaded / last changed".

        Two set-based statements, UPDATE .. FROM then INSERT .. WHERE NOT EXISTS: about twice as fast on
        large loads as INSERT .. ON CONFLICT, which inserts row by row speculatively. To keep that safe the
        target is locked against other writers until commit (SHARE ROW EXCLUSIVE: readers are not blocked),
        so no concurrent merge can insert a key in between. The source's keys must be unique (every caller
        audits that on its staged rows before publishing). ``source_rows``, when the caller knows it, saves
        counting the source again (the rows ``source_filter`` lets through, if both are given)."""
        touch = touch_columns or {}
        ident = sql.Identifier
        where = sql.SQL(" WHERE {}").format(source_filter) if source_filter is not None else sql.SQL("")
        src = sql.SQL("(SELECT {select} FROM {source}{where}) AS src").format(
            select=sql.SQL(", ").join([ident(c) for c in (*key_columns, *value_columns)]
                                      + [sql.SQL("{} AS {}").format(expr, ident(c)) for c, expr in touch.items()]),
            source=source, where=where)
        keys_match = sql.SQL(" AND ").join(sql.SQL("t.{c} = src.{c}").format(c=ident(c)) for c in key_columns)
        conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(target))
        updated = conn.execute(sql.SQL(
            "UPDATE {target} AS t SET {sets} FROM {src} WHERE {keys_match} AND ({target_row}) IS DISTINCT FROM ({src_row})"
        ).format(
            target=target, src=src, keys_match=keys_match,
            sets=sql.SQL(", ").join(sql.SQL("{c} = src.{c}").format(c=ident(c)) for c in (*value_columns, *touch)),
            target_row=sql.SQL(", ").join(sql.SQL("t.{}").format(ident(c)) for c in value_columns),
            src_row=sql.SQL(", ").join(sql.SQL("src.{}").format(ident(c)) for c in value_columns),
        )).rowcount
        columns = sql.SQL(", ").join(map(ident, (*key_columns, *value_columns, *touch)))
        inserted = conn.execute(sql.SQL(
            "INSERT INTO {target} ({columns}) SELECT {columns} FROM {src} WHERE NOT EXISTS (SELECT FROM {target} AS t WHERE {keys_match})"
        ).format(target=target, columns=columns, src=src, keys_match=keys_match)).rowcount
        total = source_rows if source_rows is not None else conn.execute(
            sql.SQL("SELECT count(*) FROM {}{}").format(source, where)).fetchone()[0]
        return UpsertCounts(inserted, updated, total - inserted - updated)

    @staticmethod
    def table_exists(conn: psycopg.Connection, schema: str, table: str) -> bool:
        # to_regclass: a DELETE on a missing table would abort the whole transaction
        qualified = sql.SQL("{}").format(table_ident(schema, table)).as_string(conn)
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (qualified,)).fetchone()[0]

    @staticmethod
    def ensure_schema(conn: psycopg.Connection, schema: str) -> None:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
            sql.Identifier(validate_identifier(schema, what="schema"))))
