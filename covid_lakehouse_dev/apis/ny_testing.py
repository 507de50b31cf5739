"""Offline stand-in for health.data.ny.gov: the bundled snapshot served at the real API's path."""

from covid_lakehouse.defs.ny_testing.raw import SNAPSHOT
from covid_lakehouse.defs.ny_testing.resources import SOURCE_URL_ENV
from covid_lakehouse_dev.apis.harness import MockApi, MockResponse

ROWS_PATH = "/ny_testing/api/views/xdss-u53e/rows.json"


def register(api: MockApi) -> dict[str, str]:
    # Streamed from the .gz, decompressed, with its Content-Length: the client's real download path runs.
    api.route("GET", ROWS_PATH, lambda _: MockResponse.file(SNAPSHOT, "application/json;charset=utf-8"))
    return {SOURCE_URL_ENV: "{base}" + ROWS_PATH + "?accessType=DOWNLOAD"}
