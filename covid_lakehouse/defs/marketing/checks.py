"""Data-quality audits run on staged rows before anything is published (platform write-audit-publish).

Blocking: the natural key is unique, clicks never exceed impressions, spend is never negative.
WARN: the loaded totals reconcile with what the API itself reports for the same days (Facebook's
account-level insights, Google's summary row, CleverTap's event count)."""

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from psycopg import sql

from covid_lakehouse.defs.marketing.load import Staged
from covid_lakehouse.lib.wap import Audit, AuditResult

SAMPLE = 5


def _key_unique(staged: Staged) -> AuditResult:
    keys = sql.SQL(", ").join(map(sql.Identifier, staged.spec.key))
    rows = staged.conn.execute(sql.SQL(
        "SELECT {keys}, count(*) FROM {t} GROUP BY {keys} HAVING count(*) > 1 ORDER BY count(*) DESC LIMIT %s"
    ).format(keys=keys, t=staged.staging), (SAMPLE,)).fetchall()
    if not rows:
        return AuditResult(True, f"({', '.join(staged.spec.key)}) is unique in the staged rows")
    return AuditResult(False, f"{len(rows)}+ natural keys appear more than once, e.g. {rows[0][:-1]} x{rows[0][-1]}",
                       {"examples": [list(map(str, r)) for r in rows]})


def _violations(staged: Staged, condition: sql.Composable, what: str, ok: str) -> AuditResult:
    keys = sql.SQL(", ").join(map(sql.Identifier, staged.spec.key))
    bad = staged.conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(staged.staging, condition)).fetchone()[0]
    if not bad:
        return AuditResult(True, ok, {"violations": 0})
    examples = staged.conn.execute(sql.SQL("SELECT {} FROM {} WHERE {} LIMIT %s").format(keys, staged.staging, condition),
                                   (SAMPLE,)).fetchall()
    return AuditResult(False, f"{bad} staged row(s) {what}, e.g. {examples[0]}",
                       {"violations": bad, "examples": [list(map(str, r)) for r in examples]})


def _clicks_not_above_impressions(staged: Staged) -> AuditResult:
    return _violations(staged, sql.SQL("clicks > impressions"), "with more clicks than impressions",
                       "clicks <= impressions in every staged row")


def _not_negative(column: str) -> Callable[[Staged], AuditResult]:
    def audit(staged: Staged) -> AuditResult:
        return _violations(staged, sql.SQL("{} < 0").format(sql.Identifier(column)), f"with negative {column}",
                           f"{column} >= 0 in every staged row")

    return audit


def reconcile(group_by: tuple[str, ...], measures: dict[str, sql.Composable],
              tolerance: Decimal = Decimal("0.01")) -> Callable[[Staged], AuditResult]:
    """Compare staged sums per group with ``staged.reported`` {group tuple: {measure: value}}."""

    def audit(staged: Staged) -> AuditResult:
        if not staged.reported:
            return AuditResult(True, "the API reported no totals for these days")
        cols = sql.SQL(", ").join(map(sql.Identifier, group_by))
        sums = sql.SQL(", ").join(expr for expr in measures.values())
        loaded = {tuple(map(str, r[:len(group_by)])): dict(zip(measures, r[len(group_by):], strict=True))
                  for r in staged.conn.execute(sql.SQL("SELECT {}, {} FROM {} GROUP BY {}").format(
                      cols, sums, staged.staging, cols)).fetchall()}
        mismatches: list[dict[str, Any]] = []
        for group, expected in sorted(staged.reported.items()):
            got = loaded.get(tuple(map(str, group)), dict.fromkeys(measures, 0))
            for measure in measures:
                want, have = Decimal(str(expected[measure])), Decimal(str(got[measure] or 0))
                if abs(want - have) > tolerance:
                    mismatches.append({"group": "/".join(map(str, group)), "measure": measure,
                                       "api": str(want), "loaded": str(have)})
        if mismatches:
            first = mismatches[0]
            return AuditResult(False, f"{len(mismatches)} total(s) differ from the API's own figures, e.g. "
                               f"{first['group']} {first['measure']}: API {first['api']}, loaded {first['loaded']}",
                               {"mismatches": mismatches[:50]})
        return AuditResult(True, f"{len(staged.reported)} group total(s) match the API's own figures",
                           {"groups": len(staged.reported)})

    return audit


def _api_version_current(staged: Staged) -> AuditResult:
    version = staged.notices.get("api_version")
    if version is None:
        return AuditResult(True, "no API call in this run (replay): the API version was not used")
    notices = staged.notices.get("api_version_notices") or []
    if not notices:
        return AuditResult(True, f"API version {version}: no sunset within 60 days, no version warning received",
                           {"version": version})
    return AuditResult(False, f"API version {version}: {notices[0]}", {"version": version, "notices": notices})


API_VERSION_CURRENT = Audit("api_version_current", _api_version_current, blocking=False,
                            description="The API version in use is not within 60 days of its announced sunset and the "
                                        "API sent no version warning (WARN: vendors move dates)")
KEY_UNIQUE = Audit("natural_key_unique", _key_unique, blocking=True,
                   description="Each natural key appears once in the staged rows (else the merge would be ambiguous)")
CLICKS_LE_IMPRESSIONS = Audit("clicks_not_above_impressions", _clicks_not_above_impressions, blocking=True,
                              description="clicks <= impressions in every staged row")


def spend_not_negative(column: str) -> Audit:
    return Audit("spend_not_negative", _not_negative(column), blocking=True,
                 description=f"{column} >= 0 in every staged row")


def totals_match_api(description: str, group_by: tuple[str, ...], measures: dict[str, sql.Composable]) -> Audit:
    return Audit("totals_match_api", reconcile(group_by, measures), blocking=False, description=description)


def _sum(column: str) -> sql.Composable:
    return sql.SQL("sum({})").format(sql.Identifier(column))


FACEBOOK_AUDITS = [
    API_VERSION_CURRENT, KEY_UNIQUE, CLICKS_LE_IMPRESSIONS, spend_not_negative("spend"),
    totals_match_api("Impressions, clicks and spend per account and day equal Facebook's account-level insights",
                     ("account_id", "date"), {"impressions": _sum("impressions"), "clicks": _sum("clicks"), "spend": _sum("spend")}),
]
GOOGLE_ADS_AUDITS = [
    API_VERSION_CURRENT, KEY_UNIQUE, CLICKS_LE_IMPRESSIONS, spend_not_negative("cost_micros"),
    totals_match_api("Impressions, clicks and cost per customer and day equal the searchStream summary row",
                     ("customer_id", "date"), {"impressions": _sum("impressions"), "clicks": _sum("clicks"),
                                               "cost_micros": _sum("cost_micros")}),
]
CLEVERTAP_AUDITS = [
    KEY_UNIQUE,
    totals_match_api("Events per name and day equal CleverTap's Get Event Count",
                     ("event_name", "event_date"), {"count": sql.SQL("count(*)")}),
]
RDS_AUDITS = [KEY_UNIQUE]
AD_PERFORMANCE_AUDITS = [KEY_UNIQUE, CLICKS_LE_IMPRESSIONS, spend_not_negative("spend")]
