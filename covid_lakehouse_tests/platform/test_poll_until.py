"""lib.clock.poll_until, the one poll-until-ready loop of the connectors (CleverTap "not ready" batches
and counts, Facebook report runs): bounded by a deadline on the injected clock, never sleeping for real."""

from __future__ import annotations

import pytest

from covid_lakehouse.lib.clock import FakeClock, poll_until


class StillPending(Exception):
    def __init__(self, last: object, elapsed: float) -> None:
        super().__init__(f"still {last!r} after {elapsed:.0f}s")


def test_asks_until_done_waiting_between_asks_and_passes_the_previous_answer() -> None:
    clock, asked = FakeClock(), []

    def ask(previous: int | None) -> int:
        asked.append(previous)
        return 0 if previous is None else previous + 1

    assert poll_until(ask, lambda n: n == 3, clock=clock, every_s=2.0, within_s=60.0, timed_out=StillPending) == 3
    assert asked == [None, 0, 1, 2] and clock.sleeps == [2.0, 2.0, 2.0]


def test_an_answer_ready_at_once_never_waits() -> None:
    clock = FakeClock()

    assert poll_until(lambda _: "done", lambda a: a == "done", clock=clock, every_s=5.0, within_s=1.0,
                      timed_out=StillPending) == "done"
    assert clock.sleeps == []


def test_gives_up_before_a_wait_that_would_end_past_the_deadline() -> None:
    clock = FakeClock()

    with pytest.raises(StillPending, match=r"still 'running' after 30s"):
        poll_until(lambda _: "running", lambda a: False, clock=clock, every_s=10.0, within_s=35.0, timed_out=StillPending)
    assert clock.sleeps == [10.0, 10.0, 10.0]


def test_time_spent_asking_counts_against_the_deadline() -> None:
    clock = FakeClock()

    def slow_ask(_: object) -> str:
        clock.advance(20.0)  # a slow call: the deadline is over asks and waits, not waits alone
        return "running"

    with pytest.raises(StillPending, match=r"after 50s"):
        poll_until(slow_ask, lambda a: False, clock=clock, every_s=10.0, within_s=45.0, timed_out=StillPending)
    assert clock.sleeps == [10.0]


def test_an_answer_that_will_never_get_better_stops_the_poll() -> None:
    def done(answer: str) -> bool:
        if answer == "failed":
            raise RuntimeError("job failed")
        return answer == "ok"

    clock = FakeClock()
    with pytest.raises(RuntimeError, match="job failed"):
        poll_until(lambda _: "failed", done, clock=clock, every_s=1.0, within_s=60.0, timed_out=StillPending)
    assert clock.sleeps == []
