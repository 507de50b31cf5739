"""The Kubernetes deployment (deploy/k8s, deploy/helm), checked offline without a cluster.

``kubectl kustomize`` renders the example overlay exactly as ``kubectl apply -k`` would, and every
rendered object is validated against the Kubernetes OpenAPI schemas bundled in the
``kubernetes-validate`` wheel (strict: unknown fields fail). The production dagster.yaml inside the
rendered ConfigMap is validated by Dagster itself with dagster-k8s installed; the K8sRunLauncher is
instantiated from it (against a dummy kubeconfig: nothing is contacted) and the run Job it would
create is built with dagster-k8s' own code and validated too. The Helm values file is checked for
the keys of the dagster/dagster chart and for the same choices as the Kustomize manifests.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from covid_lakehouse.lib import settings
from covid_lakehouse_tests.platform.support import kubectl_binary, kustomize, label_selector_matches

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "k8s"
OVERLAY = K8S_DIR / "overlays" / "example"
INSTANCE_YAML = K8S_DIR / "base" / "dagster.yaml"
COMPOSE_INSTANCE_YAML = ROOT / "deploy" / "dagster.compose.yaml"
HELM_VALUES = ROOT / "deploy" / "helm" / "values.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

# kubectl here is v1.32; the oldest and a newer minor bracket what the manifests claim to support.
K8S_VERSIONS = ("1.29.0", "1.32.0", "1.35.0")

NAMESPACE = "covid-lakehouse"
APP_UID = 10001  # the Dockerfile's APP_UID
DAGSTER_HOME = "/opt/dagster/dagster_home"
CODE_SERVER_PORT = 4000

ENV_CONFIG_MAP = "covid-lakehouse-env"
INSTANCE_CONFIG_MAP = "covid-lakehouse-instance"
WORKSPACE_CONFIG_MAP = "covid-lakehouse-workspace"
PLATFORM_SECRET = "covid-lakehouse-secrets"
WEBSERVER_S3_SECRET = "covid-lakehouse-webserver-s3"
API_SECRET = "covid-lakehouse-api-credentials"
# The keys of covid-lakehouse-secrets (created out of band, docs/deploy.md): never in a manifest.
PLATFORM_SECRET_KEYS = {
    settings.DAGSTER_STORAGE_URL,
    settings.WAREHOUSE_DSN,
    settings.LAKEHOUSE_CATALOG_DSN,
    settings.AWS_ACCESS_KEY_ID,
    settings.AWS_SECRET_ACCESS_KEY,
    settings.RUN_FAILURE_WEBHOOK_URL,
}
OPTIONAL_SECRET_KEYS = {settings.RUN_FAILURE_WEBHOOK_URL}

CODE_LOCATION = "covid-lakehouse-code-location"
WEBSERVER = "covid-lakehouse-webserver"
WEBSERVERS = {WEBSERVER, f"{WEBSERVER}-readonly"}
DAEMON = "covid-lakehouse-daemon"
CONTROL_PLANE_SA = "covid-lakehouse-dagster"
RUN_SA = "covid-lakehouse-run"
CODE_LOCATION_SA = "covid-lakehouse-code-location"


# ---- helpers ---------------------------------------------------------------------------------------


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def generated_config_map(objects: list[dict[str, Any]], base_name: str) -> dict[str, Any]:
    """A configMapGenerator output, whose name carries a content hash."""
    matches = [
        o for o in objects
        if o["kind"] == "ConfigMap" and re.fullmatch(re.escape(base_name) + r"(-[a-z0-9]{10})?", o["metadata"]["name"])
    ]
    assert len(matches) == 1, f"expected one ConfigMap {base_name}(-hash), found {len(matches)}"
    return matches[0]


def pod_spec(deployment: Mapping[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def all_containers(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def container(spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    [match] = [c for c in all_containers(spec) if c["name"] == name]
    return match


def env_names(c: Mapping[str, Any], objects: list[dict[str, Any]]) -> set[str]:
    """Every variable a container gets: its env entries plus the keys of the rendered ConfigMaps it
    loads, plus the documented keys of the platform Secret when it loads that one whole."""
    names = {e["name"] for e in c.get("env", [])}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            names |= set(find(objects, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
        elif source.get("secretRef", {}).get("name") == PLATFORM_SECRET:
            names |= PLATFORM_SECRET_KEYS
    return names


def env_references(node: Any) -> Iterator[str]:
    """Names of the environment variables a Dagster config reads (`{env: NAME}`)."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            yield node["env"]
        for value in node.values():
            yield from env_references(value)
    elif isinstance(node, list):
        for value in node:
            yield from env_references(value)


