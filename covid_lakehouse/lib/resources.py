"""Every resource the product uses, chosen in one place and configured only from the environment."""

from __future__ import annotations

from covid_lakehouse.lib.io_managers import PostgresIOManager
from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.postgres import PostgresResource
from covid_lakehouse.lib.s3 import LakeS3Resource


def platform_resources() -> dict[str, object]:
    return {
        "warehouse": PostgresResource.from_env(),
        "warehouse_io_manager": PostgresIOManager.from_env(),
        "s3": LakeS3Resource.from_env(),
        "lakehouse": LakehouseResource.from_env(),
    }
