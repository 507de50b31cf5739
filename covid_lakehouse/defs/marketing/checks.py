"""Data-quality audits run on staged rows before anything is published (platform write-audit-publish).

Blocking only what real data cannot do: a null or repeated natural key, negative impressions, clicks
or spend, and totals that differ from the API's own figures beyond RECONCILE_TOLERANCE.
WARN (reported with the rows, never blocking): clicks above impressions (real ad x day rows do that:
Facebook counts every click, Google counts clicks on cached pages and clicks after midnight on the
next day), any difference from the API's totals, and the API version (versions.py)."""

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from covid_lakehouse.defs.marketing.load import FoldedAudit, Staged
from covid_lakehouse.defs.marketing.tables import TableSpec
from covid_lakehouse.lib.wap import Audit, AuditResult

SAMPLE = 5
TOP_ROWS = 50  # rows listed by the clicks audit
# numeric columns staged as text (Facebook's spend) are numeric(20, 6) in the table (migrations/0001): a
# fold rounds them as PostgreSQL does, half away from zero, to compare and sum what the table would hold
NUMERIC_SCALE = 6


def _key_unique(staged: Staged) -> AuditResult:
    keys = sql.SQL(", ").join(map(sql.Identifier, staged.spec.key))
    rows = staged.conn.execute(sql.SQL(
        "SELECT {keys}, count(*) FROM {t} GROUP BY {keys} HAVING count(*) > 1 ORDER BY count(*) DESC LIMIT %s"
    ).format(keys=keys, t=staged.staging), (SAMPLE,)).fetchall()
    if not rows:
        return AuditResult(True, f"({', '.join(staged.spec.key)}) is unique in the staged rows")
    return AuditResult(False, f"{len(rows)}+ natural keys appear more than once, e.g. {rows[0][:-1]} x{rows[0][-1]}",
                       {"examples": [list(map(str, r)) for r in rows]})


def _key_order(spec: TableSpec) -> sql.Composable:
    """ORDER BY the natural key, as a fold orders it (``_key_sort``): text by code point (COLLATE "C", whatever
    the database's collation), NULLs last. Examples and ties then read the same, scanned or folded."""
    return sql.SQL(", ").join(
        sql.SQL('{} COLLATE "C"').format(sql.Identifier(c)) if _is_text(spec.arrow_schema.field(c).type)
        else sql.Identifier(c) for c in spec.key)


def _is_text(type_: pa.DataType) -> bool:
    return pa.types.is_string(type_) or pa.types.is_large_string(type_)


def _key_sort(key: tuple) -> tuple:
    """Python's order of a key as ``_key_order``'s: NULLs last, str by code point (UTF-8's byte order)."""
    return tuple((v is None, "" if v is None else v) for v in key)


def _violations(staged: Staged, condition: sql.Composable, what: str, ok: str) -> AuditResult:
    keys = sql.SQL(", ").join(map(sql.Identifier, staged.spec.key))
    bad = staged.conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(staged.staging, condition)).fetchone()[0]
    examples = staged.conn.execute(sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT %s").format(
        keys, staged.staging, condition, _key_order(staged.spec)), (SAMPLE,)).fetchall() if bad else []
    return _violation_result(bad, examples, what, ok)


def _violation_result(bad: int, examples: list[tuple], what: str, ok: str) -> AuditResult:
    if not bad:
        return AuditResult(True, ok, {"violations": 0})
    return AuditResult(False, f"{bad} staged row(s) {what}, e.g. {examples[0]}",
                       {"violations": bad, "examples": [list(map(str, r)) for r in examples]})


def _numeric(chunk: pa.Table, column: str) -> pa.ChunkedArray:
    """A staged column as the table holds it: text (Facebook's spend) as numeric(20, 6), rounded as PostgreSQL
    rounds it (half away from zero); a value with more than 12 decimals makes the fold give up (the audit then
    reads the staging table)."""
    values = chunk.column(column)
    if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
        return values
    exact = pc.cast(values, pa.decimal128(38, 12))
    return pc.cast(pc.round(exact, ndigits=NUMERIC_SCALE, round_mode="half_towards_infinity"),
                   pa.decimal128(38, NUMERIC_SCALE))


