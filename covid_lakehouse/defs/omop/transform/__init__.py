"""Harmonization: source rows and client file rows -> OMOP provider and care_site, with provenance,
quarantine, flags, stable ids and reconciled counts. DuckDB over Arrow (or the extract's parquet file),
bounded by a memory limit; the provider outputs stream into local parquet files. No other I/O here, so
the whole transform is testable on small tables and runs the same at 2,000,000 providers.

The rules (matching order, which value wins, what is quarantined or flagged) are documented case by
case in docs/data-quality.md.

Modules: ``session`` (the DuckDB connection, its macros, shared numpy fast paths), ``care_sites``; for
providers, ``providers`` runs the steps in order on one session: ``value_maps``, ``cleaning``,
``identities``, ``choose_values``, ``ids``, then the outputs ``provenance``, ``quarantine``, ``flags``,
``reconcile``; ``results`` holds what it returns. Each module's docstring names the tables it reads and
writes.
"""

from covid_lakehouse.defs.omop.transform.care_sites import (
    CareSiteBuild,
    CareSiteKeyError,
    build_care_sites,
)
from covid_lakehouse.defs.omop.transform.flags import CONFLICTS
from covid_lakehouse.defs.omop.transform.providers import build_providers
from covid_lakehouse.defs.omop.transform.results import (
    FLAGS,
    ID_MAP_ADDITIONS,
    PROVENANCE,
    PROVIDER,
    QUARANTINE,
    ProviderBuild,
    Reconciliation,
)
from covid_lakehouse.defs.omop.transform.session import MACROS, MISSING_TOKENS, connect

__all__ = [
    "CONFLICTS",
    "FLAGS",
    "ID_MAP_ADDITIONS",
    "PROVENANCE",
    "PROVIDER",
    "QUARANTINE",
    "MACROS",
    "MISSING_TOKENS",
    "CareSiteBuild",
    "CareSiteKeyError",
    "ProviderBuild",
    "Reconciliation",
    "build_care_sites",
    "build_providers",
    "connect",
]
