"""Generators of source data: the omop tenant source (``covid-lakehouse seed omop``, the demo, tests
and benchmarks)."""
