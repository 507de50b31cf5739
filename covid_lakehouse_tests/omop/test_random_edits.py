"""Series of random edits to a tenant's sources (rows inserted, updated, deleted, care sites added,
landing files new, replaced under the same key or deleted; several at once, or none): after each
round the daily gate and the run skip exactly when nothing changed, and what the run published
equals a full refresh (every column but the load timestamps support.OUTPUTS names). A round whose
edits leave the content as it was (an update to the same value) must skip. Real PostgreSQL, S3 and
Iceberg; the edits are drawn from a seeded generator, so a failure replays.

Every run after the first extracts the provider source incrementally (source_snapshot.py: the rounds
change a few of 120 rows): the harness asserts it did, and that it fetched exactly the rows whose
extracted values are new or changed (an update to the same values is not fetched) and dropped the
deleted ones; that the source it rebuilt (the snapshot it stored) equals a full extract; and, every
other changed round, that what it published equals a full refresh run's. Only every other round: a
full refresh stores a full extract as the snapshot, and the rounds in between must extract from a
snapshot an incremental run rebuilt."""

from __future__ import annotations

import csv
import io
import json
import random

import pyarrow.parquet as pq
import pytest
from psycopg import sql

from covid_lakehouse.defs.omop import gate, tables
from covid_lakehouse.defs.omop.assets import CARE_SITE_KEY, LANDING_KEY, PROVIDER_KEY
from covid_lakehouse.defs.omop.landing import list_landing
from covid_lakehouse.defs.omop.source_snapshot import extract_provider
from covid_lakehouse_dev.seeds.omop import CARE_SITES, FIRST_NAMES, LAST_NAMES, SPECIALTIES
from covid_lakehouse_tests.omop.support import (
    FULL_REFRESH,
    SAMPLE_CSV,
    drop_file,
    flush_stats,
    provider_metadata,
    published,
    run_tenant,
    source_changes,
    source_rows,
)

# The incremental extract on (off by default), as a deployment with remote sources sets it.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("incremental_extract_on")]

SAMPLE_KEY = "d0/sample.csv"
SITE_NAMES = [name for name, _ in CARE_SITES] + ["Unknown Clinic", " metro  med ", "N/A"]


def _table(tenant, name: str) -> sql.Composed:
    return sql.Identifier(tenant.source_schema, name)


def _ids(pg, tenant) -> list[int]:
    return [r[0] for r in pg.execute(sql.SQL("SELECT provider_id FROM {} ORDER BY 1").format(
        _table(tenant, "provider"))).fetchall()]


def _npis(pg, tenant) -> list[str]:
    return [r[0] for r in pg.execute(sql.SQL("SELECT npi FROM {} ORDER BY provider_id").format(
        _table(tenant, "provider"))).fetchall()]


def _name(rng: random.Random) -> str:
    name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    return rng.choice([name, name, f"Dr. {name}", f"{name}, MD", f"  {name.upper()} ", name[0] + ". " + name.split()[1]])


def _fresh_npi(rng: random.Random, taken: set[str]) -> str:
    while (npi := "1" + "".join(rng.choice("0123456789") for _ in range(9))) in taken:
        pass
    taken.add(npi)
    return npi