def dockerfile_cmd() -> list[str]:
    """The production image's CMD: the last stage's (the dev stage before it has its own)."""
    cmd = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith("CMD ")][-1]
    return json.loads(cmd.removeprefix("CMD "))


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    try:
        return kustomize(OVERLAY)
    except RuntimeError as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="module")
def deployments(rendered) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in rendered if o["kind"] == "Deployment"}


@pytest.fixture(scope="module")
def instance_config(rendered) -> dict[str, Any]:
    return yaml.safe_load(generated_config_map(rendered, INSTANCE_CONFIG_MAP)["data"]["dagster.yaml"])


@pytest.fixture
def instance_env(monkeypatch) -> dict[str, str]:
    """Placeholder values for every variable the instance config reads, as the pods would have."""
    values = {
        settings.DAGSTER_STORAGE_URL: "postgresql+psycopg2://dagster:placeholder@postgres.example:5432/dagster",
        "DAGSTER_COMPUTE_LOG_BUCKET": "compute-logs-placeholder",
        settings.S3_ENDPOINT_URL: "http://127.0.0.1:9",
        settings.AWS_REGION: "us-east-1",
        "DAGSTER_K8S_JOB_NAMESPACE": NAMESPACE,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


# ---- rendering and schemas ----------------------------------------------------------------------


def test_overlay_renders_the_expected_objects(rendered):
    kinds = {(o["kind"], o["metadata"]["name"]) for o in rendered}
    expected = {
        ("Namespace", NAMESPACE),
        ("ServiceAccount", CONTROL_PLANE_SA), ("ServiceAccount", RUN_SA), ("ServiceAccount", CODE_LOCATION_SA),
        ("Role", "covid-lakehouse-run-launcher"), ("RoleBinding", "covid-lakehouse-run-launcher"),
        ("ConfigMap", ENV_CONFIG_MAP),
        ("Deployment", CODE_LOCATION), ("Deployment", WEBSERVER), ("Deployment", DAEMON),
        ("Service", CODE_LOCATION), ("Service", WEBSERVER),
        ("NetworkPolicy", CODE_LOCATION),
    }
    assert expected <= kinds, f"missing: {sorted(expected - kinds)}"
    generated_config_map(rendered, INSTANCE_CONFIG_MAP)
    generated_config_map(rendered, WORKSPACE_CONFIG_MAP)
    for obj in rendered:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]
        assert obj["metadata"]["labels"].get("app.kubernetes.io/part-of", "covid-lakehouse") == "covid-lakehouse"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_rendered_object_validates_against_the_kubernetes_schema(rendered, version):
    for obj in rendered:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} is invalid for Kubernetes {version}: {err.message}")


