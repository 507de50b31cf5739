"""`covid-lakehouse migrate`, the start-up step compose and Kubernetes run first, refuses placeholder and
short secrets, naming the variable and never printing the value."""

from __future__ import annotations

import secrets

import pytest

from covid_lakehouse import cli
from covid_lakehouse.lib.secret_policy import check_secrets
from covid_lakehouse.lib.settings import ServiceSettings
from covid_lakehouse_tests.platform.support import env_example_variables


def _with_password(dsn: str, password: str) -> str:
    head, _, tail = dsn.partition("@")
    return head.rsplit(":", 1)[0] + ":" + password + "@" + tail


def _migrated_versions(pg) -> int:
    return pg.execute("SELECT count(*) FROM ops.schema_migrations").fetchone()[0]


@pytest.mark.parametrize("variable", ["AWS_SECRET_ACCESS_KEY", "WAREHOUSE_DSN", "FACEBOOK_ACCESS_TOKEN"])
def test_migrate_refuses_a_placeholder_secret_from_env_example(services: ServiceSettings, monkeypatch, capsys,
                                                                variable, pg):
    active, _ = env_example_variables()
    placeholder = active["S3_APP_SECRET_ACCESS_KEY"]  # `change-me-...`, as `cp .env.example .env` leaves it
    assert "change-me" in placeholder
    value = _with_password(services.warehouse_dsn, placeholder) if variable == "WAREHOUSE_DSN" else placeholder
    monkeypatch.setenv(variable, value)
    before = _migrated_versions(pg)

    assert cli.main(["migrate"]) == 2

    err = capsys.readouterr().err
    assert variable in err and "placeholder" in err
    assert placeholder not in err
    assert _migrated_versions(pg) == before


def test_migrate_refuses_a_short_secret(services: ServiceSettings, monkeypatch, capsys):
    monkeypatch.setenv("CLEVERTAP_PASSCODE", "abc123def456")
    monkeypatch.setenv("RUN_FAILURE_WEBHOOK_URL", "https://hooks.example.com/services/" + secrets.token_hex(16))

    assert cli.main(["migrate"]) == 2

    err = capsys.readouterr().err
    assert "CLEVERTAP_PASSCODE is shorter than 16 characters" in err
    assert "abc123def456" not in err
    assert "RUN_FAILURE_WEBHOOK_URL" not in err  # long and random: fine


def test_the_embedded_stacks_generated_secrets_pass(services: ServiceSettings, monkeypatch, capsys):
    check_secrets(services.as_env())
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "short-id")  # an access key id is not a secret
    assert cli.main(["migrate"]) == 0
    assert "warehouse schema up to date" in capsys.readouterr().out
