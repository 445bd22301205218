"""The operator's Helm chart: lint, golden renderings, a strict values schema, least-privilege RBAC.

Uses the helm binary that hack/build-tools.sh builds from the Go module proxy (built here when the
cache lacks it). Golden files: tests/unit/golden/; regenerate with UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BUILD_TOOLS = REPO / "hack" / "build-tools.sh"
CHART = REPO / "charts" / "qwen-operator"
GOLDEN = Path(__file__).parent / "golden"
RELEASE = "qwen-operator"
NAMESPACE = "qwen-system"
WATCHED = ["team-a", "team-b"]
NAMESPACED_MODE = ["--set-json", f"watchNamespaces={json.dumps(WATCHED)}"]
SELECTOR_MODE = ["--set-string", "watchNamespaceSelector=team=ml"]
MODES = {"default": [], "namespaced": NAMESPACED_MODE, "selector": SELECTOR_MODE}

# What the operator uses, and nothing more: (apiGroup, resource) -> verbs. A change to the chart's
# RBAC must change this table too, where a reviewer sees it. Measured, not guessed:
# tests/integration/test_helm_install.py runs the operator under the chart's rules. Never `update`
# (nothing is PUT); server-side apply is a PATCH, and one that creates needs `create` too.
APPLIED = {"get", "list", "watch", "create", "patch", "delete"}
NAMESPACED_GRANTS = {
    ("inference.qwenops.io", "qweninferences"): {"list", "watch"},  # the informer; writes go to status and scale only
    ("inference.qwenops.io", "qweninferences/status"): {"patch"},
    ("inference.qwenops.io", "qweninferences/scale"): {"patch"},
    ("inference.qwenops.io", "qweninferences/finalizers"): {"update"},
    ("apps", "deployments"): APPLIED,
    ("", "persistentvolumeclaims"): APPLIED,
    ("autoscaling", "horizontalpodautoscalers"): APPLIED,
    ("", "services"): APPLIED,
    ("", "configmaps"): APPLIED,
    ("policy", "poddisruptionbudgets"): APPLIED,
    ("networking.k8s.io", "networkpolicies"): APPLIED,
    ("monitoring.coreos.com", "servicemonitors"): APPLIED,
    ("monitoring.coreos.com", "prometheusrules"): APPLIED,
    # The router's (spec.router): its ServiceAccount, and a Role granting only list/watch of pods, which the
    # operator may grant because it holds them (no escalate or bind).
    ("", "serviceaccounts"): APPLIED,
    ("rbac.authorization.k8s.io", "roles"): APPLIED,
    ("rbac.authorization.k8s.io", "rolebindings"): APPLIED,
    ("", "pods"): {"list", "watch"},
    ("", "secrets"): {"get"},
    ("", "events"): {"create"},
}
CLUSTER_SCOPED_GRANTS = {
    ("", "nodes"): {"list", "watch"},
}
CLUSTER_MODE_GRANTS = NAMESPACED_GRANTS | CLUSTER_SCOPED_GRANTS
NAMESPACED_MODE_ROLE_GRANTS = NAMESPACED_GRANTS
NAMESPACED_MODE_CLUSTER_ROLE_GRANTS = CLUSTER_SCOPED_GRANTS


@pytest.fixture(scope="session")
def helm() -> str:
    path = subprocess.run([str(BUILD_TOOLS), "path", "helm"], capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    if not os.access(path, os.X_OK):
        subprocess.run([str(BUILD_TOOLS), "helm"], check=True, timeout=1800)
    return path


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def render(helm: str, *args: str) -> str:
    result = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def documents(helm: str, *args: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render(helm, *args)) if doc]


def the(docs: list[dict[str, Any]], kind: str, name: str | None = None, namespace: str | None = None) -> dict[str, Any]:
    matches = [
        d for d in docs
        if d["kind"] == kind and name in (None, d["metadata"]["name"]) and namespace in (None, d["metadata"].get("namespace"))
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return [d["kind"] for d in docs]


def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs, merged over every rule."""
    result: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                result.setdefault((group, resource), set()).update(rule["verbs"])
    return result


# ---- lint, golden files, schema -----------------------------------------------------------------

@pytest.mark.parametrize("strict", [False, True], ids=["lint", "lint-strict"])
@pytest.mark.parametrize("mode", MODES, ids=list(MODES))
def test_helm_lint_is_clean(helm: str, mode: str, strict: bool) -> None:
    result = run_helm(helm, "lint", str(CHART), *(["--strict"] if strict else []), *MODES[mode])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "[WARNING]" not in output and "[ERROR]" not in output, output
    assert "0 chart(s) failed" in output


@pytest.mark.parametrize("mode", MODES, ids=list(MODES))
def test_helm_template_matches_golden_file(helm: str, mode: str) -> None:
    rendered = render(helm, *MODES[mode])
    golden = GOLDEN / f"chart-{mode}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(rendered)
    assert golden.exists(), f"{golden} is missing: create it with UPDATE_GOLDEN=1 pytest {Path(__file__).relative_to(REPO)}"
    assert rendered == golden.read_text(), (
        f"`helm template` output differs from {golden.relative_to(REPO)}. If the change is intended, "
        f"regenerate the golden files with: UPDATE_GOLDEN=1 .venv/bin/pytest {Path(__file__).relative_to(REPO)}"
    )


