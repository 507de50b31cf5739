"""Bounds on what one HTTP call may cost, whatever the server does: decoded bytes, wall-clock time,
redirect hops, and pages of a paging loop.

Read timeouts are per socket read, so a server trickling a byte every few seconds never trips them;
the call deadline is what ends such a call. Decoded bytes are counted as they are decoded (urllib3
decodes gzip at most a read's worth at a time), so a small gzip body that would inflate to gigabytes
fails after the cap and never lands whole in memory or on disk.
"""

from __future__ import annotations

from collections.abc import Hashable

import dagster as dg

from covid_lakehouse.lib.clock import Clock
from covid_lakehouse.lib.settings import setting

MAX_BODY_MB = setting(
    "HTTP_MAX_BODY_MB", "decoded megabytes one HTTP response body may have (gzip counted decoded); a larger "
    "body fails the call and nothing is stored. Sources with their own cap override it", default="1024")
TRANSFER_DEADLINE_S = setting(
    "HTTP_CALL_DEADLINE_S", "seconds one HTTP call may spend connecting and transferring, over all its "
    "attempts, on top of the waits its retry budget allows: a server trickling bytes fails the call",
    default="900")
MAX_PAGES = setting(
    "HTTP_MAX_PAGES", "pages one paging loop (one account/event and day) may fetch before it fails",
    default="10000")

MB = 1 << 20


def default_max_body_bytes() -> int:
    return int((MAX_BODY_MB.number(minimum=0.001) or 1024) * MB)


def default_transfer_deadline_s() -> float:
    return TRANSFER_DEADLINE_S.number(minimum=0.001) or 900.0


class Deadline:
    """A point on the clock's monotonic axis that one call must finish by."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        self._clock, self.seconds = clock, seconds
        self._at = clock.monotonic() + seconds

    def remaining(self) -> float:
        return self._at - self._clock.monotonic()

    def passed(self) -> bool:
        return self.remaining() <= 0

    def cap(self, timeout: float) -> float:
        """A socket timeout that does not outlive the deadline (never 0: that would mean non-blocking)."""
        return max(min(timeout, self.remaining()), 0.001)


class PagingError(dg.Failure):
    """A paging loop would not end: the server repeated a cursor, or sent more pages than the cap.
    Not retried: the same server would page the same way."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(description=f"{where}: {problem}. Nothing was published.",
                         metadata={"where": where, "problem": problem}, allow_retries=False)
        self.where, self.problem = where, problem


class PageGuard:
    """Counts the pages of one paging loop and remembers its cursors: ``advance(cursor)`` before each
    follow-up request raises PagingError when the cursor was already seen (the loop would never end) or
    when the page cap is reached. Cursors are kept as given (they are short tokens)."""

    def __init__(self, where: str, max_pages: int | None = None) -> None:
        self.where = where
        self.max_pages = max_pages if max_pages is not None else int(MAX_PAGES.number(minimum=1) or 10000)
        self.pages = 1  # the request that started the loop
        self._seen: set[Hashable] = set()

    def advance(self, cursor: Hashable) -> None:
        if cursor in self._seen:
            raise PagingError(self.where, f"the server sent cursor {str(cursor)[:60]!r} again after page "
                                          f"{self.pages}: the paging would never end")
        if self.pages >= self.max_pages:
            raise PagingError(self.where, f"more than {self.max_pages} pages ({MAX_PAGES.name}); raise it "
                                          "if this volume is real")
        self._seen.add(cursor)
        self.pages += 1