class _RowFold:
    """The staged rows meeting a condition, folded chunk by chunk: how many, and the SAMPLE smallest keys (the
    scan orders by key too: ``_key_order``); with ``top``, also the TOP_ROWS largest by ``top``, ties by key."""

    _RANK = "__audit_rank"  # the ``top`` value, as a column to sort a chunk's rows by

    def __init__(self, spec: TableSpec, condition: Callable[[pa.Table], pa.ChunkedArray],
                 top: tuple[Callable[[pa.Table], pa.ChunkedArray], tuple[str, ...]] | None = None) -> None:
        self.key, self.condition, self.top = spec.key, condition, top
        self.count, self.examples, self.rows = 0, [], []

    def add(self, chunk: pa.Table) -> None:
        hit = pc.fill_null(self.condition(chunk), False)  # SQL: a NULL condition is not met
        bad = pc.sum(hit).as_py() or 0
        if not bad:
            return
        self.count += bad
        rows = chunk.filter(hit)
        by_key = [(c, "ascending") for c in self.key]
        self.examples = sorted([*self.examples, *_tuples(_first(rows, by_key, SAMPLE), self.key)], key=_key_sort)[:SAMPLE]
        if self.top is not None:
            by, shown = self.top
            picked = _first(rows.append_column(self._RANK, by(rows)), [(self._RANK, "descending"), *by_key], TOP_ROWS)
            ranked = zip(picked.column(self._RANK).to_pylist(), _tuples(picked, (*self.key, *shown)), strict=True)
            self.rows = sorted([*self.rows, *ranked],
                               key=lambda r: (-r[0], _key_sort(r[1][:len(self.key)])))[:TOP_ROWS]


def _first(rows: pa.Table, sort_keys: list[tuple[str, str]], n: int) -> pa.Table:
    """The first ``n`` of ``rows`` in SQL's order by ``sort_keys`` (NULLs last; Arrow compares text bytewise)."""
    return rows.take(pc.sort_indices(rows, sort_keys=sort_keys, null_placement="at_end")[:n])


def _tuples(rows: pa.Table, columns: tuple[str, ...]) -> list[tuple]:
    return list(zip(*(rows.column(c).to_pylist() for c in columns), strict=True))


_CLICKS_WHAT, _CLICKS_OK = "with more clicks than impressions", "clicks <= impressions in every staged row"


def _clicks_not_above_impressions(staged: Staged) -> AuditResult:
    result = _violations(staged, sql.SQL("clicks > impressions"), _CLICKS_WHAT, _CLICKS_OK)
    if result.passed:
        return result
    rows = staged.conn.execute(sql.SQL("SELECT {}, clicks, impressions FROM {} WHERE clicks > impressions "
                                       "ORDER BY clicks - impressions DESC, {} LIMIT %s").format(
        sql.SQL(", ").join(map(sql.Identifier, staged.spec.key)), staged.staging, _key_order(staged.spec)),
        (TOP_ROWS,)).fetchall()
    return _clicks_result(result, staged.spec, rows)


def _clicks_result(result: AuditResult, spec: TableSpec, rows: list[tuple]) -> AuditResult:
    names = [*spec.key, "clicks", "impressions"]
    return AuditResult(False, result.description, {**result.metadata, "rows": [dict(zip(names, map(str, r), strict=True))
                                                                                for r in rows]})


def _clicks_judged(state: _RowFold, staged: Staged) -> AuditResult:
    result = _violation_result(state.count, state.examples, _CLICKS_WHAT, _CLICKS_OK)
    return result if result.passed else _clicks_result(result, staged.spec, [row for _, row in state.rows])


def _clicks_fold(spec: TableSpec) -> _RowFold:
    return _RowFold(spec, lambda t: pc.greater(t.column("clicks"), t.column("impressions")),
                    top=(lambda t: pc.subtract(t.column("clicks"), t.column("impressions")), ("clicks", "impressions")))


def _negative_texts(columns: tuple[str, ...]) -> tuple[str, str]:
    return f"with a negative {' / '.join(columns)}", f"{', '.join(columns)} >= 0 in every staged row"


def _not_negative(columns: tuple[str, ...]) -> Callable[[Staged], AuditResult]:
    def audit(staged: Staged) -> AuditResult:
        condition = sql.SQL(" OR ").join(sql.SQL("{} < 0").format(sql.Identifier(c)) for c in columns)
        return _violations(staged, condition, *_negative_texts(columns))

    return audit