@pytest.mark.parametrize("bad_value", ["nope=1", "image.nope=1", "resources.requests.gpu=1", "crds.nope=true"])
def test_values_schema_rejects_unknown_keys(helm: str, bad_value: str) -> None:
    result = run_helm(helm, "template", RELEASE, str(CHART), "--set", bad_value)
    assert result.returncode != 0
    unknown_key = bad_value.split("=")[0].rsplit(".", 1)[-1]
    assert "values don't meet the specifications of the schema" in result.stderr
    assert f"additional properties '{unknown_key}' not allowed" in result.stderr, result.stderr


def schema_objects(node: dict[str, Any], path: str = "values") -> Iterator[tuple[str, dict[str, Any]]]:
    if node.get("type") == "object":
        yield path, node
    for key, child in node.get("properties", {}).items():
        yield from schema_objects(child, f"{path}.{key}")
    for keyword in ("items", "additionalProperties"):
        if isinstance(node.get(keyword), dict):
            yield from schema_objects(node[keyword], f"{path}[]")


def test_values_schema_is_strict_and_describes_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    objects = list(schema_objects(schema))
    assert len(objects) > 10
    for path, node in objects:
        if "properties" in node:  # a record: fixed keys only
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
        else:  # a map (labels, annotations, ...): free keys, typed values
            assert isinstance(node.get("additionalProperties"), dict), f"{path} is an untyped object"

    def undescribed(node: dict[str, Any], path: str) -> Iterator[str]:
        for key, child in node.get("properties", {}).items():
            if not child.get("description"):
                yield f"{path}.{key}"
            yield from undescribed(child, f"{path}.{key}")
        for keyword in ("items", "additionalProperties"):
            if isinstance(node.get(keyword), dict):
                yield from undescribed(node[keyword], f"{path}[]")

    assert list(undescribed(schema, "values")) == []


# ---- RBAC ---------------------------------------------------------------------------------------

def test_cluster_role_has_no_wildcards(helm: str) -> None:
    cluster_role = the(documents(helm), "ClusterRole", RELEASE)
    for rule in cluster_role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
            assert all("*" not in item for item in rule[field]), rule


def test_cluster_mode_grants_exactly_what_the_operator_uses(helm: str) -> None:
    docs = documents(helm)
    assert grants(the(docs, "ClusterRole", RELEASE)["rules"]) == CLUSTER_MODE_GRANTS
    # The only Role is the leader election's, in the release namespace.
    assert [d["metadata"]["name"] for d in docs if d["kind"] in ("Role", "RoleBinding")] == [f"{the(docs, 'Deployment')['metadata']['name']}-leader-election"] * 2
    binding = the(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": the(docs, "ClusterRole", RELEASE)["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": the(docs, "ServiceAccount")["metadata"]["name"], "namespace": NAMESPACE}]


def test_a_namespace_selector_adds_only_reading_namespaces_to_the_cluster_mode_grants(helm: str) -> None:
    docs = documents(helm, *SELECTOR_MODE)
    assert grants(the(docs, "ClusterRole", RELEASE)["rules"]) == CLUSTER_MODE_GRANTS | {("", "namespaces"): {"list", "watch"}}


def test_namespaced_mode_grants_namespaced_kinds_only_in_the_watched_namespaces(helm: str) -> None:
    docs = documents(helm, *NAMESPACED_MODE)
    service_account = the(docs, "ServiceAccount")["metadata"]["name"]
    assert grants(the(docs, "ClusterRole", RELEASE)["rules"]) == NAMESPACED_MODE_CLUSTER_ROLE_GRANTS
    assert sorted(d["metadata"]["namespace"] for d in docs if d["kind"] == "Role" and not d["metadata"]["name"].endswith("-leader-election")) == WATCHED
    for namespace in WATCHED:
        role = the(docs, "Role", namespace=namespace)
        assert grants(role["rules"]) == NAMESPACED_MODE_ROLE_GRANTS
        binding = the(docs, "RoleBinding", namespace=namespace)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": service_account, "namespace": NAMESPACE}]


# ---- the operator Deployment ----------------------------------------------------------------------

def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = the(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize(
    ("mode", "watch_args"),
    [("default", ["--all-namespaces"]), ("namespaced", ["--namespace", "team-a", "--namespace", "team-b"]),
     ("selector", ["--all-namespaces", "--namespace-selector", "team=ml"])],
)
def test_operator_args_follow_the_mode(helm: str, mode: str, watch_args: list[str]) -> None:
    container = operator_container(documents(helm, *MODES[mode]))
    args = container["args"]
    assert args[:3] == ["run", "--liveness", "http://0.0.0.0:8080/healthz"]
    assert args[-len(watch_args):] == watch_args


def test_operator_deployment_is_two_replicas_probed_and_restricted(helm: str) -> None:
    docs = documents(helm)
    deployment = the(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container(docs)
    assert deployment["spec"]["replicas"] == 2
    assert pod["serviceAccountName"] == the(docs, "ServiceAccount")["metadata"]["name"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    for probe in ("livenessProbe", "readinessProbe"):
        http = container[probe]["httpGet"]
        assert http["path"] == "/healthz" and ports[http["port"]] == 8080
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "512Mi", "ephemeral-storage": "128Mi"},
                                      "limits": {"cpu": "1", "memory": "1Gi", "ephemeral-storage": "256Mi"}}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 65532
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}


def test_resources_come_from_values(helm: str) -> None:
    container = operator_container(documents(helm, "--set", "resources.requests.cpu=250m", "--set", "resources.limits.memory=1Gi"))
    assert container["resources"] == {"requests": {"cpu": "250m", "memory": "512Mi", "ephemeral-storage": "128Mi"},
                                      "limits": {"cpu": "1", "memory": "1Gi", "ephemeral-storage": "256Mi"}}


@pytest.mark.parametrize("lease_name", [None, "blue-team"])
def test_leader_election_on_a_lease_the_role_may_touch_only(helm: str, lease_name: str | None) -> None:
    docs = documents(helm, *(["--set", f"leaderElection.leaseName={lease_name}"] if lease_name else []))
    expected = lease_name or the(docs, "Deployment")["metadata"]["name"]
    container = operator_container(docs)
    args = container["args"]
    assert "--leader-elect" in args and args[args.index("--lease-name") + 1] == expected
    assert [args[args.index(flag) + 1] for flag in ("--lease-duration", "--renew-deadline", "--retry-period")] == ["10", "7", "2"]
    env = {var["name"]: var for var in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("-leader-election"))
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [expected], "verbs": ["get", "update"]},
    ]
    # No kopf peering objects or CRDs any more (they were helm hooks, recreated on upgrade and left by uninstall).
    assert not {"ClusterKopfPeering", "KopfPeering"} & set(kinds(docs))