def test_schema_validation_rejects_a_broken_manifest(deployments):
    # The check above is only worth something if it rejects mistakes: a misspelt field and a wrong type.
    broken = json.loads(json.dumps(deployments[WEBSERVER]))
    pod_spec(broken)["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="resource"):
        kubernetes_validate.validate(broken, K8S_VERSIONS[1], strict=True)
    broken = json.loads(json.dumps(deployments[WEBSERVER]))
    broken["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[1], strict=True)


# ---- secrets --------------------------------------------------------------------------------------


def test_secrets_are_referenced_never_rendered(rendered, deployments):
    assert not [o for o in rendered if o["kind"] == "Secret"], "a Secret would be written to git and to the cluster"

    referenced_keys: set[str] = set()
    for name, deployment in deployments.items():
        for c in all_containers(pod_spec(deployment)):
            for entry in c.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if entry["name"] in PLATFORM_SECRET_KEYS and not (name in WEBSERVERS and entry["name"].startswith("AWS_")):
                    assert ref, f"{name}/{c['name']}: {entry['name']} must come from a secretKeyRef"
                    assert (ref["name"], ref["key"]) == (PLATFORM_SECRET, entry["name"])
                    assert ref.get("optional", False) == (entry["name"] in OPTIONAL_SECRET_KEYS), entry["name"]
                    referenced_keys.add(ref["key"])
                if ref:
                    # The webservers' S3 key is their own (compute logs only; docs/security.md).
                    assert ref["name"] == (WEBSERVER_S3_SECRET if name in WEBSERVERS and entry["name"].startswith("AWS_")
                                           else PLATFORM_SECRET), ref
            for source in c.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] == API_SECRET
                    # Run pods cannot load it optionally: a missing one must stop the deploy already.
                    assert not source["secretRef"].get("optional")
    assert referenced_keys == PLATFORM_SECRET_KEYS

    # Nothing secret-shaped in a ConfigMap: no secret key, no URL with a password.
    for config_map in (o for o in rendered if o["kind"] == "ConfigMap"):
        data = config_map.get("data", {})
        assert not set(data) & PLATFORM_SECRET_KEYS, config_map["metadata"]["name"]
        for value in data.values():
            assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", value), "credentials in a URL"


def test_secret_values_never_reach_the_rendered_output(tmp_path):
    """An operator keeps secret env files next to the overlay (the docs say: outside the repository);
    whatever the manifests do with generators, none of those values may end up in the rendered
    output, which is stored in git history, CI logs and `kubectl get -o yaml`."""
    tree = tmp_path / "k8s"
    shutil.copytree(K8S_DIR, tree)
    values = {name: f"{name.lower()}-{secrets.token_hex(12)}" for name in sorted(PLATFORM_SECRET_KEYS)}
    for folder in (tree / "overlays" / "example", tree / "base"):
        for file_name in (f"{PLATFORM_SECRET}.env", ".env", "secrets.env"):
            (folder / file_name).write_text("".join(f"{k}={v}\n" for k, v in values.items()))

    output = subprocess.run(
        [kubectl_binary(), "kustomize", str(tree / "overlays" / "example")],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    leaked = [name for name, value in values.items() if value in output]
    assert not leaked, f"secret values rendered into the manifests: {leaked}"
    assert "kind: Secret" not in output


# ---- pods -------------------------------------------------------------------------------------------


def test_every_pod_is_hardened_and_sized(deployments):
    for name, deployment in deployments.items():
        spec = pod_spec(deployment)
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True, name
        assert (pod_security["runAsUser"], pod_security["runAsGroup"], pod_security["fsGroup"]) == (APP_UID,) * 3
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["enableServiceLinks"] is False
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in all_containers(spec):
            where = f"{name}/{c['name']}"
            security = c["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            for bound in ("requests", "limits"):
                assert set(c["resources"][bound]) == {"cpu", "memory"}, f"{where} {bound}"
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            # Writable scratch on the read-only root filesystem.
            assert "emptyDir" in volumes[mounts["/tmp"]], where
            assert c.get("imagePullPolicy") == "IfNotPresent", where
            assert "command" not in c, f"{where}: `command` would replace tini, the image's entrypoint"


def test_images_commands_and_current_image(deployments):
    images = {c["image"] for d in deployments.values() for c in all_containers(pod_spec(d))}
    assert len(images) == 1, images
    [image] = images
    assert re.fullmatch(r"[\w.\-/]+/covid-lakehouse:[\w.\-]+", image), "the overlay must set the image and its tag"

    code_spec = pod_spec(deployments[CODE_LOCATION])
    server = container(code_spec, "code-server")
    assert server["args"] == dockerfile_cmd(), "the code server runs the image's CMD"
    env = {e["name"]: e for e in server["env"]}
    # K8sRunLauncher launches runs with the image the code location reports.
    assert env["DAGSTER_CURRENT_IMAGE"]["value"] == image
    assert container(code_spec, "migrate")["args"] == ["covid-lakehouse", "migrate"]

    daemon_spec = pod_spec(deployments[DAEMON])
    assert container(daemon_spec, "dagster-instance-migrate")["args"] == ["dagster", "instance", "migrate"]
    assert container(daemon_spec, "daemon")["args"][:2] == ["dagster-daemon", "run"]
    assert container(pod_spec(deployments[WEBSERVER]), "webserver")["args"][0] == "dagster-webserver"


def test_probes(deployments, rendered):
    web = container(pod_spec(deployments[WEBSERVER]), "webserver")
    ports = {p["name"]: p["containerPort"] for p in web["ports"]}
    assert web["args"][web["args"].index("-p") + 1] == str(ports["http"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert web[probe]["httpGet"] == {"path": "/server_info", "port": "http"}, probe

    server = container(pod_spec(deployments[CODE_LOCATION]), "code-server")
    grpc_port = {p["name"]: p["containerPort"] for p in server["ports"]}["grpc"]
    assert server["args"][server["args"].index("-p") + 1] == str(grpc_port)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["exec"]["command"] == ["dagster", "api", "grpc-health-check", "-p", str(grpc_port)]
    service = find(rendered, "Service", CODE_LOCATION)
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(grpc_port, "grpc")]

    daemon = container(pod_spec(deployments[DAEMON]), "daemon")
    for probe in ("startupProbe", "livenessProbe"):
        assert daemon[probe]["exec"]["command"] == ["dagster-daemon", "liveness-check"]


def test_one_daemon_and_no_code_location_gap(deployments):
    daemon = deployments[DAEMON]["spec"]
    assert daemon["replicas"] == 1
    assert daemon["strategy"] == {"type": "Recreate"}, "two daemons would launch the same runs twice"
    rolling = deployments[CODE_LOCATION]["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0


def test_instance_and_workspace_are_mounted_where_dagster_reads_them(deployments, rendered):
    instance_name = generated_config_map(rendered, INSTANCE_CONFIG_MAP)["metadata"]["name"]
    workspace_map = generated_config_map(rendered, WORKSPACE_CONFIG_MAP)
    for name in (CODE_LOCATION, WEBSERVER, DAEMON):
        spec = pod_spec(deployments[name])
        volumes = {v["name"]: v for v in spec["volumes"]}
        main = spec["containers"][0]
        mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
        instance_mount = mounts[f"{DAGSTER_HOME}/dagster.yaml"]
        assert instance_mount["subPath"] == "dagster.yaml" and instance_mount["readOnly"]
        assert volumes[instance_mount["name"]]["configMap"]["name"] == instance_name
        if name != CODE_LOCATION:
            workspace_path = main["args"][main["args"].index("-w") + 1]
            mount = mounts[str(Path(workspace_path).parent)]
            assert volumes[mount["name"]]["configMap"]["name"] == workspace_map["metadata"]["name"]
            assert Path(workspace_path).name in workspace_map["data"]


def test_workspace_points_at_the_code_location_service(rendered, deployments):
    workspace_map = generated_config_map(rendered, WORKSPACE_CONFIG_MAP)
    [entry] = yaml.safe_load(workspace_map["data"]["workspace.yaml"])["load_from"]
    server = entry["grpc_server"]
    service = find(rendered, "Service", server["host"])
    assert service["metadata"]["name"] == CODE_LOCATION
    assert server["port"] in [p["port"] for p in service["spec"]["ports"]]
    code_labels = deployments[CODE_LOCATION]["spec"]["template"]["metadata"]["labels"]
    assert label_selector_matches({"matchLabels": service["spec"]["selector"]}, code_labels)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert server["location_name"] == pyproject["tool"]["dagster"]["code_location_name"]


def test_only_the_webserver_and_daemon_reach_the_code_server(rendered, deployments, instance_config):
    policy = find(rendered, "NetworkPolicy", CODE_LOCATION)["spec"]
    labels = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in deployments.items()}
    assert label_selector_matches(policy["podSelector"], labels[CODE_LOCATION])
    [rule] = policy["ingress"]
    [peer] = rule["from"]
    allowed = {name for name, pod_labels in labels.items() if label_selector_matches(peer["podSelector"], pod_labels)}
    assert allowed == {*WEBSERVERS, DAEMON}
    run_pod_labels = {"app.kubernetes.io/name": "dagster", "app.kubernetes.io/component": "run_worker",
                      **instance_config["run_launcher"]["config"]["labels"]}
    assert not label_selector_matches(peer["podSelector"], run_pod_labels)
    assert rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]


# ---- RBAC -----------------------------------------------------------------------------------------


def _dagster_k8s_api_calls() -> set[tuple[str, str, str]]:
    """(API group, resource, verb) for every Kubernetes API call in dagster_k8s/client.py."""
    import dagster_k8s.client

    source = Path(dagster_k8s.client.__file__).read_text()
    calls = set(re.findall(r"\b(core|batch)_api\.(create|read|list|delete|patch|replace)_namespaced_(\w+?)\(", source))
    assert calls, "dagster_k8s.client makes no API calls any more: this test needs updating"
    verbs = {"create": "create", "read": "get", "list": "list", "delete": "delete", "patch": "patch", "replace": "update"}
    needed = set()
    for api, verb, obj in calls:
        obj, _, sub = obj.partition("_")
        needed.add(("batch" if api == "batch" else "", f"{obj}s" + (f"/{sub}" if sub else ""), verbs[verb]))
    return needed


def test_role_grants_what_the_run_launcher_calls_and_no_more(rendered):
    role = find(rendered, "Role", "covid-lakehouse-run-launcher")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]
    }
    assert "*" not in {g for rule in role["rules"] for g in rule["verbs"] + rule["resources"]}
    assert granted == _dagster_k8s_api_calls()


def test_service_accounts_and_bindings(rendered, deployments, instance_config):
    binding = find(rendered, "RoleBinding", "covid-lakehouse-run-launcher")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "covid-lakehouse-run-launcher"}
    bound = {(s["kind"], s["name"], s.get("namespace")) for s in binding["subjects"]}
    assert bound == {("ServiceAccount", CONTROL_PLANE_SA, NAMESPACE), ("ServiceAccount", RUN_SA, NAMESPACE)}

    for name in (WEBSERVER, DAEMON):
        assert pod_spec(deployments[name])["serviceAccountName"] == CONTROL_PLANE_SA
    code_spec = pod_spec(deployments[CODE_LOCATION])
    assert code_spec["serviceAccountName"] == CODE_LOCATION_SA
    assert code_spec["automountServiceAccountToken"] is False
    assert find(rendered, "ServiceAccount", CODE_LOCATION_SA)["automountServiceAccountToken"] is False
    # Run pods use a service account that exists and is bound (k8s_job_executor needs it).
    launcher = instance_config["run_launcher"]["config"]
    assert launcher["service_account_name"] == RUN_SA
    find(rendered, "ServiceAccount", RUN_SA)


