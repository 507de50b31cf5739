"""Two runs of the same tenant at once (#15): should the run queue ever let them overlap, what they
publish equals what one run publishes. The runs are interleaved at chosen points with barriers:
both take in the same new file, both reserve ids from the same empty id maps, then both publish."""

import threading

import dagster as dg
import pytest

from covid_lakehouse.defs.omop import assets, pipeline, tables
from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse_tests.omop.support import SAMPLE_CSV, drop_file, normalized, run_tenant

pytestmark = pytest.mark.integration

# Guards a broken interleaving from hanging the suite; the barriers, not this, order the runs.
DEADLOCK_GUARD_S = 120


def test_two_overlapping_runs_of_a_tenant_publish_what_one_run_publishes(make_tenants, s3, lakehouse, monkeypatch):
    env = make_tenants(2, providers=300)  # same seed: identical sources
    twice, once = env.tenants
    for tenant in env.tenants:
        drop_file(s3, tenant, "d1/sample.csv", SAMPLE_CSV)
    with dg.DagsterInstance.ephemeral() as instance:
        run_tenant(env, once, instance)
    reference = normalized(lakehouse, once)

    # Each barrier is passed by both runs of `twice` together, right after they read a piece of state.
    meet = {table: threading.Barrier(2, timeout=DEADLOCK_GUARD_S) for table in (
        tables.T_LANDING_FILE, tables.T_CARE_SITE_ID_MAP, tables.T_PROVIDER_ID_MAP)}
    arrivals = dict.fromkeys(meet, 0)
    lock = threading.Lock()

    def then_meet(read):
        def read_then_meet(lakehouse_, namespace, table, *args):
            data = read(lakehouse_, namespace, table, *args)
            if namespace == twice.namespace and table in meet:
                with lock:  # only each run's first read meets the other; a retried step passes through
                    arrivals[table] += 1
                    first = arrivals[table] <= 2
                if first:
                    meet[table].wait()  # both runs hold the same (empty) manifest or id map before either writes
            return data
        return read_then_meet

    monkeypatch.setattr(pipeline, "read_or_empty", then_meet(pipeline.read_or_empty))
    monkeypatch.setattr(assets, "read_or_empty", then_meet(pipeline.read_or_empty))
    # The provider step reads the id map as files (LakehouseResource.materialize).
    monkeypatch.setattr(LakehouseResource, "materialize", then_meet(LakehouseResource.materialize))
    outcomes: dict[int, object] = {}

    def run(i: int) -> None:
        try:
            with dg.DagsterInstance.ephemeral() as instance:  # two run workers, as two launched runs
                outcomes[i] = run_tenant(env, twice, instance, raise_on_error=False)
        finally:
            for barrier in meet.values():
                barrier.abort()  # a run that ended early must not leave the other waiting

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(outcome.success for outcome in outcomes.values()), [
        e.message for o in outcomes.values() for e in o.all_events if e.is_failure]
    assert all(count >= 2 for count in arrivals.values())
    # The overlap really happened: the file was taken in twice, each key reserved twice.
    assert lakehouse.read(twice.namespace, tables.T_LANDING_FILE).num_rows == 2
    id_map = lakehouse.read(twice.namespace, tables.T_PROVIDER_ID_MAP)
    assert id_map.num_rows > len(set(id_map["natural_key"].to_pylist()))
    assert normalized(lakehouse, twice) == reference
