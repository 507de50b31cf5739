"""Hostile vaccines bodies cost bounded work: an HTML error page's text is extracted in one linear scan
over a bounded prefix (the regex it replaces was quadratic: megabytes of ``<head `` took hours), and a
source's decoded bytes are capped (VACCINES_MAX_BODY_MB), so a gzip bomb fails and stores nothing."""

from __future__ import annotations

import gzip

import dagster as dg
import pytest

from covid_lakehouse.defs.vaccines.assets import RAW_KEY, people_per_dose, raw_sources
from covid_lakehouse.defs.vaccines.resources import VaccinesSettings
from covid_lakehouse.defs.vaccines.sources import SourceFormatError, parse_allocations
from covid_lakehouse_dev.apis.harness import MockApi, MockResponse


def test_an_adversarial_html_body_is_reduced_to_its_text():
    body = b"<head " * (5_000_000 // 6)  # 5 MB, no tag ever closed
    with pytest.raises(SourceFormatError) as raised:
        parse_allocations(body, source="https://example.test/moderna.csv", manufacturer="moderna")
    shown = " ".join(("<head " * 60).split())[:300] + "..."
    assert f"got an HTML page instead of CSV: {shown!r}" in str(raised.value)


def test_html_text_drops_head_scripts_comments_and_tags():
    page = (b"<!DOCTYPE html><html><HEAD><title>T</title><style>p{}</style></HEAD><body><!-- note -->"
            b"<script>if (a<b) x()</script><h1>Site Currently Unavailable</h1><p>back &amp; soon</p></body></html>")
    with pytest.raises(SourceFormatError, match="got an HTML page instead of CSV: 'Site Currently Unavailable back & soon'"):
        parse_allocations(page, source="s", manufacturer="moderna")


@pytest.mark.integration
def test_a_gzip_bomb_source_fails_and_nothing_is_stored(resources, instance, s3, monkeypatch):
    monkeypatch.setenv("VACCINES_MAX_BODY_MB", "16")
    member = gzip.compress(b"a," * (8 << 20), compresslevel=9)  # 16 MB decoded per ~16 KB member
    with MockApi() as api:
        api.route("GET", "/bomb.csv", lambda req: MockResponse(200, member * 8, {"Content-Encoding": "gzip"},
                                                               content_type="text/csv"))
        api.route("GET", "/population.csv", lambda req: MockResponse(200, b"x", content_type="text/csv"))
        sources = VaccinesSettings(allocation_urls={"moderna": f"{api.url}/bomb.csv"},
                                   population_url=f"{api.url}/population.csv")
        before = s3.get_client().list_objects_v2(Bucket="raw", Prefix="vaccines/").get("Contents", [])
        result = dg.materialize([raw_sources, people_per_dose], instance=instance, raise_on_error=False,
                                resources={**resources, "vaccines_settings": sources})
    assert not result.success
    error = result.failure_data_for_node(RAW_KEY.to_python_identifier()).error.message
    assert f"decoded body exceeds the cap of {16 << 20} bytes" in error and "nothing was kept" in error
    assert s3.get_client().list_objects_v2(Bucket="raw", Prefix="vaccines/").get("Contents", []) == before