# ---- environment contract -------------------------------------------------------------------------


def test_every_process_gets_the_variables_it_reads(rendered, deployments, instance_config):
    instance_vars = set(env_references(instance_config))
    for name in (WEBSERVER, DAEMON, CODE_LOCATION):
        for c in all_containers(pod_spec(deployments[name])):
            if c["name"] == "migrate":
                continue
            missing = instance_vars - env_names(c, rendered)
            assert not missing, f"{name}/{c['name']} reads {sorted(missing)} through dagster.yaml"

    # The code location evaluates sensors and the migrate step touches the warehouse: the whole
    # settings contract of covid_lakehouse/lib/settings.py.
    contract = {*settings.EXTERNAL_SERVICE_VARS, settings.LAKEHOUSE_CATALOG_DSN, settings.LAKEHOUSE_WAREHOUSE,
                settings.AWS_REGION}
    for c in all_containers(pod_spec(deployments[CODE_LOCATION])):
        assert contract <= env_names(c, rendered), c["name"]

    # Run pods: what the launcher hands them, by name (ConfigMap, Secrets, pass-through variables).
    launcher = instance_config["run_launcher"]["config"]
    assert launcher["env_config_maps"] == [ENV_CONFIG_MAP]
    assert launcher["env_secrets"] == [PLATFORM_SECRET, API_SECRET]
    run_env = (set(find(rendered, "ConfigMap", ENV_CONFIG_MAP)["data"]) | PLATFORM_SECRET_KEYS
               | set(launcher["env_vars"]))
    assert instance_vars | contract <= run_env

    env_map = find(rendered, "ConfigMap", ENV_CONFIG_MAP)["data"]
    assert env_map[settings.S3_ENDPOINT_URL].startswith("https://"), "the overlay sets the S3 endpoint"
    assert env_map["DAGSTER_MULTIPROCESS_EXECUTOR_MAX_CONCURRENT"] == launcher["resources"]["limits"]["cpu"]


