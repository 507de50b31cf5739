"""API versions of the ad platforms: the version in use is its own setting per source, and this module
keeps the one table of known versions with the sunset dates the vendors announced.

Both vendors keep a version for about a year. A call on a retired version fails at once (Facebook error
#2635, Google 404 / UNIMPLEMENTED on the versioned path) with ``UnsupportedApiVersion``, naming the
version in use and the setting to change. The table below only WARNS, 60 days ahead of a sunset date:
vendors move their dates, so a date alone never fails a run.

Sources (read 2026-12-06):
- Meta Marketing API version history (release and expiration dates):
  https://developers.facebook.com/documentation/ads-commerce/marketing-api/marketing-api-changelog/versions.md
- Google Ads API release notes (release dates) https://developers.google.com/google-ads/api/docs/release-notes
  and the sunset reminders of the Google Ads Developer Blog:
  v19 https://developers.google.com/ads/blog/posts/2025/12/google-ads-api-v19-sunset-reminder
  v20 https://developers.google.com/ads/blog/posts/2026/04/google-ads-api-v20-sunset-reminder
  v21 https://developers.google.com/ads/blog/posts/2026/06/google-ads-api-v21-sunset-reminder
  v22 https://developers.google.com/ads/blog/posts/2026/09/google-ads-api-v22-sunset-reminder
  (schedule: https://developers.google.com/google-ads/api/docs/sunset-dates).
"""

import re
from dataclasses import dataclass
from datetime import date, timedelta

import dagster as dg

from covid_lakehouse.lib.http.hosts import source_url
from covid_lakehouse.lib.settings import Setting, SettingError

WARN_AHEAD = timedelta(days=60)
META_VERSIONS_PAGE = ("https://developers.facebook.com/documentation/ads-commerce/marketing-api/"
                      "marketing-api-changelog/versions.md")
GOOGLE_RELEASE_NOTES = "https://developers.google.com/google-ads/api/docs/release-notes"
_GOOGLE_BLOG = "https://developers.google.com/ads/blog/posts"


@dataclass(frozen=True)
class ApiVersion:
    name: str
    sunset: date | None  # None: not announced yet
    source: str  # the vendor page the dates come from


# Newest first; the first entry is the default of each source's version setting.
KNOWN_VERSIONS: dict[str, tuple[ApiVersion, ...]] = {
    "facebook": (
        ApiVersion("v27.0", None, META_VERSIONS_PAGE),
        ApiVersion("v26.0", None, META_VERSIONS_PAGE),
        ApiVersion("v25.0", date(2027, 2, 23), META_VERSIONS_PAGE),
        ApiVersion("v24.0", date(2026, 11, 10), META_VERSIONS_PAGE),
        ApiVersion("v23.0", date(2026, 6, 9), META_VERSIONS_PAGE),
        ApiVersion("v22.0", date(2026, 2, 19), META_VERSIONS_PAGE),
        ApiVersion("v21.0", date(2025, 9, 9), META_VERSIONS_PAGE),
    ),
    "google_ads": (
        ApiVersion("v26", None, GOOGLE_RELEASE_NOTES),
        ApiVersion("v25", None, GOOGLE_RELEASE_NOTES),
        ApiVersion("v24", None, GOOGLE_RELEASE_NOTES),
        ApiVersion("v23", None, GOOGLE_RELEASE_NOTES),
        ApiVersion("v22", date(2026, 10, 7), f"{_GOOGLE_BLOG}/2026/09/google-ads-api-v22-sunset-reminder"),
        ApiVersion("v21", date(2026, 8, 5), f"{_GOOGLE_BLOG}/2026/06/google-ads-api-v21-sunset-reminder"),
        ApiVersion("v20", date(2026, 6, 10), f"{_GOOGLE_BLOG}/2026/04/google-ads-api-v20-sunset-reminder"),
        ApiVersion("v19", date(2026, 2, 11), f"{_GOOGLE_BLOG}/2025/12/google-ads-api-v19-sunset-reminder"),
    ),
}
_PATTERN = {"facebook": re.compile(r"^v\d+\.\d+$"), "google_ads": re.compile(r"^v\d+$")}
_VERSION_IN_PATH = re.compile(r"/v\d+(\.\d+)?/?$")


def newest(source: str) -> str:
    return KNOWN_VERSIONS[source][0].name


def known(source: str, version: str) -> ApiVersion | None:
    return next((v for v in KNOWN_VERSIONS[source] if v.name == version), None)


def version_setting_value(source: str, setting: Setting, configured: str | None = None) -> str:
    """The version to call, validated for its form (vNN.N for Facebook, vNN for Google); a version
    missing from the table is allowed (a newer one than this code knows)."""
    version = setting.require(configured).strip()
    if not _PATTERN[source].match(version):
        example = newest(source)
        raise SettingError(f"{setting.name}={version!r} is not an API version of this form: {example!r}")
    return version


def base_url(url_setting: Setting, version_setting: Setting, configured: str | None = None, *,
             field: str = "api_url") -> str:
    """The API host (no version): a URL that still ends in a version is refused, so that the version
    is never set twice in two places."""
    # The vendor's host (the setting's default) or the operator's (lib/http/hosts.py), whoever set it.
    url = source_url(url_setting, configured, field=field).rstrip("/")
    if _VERSION_IN_PATH.search(url):
        raise SettingError(f"{url_setting.name}={url!r} ends in an API version: set the host only and the version "
                           f"in {version_setting.name}")
    return url


def sunset_warnings(source: str, version: str, today: date) -> list[str]:
    """What the table says about ``version`` at ``today``: nothing, or a warning from 60 days before the
    announced sunset (and after it: the vendor may still serve it, or have moved the date)."""
    entry = known(source, version)
    if entry is None:
        return [f"{source} API version {version} is not in the table of known versions (versions.KNOWN_VERSIONS); "
                f"its sunset date is unknown"]
    if entry.sunset is None or today < entry.sunset - WARN_AHEAD:
        return []
    when = "was" if today >= entry.sunset else "is"
    return [f"{source} API version {version} {when} announced to sunset on {entry.sunset.isoformat()} ({entry.source}); "
            f"move to {newest(source)}"]


class UnsupportedApiVersion(dg.Failure):
    """The vendor no longer serves the version in use. Not retried: it will not come back."""

    def __init__(self, source: str, version: str, setting: Setting, detail: str) -> None:
        super().__init__(
            description=f"{source}: API version {version} is no longer served ({detail}). Set {setting.name} to a "
                        f"current version (newest known: {newest(source)}); see docs/marketing.md, 'API versions'.",
            metadata={"source": source, "version": version, "setting": setting.name},
            allow_retries=False)
        self.source, self.version, self.setting = source, version, setting.name
