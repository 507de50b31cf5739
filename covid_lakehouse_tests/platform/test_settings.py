"""One way to configure: every environment variable is declared once with lib.settings.setting, read
through it (or dg.EnvVar), listed in the README's table, and resource keys follow one naming rule."""

import ast
import re
from pathlib import Path

import dagster as dg
import pytest

from covid_lakehouse.lib.settings import SETTINGS, Setting, SettingError, setting, settings_table

REPO = Path(__file__).resolve().parents[2]
PRODUCT = REPO / "covid_lakehouse"
# These set up whole process environments (services, DAGSTER_HOME, child processes) rather than read settings.
ENVIRONMENT_OWNERS = {"lib/settings.py", "runtime.py", "cli.py"}
PLATFORM_RESOURCE_KEYS = {"warehouse", "warehouse_io_manager", "s3", "s3_object_io_manager", "lakehouse",
                          "lakehouse_io_manager", "http"}
DOMAINS = {"ny_testing", "vaccines", "ads", "marketing", "omop", "platform"}


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    from covid_lakehouse.definitions import code_location

    return code_location()  # loading every domain declares its settings


def test_the_readme_table_is_the_generated_one(defs):
    readme = (REPO / "README.md").read_text()
    found = re.search(r"<!-- settings-table:start -->\n(.*?)<!-- settings-table:end -->", readme, re.S)
    assert found, "README.md lost its settings-table markers"
    assert found.group(1) == settings_table(), (
        "README's settings table is out of date: paste the output of `covid-lakehouse settings` between its markers")


def test_no_product_module_reads_the_environment_directly():
    offenders = []
    for path in PRODUCT.rglob("*.py"):
        relative = path.relative_to(PRODUCT).as_posix()
        if relative in ENVIRONMENT_OWNERS or relative.startswith("lib/embedded"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv") and \
                    isinstance(node.value, ast.Name) and node.value.id == "os":
                offenders.append(f"{relative}:{node.lineno}")
    assert offenders == [], "read settings through covid_lakehouse.lib.settings.setting(...): " + ", ".join(offenders)


def test_resource_keys_follow_the_naming_rule(defs):
    """Platform resources are bare nouns; a domain's are <domain>_<noun>, and a resource holding only a
    domain's settings is <Domain>Settings under <domain>_settings."""
    for key, resource in (defs.resources or {}).items():
        if key in PLATFORM_RESOURCE_KEYS:
            continue
        domain = next((d for d in DOMAINS if key.startswith(d + "_")), None)
        assert domain, f"resource key {key!r} is neither a platform resource nor <domain>_<noun>"
        name = type(resource).__name__
        if name.endswith("Settings"):
            assert key == f"{domain}_settings" and name == "".join(p.title() for p in domain.split("_")) + "Settings", (
                key, name)
        else:
            assert name.endswith("Resource"), f"{key}: {name} should end in Resource (or Settings)"


def test_configured_value_then_environment_then_default(monkeypatch):
    s = Setting("COVID_LAKEHOUSE_TEST_VALUE", "a test value", default="fallback")
    monkeypatch.delenv(s.name, raising=False)
    assert s.get() == "fallback"
    monkeypatch.setenv(s.name, "from-env")
    assert s.get() == "from-env"
    assert s.get("configured") == "configured"
    assert s.get("") == "from-env"  # an empty configured value means unset


def test_a_missing_or_malformed_setting_names_its_variable(monkeypatch):
    required = Setting("COVID_LAKEHOUSE_TEST_REQUIRED", "what it is for")
    monkeypatch.delenv(required.name, raising=False)
    with pytest.raises(SettingError, match="COVID_LAKEHOUSE_TEST_REQUIRED is not set.*what it is for") as err:
        required.require()
    assert err.value.allow_retries is False
    monkeypatch.setenv(required.name, "twelve")
    with pytest.raises(SettingError, match="COVID_LAKEHOUSE_TEST_REQUIRED='twelve' is not a number"):
        required.number()
    monkeypatch.setenv(required.name, "0")
    with pytest.raises(SettingError, match="must be at least 1"):
        required.number(minimum=1)
    for endless in ("nan", "inf", "-inf"):  # float() reads them; nan passes any minimum
        monkeypatch.setenv(required.name, endless)
        with pytest.raises(SettingError, match=f"COVID_LAKEHOUSE_TEST_REQUIRED='{endless}' is not a finite number"):
            required.number(minimum=1)
    monkeypatch.setenv(required.name, " a, ,b ")
    assert required.values() == ["a", "b"]


def test_a_family_of_variables_and_duplicate_declarations():
    family = SETTINGS["VACCINES_{}_URL"]
    assert family.named("janssen").name == "VACCINES_JANSSEN_URL"
    assert "`VACCINES_<MANUFACTURER>_URL`" in settings_table()
    with pytest.raises(ValueError, match="declared twice"):
        setting("WAREHOUSE_DSN", "something else")
