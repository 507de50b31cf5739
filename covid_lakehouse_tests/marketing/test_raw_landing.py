"""Raw pages in S3: one write-once tar per unit and day, split when it would grow too big, landed even
when parsing fails, and replayed page by page (also from the one-object-per-page layout of earlier
releases)."""

import io
import json
import uuid
from datetime import date

import pytest

from covid_lakehouse.defs.marketing.common import (
    RAW_BUCKET,
    RawLanding,
    RawPage,
    SourceSchemaError,
    load_json,
    replay_pages,
)
from covid_lakehouse.lib.s3 import LakeS3Resource, ObjectExistsError

pytestmark = pytest.mark.integration
DAY = date(2024, 7, 1)


def page(n: int, day: date = DAY, filler: int = 0) -> RawPage:
    body = json.dumps({"data": [{"n": n, "pad": "x" * filler}]}, indent=1).encode()  # newlines kept as received
    return RawPage("facebook", day, f"act_1-p{n:04d}", body, json.loads(body), {"account-id": "1"})


def keys(s3: LakeS3Resource, run_id: str) -> list[str]:
    listing = s3.get_client().list_objects_v2(Bucket=RAW_BUCKET, Prefix=f"marketing/facebook/date={DAY}/{run_id}-")
    return sorted(o["Key"] for o in listing.get("Contents", []))


def test_a_bundle_lands_its_pages_byte_for_byte_and_replays_them_in_order(s3: LakeS3Resource) -> None:
    run_id = str(uuid.uuid4())
    landing = RawLanding(s3, "facebook", run_id, max_bundle_bytes=2_500)
    pages = [page(n, filler=1_000) for n in (1, 2, 3)]
    with landing.bundle() as bundle:
        uris = [bundle.add(p) for p in pages]

    # pages 1 and 2 fill a bundle; page 3 would overflow it and starts the next one
    prefix = f"marketing/facebook/date={DAY}/{run_id}-act_1-"
    assert keys(s3, run_id) == [prefix + "p0001.tar", prefix + "p0003.tar"]
    assert uris == [f"s3://raw/{prefix}p0001.tar#act_1-p0001.json", f"s3://raw/{prefix}p0001.tar#act_1-p0002.json",
                    f"s3://raw/{prefix}p0003.tar#act_1-p0003.json"]
    replayed = list(replay_pages(s3, "facebook", run_id, [DAY]))
    assert [(p.label, p.body, p.doc, uri) for p, uri in replayed] == [
        (p.label, p.body, p.doc, uri) for p, uri in zip(pages, uris, strict=True)]
    head = s3.get_client().head_object(Bucket=RAW_BUCKET, Key=prefix + "p0001.tar")
    assert head["Metadata"]["pages"] == "2" and head["Metadata"]["account-id"] == "1"


def test_pages_received_before_a_failure_are_landed_and_the_failure_is_the_error_raised(s3: LakeS3Resource) -> None:
    run_id = str(uuid.uuid4())
    landing = RawLanding(s3, "facebook", run_id)
    with pytest.raises(ValueError, match="page 2 does not parse"), landing.bundle() as bundle:
        bundle.add(page(1))
        bundle.add(page(2))
        raise ValueError("page 2 does not parse")

    assert [p.label for p, _ in replay_pages(s3, "facebook", run_id, [DAY])] == ["act_1-p0001", "act_1-p0002"]


class _ShortBody(bytes):
    """A body that ends before its stated length: the archive write fails after the member's header and
    part of its data, as it would on a full disk."""

    def __len__(self) -> int:
        return super().__len__() + 1_000


def test_a_page_that_cannot_be_written_whole_leaves_the_bundle_readable(s3: LakeS3Resource) -> None:
    run_id = str(uuid.uuid4())
    good, broken = page(1, filler=700), page(2, filler=700)
    broken = RawPage(broken.source, broken.day, broken.label, _ShortBody(broken.body), broken.doc, broken.meta)
    with pytest.raises(OSError), RawLanding(s3, "facebook", run_id).bundle() as bundle:
        bundle.add(good)
        bundle.add(broken)
    [(replayed, _)] = replay_pages(s3, "facebook", run_id, [DAY])  # the whole page, and only it
    assert replayed.body == good.body

    lone = str(uuid.uuid4())  # a bundle whose only page failed lands nothing
    with pytest.raises(OSError), RawLanding(s3, "facebook", lone).bundle() as bundle:
        bundle.add(broken)
    assert keys(s3, lone) == []


def test_a_landed_bundle_is_never_overwritten(s3: LakeS3Resource) -> None:
    run_id = str(uuid.uuid4())
    landing = RawLanding(s3, "facebook", run_id)
    with landing.bundle() as bundle:
        bundle.add(page(1))
    rewritten = page(1, filler=10)  # same run, unit and first page: same key, other bytes
    with pytest.raises(ObjectExistsError, match="already exists"), landing.bundle() as bundle:
        bundle.add(rewritten)
    [(replayed, _)] = replay_pages(s3, "facebook", run_id, [DAY])
    assert replayed.body == page(1).body  # what the API first returned is what stays


def test_replay_reads_the_one_object_per_page_layout_of_earlier_releases(s3: LakeS3Resource) -> None:
    run_id = str(uuid.uuid4())
    old = page(1)
    key = f"marketing/facebook/date={DAY}/{run_id}-act_1-p0001.json"
    s3.put_write_once(RAW_BUCKET, key, io.BytesIO(old.body))

    [(replayed, uri)] = replay_pages(s3, "facebook", run_id, [DAY])
    assert (replayed.label, replayed.body, uri) == ("act_1-p0001", old.body, f"s3://raw/{key}")


def test_a_body_that_is_not_json_is_refused_naming_the_page_and_lenient_json_still_parses() -> None:
    with pytest.raises(SourceSchemaError) as raised:
        load_json("facebook", "act_1-p0003 of 2024-07-01", b"<html>502 Bad Gateway</html>")
    assert raised.value.where == "act_1-p0003 of 2024-07-01"
    assert raised.value.problem.startswith("body is not JSON (") and "starts b'<html>502" in raised.value.problem
    # integers beyond 64 bits stay exact (a float would change CleverTap's record hash)
    assert load_json("clevertap", "p", b'{"n": 123456789012345678901234567890}') == {"n": 123456789012345678901234567890}
