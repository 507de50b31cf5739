"""The transform's DuckDB session is bounded by default at 256MB (issue #18): with 512MB a 2M tenant's run
peaked ~200 MB higher (for ~10% less CPU time), and the 8M tenant's peak grew past the 2M one's as DuckDB
filled the larger budget only there. Not lower: at 128MB the 8M tenant's id-map sort ran out of memory."""

from covid_lakehouse.defs.omop.transform.session import MEMORY_LIMIT, connect


def test_a_session_without_the_setting_may_use_256mb(monkeypatch):
    monkeypatch.delenv(MEMORY_LIMIT.name, raising=False)
    (limit,) = connect().execute("SELECT current_setting('memory_limit')").fetchone()
    assert limit in ("244.1 MiB", "256.0 MB", "256MB")
