"""Re-keying CleverTap rows loaded with the whole-record key (key_version 1) to the event identity
(key_version 2, clevertap.event_identity), so that the first run after the change merges onto the
rows it already has instead of inserting the look-back window again.

The identity is rebuilt from the stored columns: event name, profile_object_id, the event time shown in
the zone the rows were read with (CLEVERTAP_REKEY_TIMEZONE, default CLEVERTAP_TIMEZONE), event_props
and session_props. The old keys also made one row per export of the same event (the profile changed
in between); of those, the most recently updated copy is kept and the others are deleted. One
transaction: either every legacy row is re-keyed or none is."""

from collections import defaultdict
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql

from covid_lakehouse.defs.marketing.clevertap import KEY_VERSION, event_identity
from covid_lakehouse.defs.marketing.tables import CLEVERTAP


def rekey_legacy_rows(conn: psycopg.Connection, zone: ZoneInfo) -> dict[str, int]:
    """Re-key every key_version 1 row in ``conn``'s transaction: {"rekeyed": n, "deleted": m}."""
    rows = conn.execute(sql.SQL(
        "SELECT event_key, occurrence, event_name, profile_object_id, event_ts, event_props, session_props, updated_at "
        "FROM {} WHERE key_version = 1 FOR UPDATE").format(CLEVERTAP.ident)).fetchall()
    if not rows:
        return {"rekeyed": 0, "deleted": 0}
    # new key -> old key -> [(occurrence, updated_at)]
    groups: dict[str, dict[str, list[tuple[int, datetime]]]] = defaultdict(lambda: defaultdict(list))
    for old_key, occurrence, name, object_id, event_ts, event_props, session_props, updated_at in rows:
        ts = event_ts.astimezone(zone).strftime("%Y%m%d%H%M%S")
        groups[event_identity(name, object_id, ts, event_props, session_props)][old_key].append((occurrence, updated_at))
    mapping: list[tuple[str, int, str, int, bool]] = []
    for new_key, by_old in groups.items():
        # the copy of the latest export wins; the others are the duplicates the old key made
        keep = max(by_old, key=lambda k: (max(u for _, u in by_old[k]), len(by_old[k]), k))
        for old_key, copies in by_old.items():
            for new_occurrence, (occurrence, _) in enumerate(sorted(copies)):
                mapping.append((old_key, occurrence, new_key, new_occurrence, old_key == keep))
    return _apply(conn, mapping)


def _apply(conn: psycopg.Connection, mapping: list[tuple[Any, ...]]) -> dict[str, int]:
    conn.execute("CREATE TEMP TABLE clevertap_rekey (old_key text, old_occ int, new_key text, new_occ int, keep boolean) "
                 "ON COMMIT DROP")
    with conn.cursor().copy("COPY clevertap_rekey FROM STDIN") as copy:
        for row in mapping:
            copy.write_row(row)
    target = CLEVERTAP.ident
    deleted = conn.execute(sql.SQL(
        "DELETE FROM {t} t USING clevertap_rekey m WHERE t.key_version = 1 AND t.event_key = m.old_key "
        "AND t.occurrence = m.old_occ AND (NOT m.keep OR EXISTS (SELECT 1 FROM {t} n WHERE n.event_key = m.new_key "
        "AND n.occurrence = m.new_occ AND n.key_version = {v}))").format(t=target, v=sql.Literal(KEY_VERSION))).rowcount
    rekeyed = conn.execute(sql.SQL(
        "UPDATE {t} t SET event_key = m.new_key, occurrence = m.new_occ, key_version = {v}, updated_at = now() "
        "FROM clevertap_rekey m WHERE t.key_version = 1 AND t.event_key = m.old_key AND t.occurrence = m.old_occ"
    ).format(t=target, v=sql.Literal(KEY_VERSION))).rowcount
    conn.execute("DROP TABLE clevertap_rekey")
    return {"rekeyed": rekeyed, "deleted": deleted}