class Editor:
    """Draws and applies one random edit at a time; each returns what it did, for the failure message."""

    def __init__(self, rng: random.Random, pg, s3, tenant):
        self.rng, self.pg, self.s3, self.tenant = rng, pg, s3, tenant

    def _provider(self, statement: str, params: tuple = ()) -> None:
        self.pg.execute(sql.SQL(statement).format(t=_table(self.tenant, "provider")), params)

    def insert(self) -> str:
        npi = _fresh_npi(self.rng, set(_npis(self.pg, self.tenant)))
        name = _name(self.rng)
        self._provider("INSERT INTO {t} (provider_name, npi, specialty, care_site, provider_source_value) "
                       "VALUES (%s, %s, %s, %s, %s)",
                       (name, npi, self.rng.choice([*SPECIALTIES, "cardio", None]), self.rng.choice(SITE_NAMES),
                        f"SRC{self.rng.randrange(1000)}"))
        return f"insert {name!r} {npi}"

    def update(self) -> str:
        provider_id = self.rng.choice(_ids(self.pg, self.tenant))
        column, value = self.rng.choice([
            ("provider_name", _name(self.rng)),
            ("npi", _fresh_npi(self.rng, set(_npis(self.pg, self.tenant)))),
            ("specialty", self.rng.choice([*SPECIALTIES, "Peds", None])),
            ("care_site", self.rng.choice(SITE_NAMES)),
            ("provider_source_value", f"SRC{self.rng.randrange(1000)}"),
        ])
        self._provider(f"UPDATE {{t}} SET {column} = %s WHERE provider_id = %s", (value, provider_id))
        return f"update {provider_id}.{column} = {value!r}"

    def same_value_update(self) -> str:
        provider_id = self.rng.choice(_ids(self.pg, self.tenant))
        self._provider("UPDATE {t} SET provider_name = provider_name WHERE provider_id = %s", (provider_id,))
        return f"update {provider_id} to the same values"

    def null_update(self) -> str:
        """A value to NULL, or between NULL and '' (row text tells them apart: the extract must too)."""
        provider_id = self.rng.choice(_ids(self.pg, self.tenant))
        column = self.rng.choice(["specialty", "care_site", "provider_source_value", "specialty_source_value"])
        self._provider(f"UPDATE {{t}} SET {column} = CASE WHEN {column} IS NULL THEN '' "
                       f"WHEN {column} = '' THEN NULL ELSE NULL END WHERE provider_id = %s", (provider_id,))
        return f"update {provider_id}.{column} to NULL or between NULL and ''"

    def delete(self) -> str:
        provider_id = self.rng.choice(_ids(self.pg, self.tenant))
        self._provider("DELETE FROM {t} WHERE provider_id = %s", (provider_id,))
        return f"delete {provider_id}"

    def insert_and_delete(self) -> str:
        """Same row count after the pair: a count or a max(id) would not see it."""
        return f"{self.delete()}, {self.insert()}"

    def care_site(self) -> str:
        # Site codes identify care sites (a code shared by two sites blocks the publish: test_assets.py).
        number = self.rng.randrange(10_000)
        name = f"Clinic {number}"
        self.pg.execute(sql.SQL("INSERT INTO {} (care_site_name, care_site_source_value) VALUES (%s, %s) "
                                "ON CONFLICT DO NOTHING").format(_table(self.tenant, "care_site")), (name, f"CL{number}"))
        return f"care site {name!r}"

    def _file_rows(self) -> list[dict]:
        """File rows that point at source providers (by NPI or source id), at file-only providers, or
        at nothing usable."""
        npis = _npis(self.pg, self.tenant)
        rows = []
        for _ in range(self.rng.randint(1, 5)):
            npi = self.rng.choice([self.rng.choice(npis), _fresh_npi(self.rng, set(npis)), "", "12345"])
            rows.append({"ProviderName": _name(self.rng), "ProviderID": str(self.rng.randrange(1, 50)).zfill(3),
                         "NPI": npi, "Specialty": self.rng.choice([*SPECIALTIES, "Neuro", ""]),
                         "SiteName": self.rng.choice(SITE_NAMES), "SourceID": f"SRC{self.rng.randrange(1000)}"})
        return rows

    def _drop(self, key: str) -> None:
        rows = self._file_rows()
        if key.endswith(".json"):
            body = json.dumps(rows).encode()
        else:
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
            body = out.getvalue().encode()
        drop_file(self.s3, self.tenant, key, body)

    def _keys(self) -> list[str]:
        """The tenant's landing files (relative keys) but the sample, which stays for replace_file."""
        listing = list_landing(self.s3.get_client(), self.tenant.landing_bucket, self.tenant.prefix)
        return sorted(o.key.removeprefix(self.tenant.prefix) for o in listing if not o.key.endswith(SAMPLE_KEY))

    def new_file(self) -> str:
        key = f"d{self.rng.randrange(100)}/f{self.rng.randrange(10_000)}.{self.rng.choice(['csv', 'json'])}"
        self._drop(key)
        return f"new file {key}"

    def replace_file(self) -> str:
        key = self.rng.choice([SAMPLE_KEY, *self._keys()])
        self._drop(key)
        return f"replace file {key}"

    def delete_file(self) -> str:
        key = self.rng.choice(self._keys() or ["never-dropped.csv"])
        self.s3.get_client().delete_object(Bucket=self.tenant.landing_bucket, Key=self.tenant.prefix + key)
        return f"delete file {key}"

    def kinds(self) -> dict:
        return {"insert": self.insert, "update": self.update, "delete": self.delete, "null update": self.null_update,
                "insert+delete": self.insert_and_delete, "same-value update": self.same_value_update,
                "care site": self.care_site, "new file": self.new_file, "replace file": self.replace_file,
                "delete file": self.delete_file}

    def schedule(self, compound: int, empty: int) -> list[list[str]]:
        """The rounds: every kind of edit alone once (a change that only it makes must be seen), then
        rounds of two or three random kinds, and rounds without any edit; shuffled."""
        kinds = list(self.kinds())
        rounds = [[kind] for kind in kinds] + [self.rng.sample(kinds, self.rng.choice([2, 3])) for _ in range(compound)]
        rounds += [[] for _ in range(empty)]
        self.rng.shuffle(rounds)
        return rounds

    def apply(self, kinds: list[str]) -> list[str]:
        done = [self.kinds()[kind]() for kind in kinds]
        flush_stats(self.pg)
        return done