def _any_of(tests: list[pa.ChunkedArray]) -> pa.ChunkedArray:
    hit = tests[0]
    for test in tests[1:]:
        hit = pc.or_kleene(hit, test)  # SQL's OR: NULL OR true is true
    return hit


def _any_negative(columns: tuple[str, ...]) -> Callable[[pa.Table], pa.ChunkedArray]:
    return lambda chunk: _any_of([pc.less(_numeric(chunk, c), 0) for c in columns])


def _null_key_texts(key: tuple[str, ...]) -> tuple[str, str]:
    return f"with a null key column ({', '.join(key)})", "no key column is null"


def _keys_not_null(staged: Staged) -> AuditResult:
    condition = sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(sql.Identifier(c)) for c in staged.spec.key)
    return _violations(staged, condition, *_null_key_texts(staged.spec.key))


def _null_key_fold(spec: TableSpec) -> _RowFold:
    return _RowFold(spec, lambda chunk: _any_of([pc.is_null(chunk.column(c)) for c in spec.key]))


# Beyond this the loaded totals are not the API's: 1% of the API's figure, and at least one unit
# (an impression, a click, a currency unit or micro, an event). Smaller differences only warn.
RECONCILE_TOLERANCE = Decimal("0.01")
RECONCILE_MIN_UNITS = Decimal(1)


EXACT = Decimal("0.01")  # what "match" allows: a cent (or unit) of rounding


def reconcile(group_by: tuple[str, ...], measures: dict[str, sql.Composable], tolerance: Decimal = EXACT,
              relative: Decimal | None = None) -> Callable[[Staged], AuditResult]:
    """Compare staged sums per group with ``staged.reported`` {group tuple: {measure: value}}: a
    difference above ``tolerance`` (absolute), or above ``relative`` x the API's figure when larger."""

    def audit(staged: Staged) -> AuditResult:
        if not staged.reported:
            return _unreconciled(staged)
        cols = sql.SQL(", ").join(map(sql.Identifier, group_by))
        sums = sql.SQL(", ").join(expr for expr in measures.values())
        loaded = {tuple(map(str, r[:len(group_by)])): dict(zip(measures, r[len(group_by):], strict=True))
                  for r in staged.conn.execute(sql.SQL("SELECT {}, {} FROM {} GROUP BY {}").format(
                      cols, sums, staged.staging, cols)).fetchall()}
        return _reconciled(staged, loaded, tuple(measures), tolerance, relative)

    return audit


def _unreconciled(staged: Staged) -> AuditResult:
    replayed = staged.notices.get("replayed_run")
    if replayed:
        return AuditResult(True, f"replay of run {replayed}: the API's totals are not part of the landed raw "
                           "pages, so this load is not reconciled", {"replayed_run": replayed})
    return AuditResult(True, "the API reported no totals for these days")


def _reconciled(staged: Staged, loaded: dict[tuple[str, ...], dict[str, Any]], measures: tuple[str, ...],
                tolerance: Decimal, relative: Decimal | None) -> AuditResult:
    mismatches: list[dict[str, Any]] = []
    for group, expected in sorted(staged.reported.items()):
        got = loaded.get(tuple(map(str, group)), dict.fromkeys(measures, 0))
        for measure in measures:
            want, have = Decimal(str(expected[measure])), Decimal(str(got[measure] or 0))
            if abs(want - have) > max(tolerance, (relative or 0) * abs(want)):
                mismatches.append({"group": "/".join(map(str, group)), "measure": measure,
                                   "api": str(want), "loaded": str(have)})
    if mismatches:
        first = mismatches[0]
        return AuditResult(False, f"{len(mismatches)} total(s) differ from the API's own figures, e.g. "
                           f"{first['group']} {first['measure']}: API {first['api']}, loaded {first['loaded']}",
                           {"mismatches": mismatches[:50]})
    within = "match" if relative is None else f"are within {relative:.0%} (min {tolerance} unit) of"
    return AuditResult(True, f"{len(staged.reported)} group total(s) {within} the API's own figures",
                       {"groups": len(staged.reported)})


