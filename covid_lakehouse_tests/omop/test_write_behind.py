"""The provider extract encodes parquet in a thread of its own (lib/memory.py write_behind): the CSV
parser makes the next batch while the last one is written, where one thread did each in turn. The files hold the same rows in the same order, and an
error on either side surfaces. The extract's file dictionary-encodes the columns that repeat values."""

from __future__ import annotations

import signal
import sys
import threading
import time
import weakref

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from covid_lakehouse.defs.omop.extract import PROVIDER_SOURCE, csv_to_parquet
from covid_lakehouse.lib.memory import write_behind

GUARD = 60  # seconds: only bounds a wait on the code before, where the second batch never comes first
DROP_GUARD = 10  # seconds: as GUARD, for code that never drops queued items


class Overlap:
    """Tells whether the producer made its second batch while the writer still held the first."""

    def __init__(self):
        self.second_made = threading.Event()
        self.made = 0
        self.seen: bool | None = None

    def produced(self) -> None:
        self.made += 1
        if self.made == 2:
            self.second_made.set()

    def writing(self) -> None:
        if self.seen is None:  # the first write waits for the second batch (never made meanwhile when serial)
            self.seen = self.second_made.wait(GUARD)


def test_the_extract_parses_its_next_block_while_the_last_is_written(tmp_path, monkeypatch):
    overlap = Overlap()
    open_csv = pacsv.open_csv

    def counting_reader(*args, **kwargs):
        for batch in open_csv(*args, **kwargs):
            overlap.produced()
            yield batch

    class Writer(pq.ParquetWriter):
        def write_batch(self, batch, *args, **kwargs):
            overlap.writing()
            super().write_batch(batch, *args, **kwargs)

    monkeypatch.setattr(pacsv, "open_csv", counting_reader)
    monkeypatch.setattr(pq, "ParquetWriter", Writer)
    lines = [f'{i},"Name {i}",{1000000000 + i},Cardiology,Metro Med,P{i},Cardiology,NPI\n' for i in range(20_000)]
    path = csv_to_parquet(lambda sink: sink.write("".join(lines).encode()), PROVIDER_SOURCE, tmp_path / "p.parquet",
                          block_size=64 << 10)
    assert overlap.seen is True
    written = pq.read_table(path)
    assert written.schema == PROVIDER_SOURCE and written["provider_id"].to_pylist() == list(range(20_000))
    assert written["provider_name"][19_999].as_py() == "Name 19999"


def test_a_failed_write_reaches_the_producer_and_the_producer_never_blocks():
    written = []

    def write(item):
        if item == 3:
            raise OSError("disk full")
        written.append(item)

    with pytest.raises(OSError, match="disk full"), write_behind(write, depth=1) as submit:
        for item in range(1_000):  # far more than the queue holds: it must keep draining
            submit(item)
    assert written == [0, 1, 2]


class Item:
    """A queued item that says when it is freed (dropped, not written)."""

    def __init__(self, n: int, freed: threading.Event | None = None):
        self.n = n
        if freed is not None:
            weakref.finalize(self, freed.set)


def test_a_failed_producer_drops_what_is_queued_and_its_error_propagates():
    """The writer is still writing item 0 when the producer fails with items 1 and 2 queued: they are
    dropped at the failure (item 0's write only returns once they are gone), and never written."""
    written, writing, freed, seen = [], threading.Event(), [threading.Event(), threading.Event()], []

    def write(item):
        if item.n == 0:
            writing.set()
            # DROP_GUARD only bounds the wait on code that keeps the queued items to write them
            seen.extend(event.wait(DROP_GUARD) for event in freed)
        written.append(item.n)

    with pytest.raises(ValueError, match="bad row"), write_behind(write, depth=2) as submit:
        submit(Item(0))
        assert writing.wait(GUARD)
        submit(Item(1, freed[0]))
        submit(Item(2, freed[1]))  # the queue (depth 2) holds both while item 0 is written
        raise ValueError("bad row")
    assert written == [0]  # nothing after the failure
    assert seen == [True, True]  # both were freed while item 0 was still being written
    assert not [t for t in threading.enumerate() if t.name == "write-behind"]  # its thread has ended


def _waiting(thread_id: int):
    """The frame of the thread's wait on a threading.Condition (a queue's put, an Event, a join), or None."""
    frame = sys._current_frames().get(thread_id)
    return frame if frame is not None and frame.f_code is threading.Condition.wait.__code__ else None


def _poll(condition, what: str) -> None:
    deadline = time.monotonic() + GUARD
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {GUARD} s: {what}")
        time.sleep(0.01)  # polling a condition, not synchronizing on a duration


