"""The omop domain calls no third-party API. For the demo it only needs its demo tenant seeded, which
omop/demo_source_seed does when OMOP_DEMO_SEED=1: the demo environment sets it through here."""

from covid_lakehouse.defs.omop.seed import DEMO_SEED_ENV
from covid_lakehouse.lib.api_harness import MockApi


def register(api: MockApi) -> dict[str, str]:
    return {DEMO_SEED_ENV: "1"}