def _content(pg, s3, tenant) -> tuple:
    """What the sources hold, read plainly (no fingerprint code): the rows and column definitions of
    both tables and the landing objects with their ETags. The oracle of "changed"."""
    tables = []
    for name in ("provider", "care_site"):
        rows = pg.execute(sql.SQL("SELECT t::text FROM {} t ORDER BY 1").format(_table(tenant, name))).fetchall()
        columns = pg.execute("SELECT column_name, data_type, character_maximum_length, is_nullable "
                             "FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
                             "ORDER BY ordinal_position", (tenant.source_schema, name)).fetchall()
        tables.append((rows, columns))
    objects = sorted((o.key, o.etag) for o in list_landing(s3.get_client(), tenant.landing_bucket, tenant.prefix))
    return tuple(tables), tuple(objects)


def _published_anything(result) -> bool:
    assert result.success
    return bool({e.asset_key for e in result.get_asset_materialization_events()} & {LANDING_KEY, CARE_SITE_KEY,
                                                                                   PROVIDER_KEY})


def _by_id(rows) -> list[dict]:
    return sorted(rows.to_pylist(), key=lambda row: row["provider_id"])


@pytest.mark.parametrize("seed", [2026])
def test_random_edits_run_exactly_when_the_sources_changed_and_equal_a_full_refresh(
        seed, make_tenants, s3, lakehouse, instance, pg, tmp_path):
    env = make_tenants(providers=120, dirt_rate=0.1)
    tenant, ns = env.tenant, env.tenant.namespace
    drop_file(s3, tenant, SAMPLE_KEY, SAMPLE_CSV)
    assert _published_anything(run_tenant(env, tenant, instance))
    editor = Editor(random.Random(seed), pg, s3, tenant)
    history, verdicts = [], {"changed": 0, "unchanged": 0}
    for number, kinds in enumerate(editor.schedule(compound=3, empty=1)):
        before, rows_before = _content(pg, s3, tenant), source_rows(pg, tenant)
        edits = editor.apply(kinds)
        changed = _content(pg, s3, tenant) != before
        verdicts["changed" if changed else "unchanged"] += 1
        history.append(f"round {number}: {edits or ['no edit']} ({'changed' if changed else 'unchanged'})")
        replay = "seed {}:\n{}".format(seed, "\n".join(history))

        # The daily gate never holds back a change. Without any write it holds the tenant back; a write
        # that left the content as it was moves the counters, so it may launch a run (which then skips).
        decision = gate.evaluate(instance, tenant, s3.get_client(), lakehouse)
        if changed:
            assert not decision.unchanged, f"the daily gate held back a change\n{replay}"
        elif not edits:
            assert decision.unchanged, f"the daily gate launched an untouched tenant: {decision.reason}\n{replay}"
        ran = run_tenant(env, tenant, instance)
        assert _published_anything(ran) is changed, f"the run {'skipped' if changed else 'published'}\n{replay}"
        if changed:
            extracted, expected = provider_metadata(ran), source_changes(rows_before, source_rows(pg, tenant))
            assert extracted["extract_mode"] == "incremental", f"{extracted['extract_full_reason']}\n{replay}"
            assert (extracted["source_rows_fetched"], extracted["source_rows_deleted"]) == expected, \
                f"fetched, deleted {extracted}, changed {expected}\n{replay}"
            # The source the run rebuilt (stored as the next run's snapshot) is what a full extract reads.
            rebuilt = lakehouse.read(ns, tables.T_SOURCE_ROW)
            full_extract = extract_provider(tenant, lakehouse, tmp_path / f"round-{number}", full_refresh=True)
            assert _by_id(rebuilt) == _by_id(pq.read_table(full_extract.path)), \
                f"the rebuilt source differs from a full extract\n{replay}"
            # A full refresh run stores a full extract as the snapshot: only every other round, so that the
            # rounds in between extract from a snapshot an incremental run rebuilt.
            if number % 2 == 0:
                after = published(lakehouse, ns)
                full = run_tenant(env, tenant, instance, run_config=FULL_REFRESH)
                assert full.success and provider_metadata(full)["extract_mode"] == "full"
                assert published(lakehouse, ns) == after, f"the run differs from a full refresh\n{replay}"
            assert not _published_anything(run_tenant(env, tenant, instance)), f"the rerun was not skipped\n{replay}"
        again = gate.evaluate(instance, tenant, s3.get_client(), lakehouse)
        assert again.unchanged, f"after the run the daily gate still says {again.reason!r}\n{replay}"
    assert verdicts["changed"] and verdicts["unchanged"], verdicts  # both paths were exercised
