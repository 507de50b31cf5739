"""A downstream asset of the cross-platform model: cost per conversion per platform and day.

ad_performance_daily keeps its own merge (natural keys, loaded_at); it loads here as an input through
the warehouse IO manager, only the days of the run, and the result is written by it to
marketing.cost_per_conversion_daily, the run's days replaced in one transaction. The sensor built by
cost_follows_model runs it over the days each model run published."""

from decimal import Decimal

import dagster as dg
import pyarrow as pa

from covid_lakehouse.defs.marketing.assets import AD_PERFORMANCE_KEY, GROUP
from covid_lakehouse.defs.marketing.partitions import DAILY
from covid_lakehouse.lib.follow import follow_sensor

COST_PER_CONVERSION_KEY = dg.AssetKey([GROUP, "cost_per_conversion_daily"])
MONEY = pa.decimal128(20, 6)
SCHEMA = pa.schema([("platform", pa.string()), ("date", pa.date32()), ("currency", pa.string()),
                    ("impressions", pa.int64()), ("clicks", pa.int64()), ("spend", MONEY),
                    ("conversions", MONEY), ("cost_per_conversion", MONEY)])
_SIX = Decimal("0.000001")


def cost_per_conversion(ad_performance: pa.Table) -> pa.Table:
    """Spend / conversions per platform, day and currency (no FX: a platform's accounts may bill in
    several currencies, each keeps its row); NULL when there was no conversion."""
    totals: dict[tuple, list] = {}
    for r in ad_performance.select(["platform", "date", "currency", "impressions", "clicks", "spend",
                                    "conversions"]).to_pylist():
        t = totals.setdefault((r["platform"], r["date"], r["currency"]), [0, 0, Decimal(0), Decimal(0)])
        t[0] += r["impressions"]
        t[1] += r["clicks"]
        t[2] += Decimal(r["spend"])
        t[3] += Decimal(r["conversions"])
    rows = [{"platform": p, "date": d, "currency": c, "impressions": i, "clicks": k, "spend": s.quantize(_SIX),
             "conversions": n.quantize(_SIX), "cost_per_conversion": (s / n).quantize(_SIX) if n else None}
            for (p, d, c), (i, k, s, n) in sorted(totals.items())]
    return pa.Table.from_pylist(rows, schema=SCHEMA)


@dg.asset(
    key=COST_PER_CONVERSION_KEY,
    group_name=GROUP,
    kinds={"postgres", "pyarrow"},
    partitions_def=DAILY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    ins={"ad_performance": dg.AssetIn(AD_PERFORMANCE_KEY)},
    io_manager_key="warehouse_io_manager",
    metadata={"dagster/table_name": "marketing.cost_per_conversion_daily", "partition_expr": "date"},
    description="Cost per conversion per platform, day and currency (spend / conversions from the ad performance "
    "model; NULL without conversions); warehouse table marketing.cost_per_conversion_daily.",
)
def cost_per_conversion_daily(context: dg.AssetExecutionContext, ad_performance: pa.Table) -> pa.Table:
    result = cost_per_conversion(ad_performance) if ad_performance.num_rows else SCHEMA.empty_table()
    context.log.info("cost_per_conversion_daily: %d rows from %d ad rows", result.num_rows, ad_performance.num_rows)
    return result



def cost_follows_model() -> dg.SensorDefinition:
    """Built in definitions.py, after the bootstrap sensor: its tick sees what the bootstrap's runs made
    (load_from_defs_folder also collects module-level sensors, in module-name order)."""
    return follow_sensor("marketing_cost_per_conversion", AD_PERFORMANCE_KEY, cost_per_conversion_daily)
