"""Vaccines domain: people per COVID-19 vaccine dose allocated, for the 50 states and DC.

Sources (resources.VaccinesSettings), raw objects in S3 and the published warehouse tables are described
in docs/vaccines.md."""
