"""The offline stand-ins for third-party APIs, one registrar per domain that calls one.

A registrar adds its routes to the shared MockApi and returns the environment variables that point
its domain at them ("{base}" is replaced by the server's URL)."""

from covid_lakehouse.defs.vaccines import mock_api as vaccines_mock_api

REGISTRARS: list = [vaccines_mock_api.register]