def test_an_interrupt_at_the_exit_stops_and_waits_for_the_writer():
    """Ctrl-C (or a run's termination) while the producer waits at the exit for the writer (item 0 being
    written, item 1 queued): the interrupt is raised only once the writer has ended, so the caller's
    cleanup (closing the parquet writer) never runs beside it, and item 1 is dropped, not written. The
    writer's item 0 ends when the test releases it: at once when the producer is seen waiting again after
    the interrupt, else (the code before: the interrupt left the exit with the writer still running, or
    it was lost in the queue's put) once the producer left, or after GUARD seconds."""
    written, writing, release, events, handled = [], threading.Event(), threading.Event(), [], threading.Event()
    main, waits = threading.get_ident(), []

    def write(item):
        if item == 0:
            writing.set()
            release.wait()
        written.append(item)

    def on_sigint(signum, frame):
        handled.set()
        raise KeyboardInterrupt

    def interrupter():
        try:
            _poll(lambda: writing.is_set() and waits.append(_waiting(main)) is None and waits[-1] is not None,
                  "the producer waiting at the exit")
            signal.pthread_kill(main, signal.SIGINT)
            # a new wait, not the interrupted one unwinding (item 1 must be dropped before item 0 ends)
            _poll(lambda: handled.is_set() and (events or _waiting(main) not in (None, waits[-1])),
                  "the producer waiting again, or gone")
        finally:
            events.append("writer released")
            release.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    helper = threading.Thread(target=interrupter, name="interrupter")
    helper.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            try:
                with write_behind(write, depth=1) as submit:
                    submit(0)
                    assert writing.wait(GUARD)
                    submit(1)  # queued (depth 1) while item 0 is written
            finally:
                events.append("producer left")
                alive = [t.name for t in threading.enumerate() if t.name == "write-behind"]
    finally:
        helper.join()
        signal.signal(signal.SIGINT, previous)
    assert events == ["writer released", "producer left"]
    assert alive == []
    assert written == [0]


def test_a_producer_failing_after_the_writer_reports_both_errors():
    """A full disk on one block, then a parse error on the next: the parse error propagates, with the
    writer's failure noted on it (it was lost)."""
    def write(item):
        raise OSError("disk full")

    with pytest.raises(ValueError, match="bad row") as raised, write_behind(write, depth=1) as submit:
        try:
            # once the queue (depth 1) took item 2, the writer has taken item 1: item 0 has failed
            for item in range(3):
                submit(item)
        except OSError:
            pass  # or the failure reached the producer already
        raise ValueError("bad row")
    assert any("disk full" in note for note in raised.value.__notes__)


def test_a_writer_failing_after_the_producer_is_noted_too():
    """The producer fails while item 0 is being written, and that write then fails too (the disk filled):
    the producer's error propagates with the writer's noted (the code before looked for it before the
    writer had ended, and lost it). Item 0's write fails once item 1 was dropped, i.e. after the failure."""
    writing, dropped = threading.Event(), threading.Event()

    def write(item):
        if item.n == 0:
            writing.set()
            dropped.wait(DROP_GUARD)  # only bounds the wait on code that never drops item 1
            raise OSError("disk full")

    with pytest.raises(ValueError, match="bad row") as raised, write_behind(write, depth=1) as submit:
        submit(Item(0))
        assert writing.wait(GUARD)
        submit(Item(1, dropped))
        raise ValueError("bad row")
    assert dropped.is_set()
    assert any("disk full" in note for note in getattr(raised.value, "__notes__", []))


def test_a_depth_below_one_is_refused_not_unbounded():
    with pytest.raises(ValueError, match="depth must be at least 1, got 0"), write_behind(print, depth=0):
        pass


def test_the_extract_dictionary_encodes_the_columns_that_repeat_values_only(tmp_path):
    lines = [f'{i},"Name {i}",{1000000000 + i},Cardiology,Metro Med,P{i},Cardio,NPI\n' for i in range(5_000)]
    path = csv_to_parquet(lambda sink: sink.write("".join(lines).encode()), PROVIDER_SOURCE, tmp_path / "p.parquet")
    group = pq.ParquetFile(path).metadata.row_group(0)
    encoded = {group.column(i).path_in_schema: group.column(i).encodings for i in range(group.num_columns)}
    dictionary = {name for name, encodings in encoded.items() if any("DICTIONARY" in e for e in encodings)}
    # fewer bytes for DuckDB to scan; a unique column's dictionary would only be built to be dropped
    assert dictionary == {"specialty", "care_site", "specialty_source_value", "provider_id_source_value"}
    assert pq.read_table(path)["specialty"].to_pylist() == ["Cardiology"] * 5_000  # the same values
