"""Time as a dependency: code that waits or stamps times takes a Clock, so tests never really sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    def now(self) -> datetime:
        """Current time, timezone-aware UTC."""
        ...

    def sleep(self, seconds: float) -> None: ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; only differences are meaningful."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that only moves when told: sleep() advances it at once and records the request."""

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2024, 1, 1, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start")
        self._now = start.astimezone(UTC)
        self._monotonic = 0.0
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self._now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(max(seconds, 0.0))

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        """Move time forward without recording a sleep (time passing elsewhere)."""
        self._now += timedelta(seconds=seconds)
        self._monotonic += seconds


def poll_until(ask: Callable[[T | None], T], done: Callable[[T], bool], *, clock: Clock, every_s: float,
               within_s: float, timed_out: Callable[[T, float], BaseException]) -> T:
    """Ask until ``done(answer)``, waiting ``every_s`` on ``clock`` between asks, all within ``within_s``
    seconds from the first ask (asks included): when the next wait would end past that deadline,
    ``timed_out(last answer, seconds elapsed)`` is raised instead of waiting for nothing.

    ``ask`` gets the previous answer (None the first time), for APIs whose first call differs from the
    polls (start a job, then ask for it by id). ``done`` may raise for an answer that will never get
    better (a failed job)."""
    deadline = clock.monotonic() + within_s
    answer = ask(None)
    while not done(answer):
        if clock.monotonic() + every_s > deadline:
            raise timed_out(answer, within_s - (deadline - clock.monotonic()))
        clock.sleep(every_s)
        answer = ask(answer)
    return answer
