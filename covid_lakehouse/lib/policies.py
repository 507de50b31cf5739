"""Policies every asset of the code location gets, applied once at the root (covid_lakehouse/definitions.py).

`dg.load_from_defs_folder` loads every module under defs/, and a domain's definitions.py names the
same objects its modules already hold, so the merged Definitions list some objects twice. Dagster
accepts the same object twice, but mapping asset specs would turn the two into two different assets
with one key: `rebuilt` keeps one of each first."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import dagster as dg

# Run monitoring (dagster.yaml `run_monitoring`) fails a run still going after this many seconds, and
# the run-failure sensor reports it; a run without the tag gets the instance's max_runtime_seconds.
MAX_RUNTIME_TAG = "dagster/max_runtime"


def max_runtime(*, hours: float) -> dict[str, str]:
    """The run tag bounding a job's runs. Put it on the job (schedule and sensor runs of a named job
    inherit its tags) and on the RunRequests of schedules/sensors that target an asset selection."""
    return {MAX_RUNTIME_TAG: str(int(hours * 3600))}


@dataclass(frozen=True)
class AssetPolicy:
    """What the root says about the assets of one group (a domain)."""

    owners: tuple[str, ...]
    # Only for assets that declare none themselves: a domain's own policy is the more specific one.
    freshness: dg.FreshnessPolicy | None = None


def _unique(objects: Iterable | None) -> list:
    seen: set[int] = set()
    out = []
    for obj in objects or ():
        if id(obj) not in seen:
            seen.add(id(obj))
            out.append(obj)
    return out


def rebuilt(defs: dg.Definitions, *, assets: Iterable | None = None,
            resources: Mapping[str, object] | None = None) -> dg.Definitions:
    """``defs`` with each object once, and ``assets`` or ``resources`` instead of its own when given
    (Definitions are immutable). Tests and benchmarks use it to run a domain on resources of their own."""
    return dg.Definitions(
        assets=_unique(defs.assets if assets is None else assets),
        asset_checks=_unique(defs.asset_checks),
        jobs=_unique(defs.jobs),
        schedules=_unique(defs.schedules),
        sensors=_unique(defs.sensors),
        resources=defs.resources if resources is None else resources,
        executor=defs.executor,
        loggers=defs.loggers,
        metadata=defs.metadata,
        component_tree=defs.component_tree,
    )


def apply_policies(defs: dg.Definitions, by_group: Mapping[str, AssetPolicy]) -> dg.Definitions:
    """Owners and freshness per group, and a code reference to the source file of every asset.
    An asset of a group without a policy is an error: every dataset has an owner."""
    # External assets (plain AssetSpecs: a partner's database, a bucket) are observed, never
    # materialized here: a freshness policy on them would only ever report "stale".
    external = {a.key for a in defs.assets or () if isinstance(a, dg.AssetSpec)}

    def apply(spec: dg.AssetSpec) -> dg.AssetSpec:
        policy = by_group.get(spec.group_name or "")
        if policy is None:
            raise dg.DagsterInvalidDefinitionError(
                f"asset {spec.key.to_user_string()} is in group {spec.group_name!r}, which has no owner policy "
                "in covid_lakehouse/definitions.py")
        freshness = spec.freshness_policy or (None if spec.key in external else policy.freshness)
        return spec.replace_attributes(owners=[*policy.owners], freshness_policy=freshness)

    # Code references and spec mapping are beta/preview APIs we use on purpose: keep start-up quiet.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        warnings.simplefilter("ignore", dg.PreviewWarning)
        defs = rebuilt(defs, assets=dg.with_source_code_references(_unique(defs.assets)))
        return defs.map_asset_specs(func=apply)