# ---- the Dagster instance ------------------------------------------------------------------------


def test_instance_config_validates_against_dagsters_schema(instance_config, instance_env, tmp_path):
    from dagster._config import process_config, resolve_to_config_type
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster._serdes import ConfigurableClassData
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
    from dagster_k8s import K8sRunLauncher

    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(instance_config))
    config, custom_instance_class = dagster_instance_config(str(tmp_path))  # raises when invalid
    assert custom_instance_class is None

    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    processed = process_config(resolve_to_config_type(K8sRunLauncher.config_type()), launcher["config"])
    assert processed.success, processed.errors
    assert processed.value["job_namespace"] == NAMESPACE  # resolved from the environment
    assert processed.value["dagster_home"] == DAGSTER_HOME

    for key, expected in (("run_coordinator", QueuedRunCoordinator), ("compute_logs", S3ComputeLogManager)):
        block = config[key]
        data = ConfigurableClassData(block["module"], block["class"], yaml.safe_dump(block.get("config") or {}))
        assert type(data.rehydrate(as_type=expected)) is expected

    assert config["storage"]["postgres"]["postgres_url"] == {"env": settings.DAGSTER_STORAGE_URL}


def test_instance_loads_with_the_queue_limits(instance_config, instance_env, tmp_path):
    """A real DagsterInstance from the production config (storage swapped for SQLite; the run
    launcher is built lazily, so no cluster is needed): the queue it enforces."""
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef
    from dagster._core.run_coordinator import QueuedRunCoordinator

    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(instance_config))
    ref = InstanceRef.from_dir(str(tmp_path), overrides={"storage": {"sqlite": {"base_dir": str(tmp_path / "s")}}})
    with DagsterInstance.from_ref(ref) as instance:
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        queue = instance.get_concurrency_config().run_queue_config
    limits = {limit["key"]: limit for limit in queue.tag_concurrency_limits}
    assert set(limits) == {"covid_lakehouse/tenant", "covid_lakehouse/pool"}
    for limit in limits.values():
        assert limit["value"] == {"applyLimitPerUniqueValue": True}
    assert limits["covid_lakehouse/tenant"]["limit"] < queue.max_concurrent_runs
    assert queue.max_user_code_failure_retries > 0, "a code-location rollout must not fail queued runs"


