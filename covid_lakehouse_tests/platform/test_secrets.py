"""Secrets stay where they belong: the run-failure webhook URL (its path is a Slack webhook's credential)
never reaches an error or a log, and the webhook is posted with the HTTP client's retry budget; a DSN's
password never appears in an error (libpq echoes malformed DSNs), on psql's command line (visible in
`ps`), and `covid-lakehouse env` output is shell-safe."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from covid_lakehouse import cli
from covid_lakehouse.defs.platform.sensors import post_webhook
from covid_lakehouse.lib.http import HttpError
from covid_lakehouse.lib.postgres import DsnError, PostgresResource, connect
from covid_lakehouse.lib.resources import HttpResource
from covid_lakehouse.lib.settings import dsn_passwords
from covid_lakehouse_dev.apis.harness import Fault, MockApi, MockResponse

HOOK_PATH = "/services/T0SECRET/B0SECRET/XyZSeCrEtWebhookToken"
SECRET_PARTS = ("T0SECRET", "B0SECRET", "XyZSeCrEtWebhookToken")
QUICK = HttpResource(max_attempts=3, backoff_base_s=0.001, max_total_wait_s=1.0)


def _assert_hidden(text: str) -> None:
    assert not [part for part in SECRET_PARTS if part in text], text


def _product_logs(caplog: pytest.LogCaptureFixture) -> str:
    """What the product and its libraries logged (the mock server's own access log is not ours)."""
    return "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("covid_lakehouse_dev"))


def test_webhook_http_errors_do_not_carry_the_url(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with MockApi() as hook:
        hook.route("POST", HOOK_PATH, lambda req: MockResponse(404, f"no such hook {req.path}".encode()))
        with pytest.raises(HttpError) as raised:
            post_webhook(hook.url + HOOK_PATH, run_id="r1", job_name="j", message="boom")
    assert "HTTP 404" in str(raised.value)
    _assert_hidden(str(raised.value))
    _assert_hidden(repr(raised.value.__dict__))
    _assert_hidden(_product_logs(caplog))


def test_webhook_connection_errors_do_not_carry_the_url(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(HttpError) as raised:
        post_webhook(f"http://127.0.0.1:{port}{HOOK_PATH}", run_id="r1", job_name="j", message="boom", http=QUICK)
    _assert_hidden(str(raised.value))
    _assert_hidden(_product_logs(caplog))


def test_webhook_is_retried_within_the_client_budget() -> None:
    with MockApi() as hook:
        hook.route("POST", HOOK_PATH, lambda req: MockResponse.json_body({"ok": True}))
        hook.fail_next(HOOK_PATH, Fault.server_error(503), times=2)
        post_webhook(hook.url + HOOK_PATH, run_id="r1", job_name="j", message="boom", http=QUICK)
        assert [r.json()["run_id"] for r in hook.requests] == ["r1"] * 3


# -- connection strings ----------------------------------------------------------------------------------
DSN_PASSWORD = "pw'Sekret%zz"  # a quote for the shell, a bad percent-escape for libpq


def _external_env(monkeypatch: pytest.MonkeyPatch, dsn: str) -> None:
    for name, value in {"WAREHOUSE_DSN": dsn, "S3_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ACCESS_KEY_ID": "k",
                        "AWS_SECRET_ACCESS_KEY": "s3-secret-value"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LAKEHOUSE_CATALOG_DSN", raising=False)


@pytest.mark.parametrize("dsn", [f"postgresql://writer:{DSN_PASSWORD}@127.0.0.1:5432/warehouse",
                                 "postgresql://writer:Sekret@127.0.0.1:notaport/warehouse",
                                 "host=127.0.0.1 password=Sekret port"])
def test_a_malformed_dsn_never_echoes_its_password(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DsnError) as raised, PostgresResource(dsn=dsn, pool_size=1).connection():
        pass
    assert "WAREHOUSE_DSN" in str(raised.value) and "Sekret" not in str(raised.value)
    with pytest.raises(DsnError) as raised:
        connect(dsn, "OMOP_SOURCE_DSN", connect_timeout=1)
    assert "Sekret" not in str(raised.value) and "Sekret" not in caplog.text


def test_the_cli_prints_connection_errors_without_the_password(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    _external_env(monkeypatch, f"postgresql://writer:{DSN_PASSWORD}@127.0.0.1:5432/warehouse")
    assert cli.main(["report", "people-per-dose"]) == 1
    err = capsys.readouterr().err
    assert "WAREHOUSE_DSN" in err and "Sekret" not in err


def test_env_output_is_shell_safe(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = f"postgresql://writer:{DSN_PASSWORD}$(touch /nonexistent)@127.0.0.1:5432/warehouse"
    _external_env(monkeypatch, dsn)
    assert cli.main(["env"]) == 0
    exports = capsys.readouterr().out
    shown = subprocess.run(["bash", "-c", 'eval "$1" && printf %s "$WAREHOUSE_DSN"', "_", exports],
                           capture_output=True, text=True, check=True).stdout
    assert shown == dsn


@pytest.mark.integration
def test_psql_gets_the_password_from_its_environment_not_its_command_line(services) -> None:
    password = dsn_passwords(services.warehouse_dsn)
    assert password, "the embedded warehouse DSN has a password"
    # psql runs a shell command that prints psql's own command line (what `ps` shows), then a query.
    shown = subprocess.run([str(Path(sys.executable).parent / "covid-lakehouse"), "psql", "--", "-X", "-A", "-t",
                            "-c", r"\! tr '\0' ' ' < /proc/$PPID/cmdline", "-c", "select 'connected'"],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    shown = shown.stdout
    assert "psql" in shown and "connected" in shown
    assert not [p for p in password if p in shown]
