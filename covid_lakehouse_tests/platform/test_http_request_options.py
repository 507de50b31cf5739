"""request(), get() and post() share one option list (RequestOptions). A regression guard for that
refactor: an option the client does not know still fails loudly instead of being dropped."""

from __future__ import annotations

import pytest

from covid_lakehouse.lib.clock import FakeClock
from covid_lakehouse.lib.http import HttpClient
from covid_lakehouse_dev.apis.harness import MockApi, MockResponse


def test_get_and_post_take_requests_options_and_refuse_unknown_ones() -> None:
    with MockApi() as api, HttpClient(clock=FakeClock()) as client:
        api.route("POST", "/rows", lambda req: MockResponse.json_body({"q": req.query, "body": req.json()}, 201))
        api.route("GET", "/rows", lambda req: MockResponse.json_body({}, 204))

        answer = client.post(f"{api.url}/rows", params={"a": "1"}, json={"id": 1}, ok_statuses=(201,)).json()
        assert answer == {"q": {"a": ["1"]}, "body": {"id": 1}}
        assert client.get(f"{api.url}/rows", ok_statuses=(204,)).status_code == 204

        with pytest.raises(TypeError, match="unexpected option.* header, timeout"):
            client.get(f"{api.url}/rows", header={"X": "1"}, timeout=5)  # type: ignore[call-arg]
        assert [r.method for r in api.requests] == ["POST", "GET"]
