"""Stand-ins for what the product talks to, kept out of the product: never imported by
``covid_lakehouse`` (except lazily by its CLI), never in the production image or the asset graph.

- ``apis``: offline third-party APIs on one local HTTP server (the harness and one module per domain),
  serving bundled snapshots; used by ``covid-lakehouse demo``/``up``/``mock-apis``, the tests and the
  benchmarks.
- ``sources``: the demo's source databases and drops (the omop demo tenant, the marketing application
  database), prepared before anything runs.
- ``seeds``: generators of source data (the omop tenant source), also used by ``covid-lakehouse seed``.
"""
