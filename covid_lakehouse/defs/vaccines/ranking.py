"""A downstream asset of the published vaccines table: states ranked by people per dose.

people_per_dose keeps its own write-audit-publish (two tables in one transaction, upserts that keep
loaded_at); it loads here as an input through the warehouse IO manager, and the ranking is written by
it (vaccines.people_per_dose_ranking, replaced in one transaction)."""

import dagster as dg
import pandas as pd

from covid_lakehouse.defs.vaccines.assets import GROUP, PEOPLE_PER_DOSE_KEY

RANKING_KEY = dg.AssetKey(["vaccines", "people_per_dose_ranking"])


def rank_states(people_per_dose: pd.DataFrame) -> pd.DataFrame:
    """Rank 1 = the fewest people per dose (the most doses per person); states without doses last,
    unranked. Ties share the best rank."""
    table = people_per_dose[["state", "population", "total_doses", "people_per_dose"]].copy()
    table["people_per_dose"] = pd.to_numeric(table["people_per_dose"], errors="coerce")
    ranks = table["people_per_dose"].rank(method="min", ascending=True)
    table["rank"] = ranks.astype("Int64")
    table["percentile"] = (100 * (1 - (ranks - 1) / ranks.count())).round(1)
    table = table.sort_values(["rank", "state"], na_position="last", ignore_index=True)
    return table[["rank", "state", "people_per_dose", "percentile", "population", "total_doses"]]


@dg.asset(
    key=RANKING_KEY,
    group_name=GROUP,
    kinds={"postgres", "pandas"},
    ins={"people_per_dose": dg.AssetIn(PEOPLE_PER_DOSE_KEY)},
    io_manager_key="warehouse_io_manager",
    metadata={"dagster/table_name": "vaccines.people_per_dose_ranking"},
    description="The 50 states and DC ranked by people per vaccine dose allocated (1 = the most doses per "
    "person), with a percentile; warehouse table vaccines.people_per_dose_ranking.",
)
def people_per_dose_ranking(context: dg.AssetExecutionContext, people_per_dose: pd.DataFrame) -> pd.DataFrame:
    ranking = rank_states(people_per_dose)
    top = ranking.head(3)
    context.log.info("people_per_dose_ranking: %d states; best %s", len(ranking),
                     ", ".join(f"{r.state} ({r.people_per_dose:.2f})" for r in top.itertuples()))
    return ranking
