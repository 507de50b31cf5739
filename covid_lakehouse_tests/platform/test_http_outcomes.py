"""A source's own classification of responses (HttpClient ``classify``) and per-class minimum waits
(``min_waits``): an API that hides throttling or a retired version behind HTTP 400 is retried or failed
as it means, the real status stays on the error, and the caller can tell failures apart by ``kind``."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import requests

from covid_lakehouse.lib.clock import FakeClock
from covid_lakehouse.lib.http import (
    AUTH,
    THROTTLED,
    AuthError,
    BodyTooLargeError,
    ClientError,
    HttpClient,
    Outcome,
    RateLimitedError,
    TransientHttpError,
)
from covid_lakehouse_dev.apis.harness import Fault, MockApi, MockResponse


def coded(code: int, status: int = 400) -> Fault:
    """An error the way such APIs send it: a generic status, the meaning in the body."""
    return Fault.custom(MockResponse.json_body({"error": {"code": code}}, status))


def by_code(response: requests.Response) -> Outcome | None:
    code = response.json().get("error", {}).get("code") if response.content.startswith(b"{") else None
    return {17: Outcome.retry("throttled by code 17", kind=THROTTLED),
            2: Outcome.retry("temporary (code 2)"),
            2635: Outcome.fail("version retired (code 2635)", kind="version_gone"),
            190: Outcome.fail("token rejected (code 190)", kind=AUTH)}.get(code)


@pytest.fixture
def api() -> Iterator[MockApi]:
    with MockApi() as mock:
        mock.route("GET", "/rows", lambda req: MockResponse.json_body({"data": [1]}))
        yield mock


def client(clock: FakeClock, **kwargs: object) -> HttpClient:
    options: dict[str, object] = {"clock": clock, "rng": random.Random(0), "timeout": (2.0, 5.0), "classify": by_code}
    return HttpClient(**{**options, **kwargs})  # type: ignore[arg-type]


def test_a_400_the_source_calls_a_throttle_is_retried_after_at_least_its_floor(api: MockApi) -> None:
    api.fail_next("/rows", coded(17))
    clock = FakeClock()

    assert client(clock, min_waits={THROTTLED: 60.0}).get(f"{api.url}/rows").json() == {"data": [1]}
    assert clock.sleeps == [60.0] and len(api.requests) == 2


def test_a_throttle_that_outlasts_the_budget_is_a_rate_limit_error_with_the_real_status(api: MockApi) -> None:
    api.fail_next("/rows", coded(17), times=3)
    clock = FakeClock()

    with pytest.raises(RateLimitedError) as raised:
        client(clock, max_attempts=3).get(f"{api.url}/rows")

    assert (raised.value.status, raised.value.kind) == (400, THROTTLED)
    assert "throttled by code 17, HTTP 400" in str(raised.value) and len(api.requests) == 3


def test_a_floor_applies_to_its_class_only(api: MockApi) -> None:
    api.fail_next("/rows", coded(2))
    clock = FakeClock()

    client(clock, min_waits={THROTTLED: 60.0}).get(f"{api.url}/rows")

    assert len(clock.sleeps) == 1 and clock.sleeps[0] < 1.0  # backoff, not the throttle floor


def test_a_final_failure_is_raised_at_once_with_the_source_kind(api: MockApi) -> None:
    api.fail_next("/rows", coded(2635, status=500))  # a 5xx the status rules would retry
    clock = FakeClock()

    with pytest.raises(ClientError) as raised:
        client(clock).get(f"{api.url}/rows")

    assert (raised.value.status, raised.value.kind) == (500, "version_gone")
    assert "version retired (code 2635), HTTP 500" in str(raised.value)
    assert clock.sleeps == [] and len(api.requests) == 1


def test_an_auth_outcome_names_where_the_credentials_come_from(api: MockApi) -> None:
    api.fail_next("/rows", coded(190))

    with pytest.raises(AuthError, match=r"token rejected \(code 190\), HTTP 400: authentication failed; check the "
                                        r"credentials in the variable API_TOKEN"):
        client(FakeClock(), auth_hint="the variable API_TOKEN").get(f"{api.url}/rows")
    assert len(api.requests) == 1


def test_without_an_outcome_the_status_decides(api: MockApi) -> None:
    api.fail_next("/rows", coded(99, status=503), times=2)
    clock = FakeClock()

    with pytest.raises(TransientHttpError) as raised:
        client(clock, max_attempts=2).get(f"{api.url}/rows")
    assert raised.value.kind == "transient" and not isinstance(raised.value, RateLimitedError)

    api.fail_next("/rows", coded(99))
    with pytest.raises(ClientError, match="HTTP 400"):
        client(clock).get(f"{api.url}/rows")


def test_a_classifier_reads_an_error_body_within_the_body_cap(api: MockApi) -> None:
    """The classifier reads ``response.content``: the client reads that body first, bounded like any
    other, so a huge error body is refused at the cap instead of being read whole into memory."""
    api.fail_next("/rows", Fault.custom(MockResponse(400, b"{" + b" " * 8192 + b"}")))

    with pytest.raises(BodyTooLargeError, match="exceeds the cap of 4096 bytes"):
        client(FakeClock(), max_body_bytes=4096).get(f"{api.url}/rows")
    assert len(api.requests) == 1
