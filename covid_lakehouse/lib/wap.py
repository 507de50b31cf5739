"""Write-audit-publish: one mechanism for every domain.

An asset stages its output (a temporary table inside the publishing transaction in PostgreSQL, or
data files of an uncommitted Iceberg transaction), runs its audits against the staged data, reports
each audit as an asset check result, and publishes in one step only if every blocking audit passed.
A failing blocking audit raises ``BlockingAuditFailed``: the transaction rolls back, the published
data is untouched, and the failed check is visible in the UI.

    AUDITS = [Audit("no_negative_counts", blocking=True, fn=..., description=...)]

    @dg.asset(check_specs=audit_check_specs(KEY, AUDITS))
    def my_table(context, warehouse: PostgresResource):
        with warehouse.connection() as conn:
            staging = ...stage rows...
            yield from audit_or_raise(AUDITS, conn, staging)   # before anything is published
            ...publish (one statement or one transaction)...
        yield dg.MaterializeResult(...)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditResult:
    passed: bool
    description: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Audit:
    """A data-quality rule run on staged data. ``fn`` receives whatever the asset passes (a
    connection and a staging identifier, or an Arrow table) and returns an AuditResult."""

    name: str
    fn: Callable[..., AuditResult]
    blocking: bool = True
    description: str = ""


class BlockingAuditFailed(dg.Failure):
    """Raised before publishing when a blocking audit fails. Not retried: the data is wrong, not the
    infrastructure, so a retry would fail the same way."""

    def __init__(self, asset: str, failed: Sequence[tuple[str, AuditResult]]):
        details = "; ".join(f"{name}: {result.description or 'failed'}" for name, result in failed)
        super().__init__(
            description=f"{asset}: blocking check(s) failed on staged data, nothing published ({details})",
            metadata={"failed_checks": ", ".join(name for name, _ in failed)},
            allow_retries=False,
        )
        self.failed = list(failed)


def audit_check_specs(asset: dg.AssetKey | str | Sequence[str], audits: Sequence[Audit]) -> list[dg.AssetCheckSpec]:
    key = dg.AssetKey.from_coercible(asset)
    return [
        dg.AssetCheckSpec(name=a.name, asset=key, blocking=a.blocking, description=a.description or None)
        for a in audits
    ]


def run_audits(audits: Sequence[Audit], *args: Any, asset_key: dg.AssetKey | None = None
               ) -> tuple[list[dg.AssetCheckResult], list[tuple[str, AuditResult]]]:
    """Run every audit (all of them, so the UI shows the full picture) and return the check results
    plus the blocking failures."""
    results: list[dg.AssetCheckResult] = []
    blocking_failures: list[tuple[str, AuditResult]] = []
    for audit in audits:
        try:
            outcome = audit.fn(*args)
        except Exception as err:  # an audit that cannot run is a failed audit, with the reason
            outcome = AuditResult(False, f"audit could not run: {type(err).__name__}: {err}")
        severity = dg.AssetCheckSeverity.ERROR if audit.blocking else dg.AssetCheckSeverity.WARN
        results.append(
            dg.AssetCheckResult(
                asset_key=asset_key,
                check_name=audit.name,
                passed=bool(outcome.passed),
                severity=severity,
                description=outcome.description or None,
                metadata=outcome.metadata,
            )
        )
        if not outcome.passed:
            (blocking_failures if audit.blocking else []).append((audit.name, outcome))
            log.warning("check %s %s: %s", audit.name, "FAILED" if audit.blocking else "warned", outcome.description)
    return results, blocking_failures


def audit_or_raise(audits: Sequence[Audit], *args: Any, asset_key: dg.AssetKey | None = None,
                   asset_label: str = "asset") -> Iterator[dg.AssetCheckResult]:
    """Yield every audit's check result, then raise BlockingAuditFailed if a blocking one failed."""
    results, failures = run_audits(audits, *args, asset_key=asset_key)
    yield from results
    if failures:
        raise BlockingAuditFailed(asset_label, failures)