class _TotalsFold:
    """The staged sums per group (as reconcile's GROUP BY gives them), added up chunk by chunk. ``measures``:
    measure -> the column it sums, or None for a count of rows."""

    def __init__(self, group_by: tuple[str, ...], measures: dict[str, str | None]) -> None:
        self.group_by, self.measures = group_by, measures
        self.loaded: dict[tuple[str, ...], dict[str, Any]] = {}

    def add(self, chunk: pa.Table) -> None:
        columns = {c: chunk.column(c) for c in self.group_by}
        columns.update({f"m{i}": _numeric(chunk, c) for i, c in enumerate(self.measures.values()) if c is not None})
        aggregates = [(f"m{i}", "sum") if c is not None else ([], "count_all") for i, c in enumerate(self.measures.values())]
        totals = pa.table(columns).group_by(list(self.group_by)).aggregate(aggregates)
        names = [f"m{i}_sum" if c is not None else "count_all" for i, c in enumerate(self.measures.values())]
        for row in totals.to_pylist():
            group = tuple(str(row[c]) for c in self.group_by)
            known = self.loaded.setdefault(group, dict.fromkeys(self.measures))
            for measure, name in zip(self.measures, names, strict=True):
                value = row[name]  # SQL's sum skips NULLs and is NULL only when every value is
                if value is not None:
                    known[measure] = value if known[measure] is None else known[measure] + value


def _api_version_current(staged: Staged) -> AuditResult:
    version = staged.notices.get("api_version")
    if version is None:
        return AuditResult(True, "no API call in this run (replay): the API version was not used")
    notices = staged.notices.get("api_version_notices") or []
    if not notices:
        return AuditResult(True, f"API version {version}: no sunset within 60 days, no version warning received",
                           {"version": version})
    return AuditResult(False, f"API version {version}: {notices[0]}", {"version": version, "notices": notices})


_IDENTITY = ("event_name", "profile_object_id", "event_ts", "event_props", "session_props")


def _event_identity_unique(staged: Staged) -> AuditResult:
    """The staged rows plus the published rows of the same days that the merge will not overwrite: one
    event (same identity fields) under two keys means a key that changed between reads, and the merge
    would keep both copies."""
    identity = sql.SQL(", ").join(map(sql.Identifier, _IDENTITY))
    rows = staged.conn.execute(sql.SQL("""
        WITH span AS (SELECT min(event_date) AS lo, max(event_date) AS hi FROM {staging}),
        everything AS (
            SELECT event_key, {identity} FROM {staging}
            UNION ALL
            SELECT p.event_key, {p_identity} FROM {target} p, span
            WHERE p.event_date BETWEEN span.lo AND span.hi AND NOT EXISTS (
                SELECT 1 FROM {staging} s WHERE s.event_key = p.event_key AND s.occurrence = p.occurrence))
        SELECT event_name, profile_object_id, event_ts, count(DISTINCT event_key) FROM everything
        GROUP BY {identity} HAVING count(DISTINCT event_key) > 1 LIMIT %s""").format(
        staging=staged.staging, target=staged.spec.ident, identity=identity,
        p_identity=sql.SQL(", ").join(sql.Identifier("p", c) for c in _IDENTITY)), (SAMPLE,)).fetchall()
    if not rows:
        return AuditResult(True, "no event appears under two keys in the staged and published rows of these days")
    return AuditResult(False, f"{len(rows)}+ event(s) appear under more than one key in the staged + published rows of "
                       f"these days, e.g. {rows[0][0]!r} of {rows[0][1]!r} at {rows[0][2].isoformat()} under "
                       f"{rows[0][3]} keys", {"examples": [list(map(str, r)) for r in rows]})


API_VERSION_CURRENT = Audit("api_version_current", _api_version_current, blocking=False,
                            description="The API version in use is not within 60 days of its announced sunset and the "
                                        "API sent no version warning (WARN: vendors move dates)")
KEY_UNIQUE = Audit("natural_key_unique", _key_unique, blocking=True,
                   description="Each natural key appears once in the staged rows (else the merge would be ambiguous)")
# The row audits below are also folded chunk by chunk in a streamed load (load.FoldedAudit): same verdicts,
# same words and metadata, no scan of the staging table after the last page.
KEYS_NOT_NULL = FoldedAudit(
    "keys_not_null", _keys_not_null, blocking=True, description="No natural key column is null", fold=_null_key_fold,
    judge=lambda state, staged: _violation_result(state.count, state.examples, *_null_key_texts(staged.spec.key)))
