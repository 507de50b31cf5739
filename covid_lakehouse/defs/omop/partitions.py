"""Tenants are dynamic partitions, kept in sync with the tenants file by the omop_tenants sensor."""

import dagster as dg

TENANT_PARTITIONS_NAME = "omop_tenants"
tenant_partitions = dg.DynamicPartitionsDefinition(name=TENANT_PARTITIONS_NAME)