def test_leader_election_can_be_turned_off(helm: str) -> None:
    docs = documents(helm, "--set", "leaderElection.enabled=false", "--set", "replicaCount=1")
    assert "--leader-elect" not in operator_container(docs)["args"]
    assert not any(d["kind"] == "Role" for d in docs)


def test_metrics_service_targets_the_metrics_port(helm: str) -> None:
    docs = documents(helm)
    service = the(docs, "Service")
    (port,) = service["spec"]["ports"]
    assert port["port"] == 9090 and port["targetPort"] == "metrics"
    pod_labels = the(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


# ---- CRDs and optional parts ----------------------------------------------------------------------

def crd_names(docs: list[dict[str, Any]]) -> set[str]:
    return {d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"}


def test_crds_are_templates_behind_crds_enabled_and_kept(helm: str) -> None:
    docs = documents(helm)
    assert crd_names(docs) == {"qweninferences.inference.qwenops.io"}
    for crd in (d for d in docs if d["kind"] == "CustomResourceDefinition"):
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    not_kept = documents(helm, "--set", "crds.keep=false")
    assert all("annotations" not in d["metadata"] for d in not_kept if d["kind"] == "CustomResourceDefinition")
    assert crd_names(documents(helm, "--set", "crds.enabled=false")) == set()


def test_optional_parts_are_off_by_default(helm: str) -> None:
    docs = documents(helm)
    assert "ServiceMonitor" not in kinds(docs)
    assert "ConfigMap" not in kinds(docs)


def test_service_monitor_scrapes_the_metrics_service(helm: str) -> None:
    docs = documents(helm, "--set", "serviceMonitor.enabled=true", "--set", "serviceMonitor.labels.release=prometheus")
    monitor = the(docs, "ServiceMonitor")
    service = the(docs, "Service")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}


def test_prometheus_adapter_rule_renders_into_a_config_map(helm: str) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    config_map = the(documents(helm, "--set", "prometheusAdapter.enabled=true"), "ConfigMap")
    assert config_map["metadata"]["namespace"] == NAMESPACE
    assert yaml.safe_load(config_map["data"]["config.yaml"]) == {"rules": values["prometheusAdapter"]["rules"]}
    (rule,) = values["prometheusAdapter"]["rules"]
    assert rule["name"] == {"matches": "^vllm:(.*)$", "as": "vllm_${1}"}
    assert rule["seriesQuery"] == '{__name__=~"^vllm:num_requests_waiting$",namespace!="",pod!=""}'


def test_prometheus_adapter_rule_is_the_one_in_deploy() -> None:
    chart_rules = yaml.safe_load((CHART / "values.yaml").read_text())["prometheusAdapter"]["rules"]
    deploy_values = yaml.safe_load((REPO / "deploy" / "prometheus-adapter" / "values.yaml").read_text())
    assert chart_rules == deploy_values["rules"]["custom"]
