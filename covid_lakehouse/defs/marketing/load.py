"""How every marketing load reaches the warehouse: rows are COPYed into a private staging table while
the source is read (each COPY commits on its own: except with ``stream=True`` below, no transaction
stays open during rate-limit waits), then audited and merged on the natural key in ONE transaction (platform write-audit-publish).

A load with ``stream=True`` (Facebook: a million rows over a 28-day look-back) does not leave the whole
merge for after the last page: the publish transaction opens with the first staged chunk, takes the
target's lock (waiting at most MARKETING_PUBLISH_LOCK_TIMEOUT_S) and merges each chunk as soon as it is
staged, while the source is still read; the audits follow the chunks too (``FoldedAudit``: each staged
chunk is added to their running state), so after the last page only their verdicts are left, and only
then does the transaction commit (or roll back every chunk merged so far). One commit, as before; the
price is the target's write lock held for the read (readers are not blocked; other publishers of the
table wait, as they would for a merge anyway). Once the run is failing, chunks still queued are dropped.

Runs whose look-back windows overlap can commit out of order (a slow or retried run read the API before
another run that already merged). ``SliceVersions`` records when each account/customer and day was
fetched; the merge claims those slices in marketing.source_versions and leaves out the slices whose
published pages were fetched later, so restated values never go back to older ones. Sources whose rows
carry their own version (``TableSpec.row_version``: RDS ``updated_at``) leave out every staged row older
than the published one."""

import logging
import queue
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

import dagster as dg
import psycopg
import pyarrow as pa
from psycopg import sql

from covid_lakehouse.defs.marketing.tables import SCHEMA, TableSpec
from covid_lakehouse.lib.postgres import (
    PostgresResource,
    UpsertCounts,
    cancel_quietly,
    execute_within_lock_timeout,
    lock_holders,
    table_ident,
)
from covid_lakehouse.lib.settings import setting
from covid_lakehouse.lib.source_versions import SourceVersion, Superseded, claim
from covid_lakehouse.lib.staging import claim_staging, sweep_staging
from covid_lakehouse.lib.wap import Audit, AuditResult, BlockingAuditFailed, audit_or_raise, run_audits

STAGING_SCHEMA = "marketing_staging"  # created by migration 0003; analysts cannot read it
STAGING_STAMP = "%Y%m%d%H%M%S"
VERSIONS = table_ident("marketing", "source_versions")  # migration 0006
AUDITS_AT_ONCE = 2  # after a streamed merge: the audits a fold could not answer scan the staging table, two at a time

log = logging.getLogger(__name__)
PUBLISH_LOCK_TIMEOUT_S = setting(
    "MARKETING_PUBLISH_LOCK_TIMEOUT_S", "how long a marketing publish waits for its table's "
    "write lock while another session holds the table, before the run fails naming the holders", default="600",
    scope="marketing")


class PublishLockTimeout(dg.Failure):
    """Another session held the target's lock longer than MARKETING_PUBLISH_LOCK_TIMEOUT_S: nothing was
    published; a rerun publishes once the holder (named in the message) has committed or ended."""

    def __init__(self, message: str) -> None:
        super().__init__(description=message)


def publish_lock_timeout_ms() -> int:
    """MARKETING_PUBLISH_LOCK_TIMEOUT_S in milliseconds (at least 1). A value that is no finite number of
    at least 0.001 is a SettingError naming the setting and the value: a step checks it as it starts, not
    at the merge, after the whole read."""
    return max(1, round(PUBLISH_LOCK_TIMEOUT_S.number(minimum=0.001) * 1000))


def lock_for_publish(conn: psycopg.Connection, spec: TableSpec) -> None:
    """The target's write lock for the publish transaction on ``conn`` (SHARE ROW EXCLUSIVE: readers are not
    blocked), waited for at most MARKETING_PUBLISH_LOCK_TIMEOUT_S: publishers of the table take turns from
    here to commit. A session holding the table longer fails the run with PublishLockTimeout naming the
    table, the setting and the holders, instead of a run (and its cancel) waiting forever."""
    timeout_ms = publish_lock_timeout_ms()
    lock = sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(spec.ident)
    if not execute_within_lock_timeout(conn, lock, timeout_ms):  # the transaction stays usable for the message
        relation = f"{SCHEMA}.{spec.name}"
        holders = lock_holders(conn, relation)
        raise PublishLockTimeout(
            f"{spec.name}: could not lock {relation} to publish within {timeout_ms / 1000:g}s "
            f"({PUBLISH_LOCK_TIMEOUT_S.name}); held by " + ("; ".join(holders) or "a session that has since ended")
            + ". Nothing was published; rerun when that session has committed or ended.")


