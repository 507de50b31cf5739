"""Kubernetes exposure, checked on the rendered example overlay (no cluster here): the webservers accept
connections only from the ingress controller's namespace, run pods may reach DNS, PostgreSQL, S3 and
public HTTPS but no private, link-local (cloud metadata) or loopback address, and a read-only webserver
is offered for viewers."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
import yaml
from dagster_k8s.job import get_common_labels

from covid_lakehouse_tests.platform.support import ROOT, kustomize, label_selector_matches

OVERLAY = ROOT / "deploy" / "k8s" / "overlays" / "example"
WEBSERVER, READONLY = "covid-lakehouse-webserver", "covid-lakehouse-webserver-readonly"
INTERNAL = ["10.0.0.1", "10.96.0.10", "172.20.3.4", "192.168.1.1", "169.254.169.254", "127.0.0.1",
            "100.64.0.1", "fd00:ec2::254", "fe80::1", "::1"]
PUBLIC = ["151.101.1.69", "142.250.74.10", "2606:4700::6810:84e5"]


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return kustomize(OVERLAY)


def policy(rendered, name: str) -> dict[str, Any]:
    [found] = [o for o in rendered if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == name]
    return found["spec"]


def pod_labels(rendered) -> dict[str, dict[str, str]]:
    labels = {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
              for o in rendered if o["kind"] == "Deployment"}
    launcher = yaml.safe_load(next(o for o in rendered if o["kind"] == "ConfigMap" and "dagster.yaml" in o.get("data", {}))
                              ["data"]["dagster.yaml"])["run_launcher"]["config"]
    # What dagster-k8s puts on a run's pod (and a step pod's, under k8s_job_executor), then the launcher's labels.
    for component in ("run_worker", "step_worker"):
        labels[component] = {**get_common_labels(), "app.kubernetes.io/component": component, **launcher["labels"]}
    return labels


def test_only_the_ingress_namespace_reaches_the_webservers(rendered):
    spec = policy(rendered, "covid-lakehouse-webserver")
    selected = {n for n, labels in pod_labels(rendered).items() if label_selector_matches(spec["podSelector"], labels)}
    assert selected == {WEBSERVER, READONLY}
    assert spec["policyTypes"] == ["Ingress"]
    [rule] = spec["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]


def egress_allows(spec: dict[str, Any], address: str, port: int) -> bool:
    """Whether an ipBlock rule lets a run pod open ``address:port`` (selector peers name in-cluster pods)."""
    ip = ipaddress.ip_address(address)
    for rule in spec["egress"]:
        if not any(p["port"] == port for p in rule.get("ports", [])):
            continue
        for peer in rule["to"]:
            block = peer.get("ipBlock")
            if block is None:
                continue
            net = ipaddress.ip_network(block["cidr"])
            if ip.version == net.version and ip in net and not any(
                    ip in ipaddress.ip_network(e) for e in block.get("except", [])
                    if ipaddress.ip_network(e).version == ip.version):
                return True
    return False


def test_run_pods_reach_dns_postgres_s3_and_public_https_but_no_internal_address(rendered):
    spec = policy(rendered, "covid-lakehouse-run-egress")
    labels = pod_labels(rendered)
    selected = {n for n, pod in labels.items() if label_selector_matches(spec["podSelector"], pod)}
    assert selected == {"run_worker", "step_worker"}  # not the long-running pods
    assert spec["policyTypes"] == ["Egress"]

    for address in INTERNAL:
        for port in (443, 80, 5432, 9000, 8888):
            assert not egress_allows(spec, address, port), f"run pods may open {address}:{port}"
    for address in PUBLIC:
        assert egress_allows(spec, address, 443)
        assert not egress_allows(spec, address, 80) and not egress_allows(spec, address, 5432)

    by_port = {tuple(sorted((p["port"], p["protocol"]) for p in rule["ports"])): rule["to"] for rule in spec["egress"]}
    assert by_port[((53, "TCP"), (53, "UDP"))] == [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]
    # PostgreSQL and S3 only in their own namespaces, never as an IP range.
    for port in (5432, 9000):
        [peer] = by_port[((port, "TCP"),)]
        assert set(peer) == {"namespaceSelector"}, port
    assert set(by_port) == {((53, "TCP"), (53, "UDP")), ((5432, "TCP"),), ((9000, "TCP"),), ((443, "TCP"),)}


def test_the_read_only_webserver_cannot_mutate_and_has_no_api_rights(rendered):
    [deployment] = [o for o in rendered if o["kind"] == "Deployment" and o["metadata"]["name"] == READONLY]
    spec = deployment["spec"]["template"]["spec"]
    [web] = spec["containers"]
    assert web["args"][:1] == ["dagster-webserver"] and web["args"][-1] == "--read-only"
    assert spec["serviceAccountName"] == READONLY and spec["automountServiceAccountToken"] is False
    bindings = [o for o in rendered if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert not [b for b in bindings for s in b["subjects"] if s["name"] == READONLY]
    [service] = [o for o in rendered if o["kind"] == "Service" and o["metadata"]["name"] == READONLY]
    assert label_selector_matches({"matchLabels": service["spec"]["selector"]}, deployment["spec"]["template"]["metadata"]["labels"])
    writable = next(o for o in rendered if o["kind"] == "Deployment" and o["metadata"]["name"] == WEBSERVER)
    assert "--read-only" not in writable["spec"]["template"]["spec"]["containers"][0]["args"]


def test_the_read_only_webserver_is_the_writable_one_but_for_its_rights(rendered):
    """webserver-readonly.yaml is a copy of webserver.yaml: the two may differ only in name, component
    label, service account (no Kubernetes API rights) and ``--read-only``, so a change to one (image,
    probes, limits, hardening, env, volumes) cannot miss the other."""
    for kind in ("Deployment", "Service"):
        [writable] = [o for o in rendered if o["kind"] == kind and o["metadata"]["name"] == WEBSERVER]
        [readonly] = [o for o in rendered if o["kind"] == kind and o["metadata"]["name"] == READONLY]
        renamed = json.loads(json.dumps(readonly).replace(READONLY, WEBSERVER)
                             .replace('"webserver-readonly"', '"webserver"'))
        if kind == "Deployment":
            spec = renamed["spec"]["template"]["spec"]
            assert spec.pop("automountServiceAccountToken") is False
            assert spec["containers"][0]["args"].pop() == "--read-only"
            spec["serviceAccountName"] = writable["spec"]["template"]["spec"]["serviceAccountName"]
        assert renamed == writable, kind
