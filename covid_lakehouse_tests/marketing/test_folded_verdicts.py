"""A streamed load's folded verdicts (load.FoldedAudit) need no database: after the last page, when every
audit has its verdict from a fold (or from the merge itself), the publish checks out no warehouse
connection for them."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date

import psycopg
import pytest

from covid_lakehouse.defs.marketing.checks import FACEBOOK_AUDITS, KEY_UNIQUE
from covid_lakehouse.defs.marketing.load import FoldedAudit
from covid_lakehouse.defs.marketing.tables import FACEBOOK, SCHEMA, ensure_tables
from covid_lakehouse.lib.postgres import PostgresResource
from covid_lakehouse_tests.marketing.support import publish_facebook

pytestmark = pytest.mark.integration

D1 = date(2024, 3, 1)
# every Facebook audit a fold answers, and the key audit (answered by the merge: every row COPYed under the key)
AUDITS = [KEY_UNIQUE, *(a for a in FACEBOOK_AUDITS if isinstance(a, FoldedAudit) and a.judge is not None)]


class NoConnections(PostgresResource):
    """A warehouse that refuses to hand out a connection: asking for one fails the test."""

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        raise AssertionError("a folded verdict checked out a warehouse connection")
        yield  # pragma: no cover


def test_folded_verdicts_check_out_no_connection(clean_marketing, warehouse, pg) -> None:
    with warehouse.connection() as conn:
        ensure_tables(conn)
    chunks = [[("1", D1, "a1", 10, 2, "1.5"), ("1", D1, "a2", 10, 2, "1.5")],
              [("1", D1, "a3", 10, 20, "1.5")]]  # clicks above impressions: a WARN, from its fold
    checks, error, _ = publish_facebook(warehouse, chunks, AUDITS, audit_warehouse=NoConnections(dsn="postgresql://nowhere"))
    assert error is None
    assert {c.check_name: c.passed for c in checks} == {a.name: a.name != "clicks_not_above_impressions" for a in AUDITS}
    assert pg.execute(f"SELECT count(*) FROM {SCHEMA}.{FACEBOOK.name}").fetchone()[0] == 3