@dataclass(frozen=True)
class FoldedAudit(Audit):
    """An audit a streamed load (StreamingMerge) also answers chunk by chunk, while the source is read, so
    that after the last page only the verdict is left: ``fold(spec)`` makes the running state (audits
    naming the same ``fold`` share one) that every staged chunk is ``add``ed to, ``judge(state, staged)``
    gives the verdict after the last chunk, in the words and metadata ``fn`` gives from the staging table.
    ``fn`` still audits unstreamed loads, and a streamed one whose fold could not follow a chunk."""

    fold: Callable[[TableSpec], Any] | None = None
    judge: Callable[[Any, "Staged"], AuditResult] | None = None


class StagingWriter:
    """The rows of one asset run, COPYed into a private UNLOGGED table in marketing_staging while the
    source is still being read: the warehouse ingests one batch while Python parses the next (as a
    plain fetch-and-COPY script would), and memory holds a few pages, not the load.

    Reader threads ``write`` parsed pages; one copier thread drains them into the table, each COPY
    committed on its own, so no transaction stays open across rate-limit waits. The publish transaction
    audits the table, merges it and drops it; ``close`` drops it when the run fails before that."""

    def __init__(self, warehouse: PostgresResource, spec: TableSpec, max_queued: int = 16,
                 slice_columns: tuple[str, str] | None = None) -> None:
        self._warehouse, self._spec = warehouse, spec
        # the distinct (unit, day) values of the staged rows, collected as they are COPYed: the publish
        # claims them without scanning the whole staging table again (SliceVersions.claim)
        self._slice_columns = slice_columns
        self.slices: set[tuple[Any, Any]] = set()
        self.name = f"{spec.name}__{datetime.now(UTC).strftime(STAGING_STAMP)}_{uuid.uuid4().hex[:8]}"
        self.table = table_ident(STAGING_SCHEMA, self.name)
        with warehouse.connection() as conn:
            sweep_staging(conn, STAGING_SCHEMA)  # staging of runs no longer in progress (killed ones too)
            # no autovacuum: the table lives minutes, and vacuuming it while it fills only competes with the load
            conn.execute(sql.SQL("CREATE UNLOGGED TABLE {} WITH (autovacuum_enabled = off) AS SELECT {} FROM {} WITH NO DATA").format(
                self.table, sql.SQL(", ").join(map(sql.Identifier, spec.staged)), spec.ident))
            claim_staging(conn, self.table)
        self._queue: WorkQueue = WorkQueue(maxsize=max_queued)  # back-pressure on readers
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self.rows = 0
        self.pages = 0
        self._merge: StreamingMerge | None = None
        self._abandoned = False  # the run is failing: queued rows are dropped, neither staged nor merged
        self._folds: dict[Callable[[TableSpec], Any], Any] = {}  # FoldedAudit.fold -> its running state
        self._gave_up: set[Callable[[TableSpec], Any]] = set()
        self._log: logging.Logger | dg.DagsterLogManager = log
        self._copier_conn: psycopg.Connection | None = None  # while the copier holds one (under _lock)
        self._copier = WorkerThread(self._copy_loop, f"stage-{spec.name}")

    def merge_into(self, merge: "StreamingMerge") -> None:
        """From now on every staged chunk is also merged into the target, in ``merge``'s transaction."""
        if self.rows or self.pages:
            raise RuntimeError(f"{self._spec.name}: merge_into must come before the first staged row")
        self._merge = merge

    def fold_audits(self, audits: Sequence[Audit], log: logging.Logger | dg.DagsterLogManager = log) -> None:
        """From now on every staged chunk is also added to the folds of ``audits`` (FoldedAudit): their
        verdicts are ready when the last chunk is staged (``folded``), without a scan of the table. ``log``
        (the run's ``context.log``) is told when a fold gives up and its audits will scan the table."""
        if self.rows or self.pages:
            raise RuntimeError(f"{self._spec.name}: fold_audits must come before the first staged row")
        self._log = log
        for one in audits:
            if isinstance(one, FoldedAudit) and one.fold is not None and one.fold not in self._folds:
                self._folds[one.fold] = one.fold(self._spec)

    def folded(self, audit: Audit) -> Any | None:
        """``audit``'s fold state over every staged row (after ``finish``), or None: not folded, or the fold
        gave up on a chunk (the audit then reads the staging table)."""
        fold = audit.fold if isinstance(audit, FoldedAudit) and audit.judge is not None else None
        return None if fold is None or fold in self._gave_up else self._folds.get(fold)

    def write(self, table: pa.Table, *, pages: int = 0) -> None:
        self._raise_if_failed()
        if table.schema.names != self._spec.staged:  # COPY maps columns by position
            missing = sorted(set(self._spec.staged) - set(table.schema.names))
            if missing:
                raise ValueError(f"{self._spec.name}: rows to stage lack column(s) {missing}")
            table = table.select(self._spec.staged)
        with self._lock:
            self.pages += pages
        if table.num_rows:
            self._queue.put(table)

    def tracks(self, versions: "SliceVersions") -> bool:
        """Whether ``slices`` holds the distinct slices of ``versions``' columns."""
        return self._slice_columns == (versions.unit_column, versions.day_column)

    def flush(self) -> None:
        """Wait until every row written so far is in the table (committed)."""
        try:
            self._queue.join()
        except BaseException:  # interrupted (a run's termination, Ctrl-C): the workers stop what they do
            self.abandon()
            raise
        self._raise_if_failed()

    def finish(self) -> sql.Identifier:
        """No more rows: wait until every written row is in the table; returns the table."""
        self._stop_copier()
        self._raise_if_failed()
        return self.table

    def abandon(self) -> None:
        """The run is failing (the reader raised, or the step is cancelled): rows still queued are dropped,
        neither staged nor merged (the publish transaction rolls back anyway), and the statements the
        workers run are cancelled in the server: a COPY the server stalls (on a lock, a dead link) would
        otherwise hold the step's end, which joins them, until it let go."""
        self._abandoned = True
        with self._lock:  # the connection is not handed back to the pool (and to others) while cancelled
            if self._copier_conn is not None:
                cancel_quietly(self._copier_conn)
        if self._merge is not None:
            self._merge.abandon()

    def finish_quietly(self) -> None:
        """Stop the copier (waiting for its current chunk), whatever went wrong: errors are reported elsewhere."""
        self._stop_copier()

    def close(self) -> None:
        self._stop_copier()
        with self._warehouse.connection() as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self.table))

    def _stop_copier(self) -> None:
        try:
            if self._copier.running:
                self._copier.end(self._queue, self.abandon)  # the copier always consumes (it drains after an error too)
        except BaseException:  # interrupted: abandoned also when it landed outside the copier's wait
            self.abandon()
            raise
        finally:  # the merge's connection goes back to the pool next: its thread must have ended
            if self._merge is not None:
                self._merge.wait()  # every chunk the copier handed over is merged (or dropped); _raise_if_failed says why not

    def _raise_if_failed(self) -> None:
        # the merge's own failure first, as it is (e.g. PublishLockTimeout after the last page), not as staging's
        if self._merge is not None and self._merge.failure is not None:  # e.g. its lock wait expired: stop reading
            raise self._merge.failure
        if self._error is not None:
            raise RuntimeError(f"{self._spec.name}: staging rows in {STAGING_SCHEMA}.{self.name} failed: "
                               f"{self._error}") from self._error

    def _next_tables(self) -> tuple[list[pa.Table], bool]:
        """Waits for one table, then takes whatever else is queued (one COPY for all): (tables, finished)."""
        tables: list[pa.Table] = []
        item = self._queue.get()
        while item is not None:
            tables.append(item)
            if len(tables) >= self._queue.maxsize:
                return tables, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return tables, False
        return tables, True

    def _copy_loop(self) -> None:
        taken, finished = 0, False  # taken: tables not yet marked done (the end marker is no task)
        try:
            with self._warehouse.connection() as conn, self._held_by_copier(conn):
                while not finished:
                    tables, finished = self._next_tables()
                    taken = len(tables)
                    if tables and self._abandoned:
                        tables = []  # dropped: the run is failing
                    if tables:
                        # an UNLOGGED table is emptied by a crash anyway: waiting for the commit's WAL flush buys nothing
                        conn.execute("SET LOCAL synchronous_commit = off")
                        same = all(t.schema.equals(tables[0].schema) for t in tables[1:])
                        data = pa.concat_tables(tables) if same else [b for t in tables for b in t.to_batches()]
                        self.rows += PostgresResource.copy_arrow(conn, self.table, data, columns=self._spec.staged)
                        conn.commit()  # idle between batches, never idle in transaction
                        found = _distinct(tables, self._slice_columns) if self._slice_columns else None
                        if found:
                            self.slices.update(found)
                        if self._merge is not None:
                            self._merge.submit(data, found)
                        self._fold(tables)  # while the merge thread merges the chunk
                    self._done(taken)
                    taken = 0
        except BaseException as err:  # reported to the readers, to flush and to finish
            self._error = err
            if self._merge is not None:
                self._merge.abandon()  # the run fails: the chunks waiting for the merge are not merged
            self._done(taken)
            if not finished:
                while self._queue.get() is not None:  # keep consuming: no reader blocks on a full queue
                    self._done(1)

    @contextmanager
    def _held_by_copier(self, conn: psycopg.Connection) -> Iterator[None]:
        """``conn`` is the copier's (abandon cancels what it runs) until it goes back to the pool."""
        with self._lock:
            self._copier_conn = conn
        try:
            yield
        finally:
            with self._lock:
                self._copier_conn = None

    def _fold(self, tables: list[pa.Table]) -> None:
        for fold, state in self._folds.items():
            if fold in self._gave_up:
                continue
            try:
                for table in tables:
                    state.add(table)
            except Exception as err:  # the audit scans the staging table instead: slower, same verdict
                self._log.warning("%s: the fold %s could not follow a staged chunk (%s: %s); its audits will read %s.%s",
                            self._spec.name, getattr(fold, "__qualname__", fold), type(err).__name__, err,
                            STAGING_SCHEMA, self.name)
                self._gave_up.add(fold)

    def _done(self, n: int) -> None:
        for _ in range(n):
            self._queue.task_done()

    def __enter__(self) -> "StagingWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None:  # e.g. an interrupt while a reader waited to queue rows
            self.abandon()
        self.close()


