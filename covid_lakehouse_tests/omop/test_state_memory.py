"""A tenant's rerun does not hold its state in Arrow memory: the provider step hands the transform the
tenant-sized state tables (landing history, id map, previous provenance) as local copies of their
parquet files, which DuckDB scans and spills from. Read whole into Arrow, as before, they sat in memory
for the whole transform, so a rerun's peak grew with the tenant (1,310 MB against 824 MB for the first
run at 2,000,000 providers)."""

import dagster as dg
import pyarrow as pa
import pytest

from covid_lakehouse.defs.omop import assets, tables
from covid_lakehouse_tests.omop.support import (
    FULL_REFRESH,
    SAMPLE_CSV,
    drop_file,
    execute_on_provider,
    run_tenant,
)

pytestmark = pytest.mark.integration

PROVIDERS = 30_000
STATE = (tables.T_LANDING_ROW, tables.T_LANDING_FILE, tables.T_PROVIDER_ID_MAP, tables.T_PROVENANCE)


def test_a_changed_rerun_holds_none_of_the_tenants_state_in_arrow_memory(make_tenants, s3, lakehouse, pg, monkeypatch):
    env = make_tenants(providers=PROVIDERS)
    tenant = env.tenant
    drop_file(s3, tenant, "d1/sample.csv", SAMPLE_CSV)
    with dg.DagsterInstance.ephemeral() as instance:
        assert run_tenant(env, tenant, instance).success
        state_bytes = sum(lakehouse.read(tenant.namespace, table).nbytes for table in STATE)
        assert state_bytes > 2 << 20  # large enough that holding it cannot hide in the noise
        execute_on_provider(pg, tenant, "UPDATE {t} SET provider_name = provider_name || ' Jr' "
                                        "WHERE provider_id % 100 = 50")  # about 1% changed

        # Arrow memory the step holds when the transform starts (every input read), and when it ends,
        # above what the process held before the run.
        held, real_build = [], assets.build_providers

        def measured(**inputs):
            held.append(pa.total_allocated_bytes() - before)
            build = real_build(**inputs)
            held.append(pa.total_allocated_bytes() - before)
            return build

        monkeypatch.setattr(assets, "build_providers", measured)
        before = pa.total_allocated_bytes()
        rerun = run_tenant(env, tenant, instance, run_config=FULL_REFRESH)
    assert rerun.success
    [provider_materialization] = [m for m in rerun.asset_materializations_for_node("omop_provider")
                                  if m.asset_key == assets.PROVIDER_KEY]
    assert provider_materialization.metadata["source_changed"].value > 0.009 * PROVIDERS  # a real changed rerun
    assert len(held) == 2
    assert max(held) < state_bytes / 20, (held, state_bytes)