CLICKS_LE_IMPRESSIONS = FoldedAudit("clicks_not_above_impressions", _clicks_not_above_impressions, blocking=False,
                                    description="clicks <= impressions (WARN: real ad x day rows may break it; the rows "
                                                "are listed in the metadata)", fold=_clicks_fold, judge=_clicks_judged)


def metrics_not_negative(spend: str) -> Audit:
    columns = ("impressions", "clicks", spend)
    return FoldedAudit("metrics_not_negative", _not_negative(columns), blocking=True,
                       description=f"impressions, clicks and {spend} >= 0 in every staged row",
                       fold=lambda spec: _RowFold(spec, _any_negative(columns)),
                       judge=lambda state, _: _violation_result(state.count, state.examples, *_negative_texts(columns)))


def totals_match_api(description: str, group_by: tuple[str, ...], measures: dict[str, sql.Composable],
                     folded: dict[str, str | None] | None = None) -> list[Audit]:
    """WARN on any difference from the API's totals; block beyond RECONCILE_TOLERANCE. ``folded``: the same
    measures for a streamed load's fold (measure -> column summed, None: rows counted), one fold for both."""
    fold = (lambda _spec: _TotalsFold(group_by, folded)) if folded is not None else None

    def audit(name: str, blocking: bool, text: str, tolerance: Decimal, relative: Decimal | None) -> Audit:
        def judge(state: _TotalsFold, staged: Staged) -> AuditResult:
            if not staged.reported:
                return _unreconciled(staged)
            return _reconciled(staged, state.loaded, tuple(measures), tolerance, relative)

        return FoldedAudit(name, reconcile(group_by, measures, tolerance, relative), blocking=blocking, description=text,
                           fold=fold, judge=judge if fold is not None else None)

    return [audit("totals_match_api", False, description, EXACT, None),
            audit("totals_within_tolerance", True, f"{description}, within {RECONCILE_TOLERANCE:.0%} (at least "
                  f"{RECONCILE_MIN_UNITS} unit): beyond that nothing is published", RECONCILE_MIN_UNITS, RECONCILE_TOLERANCE)]


def _sum(column: str) -> sql.Composable:
    return sql.SQL("sum({})").format(sql.Identifier(column))


_FACEBOOK_TOTALS = ("impressions", "clicks", "spend")  # each the sum of its own column
FACEBOOK_AUDITS = [
    API_VERSION_CURRENT, KEY_UNIQUE, KEYS_NOT_NULL, CLICKS_LE_IMPRESSIONS, metrics_not_negative("spend"),
    *totals_match_api("Impressions, clicks and spend per account and day equal Facebook's account-level insights",
                     ("account_id", "date"), {m: _sum(m) for m in _FACEBOOK_TOTALS}, {m: m for m in _FACEBOOK_TOTALS}),
]
GOOGLE_ADS_AUDITS = [
    API_VERSION_CURRENT, KEY_UNIQUE, KEYS_NOT_NULL, CLICKS_LE_IMPRESSIONS, metrics_not_negative("cost_micros"),
    *totals_match_api("Impressions, clicks and cost per customer and day equal the searchStream summary row",
                     ("customer_id", "date"), {"impressions": _sum("impressions"), "clicks": _sum("clicks"),
                                               "cost_micros": _sum("cost_micros")}),
]
EVENT_IDENTITY_UNIQUE = Audit("event_identity_unique", _event_identity_unique, blocking=True,
                              description="No event (name, objectId, ts, event_props, session_props) appears under two "
                                          "keys in the staged rows plus the published rows of the same days")
CLEVERTAP_AUDITS = [
    KEY_UNIQUE, KEYS_NOT_NULL, EVENT_IDENTITY_UNIQUE,
    *totals_match_api("Events per name and day equal CleverTap's Get Event Count",
                     ("event_name", "event_date"), {"count": sql.SQL("count(*)")}),
]
RDS_AUDITS = [KEY_UNIQUE, KEYS_NOT_NULL]
AD_PERFORMANCE_AUDITS = [KEY_UNIQUE, KEYS_NOT_NULL, CLICKS_LE_IMPRESSIONS, metrics_not_negative("spend")]
