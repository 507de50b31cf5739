"""A first `make up` on a fresh data folder: `covid-lakehouse up` (and `demo`) prepare the demo sources
through runtime.services before the daemon starts, so the first sensor ticks find them. Here the same
function runs on a fresh embedded stack, then the daemon's first work is done in process: the
omop_tenants sensor's run for tenant demo and the marketing runs, the RDS tables included."""

import dagster as dg
import psycopg
import pytest

from covid_lakehouse import runtime
from covid_lakehouse.defs.marketing.assets import RDS_CUSTOMERS_KEY, RDS_ORDERS_KEY
from covid_lakehouse.defs.marketing.definitions import defs as marketing_defs
from covid_lakehouse.defs.omop.assets import PROVIDER_KEY
from covid_lakehouse.defs.omop.definitions import defs as omop_defs
from covid_lakehouse.lib.resources import platform_resources
from covid_lakehouse.lib.settings import EXTERNAL_SERVICE_VARS
from covid_lakehouse_dev import sources

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_up_prepares_the_demo_sources_so_the_first_runs_succeed(tmp_path, monkeypatch):
    for name in (*EXTERNAL_SERVICE_VARS, "DAGSTER_STORAGE_URL", "OMOP_TENANTS_FILE", "MARKETING_RDS_DSN",
                 "MARKETING_RDS_SCHEMA"):
        monkeypatch.delenv(name, raising=False)  # a fresh laptop: nothing configured, no data folder

    with runtime.services(stand_ins=True, home=tmp_path / "home") as svc:
        assert svc.embedded is not None
        assert svc.demo_sources_created == {
            "omop": {"seeded_providers": 20_000, "landing_file": "omop/landing/demo/E4_sample_providers.csv"},
            "marketing_rds": {"schema": "marketing_rds_source"},
        }
        defs = dg.Definitions.merge(omop_defs, marketing_defs, dg.Definitions(resources=platform_resources()))
        with dg.instance_for_test() as instance:
            report = runtime.run_demo(defs, instance)  # the sensors' first ticks and their runs

            assert report.runs and report.ok, report.runs
            assert ("sensor omop_tenants", True) in report.runs
            assert instance.get_latest_materialization_event(PROVIDER_KEY) is not None
            assert {RDS_CUSTOMERS_KEY.to_user_string(), RDS_ORDERS_KEY.to_user_string()} <= set(report.materialized)
        with psycopg.connect(svc.settings.warehouse_dsn) as conn:
            assert conn.execute("SELECT count(*) FROM marketing.rds_orders").fetchone()[0] > 0

        # Idempotent: the next `up` on the same data folder (nothing configured) creates nothing.
        again = sources.prepare(svc.settings, environ={})
        assert again.done == {} and again.env.items() <= svc.demo_env.items()
