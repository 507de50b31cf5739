"""A downstream asset of the live ads and their archive: ads shown per group and day, all history.

ads/ads (PostgreSQL, written by the load's upsert) and ads/ads_archive (Iceberg, written by the
archive's state machine) load here as inputs through their IO managers; an ad is in exactly one of
them except between the archive's commit and its delete, where the live row counts once. Written by
the warehouse IO manager to ads.shown_per_group_daily, replaced in one transaction."""

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from covid_lakehouse.defs.ads.assets import ADS_KEY, ARCHIVE_KEY, GROUP

SHOWN_PER_GROUP_KEY = dg.AssetKey(["ads", "shown_per_group_daily"])
COLUMNS = ["ad_id", "ad_group", "shown_at"]
SCHEMA = pa.schema([("ad_group", pa.string()), ("shown_date", pa.date32()), ("live", pa.int64()),
                    ("archived", pa.int64()), ("shown", pa.int64())])


def _shown(table: pa.Table, where: str) -> pa.Table:
    shown_at = table["shown_at"].cast(pa.timestamp("us", tz="UTC"))
    return pa.table({"ad_id": table["ad_id"].cast(pa.string()), "ad_group": table["ad_group"].cast(pa.string()),
                     "shown_date": pc.cast(pc.floor_temporal(shown_at, unit="day"), pa.date32()),
                     "where": pa.array([where] * table.num_rows, pa.string())})


def shown_per_group(ads: pa.Table, archive: pa.Table) -> pa.Table:
    """Ads per (ad_group, UTC day shown): live, archived, and together."""
    live = _shown(ads.select(COLUMNS), "live") if ads.num_rows else None
    archived = _shown(archive.select(COLUMNS), "archived") if archive.num_rows else None
    if live is not None and archived is not None:  # mid-archive: the live row counts, not its copy
        archived = archived.filter(pc.invert(pc.is_in(archived["ad_id"], value_set=live["ad_id"])))
    parts = [t for t in (live, archived) if t is not None]
    if not parts:
        return SCHEMA.empty_table()
    counts: dict[tuple, list[int]] = {}
    for group, day, where in zip(*(pa.concat_tables(parts)[c].to_pylist() for c in ("ad_group", "shown_date", "where")),
                                 strict=True):
        c = counts.setdefault((group, day), [0, 0])
        c[0 if where == "live" else 1] += 1
    return pa.Table.from_pylist([{"ad_group": g, "shown_date": d, "live": a, "archived": b, "shown": a + b}
                                 for (g, d), (a, b) in sorted(counts.items())], schema=SCHEMA)


@dg.asset(
    key=SHOWN_PER_GROUP_KEY,
    group_name=GROUP,
    kinds={"postgres", "pyarrow"},
    ins={"ads": dg.AssetIn(ADS_KEY, metadata={"columns": COLUMNS}),
         "archive": dg.AssetIn(ARCHIVE_KEY, metadata={"columns": COLUMNS})},
    io_manager_key="warehouse_io_manager",
    metadata={"dagster/table_name": "ads.shown_per_group_daily"},
    description="Ads shown per ad group and UTC day over all history: live rows (ads.ads) and archived ones "
    "(Iceberg ads.ads_archive); warehouse table ads.shown_per_group_daily.",
)
def shown_per_group_daily(context: dg.AssetExecutionContext, ads: pa.Table, archive: pa.Table) -> pa.Table:
    result = shown_per_group(ads, archive)
    context.log.info("shown_per_group_daily: %d live + %d archived ads -> %d rows", ads.num_rows, archive.num_rows,
                     result.num_rows)
    return result
