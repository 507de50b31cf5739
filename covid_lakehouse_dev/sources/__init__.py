"""The demo's sources, prepared before anything runs (``covid-lakehouse demo`` and ``up`` call
``prepare`` before the first materialization and before the daemon starts): the omop demo tenant
(source schema + sample client file + tenants file) and the marketing application database. Each is
created only if absent, and skipped when its real setting is configured (the configured source wins).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from covid_lakehouse.defs.marketing.rds import DSN_ENV
from covid_lakehouse.defs.omop.tenants import TENANTS_FILE_ENV
from covid_lakehouse.lib.s3 import LakeS3Resource
from covid_lakehouse.lib.settings import ServiceSettings, exported
from covid_lakehouse_dev.sources import marketing_rds, omop


@dataclass
class Prepared:
    env: dict[str, str] = field(default_factory=dict)  # settings pointing the domains at the demo sources
    done: dict[str, dict] = field(default_factory=dict)  # what was created now, per source


def prepare(settings: ServiceSettings, environ: Mapping[str, str] | None = None) -> Prepared:
    """Create every demo source that is absent; returns the settings that point the product at them.
    A source whose setting is already in ``environ`` (default: the process environment) is left alone."""
    environ = os.environ if environ is None else environ
    prepared = Prepared()
    if not environ.get(TENANTS_FILE_ENV):
        s3 = LakeS3Resource(endpoint_url=settings.s3_endpoint_url, aws_access_key_id=settings.aws_access_key_id,
                            aws_secret_access_key=settings.aws_secret_access_key, region_name=settings.aws_region)
        with exported(settings.as_env()):  # the demo tenant's DSN variable is WAREHOUSE_DSN
            env, done = omop.prepare(s3)
        prepared.env.update(env)
        if done:
            prepared.done["omop"] = done
    if not environ.get(DSN_ENV):
        created = marketing_rds.ensure_demo_source(settings.warehouse_dsn)
        prepared.env.update(marketing_rds.demo_env(settings.warehouse_dsn))
        if created:
            prepared.done["marketing_rds"] = {"schema": marketing_rds.DEMO_SCHEMA}
    return prepared
