"""Who can read which bucket, from the deployments' own documents: the policies in deploy/s3/policies,
which identity compose's minio-init attaches them to, and which policies each Kubernetes pod's key must
carry. The raw bucket (API pages with personal data) is readable by the platform's key only.
test_s3_identities_enforced.py proves on a real S3 server that the same documents deny it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from covid_lakehouse.lib.embedded.s3 import policy_actions
from covid_lakehouse_tests.platform.support import COMPOSE_FILE, ROOT, kustomize, unescape_dollars

POLICIES = ROOT / "deploy" / "s3" / "policies"
OVERLAY = ROOT / "deploy" / "k8s" / "overlays" / "example"
PLATFORM_BUCKETS = {"raw", "lakehouse", "ad-data"}
ANNOTATION = "covid-lakehouse/s3-policies"


def grants(policy_names: list[str]) -> dict[str, set[str]]:
    """action kind (Read, Write, List) -> buckets, over these policies."""
    granted: dict[str, set[str]] = {"Read": set(), "Write": set(), "List": set()}
    for name in policy_names:
        for action in policy_actions(json.loads((POLICIES / f"{name}.json").read_text())):
            kind, bucket = action.split(":", 1)
            granted[kind].add(bucket)
    return granted


@pytest.fixture(scope="module")
def minio_init() -> str:
    service = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["minio-init"]
    assert "./deploy/s3/policies:/policies:ro" in service["volumes"]
    return unescape_dollars("\n".join(service["command"]))


def compose_identities(script: str) -> dict[str, list[str]]:
    """key-id variable -> policies attached to it by minio-init."""
    created = set(re.findall(r'mc admin policy create local "\$policy" "/policies/\$policy.json"', script))
    assert created, "minio-init creates the policies from the mounted files"
    loop = re.search(r"for policy in ([^;\n]+);", script)
    assert loop
    defined = set(loop[1].split())
    attached: dict[str, list[str]] = {}
    for policy, variable in re.findall(r'mc admin policy attach local (\S+) --user "\$(\w+)"', script):
        assert policy in defined, f"{policy} attached but never created"
        attached.setdefault(variable, []).append(policy)
    return attached


def test_compose_gives_each_identity_only_its_buckets(minio_init):
    identities = compose_identities(minio_init)
    assert set(identities) == {"S3_APP_ACCESS_KEY_ID", "S3_LAKEHOUSE_READER_ACCESS_KEY_ID", "S3_ANALYST_ACCESS_KEY_ID"}
    platform = grants(identities["S3_APP_ACCESS_KEY_ID"])
    assert platform["Read"] == platform["Write"] == platform["List"] == PLATFORM_BUCKETS
    for reader in ("S3_LAKEHOUSE_READER_ACCESS_KEY_ID", "S3_ANALYST_ACCESS_KEY_ID"):
        granted = grants(identities[reader])
        assert granted == {"Read": {"lakehouse"}, "Write": set(), "List": {"lakehouse"}}, reader
        assert "raw" not in granted["Read"] | granted["List"]


def test_compose_readers_are_created_only_when_configured_and_use_their_own_secret(minio_init):
    for prefix in ("S3_LAKEHOUSE_READER", "S3_ANALYST"):
        block = re.search(rf'if \[ -n "\${prefix}_ACCESS_KEY_ID" \]; then\n(.*?)\n\s*fi', minio_init, re.S)
        assert block, prefix
        assert f'mc admin user add local "${prefix}_ACCESS_KEY_ID" "${prefix}_SECRET_ACCESS_KEY"' in block[1]
    # Only the platform's key reaches the Dagster containers.
    dagster_env = yaml.safe_load(COMPOSE_FILE.read_text())["x-dagster-env"]
    assert dagster_env["AWS_ACCESS_KEY_ID"].startswith("${S3_APP_ACCESS_KEY_ID")
    assert not [k for k, v in dagster_env.items() if "READER" in str(v) or "ANALYST" in str(v)]


def test_kubernetes_pods_hold_keys_whose_policies_keep_raw_to_the_platform():
    rendered = kustomize(OVERLAY)
    pods = {o["metadata"]["name"]: o["spec"]["template"] for o in rendered if o["kind"] == "Deployment"}
    holding = {}
    for name, template in pods.items():
        env = [e for c in template["spec"]["containers"] for e in c.get("env", [])]
        refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in env
                if e["name"].startswith("AWS_") and "secretKeyRef" in e.get("valueFrom", {})}
        if refs:
            policies = template["metadata"].get("annotations", {}).get(ANNOTATION)
            assert policies, f"{name} holds an S3 key without naming its policies ({ANNOTATION})"
            holding[name] = (refs, grants(policies.split(",")))
    assert set(holding) == {"covid-lakehouse-code-location", "covid-lakehouse-webserver",
                            "covid-lakehouse-webserver-readonly"}
    code_location_secrets, platform = holding.pop("covid-lakehouse-code-location")
    assert code_location_secrets == {"covid-lakehouse-secrets"}  # the run pods' key too (dagster.yaml)
    assert "raw" in platform["Read"] and PLATFORM_BUCKETS <= platform["Write"]
    for name, (secret_names, granted) in holding.items():
        assert secret_names == {"covid-lakehouse-webserver-s3"}, name
        assert granted == {"Read": {"dagster-compute-logs"}, "Write": set(), "List": {"dagster-compute-logs"}}, name


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*.json")), ids=lambda p: p.name)
def test_every_policy_is_understood_and_grants_no_wildcard_bucket(path: Path):
    actions = policy_actions(json.loads(path.read_text()))
    assert actions and not [a for a in actions if "*" in a]