class WorkerThread:
    """A daemon thread running ``target``, and whether it still runs (an Event set as it returns): waited
    for with that Event, not Thread.join, which an interrupt (a signal handler's exception) leaves marking
    the thread as ended while it still runs (Python 3.11): is_alive() and a second join then lie."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self._ended = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(target,), name=name, daemon=True)
        self.thread.start()

    def _run(self, target: Callable[[], None]) -> None:
        try:
            target()
        finally:
            self._ended.set()

    @property
    def running(self) -> bool:
        return not self._ended.is_set()

    def end(self, work: "WorkQueue", abandon: Callable[[], None]) -> None:
        """Hand the worker its end marker (None) on ``work`` and wait for it. Interrupted while waiting (a
        run's termination raises DagsterExecutionInterruptedError in the main thread; Ctrl-C), the worker
        may be waiting on the server (a COPY stalled on a lock), which no interrupt reaches: ``abandon``
        cancels what it runs there and has it drop what is queued, it is waited for (whatever further
        interrupts come meanwhile: ``_wind_down``), and the interrupt goes on."""
        try:
            work.end()
            self._ended.wait()
        except BaseException as interrupt:
            self._wind_down(work, abandon, interrupt)
            raise
        finally:
            if not self.running:
                self.thread.join()  # it has returned: only its thread's last steps are left

    def _wind_down(self, work: "WorkQueue", abandon: Callable[[], None], first: BaseException) -> None:
        """abandon, the end marker, the wait for the worker: each step done to its end, whatever else
        interrupts it (Ctrl-C pressed again, a second termination signal): the caller hands the worker's
        connection back to the pool next, which must not happen while the worker still runs on it. An
        interrupted step is done again (each may be repeated); the later interrupts are counted on
        ``first``, which goes on. A few bytecodes stay unguarded (the call into here, an interrupt's
        handler: it only counts): no Python code can shield itself from a signal handler whole. Not bounded: abandon cancels the worker's statement in the server, or shuts its socket down
        when the cancel cannot reach it."""
        steps, done, again, faults = (abandon, work.end, self._ended.wait), 0, 0, []
        while done < len(steps):
            try:
                while done < len(steps):
                    try:
                        steps[done]()
                    except Exception as err:  # noqa: BLE001 - a fault of the step, not an interrupt: not retried
                        faults.append(f"{getattr(steps[done], '__name__', steps[done])} failed: {err!r}")
                    done += 1
            except BaseException:  # another interrupt: nothing but a count here, the step is done again
                again += 1
        for fault in faults:
            first.add_note(f"{self.thread.name}: winding down, {fault}")
        if again:
            first.add_note(f"{self.thread.name}: {again} further interrupt(s) while it was wound down; "
                           "waited for it all the same")


class WorkQueue(queue.Queue):
    """A worker's queue, ended by None (its end marker): handed at most once (``end``), and whether it was
    is known from the queue itself, whatever interrupted the hand-off. The marker is no task: ``join``
    waits for the work queued, not for it, and the worker does not mark it done."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self._end_taken = False  # the worker took the end marker (set as it takes it, under the queue's lock)

    def _get(self) -> Any:
        item = super()._get()
        if item is None:
            self._end_taken = True
        return item

    def end(self) -> None:
        """Queue the end marker, unless it already is queued or was taken: the worker never sees two. Not
        put(): an interrupt may land inside put() after it queued the item, not knowing it did; here it is
        queued by one call (a deque's append) or not at all. Past maxsize (it never waits for room: the
        worker may be stuck), and the worker woken each call: a call interrupted after queuing it is
        completed by the next (a spurious wake-up costs get() nothing)."""
        with self.not_empty:
            if not self._end_taken and not any(item is None for item in self.queue):
                self.queue.append(None)
            self.not_empty.notify()


def _distinct(tables: list[pa.Table], columns: tuple[str, str]) -> set[tuple[Any, Any]]:
    found: set[tuple[Any, Any]] = set()
    for table in tables:
        pairs = table.select(list(columns)).group_by(list(columns)).aggregate([])
        found.update(zip(*(pairs.column(c).to_pylist() for c in columns), strict=True))
    return found


class StreamingMerge:
    """Merges each chunk a StagingWriter staged into the target as it comes, inside ``conn``'s transaction,
    which stays open (uncommitted) until the run's audits passed: the merge's index work overlaps the
    read instead of following it. A chunk's slices are claimed in SliceVersions the first time they
    appear. A chunk of keys the target lacks is COPYed straight into it (``_insert_new``); any other
    goes through a temporary table (COPYed again, from the same Arrow data: the staging table has no
    index to find a chunk's rows by) and INSERT .. ON CONFLICT, superseded slices left out.

    A merge error (e.g. a duplicate key) stops the merging but not the staging: the audits still run on
    every staged row and say why, and the transaction rolls back."""

    def __init__(self, conn: psycopg.Connection, spec: TableSpec, versions: "SliceVersions | None" = None, *,
                 key_unique_audit: str | None = None) -> None:
        self.conn, self._spec, self.versions = conn, spec, versions
        # the audit that checks the staged keys are unique: answered by the primary key when every chunk
        # was COPYed straight into the target (no staged key can then appear twice)
        self._key_unique_audit = key_unique_audit
        self.chunks_merged = 0  # chunks that went through ON CONFLICT (a key already published, or superseded)
        self.counts = UpsertCounts(0, 0, 0)
        self.superseded: dict[tuple[str, date], Superseded] = {}
        self.error: psycopg.Error | None = None
        self._claimed: set[tuple[Any, Any]] = set()
        self._held: set[tuple[Any, Any]] = set()
        self._chunk: sql.Identifier | None = None
        # merged on a thread of its own: the next chunk is COPYed into staging while this one merges
        self._queue: WorkQueue = WorkQueue(maxsize=2)
        self._failure: BaseException | None = None
        self._dropping = threading.Event()  # the run is failing: queued chunks are dropped, not merged
        self._thread = WorkerThread(self._merge_loop, f"merge-{spec.name}")

    def submit(self, data: pa.Table | list[pa.RecordBatch], slices: set[tuple[Any, Any]] | None) -> None:
        """Queue a staged chunk for merging (blocks while two are waiting: back-pressure on the copier)."""
        self._queue.put((data, slices))

    @property
    def failure(self) -> BaseException | None:
        """What broke the merging thread (not a database refusal of a chunk: that is ``error``)."""
        return self._failure

    def abandon(self) -> None:
        """The run is failing: chunks still queued are dropped, not merged (the transaction rolls back), and
        what the merge thread runs is cancelled in the server: its wait for the target's lock (a failing or
        cancelled run does not wait out MARKETING_PUBLISH_LOCK_TIMEOUT_S first), or a chunk's COPY or merge
        the server stalls (a row lock). A cancel reaching an idle connection is ignored by the server."""
        self._dropping.set()
        if self._thread.running:
            cancel_quietly(self.conn)

    def wait(self) -> BaseException | None:
        """Every submitted chunk merged (or skipped after a merge error); returns what broke the merging
        thread, if anything did (the StagingWriter raises it as its own failure)."""
        if self._thread.running:
            self._thread.end(self._queue, self.abandon)
        return self._failure

    def _merge_loop(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._failure is None and self.error is None and not self._dropping.is_set():
                try:
                    self.merge(*item)
                except BaseException as err:  # not a database refusal: raised by wait(); keep consuming
                    self._failure = err

    def begin(self) -> None:
        """The target's lock, then the chunk table: publishers of the table take turns from here to commit
        (each claims its slices against the versions the previous one committed). The lock wait is bounded
        (MARKETING_PUBLISH_LOCK_TIMEOUT_S): a session holding the table fails the run with its name, instead
        of a run (and its cancel) waiting forever."""
        lock_for_publish(self.conn, self._spec)
        self._chunk = PostgresResource.create_staging_like(self.conn, self._spec.ident, f"merge_{self._spec.name}",
                                                           columns=self._spec.staged)

    def merge(self, data: pa.Table | list[pa.RecordBatch], slices: set[tuple[Any, Any]] | None) -> None:
        if self.error is not None:
            return  # the transaction is aborted: it will roll back; the staging goes on for the audits
        try:
            if self._chunk is None:
                self.begin()
            if self.versions is not None:
                if slices is None:
                    raise ValueError(f"{self._spec.name}: a versioned streaming merge needs the staged slices")
                new = slices - self._claimed
                self.superseded.update(self.versions.claim(self.conn, self._spec, self._chunk, new))
                self._claimed |= new
            mine = slices or set()
            if self._spec.row_version is None and not mine & (set(self.superseded) | self._held) and self._insert_new(data):
                return
            self._held |= mine  # slices with published keys: their next chunks go straight to the merge
            self.chunks_merged += 1
            rows = PostgresResource.copy_arrow(self.conn, self._chunk, data, columns=self._spec.staged)
            counts = self._merge_chunk(_left_out(self._spec, self._chunk, self.versions, self.superseded), rows)
            self.counts = UpsertCounts(self.counts.inserted + counts.inserted, self.counts.updated + counts.updated,
                                       self.counts.unchanged + counts.unchanged)
            self.conn.execute(sql.SQL("TRUNCATE {}").format(self._chunk))
        except psycopg.Error as err:
            self.error = err

    def proves(self, audit: Audit, staged_rows: int) -> AuditResult | None:
        """The outcome of ``audit`` the merge itself established, if it did: the key-uniqueness audit
        passes when every staged row went into the target by COPY under its primary key (a key staged
        twice would have hit that key). Otherwise None: the audit runs on the staged rows."""
        if (audit.name != self._key_unique_audit or self.error is not None or self.chunks_merged
                or self.counts.inserted != staged_rows):
            return None
        return AuditResult(True, f"({', '.join(self._spec.key)}) is unique in the staged rows: all {staged_rows} "
                                 "were COPYed into the table under its primary key")

    def _insert_new(self, data: pa.Table | list[pa.RecordBatch]) -> bool:
        """A chunk of keys the target does not hold yet (a first load, a backfill, a new day) is COPYed
        straight into it, as a plain load would; a key it holds already undoes that (a savepoint) and the
        chunk is merged instead. Whether the chunk inserted its rows."""
        try:
            with self.conn.transaction():  # a savepoint inside the open publish transaction
                rows = PostgresResource.copy_arrow(self.conn, self._spec.ident, data, columns=self._spec.staged)
        except psycopg.errors.UniqueViolation:
            return False
        self.counts = UpsertCounts(self.counts.inserted + rows, self.counts.updated, self.counts.unchanged)
        return True

    def _merge_chunk(self, left_out: sql.Composable | None, rows: int) -> UpsertCounts:
        """INSERT .. ON CONFLICT on the key, changed rows only updated: each chunk row is looked up in the
        target's unique index. (The set-based UPDATE + INSERT of ``PostgresResource.upsert`` hashes the
        whole target: right once per run, but a chunk's cost then grows with the target; measured 0.2 s
        to 1.4 s per 10,000-row chunk over a million-row load.)"""
        spec, ident = self._spec, sql.Identifier
        touch = _touch(spec)
        columns = (*spec.key, *spec.values, *touch)
        where = sql.SQL(" WHERE {}").format(left_out) if left_out is not None else sql.SQL("")
        inserted, updated, merged = self.conn.execute(sql.SQL(
            "WITH m AS (INSERT INTO {target} AS t ({columns}) SELECT {select} FROM {chunk}{where} "
            "ON CONFLICT ({keys}) DO UPDATE SET {sets} WHERE ({target_row}) IS DISTINCT FROM ({new_row}) "
            "RETURNING t.xmax = 0 AS inserted) "
            "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted), "
            "(SELECT count(*) FROM {chunk}{where}) FROM m").format(
            target=spec.ident, chunk=self._chunk, where=where,
            columns=sql.SQL(", ").join(map(ident, columns)),
            select=sql.SQL(", ").join([ident(c) for c in (*spec.key, *spec.values)] + list(touch.values())),
            keys=sql.SQL(", ").join(map(ident, spec.key)),
            sets=sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=ident(c)) for c in (*spec.values, *touch)),
            target_row=sql.SQL(", ").join(sql.SQL("t.{}").format(ident(c)) for c in spec.values),
            new_row=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(ident(c)) for c in spec.values))).fetchone()
        return UpsertCounts(inserted, updated, (merged if left_out is not None else rows) - inserted - updated)


