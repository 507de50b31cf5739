"""Where the vaccines domain reads its sources: one weekly-allocations CSV per manufacturer and the
2018 county population CSV.

Precedence, resolved when a run starts (not when the code is imported, so `make demo`, `make up`
and the tests can point an already imported code location at the offline mock API):

1. the resource's own config (``allocation_urls`` / ``population_url``, e.g. set in the launchpad);
2. the environment: VACCINES_MANUFACTURERS (comma-separated, default "moderna,pfizer"), one
   VACCINES_<MANUFACTURER>_URL per manufacturer and VACCINES_POPULATION_URL;
3. the covid19-lake copies (Moderna, Pfizer and the county population).

Adding Janssen (single dose) is configuration only: VACCINES_MANUFACTURERS=moderna,pfizer,janssen and
VACCINES_JANSSEN_URL=https://data.cdc.gov/resource/w9zu-fywh.csv?$limit=50000.
"""

import re
from urllib.parse import unquote_plus, urlsplit, urlunsplit

import dagster as dg
from pydantic import Field

from covid_lakehouse.defs.vaccines.transform import dose_column
from covid_lakehouse.lib.http import SAFE_QUERY_PARAMS
from covid_lakehouse.lib.http.hosts import check_source_url
from covid_lakehouse.lib.postgres import validate_identifier
from covid_lakehouse.lib.settings import setting

LAKE = "https://covid19-lake.s3.us-east-2.amazonaws.com"
DEFAULT_ALLOCATION_URLS: dict[str, str] = {
    "moderna": f"{LAKE}/cdc-moderna-vaccine-distribution/csv/cdc-moderna-covid-19-vaccine-distribution-by-state.csv",
    "pfizer": f"{LAKE}/cdc-pfizer-vaccine-distribution/csv/cdc-pfizer-covid-19-vaccine-distribution-by-state.csv",
}
DEFAULT_POPULATION_URL = f"{LAKE}/static-datasets/csv/CountyPopulation/County_Population.csv"
# Where the sources may be fetched from (lib/http/hosts.py): covid19-lake and the CDC's own portal
# (Janssen); the operator's VACCINES_*_URL hosts are allowed too.
VENDOR_HOSTS = ("covid19-lake.s3.us-east-2.amazonaws.com", "data.cdc.gov")

MANUFACTURERS = setting("VACCINES_MANUFACTURERS", "comma-separated manufacturers whose allocations are loaded",
                        default=",".join(DEFAULT_ALLOCATION_URLS), scope="vaccines")
ALLOCATION_URL = setting("VACCINES_{}_URL", "weekly allocations CSV of one manufacturer (long layout); defaults: "
                         "the covid19-lake Moderna and Pfizer files", scope="vaccines", placeholder="MANUFACTURER")
POPULATION_URL = setting("VACCINES_POPULATION_URL", "the 2018 county population CSV",
                         default=DEFAULT_POPULATION_URL, scope="vaccines")
MANUFACTURERS_ENV, POPULATION_ENV = MANUFACTURERS.name, POPULATION_URL.name
MAX_BODY_MB = setting("VACCINES_MAX_BODY_MB", "decoded megabytes one vaccines source may have (each is parsed in "
                      "memory; the real files are under 1 MB): a larger body fails the run and nothing is stored",
                      default="64", scope="vaccines")


def max_body_bytes() -> int:
    return int((MAX_BODY_MB.number(minimum=0.001) or 64) * (1 << 20))
_MANUFACTURER = re.compile(r"^[a-z][a-z0-9_]*$")


class SourceConfigError(ValueError):
    """The configured sources cannot be used (unknown manufacturer without a URL, unsafe name...)."""


def url_env(manufacturer: str) -> str:
    """'moderna' -> 'VACCINES_MODERNA_URL'."""
    return ALLOCATION_URL.named(manufacturer).name


def allocation_urls_from_env() -> dict[str, str]:
    names = [m.strip().lower() for m in MANUFACTURERS.require().split(",")]
    urls: dict[str, str] = {}
    for name in filter(None, names):
        url = ALLOCATION_URL.named(name).get() or DEFAULT_ALLOCATION_URLS.get(name)
        if not url:
            raise SourceConfigError(
                f"{MANUFACTURERS_ENV} lists {name!r} but {url_env(name)} is not set (there is no default "
                f"URL for it); e.g. {url_env(name)}=https://data.cdc.gov/resource/<dataset>.csv?$limit=50000"
            )
        urls[name] = url
    return urls


def public_url(url: str) -> str:
    """The URL as shown in metadata and S3 object metadata: no user info, and query values hidden
    except the harmless ones ($limit...), as the HTTP client does in its messages."""
    parts = urlsplit(url)
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    query = "&".join(
        key + sep + (value if unquote_plus(key) in SAFE_QUERY_PARAMS else "REDACTED") if sep else key
        for key, sep, value in (pair.partition("=") for pair in parts.query.split("&") if pair)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


class VaccinesSettings(dg.ConfigurableResource):
    """The vaccines domain's source URLs (see the module docstring for defaults and precedence)."""

    allocation_urls: dict[str, str] | None = Field(
        default=None,
        description="manufacturer -> URL of its weekly allocations by jurisdiction (long CSV layout). "
        "Unset: VACCINES_MANUFACTURERS / VACCINES_<M>_URL, else the covid19-lake Moderna and Pfizer files.",
    )
    population_url: str | None = Field(
        default=None,
        description="URL of the 2018 county population CSV. Unset: VACCINES_POPULATION_URL, else covid19-lake.",
    )

    def allocations(self) -> dict[str, str]:
        """manufacturer (lower case) -> URL, validated."""
        if self.allocation_urls is not None:
            urls = {name.strip().lower(): url for name, url in self.allocation_urls.items()}
        else:
            urls = allocation_urls_from_env()
        if not urls:
            raise SourceConfigError("no allocation sources configured")
        for name, url in urls.items():
            if not _MANUFACTURER.match(name):
                raise SourceConfigError(f"manufacturer {name!r}: use a lower-case name like 'janssen'")
            validate_identifier(dose_column(name), what="dose column")
            if not url.startswith(("http://", "https://")):
                raise SourceConfigError(f"{name}: {public_url(url)!r} is not an http(s) URL")
            field = f"allocation_urls[{name}] (resource config)" if self.allocation_urls is not None else url_env(name)
            check_source_url(url, field=field, vendor_hosts=VENDOR_HOSTS, operator_url=ALLOCATION_URL.named(name).get())
        return urls

    def population(self) -> str:
        url = POPULATION_URL.require(self.population_url)
        if not url.startswith(("http://", "https://")):
            raise SourceConfigError(f"population: {public_url(url)!r} is not an http(s) URL")
        field = "population_url (resource config)" if self.population_url else POPULATION_ENV
        return check_source_url(url, field=field, vendor_hosts=VENDOR_HOSTS, operator_url=POPULATION_URL.get())
