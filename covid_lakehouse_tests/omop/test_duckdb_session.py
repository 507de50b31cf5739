"""The transform's DuckDB session is bounded by settings and spills to its directory."""

import pytest

from covid_lakehouse.defs.omop.transform.session import connect
from covid_lakehouse.lib.settings import SettingError


def test_the_session_takes_its_memory_limit_and_spill_directory_from_the_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("OMOP_DUCKDB_MEMORY_LIMIT", "64MB")
    monkeypatch.setenv("OMOP_DUCKDB_TEMP_DIR", str(tmp_path / "spill"))
    con = connect()
    limit, spill = con.execute("SELECT current_setting('memory_limit'), current_setting('temp_directory')").fetchone()
    assert limit in ("61.0 MiB", "64.0 MB", "64MB") and spill == str(tmp_path / "spill")
    # A sort several times the limit completes by spilling instead of failing or growing.
    count = con.execute("SELECT count(*) FROM (SELECT i, md5(i::text) AS h FROM range(3000000) t(i) ORDER BY h)").fetchone()
    assert count == (3_000_000,)


def test_a_malformed_memory_limit_is_refused(monkeypatch):
    monkeypatch.setenv("OMOP_DUCKDB_MEMORY_LIMIT", "lots")
    with pytest.raises(SettingError, match="OMOP_DUCKDB_MEMORY_LIMIT='lots'"):
        connect()
