"""The gate before launch: a schedule or sensor tick compares each tenant's cheap source signal
(fingerprint.signal: storage files, counters and columns of its source tables, the landing listing
with ETags, the code digest; no row read) with the signal its last successful publish recorded, and
launches a run only for a tenant whose signal moved. An unchanged tenant costs the tick a few catalog
and database round trips instead of a run (a run's own step handling alone is several times an
empty run), and gets a "no change" observation so the UI shows it was looked at.

Never skipping a changed source: a tenant is only held back when a recorded signal exists and is
exactly the one read now, and the recorded run's outputs are still the latest materializations; no
recorded signal, a signal the counters cannot vouch for, or any error reading the sources launches
the run (which then fingerprints, hashes if needed, and fails loudly if a source is broken). The
in-run gate (assets.landing_files) stays as the safety net for runs launched by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg

from covid_lakehouse.defs.omop import fingerprint
from covid_lakehouse.defs.omop.assets import no_change_observations, published_outputs_latest
from covid_lakehouse.defs.omop.landing import LandingObject, list_landing
from covid_lakehouse.defs.omop.pipeline import last_run
from covid_lakehouse.defs.omop.tenants import Tenant, TenantConfigError, TenantsResource
from covid_lakehouse.lib.lakehouse import LakehouseResource


@dataclass(frozen=True)
class GateDecision:
    tenant: str
    unchanged: bool
    reason: str  # why the tenant runs, or "no change"
    observations: list[dg.AssetObservation] = field(default_factory=list)  # an unchanged tenant's "no change"


def evaluate(instance: dg.DagsterInstance, tenant: Tenant, client, lakehouse: LakehouseResource,
             objects: list[LandingObject] | None = None) -> GateDecision:
    """Whether the tenant's sources are unchanged since its last successful publish (cheaply; any doubt
    or error means "run it"). ``objects``: the landing listing, when the caller has just taken it."""
    def run(reason: str) -> GateDecision:
        return GateDecision(tenant.name, False, reason)

    try:
        recorded = last_run(lakehouse, tenant.namespace)
        if recorded is None or not recorded.get("source_fingerprint") or not recorded.get("source_signal"):
            return run("no recorded source signal")
        if objects is None:
            objects = list_landing(client, tenant.landing_bucket, tenant.prefix)
        signal = fingerprint.signal(tenant, objects)
    except Exception as err:  # noqa: BLE001 - the run reports it properly; the tick must not hide a change
        return run(f"gate could not read the sources ({type(err).__name__}: {err})")
    if not fingerprint.signal_vouches(recorded, signal):
        return run("source counters cannot vouch for the tables" if signal is None else "source signal moved")
    if not published_outputs_latest(instance, tenant.name, recorded["run_id"]):
        return run("outputs republished since the recorded run")
    return GateDecision(tenant.name, True, "no change", no_change_observations(tenant.name, recorded, {
        "checked_by": "tick", "fingerprint_checked": "signal", "source_fingerprint": recorded["source_fingerprint"],
        "source_signal": signal, "landing_objects": len(objects)}))


def gate_tenants(instance: dg.DagsterInstance, names: list[str], tenants: TenantsResource, client,
                 lakehouse: LakehouseResource) -> list[GateDecision]:
    """A decision per tenant partition, in order. A partition the tenants file does not describe (or
    a file that cannot be read) runs: the run then fails with the reason, the tick hides nothing."""
    try:
        known = {t.name: t for t in tenants.load()}
    except TenantConfigError as err:
        return [GateDecision(name, False, f"tenants file: {err}") for name in names]
    return [evaluate(instance, known[name], client, lakehouse) if name in known
            else GateDecision(name, False, "not in the tenants file") for name in names]
