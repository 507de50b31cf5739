"""Which raw download a run deals with, from the Dagster instance's raw materializations: the download a
county run loads and when it was fetched (its ``SourceVersion``, lib/source_versions.py), and whether a
new download's bytes are the ones the last download already stored."""

from datetime import UTC, datetime

import dagster as dg

from covid_lakehouse.defs.ny_testing.asset_keys import RAW_FETCHED_AT_TAG, RAW_KEY, RAW_KEY_TAG
from covid_lakehouse.lib.source_versions import SourceVersion


def source_version(instance: dg.DagsterInstance, replay_key: str, tags: dict[str, str]) -> SourceVersion:
    """The download this run loads and when it was fetched: the config's ``replay_key`` (a replay, which may
    go back in time on purpose), the sensor's tags (the download that triggered the run), else the latest
    download."""
    if replay_key:
        fetched = fetched_at_of(instance, replay_key)
        return SourceVersion(replay_key, fetched or datetime.fromtimestamp(0, UTC), replay=True)
    if RAW_KEY_TAG in tags:
        raw_key = tags[RAW_KEY_TAG]
        fetched = (datetime.fromisoformat(tags[RAW_FETCHED_AT_TAG]) if RAW_FETCHED_AT_TAG in tags
                   else fetched_at_of(instance, raw_key))  # a run requested before the sensor set the tag
        if fetched is None:
            raise dg.Failure(f"no {RAW_KEY.to_user_string()} materialization stored {raw_key}: cannot tell whether "
                             "it is older than what the tables hold; replay it with config raw_key to load it anyway",
                             allow_retries=False)
        return SourceVersion(raw_key, fetched)
    event = instance.get_latest_materialization_event(RAW_KEY)
    if event is None or event.asset_materialization is None:
        raise dg.Failure(f"no raw download yet: materialize {RAW_KEY.to_user_string()} first (the 09:00 schedule "
                         "does)", allow_retries=False)
    return SourceVersion(event.asset_materialization.metadata["s3_key"].value, fetched_at(event.timestamp))


def fetched_at(timestamp: float) -> datetime:
    """A raw materialization's time (epoch seconds): when its download was fetched."""
    return datetime.fromtimestamp(timestamp, UTC)


def fetched_at_of(instance: dg.DagsterInstance, raw_key: str) -> datetime | None:
    """When ``raw_key`` was last downloaded (newest raw materialization naming it); None if never."""
    cursor = None
    while True:
        page = instance.fetch_materializations(RAW_KEY, limit=500, cursor=cursor)
        for record in page.records:
            key = record.asset_materialization.metadata.get("s3_key") if record.asset_materialization else None
            if key is not None and key.value == raw_key:
                return fetched_at(record.timestamp)
        if not page.has_more:
            return None
        cursor = page.cursor


def previous_download(instance: dg.DagsterInstance, key: str) -> dict | None:
    """The last raw materialization's metadata if it stored ``key`` (content-addressed: the same bytes)."""
    event = instance.get_latest_materialization_event(RAW_KEY)
    metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    s3_key = metadata.get("s3_key")
    return dict(metadata) if s3_key is not None and s3_key.value == key else None