def _touch(spec: TableSpec) -> dict[str, sql.Composable]:
    """Columns a merge sets on inserted and changed rows only: the lineage, and when the row last changed."""
    return {**{c: sql.Identifier(c) for c in spec.lineage}, "updated_at": sql.SQL("now()")}


def _upsert(conn: psycopg.Connection, spec: TableSpec, source: sql.Composable, left_out: sql.Composable | None,
            rows: int) -> UpsertCounts:
    return PostgresResource.upsert(conn, target=spec.ident, source=source, key_columns=spec.key,
                                   value_columns=spec.values, touch_columns=_touch(spec),
                                   source_filter=left_out, source_rows=None if left_out is not None else rows)


@dataclass
class Staged:
    """What an audit sees: the open transaction, the staging table, what the API reported, and what the
    read noticed on the way (e.g. the API version in use and its warnings). ``conn`` is None for a
    FoldedAudit's ``judge``: its verdict comes from the fold, no table is read."""

    conn: psycopg.Connection | None
    staging: sql.Identifier
    spec: TableSpec
    reported: dict[Any, Any] = field(default_factory=dict)
    notices: dict[str, Any] = field(default_factory=dict)


class SliceVersions:
    """When a run fetched each (unit, day) of its source: ``fetching`` is called as the slice's first
    request goes out (reader threads write distinct keys). The staged rows name their slice in
    ``unit_column`` / ``day_column``; a staged slice never announced counts as fetched when the read began
    (the earliest the run can have seen it). ``replay``: an operator reloading old pages on purpose."""

    def __init__(self, identity: str, unit_column: str, day_column: str, *, replay: bool = False) -> None:
        self.identity, self.unit_column, self.day_column, self.replay = identity, unit_column, day_column, replay
        self.started = datetime.now(UTC)
        self._fetched: dict[tuple[str, date], datetime] = {}

    def fetching(self, unit: str, day: date) -> None:
        self._fetched[(unit, day)] = datetime.now(UTC)

    def version(self, unit: str, day: date) -> SourceVersion:
        return SourceVersion(self.identity, self._fetched.get((unit, day), self.started), self.replay)

    def claim(self, conn: psycopg.Connection, spec: TableSpec, staging: sql.Composable,
              staged_slices: set[tuple[Any, Any]] | None = None) -> dict[tuple[str, date], Superseded]:
        """Claim every staged slice (in key order: concurrent claimers never wait on each other in a
        cycle); the slices already published from a later fetch, with that version. ``staged_slices``:
        the slices the StagingWriter saw, instead of a scan of the staging table."""
        if staged_slices is not None:
            # units are digit strings (account / customer ids): Python's order is the database's
            slices = sorted((((None if u is None else str(u)), d) for u, d in staged_slices),
                            key=lambda s: (s[0] is None, s[0] or "", s[1] is None, s[1] or date.min))  # NULLs last, as SQL
        else:
            slices = conn.execute(sql.SQL("SELECT DISTINCT {u}::text, {d} FROM {s} ORDER BY 1, 2").format(
                u=sql.Identifier(self.unit_column), d=sql.Identifier(self.day_column), s=staging)).fetchall()
        now = conn.execute("SELECT now()").fetchone()[0]
        superseded = {}
        for unit, day in slices:
            newer = claim(conn, VERSIONS, {"source": spec.name, "unit": unit, "day": day}, self.version(unit, day), now)
            if newer is not None:
                superseded[(unit, day)] = newer
        return superseded

    def left_out(self, superseded: dict[tuple[str, date], Superseded]) -> sql.Composable | None:
        """The merge's source filter: every staged row but those of superseded slices."""
        if not superseded:
            return None
        return sql.SQL("({}::text, {}) NOT IN ({})").format(
            sql.Identifier(self.unit_column), sql.Identifier(self.day_column),
            sql.SQL(", ").join(sql.SQL("({}, {}::date)").format(sql.Literal(u), sql.Literal(d)) for u, d in superseded))


