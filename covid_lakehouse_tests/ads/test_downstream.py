"""Live and archived ads load as inputs (PostgreSQL and Iceberg IO managers): shown per group and day
counts every ad once across both, and is written by the warehouse IO manager."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, timedelta

import dagster as dg
import pytest

from covid_lakehouse.defs.ads.archive import archive_old_rows
from covid_lakehouse.defs.ads.definitions import defs as ads_defs
from covid_lakehouse.defs.ads.settings import ARCHIVE_NAMESPACE, ARCHIVE_TABLE
from covid_lakehouse.defs.ads.shown_per_group import SHOWN_PER_GROUP_KEY
from covid_lakehouse.lib.policies import rebuilt
from covid_lakehouse_dev.apis.ads import AdsMock
from covid_lakehouse_tests.ads.support import NOW, load_rows

pytestmark = pytest.mark.integration


def test_shown_per_group_counts_live_and_archived_ads_once(ads_clean, warehouse, lakehouse, pg, ads_resources,
                                                           instance):
    load_rows(warehouse, AdsMock(seed=11, now=NOW.timestamp), pages=3)
    [report] = archive_old_rows(warehouse, lakehouse, retention=timedelta(hours=12), now=NOW, chunk_rows=40)
    assert report.archived_rows > 0
    live = pg.execute("SELECT ad_group, (shown_at AT TIME ZONE 'UTC')::date FROM ads.ads").fetchall()
    archived = lakehouse.read(ARCHIVE_NAMESPACE, ARCHIVE_TABLE)
    # Mid-archive state: one archived ad is live again (committed to the archive, not deleted yet).
    back = archived.slice(0, 1).to_pylist()[0]
    pg.execute("INSERT INTO ads.ads (ad_id, ad_group, ad_campaign, ad_campaign_raw, shown_at, backup_key, loaded_at, "
               "row_version) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
               (back["ad_id"], back["ad_group"], back["ad_campaign"], back["ad_campaign_raw"], back["shown_at"],
                back["backup_key"], back["loaded_at"], back["row_version"]))
    expected = Counter((g, d) for g, d in live) + Counter(
        (g, t.astimezone(UTC).date()) for g, t in zip(archived["ad_group"].to_pylist(),
                                                       archived["shown_at"].to_pylist(), strict=True))

    defs = rebuilt(ads_defs, resources=ads_resources)
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[SHOWN_PER_GROUP_KEY])
    assert result.success
    rows = pg.execute("SELECT ad_group, shown_date, live, archived, shown FROM ads.shown_per_group_daily").fetchall()
    assert {(g, d): n for g, d, _, _, n in rows} == dict(expected)
    assert sum(a for *_, a, _ in rows) == archived.num_rows - 1  # the live copy counted as live
    assert sum(n for *_, n in rows) == len(live) + archived.num_rows

    # Analysts load the archive (Iceberg) and the live table (PostgreSQL) the same way.
    assert defs.load_asset_value(dg.AssetKey(["ads", "ads_archive"]), instance=instance).shape[0] == archived.num_rows
    assert len(defs.load_asset_value(dg.AssetKey(["ads", "ads"]), instance=instance)) == len(live) + 1
