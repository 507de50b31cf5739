"""The offline stand-ins for third-party APIs, one registrar per domain that calls one.

A registrar adds its routes to the shared MockApi and returns the environment variables that point
its domain at them ("{base}" is replaced by the server's URL)."""

from covid_lakehouse.defs.ads import mock_api as ads_mock_api
from covid_lakehouse.defs.marketing import mock_api as marketing_mock_api
from covid_lakehouse.defs.ny_testing import mock_api as ny_testing_mock_api
from covid_lakehouse.defs.omop import mock_api as omop_mock_api
from covid_lakehouse.defs.vaccines import mock_api as vaccines_mock_api

REGISTRARS: list = [
    ny_testing_mock_api.register,
    vaccines_mock_api.register,
    ads_mock_api.register,
    marketing_mock_api.register,
    omop_mock_api.register,
]