@dataclass(frozen=True)
class Published:
    staged_rows: int
    counts: UpsertCounts
    superseded: dict[tuple[str, date], Superseded] = field(default_factory=dict)  # slices left as they were


def _left_out(spec: TableSpec, staging: sql.Composable, versions: SliceVersions | None,
              superseded: dict[tuple[str, date], Superseded]) -> sql.Composable | None:
    """The condition a merged row of ``staging`` must meet (None: every row): not in a superseded
    slice, not older than the published version of its key."""
    filters = [versions.left_out(superseded) if versions is not None else None,
               _not_older(spec, staging) if spec.row_version is not None else None]
    filters = [f for f in filters if f is not None]
    return sql.SQL(" AND ").join(filters) if filters else None


def _not_older(spec: TableSpec, staging: sql.Composable) -> sql.Composable:
    """Staged rows whose published row is not a newer version of the same key (a run that read the source
    before another run merged a later update must not put the earlier one back)."""
    same_key = sql.SQL(" AND ").join(sql.SQL("t.{c} = {s}.{c}").format(c=sql.Identifier(c), s=staging) for c in spec.key)
    return sql.SQL("NOT EXISTS (SELECT FROM {t} AS t WHERE {same_key} AND t.{v} > {s}.{v})").format(
        t=spec.ident, same_key=same_key, v=sql.Identifier(spec.row_version), s=staging)


