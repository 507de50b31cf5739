"""OMOP CDM provider and care_site per tenant, harmonized from each tenant's PostgreSQL (system of
record) and its client file drops into Iceberg tables omop_<tenant>.*. See docs/omop.md and
docs/data-quality.md."""
