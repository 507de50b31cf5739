"""A staging worker (the copier, the merge) ended while interrupts keep coming: the run's thread hands it
its end marker once, and waits for it before the interrupt goes on (the caller then hands the worker's
connection back to the pool, which must not happen while the worker still runs on it). Interrupts are
real signals (SIGINT raising KeyboardInterrupt), sent to the run's thread where the test needs them: no
sleep, no timing."""

import signal
import threading
from collections import deque

import pytest

from covid_lakehouse.defs.marketing.load import WorkerThread, WorkQueue
from covid_lakehouse_tests.platform.support import sigint_raises


def _interrupt(thread: int) -> None:
    """SIGINT to ``thread``: raised at once when it is this one (pthread_kill checks for signals)."""
    signal.pthread_kill(thread, signal.SIGINT)


def test_a_second_interrupt_while_the_worker_is_wound_down_still_waits_for_it() -> None:
    """The first interrupt lands while the run's thread waits for the worker, which waits where no
    interrupt reaches it (as on a lock in the server) until abandon lets it go; a second lands in abandon.
    On the code before, the second went on at once, the worker still running."""
    main, release, work = threading.get_ident(), threading.Event(), WorkQueue()

    def stuck() -> None:
        assert work.get() is None  # its end marker: the run's thread is in end()
        _interrupt(main)
        release.wait()

    def abandon() -> None:
        abandoned.append(True)
        if len(abandoned) == 1:
            _interrupt(main)  # raised here, before the worker is let go
        release.set()

    abandoned: list[bool] = []
    worker = WorkerThread(stuck, "stuck-worker")
    try:
        with sigint_raises(KeyboardInterrupt), pytest.raises(KeyboardInterrupt) as raised:
            worker.end(work, abandon)
        running = worker.running
    finally:
        release.set()
    assert not running
    assert abandoned == [True, True]
    assert list(work.queue) == []
    assert raised.value.__notes__ == ["stuck-worker: 1 further interrupt(s) while it was wound down; "
                                      "waited for it all the same"]


class _InterruptedOnceQueued(deque):
    """A queue's deque whose first end marker's append is followed by SIGINT to the run's thread: an
    interrupt landing right after the marker was queued, before whoever queued it learnt it was."""

    def __init__(self, thread: int) -> None:
        super().__init__()
        self._thread, self._sent = thread, False

    def append(self, item) -> None:
        super().append(item)
        if item is None and not self._sent:
            self._sent = True
            _interrupt(self._thread)


def test_an_interrupt_right_after_the_end_marker_was_queued_queues_no_second() -> None:
    """On the code before, the interrupt (inside put(), after its append) left ``handed`` False, and the
    wind-down put a second end marker, left in the queue after the worker ended."""
    work = WorkQueue()
    work.queue = _InterruptedOnceQueued(threading.get_ident())
    taken: list[object] = []

    def worker_loop() -> None:
        while (item := work.get()) is not None:
            taken.append(item)

    worker = WorkerThread(worker_loop, "work-loop")
    work.put("a chunk")
    abandoned: list[bool] = []
    with sigint_raises(KeyboardInterrupt), pytest.raises(KeyboardInterrupt):
        worker.end(work, lambda: abandoned.append(True))
    assert not worker.running and abandoned == [True]
    assert taken == ["a chunk"]
    assert list(work.queue) == []  # no second end marker