def stage_audit_publish(warehouse: PostgresResource, spec: TableSpec, *, audits: Sequence[Audit],
                        asset_key: dg.AssetKey, staged: StagingWriter | None = None,
                        fill: sql.Composable | None = None, fill_params: dict[str, Any] | None = None,
                        reported: dict[Any, Any] | None = None,
                        notices: dict[str, Any] | None = None,
                        versions: SliceVersions | None = None,
                        merging: StreamingMerge | None = None) -> Iterator[dg.AssetCheckResult]:
    """Audit the rows a StagingWriter ``staged`` (dropping its table with the publish) or the result of
    ``fill`` (INSERT .. SELECT into a temporary table), and merge them into the target on its key: new
    rows inserted, changed rows updated, identical rows untouched. Nothing is committed unless every
    blocking audit passed: a failure raises and the merge's transaction rolls back. With ``versions``,
    slices whose published rows come from a later fetch are left out of the merge (``Published.superseded``).
    With ``merging`` (the StreamingMerge ``staged`` fed while the source was read), the rows are merged
    already, in ``merging``'s open transaction: only the audits are left, and the caller commits that
    transaction when this returns (the writer drops its table after that commit).
    Returns (via StopIteration) a Published."""
    if (staged is None) == (fill is None):
        raise ValueError("stage_audit_publish needs exactly one of staged= or fill=")
    if merging is not None:
        if staged is None:
            raise ValueError("stage_audit_publish: merging= goes with staged=")
        staging = staged.finish()  # the copier has merged every chunk

        def audit(one: Audit) -> tuple[list[dg.AssetCheckResult], list]:
            proved = merging.proves(one, staged.rows)
            if proved is not None:
                return run_audits([replace(one, fn=lambda _: proved)], None, asset_key=asset_key)
            state = staged.folded(one)
            if state is not None:  # folded chunk by chunk while the rows were staged: only the verdict is left,
                judge = one.judge  # and it reads no table: no connection is checked out for it
                return run_audits([replace(one, fn=lambda on: judge(state, on))],
                                  Staged(None, staging, spec, reported or {}, notices or {}), asset_key=asset_key)
            with warehouse.connection() as own:  # the staged rows are committed: any session reads them
                return run_audits([one], Staged(own, staging, spec, reported or {}, notices or {}), asset_key=asset_key)

        # what is left after the last page: the folds' verdicts, and a scan for each audit no fold answered
        with ThreadPoolExecutor(max_workers=AUDITS_AT_ONCE, thread_name_prefix=f"audit-{spec.name}") as pool:
            outcomes = list(pool.map(audit, audits))
        results = [r for done, _ in outcomes for r in done]
        failures = [f for _, failed in outcomes for f in failed]
        yield from results
        if failures:
            raise BlockingAuditFailed(asset_key.to_user_string(), failures) from merging.error
        if merging.error is not None:
            raise merging.error
        return Published(staged.rows, merging.counts, merging.superseded)
    superseded: dict[tuple[str, date], Superseded] = {}

    def merge(conn: psycopg.Connection, staging: sql.Composable, rows: int) -> UpsertCounts:
        # the table lock first, bounded (the upsert's own LOCK TABLE then finds it held): publishers of this
        # table take turns, so each claims its slices against the versions the previous one committed
        lock_for_publish(conn, spec)
        if versions is not None:
            known = staged.slices if staged is not None and staged.tracks(versions) else None
            superseded.update(versions.claim(conn, spec, staging, known))
        # evaluated after the upsert's table lock: sees the last commit
        return _upsert(conn, spec, staging, _left_out(spec, staging, versions, superseded), rows)

    with warehouse.connection() as conn:
        if staged is not None:
            staging, staged_rows = staged.finish(), staged.rows

            def audit() -> tuple[list[dg.AssetCheckResult], list]:
                with warehouse.connection() as own:  # the staged rows are committed: any session reads them
                    return run_audits(audits, Staged(own, staging, spec, reported or {}, notices or {}), asset_key=asset_key)

            # audits and merge side by side (the warehouse has the cores); the commit waits for the verdict
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"audit-{spec.name}") as pool:
                verdict = pool.submit(audit)
                try:
                    counts, merge_error = merge(conn, staging, staged_rows), None
                except psycopg.Error as err:  # e.g. duplicate keys: the audits say why, in their own words
                    merge_error = err
                results, failures = verdict.result()
            yield from results
            if failures:
                raise BlockingAuditFailed(asset_key.to_user_string(), failures) from merge_error
            if merge_error is not None:
                raise merge_error
            conn.execute(sql.SQL("DROP TABLE {}").format(staging))  # published: the staged rows go with it
        else:
            staging = PostgresResource.create_staging_like(conn, spec.ident, f"stg_{spec.name}", columns=spec.staged)
            conn.execute(sql.SQL("INSERT INTO {} ({}) ").format(
                staging, sql.SQL(", ").join(map(sql.Identifier, spec.staged))) + fill, fill_params)
            staged_rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(staging)).fetchone()[0]
            yield from audit_or_raise(audits, Staged(conn, staging, spec, reported or {}, notices or {}), asset_key=asset_key,
                                      asset_label=asset_key.to_user_string())
            counts = merge(conn, staging, staged_rows)
    return Published(staged_rows, counts, superseded)
