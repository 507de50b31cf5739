"""Offline stand-in for the covid19-lake bucket: the bundled snapshot served at the lake's paths.

The allocation files are byte-identical to the lake's; the population is our bundled Census PEP 2018
export (the lake's County_Population.csv layout is parsed too, see data/vaccines/SOURCES.md).
"""

from pathlib import Path
from urllib.parse import urlsplit

from covid_lakehouse.defs.vaccines.resources import (
    DEFAULT_ALLOCATION_URLS,
    DEFAULT_POPULATION_URL,
    POPULATION_ENV,
    url_env,
)
from covid_lakehouse_dev.apis.harness import MockApi, MockRequest, MockResponse

DATA = Path(__file__).parent / "data" / "vaccines"
PREFIX = "/covid19-lake"  # the lake's bucket, as the first path segment


def lake_path(url: str) -> str:
    """'https://covid19-lake.s3.../cdc-moderna-.../x.csv' -> '/covid19-lake/cdc-moderna-.../x.csv'."""
    return PREFIX + urlsplit(url).path


ALLOCATION_FILES = {
    "moderna": DATA / "soda_b7pe-5nws_moderna_limit1000_2022-02-20.csv",
    "pfizer": DATA / "soda_saz5-9hgg_pfizer_limit1000_2022-02-21.csv",
}
POPULATION_FILE = DATA / "PEP_2018_PEPANNRES_with_ann.csv"

# path served -> bundled file
FILES: dict[str, Path] = {
    **{lake_path(DEFAULT_ALLOCATION_URLS[m]): f for m, f in ALLOCATION_FILES.items()},
    lake_path(DEFAULT_POPULATION_URL): POPULATION_FILE,
}


def _serve(file: Path):
    def handler(_: MockRequest) -> MockResponse:
        return MockResponse.file(file, "text/csv; charset=utf-8")

    return handler


def register(api: MockApi) -> dict[str, str]:
    """Serve the bundled files at the lake's paths; return the variables pointing the domain there
    ("{base}" is replaced by the server's URL by the caller)."""
    for path, file in FILES.items():
        api.route("GET", path, _serve(file))
    env = {url_env(m): "{base}" + lake_path(DEFAULT_ALLOCATION_URLS[m]) for m in ALLOCATION_FILES}
    env[POPULATION_ENV] = "{base}" + lake_path(DEFAULT_POPULATION_URL)
    return env
