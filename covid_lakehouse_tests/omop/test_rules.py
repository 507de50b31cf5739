"""Value rules (NPI check digit, care site names, specialty labels) and the tenants file."""

import numpy as np
import pytest

from covid_lakehouse.defs.omop.rules import (
    load_specialty_map,
    map_specialties,
    npi_check_digit,
    npi_check_digits,
    npi_is_valid,
    resolve_sites,
)
from covid_lakehouse.defs.omop.tenants import (
    TenantConfigError,
    TenantsResource,
    parse_tenants,
)
from covid_lakehouse_dev.seeds.omop import CARE_SITES, SAMPLE_FILE_NPIS
from covid_lakehouse_dev.sources.omop import TENANTS_FILE as DEMO_TENANTS_FILE

SITES = {i: name for i, (name, _) in enumerate(CARE_SITES, start=1)}


def test_npi_check_digit_follows_the_cms_luhn_rule():
    assert npi_check_digit("123456789") == 3  # CMS's worked example: 1234567893
    assert npi_is_valid("1234567893")
    assert not any(npi_is_valid(n) for n in SAMPLE_FILE_NPIS)  # every NPI in the sample file fails
    assert not npi_is_valid("123456789") and not npi_is_valid("12345678AB")
    bases = np.array([123456789, 12345678, 990000000])
    assert npi_check_digits(bases).tolist() == [npi_check_digit(f"{b:09d}") for b in bases]


@pytest.mark.parametrize(("raw", "expected"), [
    ("Metro Med", "Metro Medical Center"),
    ("North Health Inst", "North Health Institute"),
    ("  city   HOSPITAL ", "City Hospital"),
    ("Westside Family Pract.", "Westside Family Practice"),
    ("Suburban Hlth", "Suburban Health"),
    ("Lakeside Surgical Annex", None),  # unknown site: no guess
    ("Metro", None),  # one word of three is too little to go on
])
def test_site_names_resolve_to_one_site_or_none(raw, expected):
    resolved = resolve_sites([raw], SITES)[raw]
    assert (SITES[resolved] if resolved else None) == expected


def test_an_abbreviation_matching_two_sites_is_not_guessed():
    sites = {1: "North Clinic", 2: "North Center"}
    assert resolve_sites(["North C"], sites) == {"North C": None}


def test_abbreviated_and_full_specialties_map_to_medicare_specialty_concepts():
    mapping = load_specialty_map()
    concepts = map_specialties(["Peds", "Neuro", "ortho", "Derma.", "Int  Med", "Cardiology", "General Practice",
                                "Hematology/Oncology", "Sports Medicine"], mapping)
    assert concepts == {
        "Peds": 38004477, "Neuro": 38004458, "ortho": 38004465, "Derma.": 38004452, "Int  Med": 38004456,
        "Cardiology": 38004451, "General Practice": 38004446, "Hematology/Oncology": 38004502,
        "Sports Medicine": 0,
    }


def test_the_demo_tenants_file_is_valid(monkeypatch):
    monkeypatch.setenv("OMOP_TENANTS_FILE", str(DEMO_TENANTS_FILE))
    tenants = TenantsResource().load()
    assert [(t.name, t.namespace, t.prefix) for t in tenants] == [("demo", "omop_demo", "omop/landing/demo/")]


def test_without_a_tenants_file_there_are_no_tenants(monkeypatch):
    # The product bundles no tenants: a deployment names its file (the demo names the dev package's).
    monkeypatch.delenv("OMOP_TENANTS_FILE", raising=False)
    assert TenantsResource().path() is None and TenantsResource().load() == []
    with pytest.raises(TenantConfigError, match="'demo': no tenants file .OMOP_TENANTS_FILE is not set"):
        TenantsResource().get("demo")


@pytest.mark.parametrize(("text", "message"), [
    ("tenants:\n  - name: Acme-1\n    source_dsn_env: X\n", "not a safe SQL identifier"),
    ("tenants:\n  - name: acme\n    source_dsn_env: x-dsn\n", "not an environment variable name"),
    ("tenants:\n  - name: acme\n    source_dsn_env: X\n    colour: red\n", "unknown field(s) colour"),
    ("tenants:\n  - name: acme\n", "'name' and 'source_dsn_env' are required"),
    ("tenants:\n  - {name: a, source_dsn_env: X}\n  - {name: a, source_dsn_env: Y}\n", "listed twice: a"),
    ("tenants:\n  - {name: a, source_dsn_env: X, landing_prefix: ../b/}\n", "must be a relative key prefix"),
    ("tenants: [\n", "not valid YAML"),
    ("- a\n", "expected a mapping with a 'tenants' list"),
])
def test_invalid_tenants_files_are_rejected_with_the_problem_named(text, message):
    with pytest.raises(TenantConfigError, match="my.yaml") as err:
        parse_tenants(text, origin="my.yaml")
    assert message in str(err.value)


def test_a_tenant_whose_dsn_variable_is_unset_fails_naming_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("ACME_SOURCE_DSN", raising=False)
    path = tmp_path / "t.yaml"
    path.write_text("tenants:\n  - {name: acme, source_dsn_env: ACME_SOURCE_DSN}\n")
    tenant = TenantsResource(tenants_file=str(path)).get("acme")
    with pytest.raises(TenantConfigError, match="ACME_SOURCE_DSN"):
        tenant.source_dsn()
    with pytest.raises(TenantConfigError, match="'other' is not in tenants file"):
        TenantsResource(tenants_file=str(path)).get("other")
