"""The third-party ad API as given by the exercise (its extract.py is the contract): every call returns
a JSON list of 100 random ads. Served offline on the dev package's MockApi for tests, `make demo` and
`make up`; its failure switches (fail_next, transform) come from the harness."""

import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from covid_lakehouse_dev.apis.harness import MockApi, MockRequest, MockResponse

PATH = "/ads/api/ads"
ADS_PER_CALL = 100
MAX_AGE_S = 100_000
SCHEME_SHARE = 0.2
# The demo archives ads older than this, so that ads fetched a moment ago (up to ~28 h old) archive.
DEMO_ARCHIVE_RETENTION_HOURS = "12"


class AdsMock:
    """Random ads, reproducible for a given seed (ids included), shown_at relative to ``now``."""

    def __init__(self, seed: int | None = None, now: Callable[[], float] = time.time) -> None:
        self._rng = random.Random(seed)
        self._now = now
        self._lock = threading.Lock()  # the harness serves requests from several threads

    def ads(self, count: int = ADS_PER_CALL) -> list[dict[str, Any]]:
        with self._lock:
            now = self._now()
            return [self._ad(now) for _ in range(count)]

    def _ad(self, now: float) -> dict[str, Any]:
        rng = self._rng
        ad: dict[str, Any] = {
            "ad_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "ad_group": rng.choice(["marketing", "recruiting", "brand", "investment"]),
            "ad_campaign": rng.randint(500, 999) if rng.random() < 0.5 else "__unknown",
            "shown_at": now - rng.uniform(0, MAX_AGE_S),
        }
        if rng.random() < SCHEME_SHARE:
            ad["ad_scheme"] = {"origin": rng.choice(["manual", "automatic"]), "approved": rng.random() < 0.5}
        return ad

    def handle(self, _request: MockRequest) -> MockResponse:
        return MockResponse(200, json.dumps(self.ads()).encode())


def register(api: MockApi, seed: int | None = None) -> dict[str, str]:
    api.route("GET", PATH, AdsMock(seed).handle)
    return {"ADS_API_URL": "{base}" + PATH, "ADS_ARCHIVE_RETENTION_HOURS": DEMO_ARCHIVE_RETENTION_HOURS}
