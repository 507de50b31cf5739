"""Raw bundles PUT on background threads: the reading thread goes on while S3 answers (a reader that
waits for S3 misses rate-limit slots of its unit), and the landing's exit waits for every PUT, raises
one that failed, and still lands what was received when the read itself failed."""

import json
import threading
import uuid
from datetime import date
from typing import BinaryIO

import pytest

from covid_lakehouse.defs.marketing.common import RAW_BUCKET, RawLanding, RawPage, replay_pages
from covid_lakehouse.lib.s3 import LakeS3Resource, ObjectExistsError, StoredObject

pytestmark = pytest.mark.integration
DAY = date(2024, 7, 1)


def page(n: int, unit: str = "1", filler: str = "") -> RawPage:
    body = json.dumps({"data": [{"n": n, "pad": filler}]}).encode()
    return RawPage("facebook", DAY, f"act_{unit}-p{n:04d}", body, json.loads(body), {"account-id": unit})


class GatedLanding(RawLanding):
    """Every PUT waits until the landing's exit has begun, and says when it started."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate, self.started = threading.Event(), threading.Event()

    def put(self, archive: BinaryIO, first: RawPage, pages: int) -> StoredObject:
        self.started.set()
        assert self.gate.wait(timeout=60), "the test never opened the gate"
        return super().put(archive, first, pages)

    def __exit__(self, *exc: object) -> None:
        self.gate.set()  # no PUT can finish before the exit began: landed afterwards means the exit waited
        super().__exit__(*exc)


def landed(s3: LakeS3Resource, run_id: str) -> list[str]:
    listing = s3.get_client().list_objects_v2(Bucket=RAW_BUCKET, Prefix=f"marketing/facebook/date={DAY}/{run_id}-")
    return sorted(o["Key"].rsplit("/", 1)[1] for o in listing.get("Contents", []))


def test_the_reader_goes_on_while_its_bundle_is_put_and_the_exit_waits_for_every_put(s3: LakeS3Resource) -> None:
    run_id = str(uuid.uuid4())
    with GatedLanding(s3, "facebook", run_id, uploads=2) as landing:
        with landing.bundle() as bundle:
            bundle.add(page(1))
        # the bundle is handed over: the reader is free although its PUT has not finished
        assert landing.started.wait(timeout=60)
        with landing.bundle() as bundle:
            bundle.add(page(1, unit="2"))
        assert landed(s3, run_id) == []
    assert landed(s3, run_id) == [f"{run_id}-act_1-p0001.tar", f"{run_id}-act_2-p0001.tar"]


def test_a_put_that_fails_in_the_background_fails_the_landing(s3: LakeS3Resource) -> None:
    run_id = str(uuid.uuid4())
    with RawLanding(s3, "facebook", run_id) as landing, landing.bundle() as bundle:
        bundle.add(page(1))
    with pytest.raises(ObjectExistsError, match="already exists"), \
            RawLanding(s3, "facebook", run_id, uploads=2) as landing:
        with landing.bundle() as bundle:  # same run, unit and first page: the write-once key exists
            bundle.add(page(1, filler="other bytes"))
    [(replayed, _)] = replay_pages(s3, "facebook", run_id, [DAY])
    assert replayed.body == page(1).body


def test_after_a_failed_read_the_pages_received_still_land_and_the_read_error_is_raised(s3: LakeS3Resource) -> None:
    run_id = str(uuid.uuid4())
    with pytest.raises(ValueError, match="page 2 does not parse"), \
            RawLanding(s3, "facebook", run_id, uploads=2) as landing, landing.bundle() as bundle:
        bundle.add(page(1))
        bundle.add(page(2))
        raise ValueError("page 2 does not parse")
    assert [p.label for p, _ in replay_pages(s3, "facebook", run_id, [DAY])] == ["act_1-p0001", "act_1-p0002"]