def test_instance_keeps_the_compose_choices(instance_config):
    compose = yaml.safe_load(COMPOSE_INSTANCE_YAML.read_text())
    for key in ("storage", "run_coordinator", "run_retries", "schedules", "sensors", "retention", "telemetry", "nux"):
        assert instance_config[key] == compose[key], key
    assert instance_config["concurrency"]["pools"] == compose["concurrency"]["pools"]
    compose_pool = [t for t in compose["concurrency"]["runs"]["tag_concurrency_limits"] if t["key"] == "covid_lakehouse/pool"]
    k8s_pool = [t for t in instance_config["concurrency"]["runs"]["tag_concurrency_limits"] if t["key"] == "covid_lakehouse/pool"]
    assert k8s_pool == compose_pool


def test_run_pods_the_launcher_creates_are_valid_and_hardened(instance_config, instance_env, tmp_path, rendered):
    """Builds the Job for a run with dagster-k8s' own code from the production launcher config."""
    import kubernetes
    from dagster._config import process_config, resolve_to_config_type
    from dagster._core.storage.dagster_run import DagsterRun
    from dagster_k8s import K8sRunLauncher
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import construct_dagster_k8s_job

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "offline",
        "clusters": [{"name": "offline", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "offline", "user": {"token": "unused"}}],
        "contexts": [{"name": "offline", "context": {"cluster": "offline", "user": "offline"}}],
    }))
    processed = process_config(resolve_to_config_type(K8sRunLauncher.config_type()),
                               instance_config["run_launcher"]["config"])
    assert processed.success, processed.errors
    launcher = K8sRunLauncher(**{**processed.value, "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)})

    image = container(pod_spec(find(rendered, "Deployment", CODE_LOCATION)), "code-server")["image"]
    run = DagsterRun(job_name="omop_partner_job", run_id="4f0c3d2a-0000-4000-8000-000000000001",
                     tags={"covid_lakehouse/tenant": "partner-001"})
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=True)
    job = construct_dagster_k8s_job(
        context.get_k8s_job_config(job_image=image, run_launcher=launcher),
        args=["dagster", "api", "execute_run", "{}"],
        job_name="dagster-run-4f0c3d2a",
        user_defined_k8s_config=context.run_k8s_config,
        component="run_worker",
        labels={"dagster/run-id": run.run_id},
    )
    body = kubernetes.client.ApiClient().sanitize_for_serialization(job)
    assert context.namespace == NAMESPACE
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(body, version, strict=True)

    spec = body["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == RUN_SA
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [worker] = spec["containers"]
    assert worker["image"] == image
    security = worker["securityContext"]
    assert (security["runAsUser"], security["allowPrivilegeEscalation"], security["readOnlyRootFilesystem"]) == (
        APP_UID, False, True)
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert set(worker["resources"]["limits"]) == {"cpu", "memory"}
    env_from = [next(iter(source.values()))["name"] for source in worker["envFrom"]]
    assert env_from == [ENV_CONFIG_MAP, PLATFORM_SECRET, API_SECRET]
    assert {"name": "DAGSTER_K8S_JOB_NAMESPACE", "value": NAMESPACE} in worker["env"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]] and "emptyDir" in volumes[mounts[f"{DAGSTER_HOME}/storage"]]
    assert body["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "covid-lakehouse"


# ---- Helm ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm_values() -> dict[str, Any]:
    return yaml.safe_load(HELM_VALUES.read_text())


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_helm_values_make_the_same_choices(helm_values, instance_config, rendered):
    assert helm_values["runLauncher"]["type"] == "K8sRunLauncher"
    assert helm_values["postgresql"]["enabled"] is False
    assert helm_values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"
    assert helm_values["generatePostgresqlPasswordSecret"] is False
    assert helm_values["global"]["postgresqlSecretName"]
    assert helm_values["global"]["dagsterHome"] == DAGSTER_HOME

    user = helm_values["dagster-user-deployments"]
    assert user["enabled"] is True
    [deployment] = user["deployments"]
    cmd = dockerfile_cmd()
    assert deployment["codeServerArgs"] == cmd[cmd.index("-m"):]
    assert deployment["port"] == CODE_SERVER_PORT
    assert deployment["image"]["repository"].endswith("/covid-lakehouse") and deployment["image"]["tag"]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    assert [s["name"] for s in deployment["envSecrets"]] == [PLATFORM_SECRET, API_SECRET]
    [migrate] = deployment["initContainers"]
    assert migrate["args"] == ["covid-lakehouse", "migrate"]
    for component in (deployment, helm_values["dagsterWebserver"], helm_values["dagsterDaemon"]):
        assert component["image"] == deployment["image"], "one image for every process"
        assert component["podSecurityContext"]["runAsUser"] == APP_UID
        assert component["securityContext"]["readOnlyRootFilesystem"] is True

    [server] = helm_values["dagsterWebserver"]["workspace"]["servers"]
    assert (server["host"], server["port"]) == (deployment["name"], deployment["port"])
    assert server["name"] == yaml.safe_load(
        generated_config_map(rendered, WORKSPACE_CONFIG_MAP)["data"]["workspace.yaml"]
    )["load_from"][0]["grpc_server"]["location_name"]

    # The queue: limits under `concurrency` (the chart writes concurrency.runs), coordinator config
    # identical to the Kustomize instance.
    runs = helm_values["concurrency"]["runs"]
    assert helm_values["concurrency"]["enabled"] is True
    assert {_snake(k): v for k, v in runs.items()} == instance_config["concurrency"]["runs"]
    assert helm_values["concurrency"]["pools"]["defaultLimit"] == instance_config["concurrency"]["pools"]["default_limit"]
    coordinator = helm_values["dagsterDaemon"]["runCoordinator"]["config"]["customRunCoordinator"]
    assert {"module": coordinator["module"], "class": coordinator["class"], "config": coordinator["config"]} == (
        instance_config["run_coordinator"])
    retries = helm_values["dagsterDaemon"]["runRetries"]
    assert {_snake(k): v for k, v in retries.items()} == instance_config["run_retries"]
    assert helm_values["computeLogManager"]["type"] == "S3ComputeLogManager"


def test_helm_run_coordinator_config_is_accepted_by_dagster(helm_values):
    from dagster._config import process_config, resolve_to_config_type
    from dagster._core.run_coordinator import QueuedRunCoordinator

    coordinator = helm_values["dagsterDaemon"]["runCoordinator"]["config"]["customRunCoordinator"]
    result = process_config(resolve_to_config_type(QueuedRunCoordinator.config_type()), coordinator["config"])
    assert result.success, result.errors


def test_helm_values_hold_no_secret(helm_values):
    def walk(node: Any, path: str) -> Iterator[tuple[str, Any]]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                yield from walk(value, f"{path}[{index}]")
        else:
            yield path, node

    for path, value in walk(helm_values, ""):
        key = re.split(r"[.\[]", path)[-1]
        # Keys naming a secret (postgresqlSecretName, envSecrets[].name) are references, not values.
        if re.search(r"password|secret|token", key, flags=re.I) and not key.lower().endswith("name"):
            assert value in ("", None, False), f"{path} holds a literal secret"
        if isinstance(value, str):
            assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", value), f"{path}: credentials in a URL"
    # Every secret-shaped variable is a reference.
    web_env = helm_values["dagsterWebserver"]["env"]
    assert all("valueFrom" in e and "value" not in e for e in web_env if e["name"] in PLATFORM_SECRET_KEYS)


# ---- docs ------------------------------------------------------------------------------------------


def test_deploy_doc_documents_the_secret_contract():
    text = DEPLOY_DOC.read_text()
    for name in (PLATFORM_SECRET, API_SECRET, *sorted(PLATFORM_SECRET_KEYS), "kubectl apply -k deploy/k8s/overlays/example"):
        assert name in text, f"docs/deploy.md does not mention {name}"
