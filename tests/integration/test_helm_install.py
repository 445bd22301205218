"""The Helm chart installed into the local control plane, and the operator working under its RBAC.

The chart's Deployment is installed for real, but its pods are only fake-Running under kwok; the
real operator runs as a local process with a token of the chart's ServiceAccount and the args of
the chart's Deployment (support_helm.start_chart_operator). What it may do is exactly what the
chart's RBAC grants, so a sample becoming Ready proves the RBAC is enough, and taking one verb away
proves the test can fail.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from qwen_operator.builders.common import MANAGED_BY

from conftest import REPO, WORKER, WORKER_LABEL, Cluster, stop_operator, wait_until
from qwen_resources import condition, create, get, patch_spec
from support_helm import (
    CHART,
    CHART_CRDS,
    ChartOperator,
    Helm,
    Release,
    adopt_existing_crds,
    can_i,
    chart_command,
    cluster_role_rules,
    helm_binary,
    other_operators_of_this_session,
    lease_holder,
    set_cluster_role_rules,
    start_chart_operator,
    without_verb,
)

pytestmark = pytest.mark.cluster

SAMPLE = REPO / "examples" / "qwen3-0.6b-fp8.yaml"
SAMPLE_NAME = yaml.safe_load(SAMPLE.read_text())["metadata"]["name"]


@pytest.fixture(scope="module")
def helm(cluster: Cluster) -> Helm:
    return Helm(helm_binary(), cluster)


@pytest.fixture
def install_chart(cluster: Cluster, helm: Helm) -> Iterator[Callable[..., Release]]:
    """Installs the chart as a fresh release (its own namespace); uninstalls it afterwards."""
    installed: list[Release] = []

    def install(values: dict[str, Any] | None = None) -> Release:
        suffix = uuid.uuid4().hex[:5]
        release = Release(name=f"qo-{suffix}", namespace=f"qwen-system-{suffix}")
        adopt_existing_crds(cluster, release)
        installed.append(release)
        if not (values or {}).get("watchNamespaces"):
            # In cluster mode, serve only this pytest-xdist worker's namespaces (conftest.WORKER_LABEL),
            # never the resources of the tests that run beside it.
            values = {**(values or {}), "watchNamespaceSelector": f"{WORKER_LABEL}={WORKER}"}
        helm.install(release, values)
        return release

    yield install
    for release in installed:
        helm.uninstall(release, check=False)
        cluster.kubectl("delete", "namespace", release.namespace, "--ignore-not-found", "--wait=false")


@pytest.fixture
def other_namespace(cluster: Cluster) -> Iterator[str]:
    name = f"unwatched-{uuid.uuid4().hex[:5]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
def chart_operators() -> Iterator[list[ChartOperator]]:
    """Operators a test starts; stopped afterwards, and their logs must hold no traceback."""
    others = other_operators_of_this_session()
    if others:
        pytest.fail(
            "another operator started by this test session is running and reconciles every namespace as "
            f"cluster-admin, so the chart's RBAC cannot be tested next to it: {others}. Run this module in "
            "its own pytest process, or make conftest's `operator` fixture module-scoped."
        )
    running: list[ChartOperator] = []
    yield running
    for operator in running:
        stop_operator(operator)
    for operator in running:
        assert "Traceback" not in operator.log_text(), operator.log_text()[-5000:]


def wait_ready(k8s, operator: ChartOperator, namespace: str, name: str, timeout: float = 60) -> None:
    try:
        wait_until(lambda: (condition(k8s, namespace, name, "Ready") or {}).get("status") == "True", timeout, f"Ready=True on {namespace}/{name}")
    except AssertionError as error:
        seen = {t: (c["status"], c["reason"], c["message"]) for t, c in conditions(k8s, namespace, name).items()}
        raise AssertionError(f"{error}\nconditions: {seen}\nRBAC denials in the operator's log: {operator.rbac_denials()[-5:]}") from None


def api_requests(operator: ChartOperator, verb: str, kind: str, code: str) -> float:
    """Requests the operator counted; code "2xx" sums every success (an apply that creates is a 201)."""
    codes = [str(c) for c in range(200, 300)] if code == "2xx" else [code]
    samples = operator.metrics()
    return sum(samples.get(f'qwen_operator_api_requests_total{{code="{c}",kind="{kind}",verb="{verb}"}}', 0.0) for c in codes)


def conditions(k8s, namespace: str, name: str) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (get(k8s, namespace, name).get("status") or {}).get("conditions", [])}


def deployment_exists(k8s, namespace: str, name: str) -> bool:
    return any(d.metadata.name == name for d in client.AppsV1Api(k8s).list_namespaced_deployment(namespace).items)


def test_sample_becomes_ready_with_the_operator_under_the_chart_service_account(cluster, k8s, helm, install_chart, chart_operators, namespace, tmp_path):
    release = install_chart({"crds": {"enabled": True, "keep": True}})
    assert "STATUS: deployed" in helm.status(release).stdout
    for crd in CHART_CRDS:  # installed (or taken over) and managed by this release
        owner = cluster.kubectl("get", "crd", crd, "-o", "jsonpath={.metadata.annotations.meta\\.helm\\.sh/release-name}").stdout
        assert owner == release.name, (crd, owner)
    # The ServiceAccount holds what the operator needs and not more.
    assert can_i(cluster, release, "patch", "deployments.apps", namespace)
    assert can_i(cluster, release, "update", "qweninferences.inference.qwenops.io", namespace, subresource="finalizers")  # blockOwnerDeletion on OpenShift
    assert not can_i(cluster, release, "list", "secrets", namespace)
    assert not can_i(cluster, release, "create", "pods", namespace)

    operator = start_chart_operator(cluster, release, tmp_path)
    chart_operators.append(operator)
    assert "--all-namespaces" in operator.args and "--standalone" not in operator.args
    # It holds the chart's Lease: the leader election RBAC works too.
    wait_until(lambda: lease_holder(cluster, release) == operator.pod_id, 30, f"{operator.pod_id} holding Lease {release.fullname}")

    cluster.kubectl("apply", "-n", namespace, "-f", str(SAMPLE))
    wait_ready(k8s, operator, namespace, SAMPLE_NAME)

    assert f"reconciled {namespace}/{SAMPLE_NAME}" in operator.log_text()
    assert api_requests(operator, "apply", "Deployment", "2xx") >= 1
    assert api_requests(operator, "patch_status", "QwenInference", "2xx") >= 1
    for kind, name in [("deployment", SAMPLE_NAME), ("service", SAMPLE_NAME), ("persistentvolumeclaim", f"{SAMPLE_NAME}-model-cache"), ("configmap", f"{SAMPLE_NAME}-dashboard")]:
        cluster.kubectl("get", kind, name, "-n", namespace)
    assert conditions(k8s, namespace, SAMPLE_NAME)["Degraded"]["status"] == "False"
    assert operator.rbac_denials() == []


# Every namespaced kind the chart's RBAC lets the operator write, as `kubectl get -o name` spells them.
CHILD_KINDS = {"deployment.apps", "service", "persistentvolumeclaim", "configmap", "poddisruptionbudget.policy",
               "networkpolicy.networking.k8s.io", "horizontalpodautoscaler.autoscaling",
               "servicemonitor.monitoring.coreos.com", "prometheusrule.monitoring.coreos.com",
               # the router's (spec.router, on while more than one replica may run)
               "serviceaccount", "role.rbac.authorization.k8s.io", "rolebinding.rbac.authorization.k8s.io"}
PRUNED_KINDS = {"horizontalpodautoscaler.autoscaling", "poddisruptionbudget.policy", "networkpolicy.networking.k8s.io",
                "servicemonitor.monitoring.coreos.com",
                "serviceaccount", "role.rbac.authorization.k8s.io", "rolebinding.rbac.authorization.k8s.io"}


def child_kinds(cluster: Cluster, namespace: str, name: str) -> set[str]:
    """The kinds of the children the operator made for one QwenInference (by its labels)."""
    selector = f"app.kubernetes.io/managed-by={MANAGED_BY},app.kubernetes.io/instance={name}"
    listed = cluster.kubectl("get", ",".join(sorted(CHILD_KINDS)), "-n", namespace, "-l", selector, "-o", "name").stdout.split()
    return {line.split("/", 1)[0] for line in listed}


def test_every_child_kind_secret_reference_and_pruning_work_under_the_chart_rbac(cluster, k8s, install_chart, chart_operators, namespace, prometheus_operator_crds, tmp_path):
    release = install_chart()
    operator = start_chart_operator(cluster, release, tmp_path)
    chart_operators.append(operator)
    cluster.kubectl("create", "secret", "generic", "qwen-keys", "-n", namespace, "--from-literal=api-key=not-a-real-key")
    spec = {
        "auth": {"apiKeySecretRef": {"name": "qwen-keys", "key": "api-key"}},  # a Secret get
        "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3},  # HPA, and a PDB (up to 3 replicas)
        "networkPolicy": {"enabled": True},
        "monitoring": {"serviceMonitor": True, "prometheusRule": True, "dashboard": True},
    }
    create(k8s, namespace, "full", spec)
    wait_until(lambda: child_kinds(cluster, namespace, "full") == CHILD_KINDS, 60,
               f"all twelve child kinds; have {child_kinds(cluster, namespace, 'full')}; denials {operator.rbac_denials()[-3:]}")

    # Turning features off prunes their children: the delete verbs.
    patch_spec(k8s, namespace, "full", {"autoscaling": {"enabled": False}, "networkPolicy": {"enabled": False}, "monitoring": {"serviceMonitor": False}})
    wait_until(lambda: child_kinds(cluster, namespace, "full") == CHILD_KINDS - PRUNED_KINDS, 60,
               f"HPA, PDB, NetworkPolicy, ServiceMonitor and the router's ServiceAccount, Role and RoleBinding pruned; have {child_kinds(cluster, namespace, 'full')}")
    wait_ready(k8s, operator, namespace, "full")

    assert api_requests(operator, "delete", "HorizontalPodAutoscaler", "2xx") == 1
    assert conditions(k8s, namespace, "full")["Degraded"]["status"] == "False"
    assert conditions(k8s, namespace, "full")["Monitoring"]["status"] == "True"
    assert operator.rbac_denials() == []


def test_namespaced_mode_reconciles_only_the_watched_namespace(cluster, k8s, install_chart, chart_operators, namespace, other_namespace, tmp_path):
    release = install_chart({"watchNamespaces": [namespace]})
    # A Role in the watched namespace, nothing namespaced anywhere else.
    cluster.kubectl("get", "role", release.fullname, "-n", namespace)
    assert can_i(cluster, release, "patch", "deployments.apps", namespace)
    assert can_i(cluster, release, "update", "qweninferences.inference.qwenops.io", namespace, subresource="finalizers")  # blockOwnerDeletion on OpenShift
    assert not can_i(cluster, release, "patch", "deployments.apps", other_namespace)
    assert not can_i(cluster, release, "list", "qweninferences.inference.qwenops.io", other_namespace)

    operator = start_chart_operator(cluster, release, tmp_path)
    chart_operators.append(operator)
    assert operator.args[-2:] == ["--namespace", namespace] and "--all-namespaces" not in operator.args
    wait_until(lambda: lease_holder(cluster, release) == operator.pod_id, 30, f"{operator.pod_id} holding Lease {release.fullname}")

    cluster.kubectl("apply", "-n", other_namespace, "-f", str(SAMPLE))
    cluster.kubectl("apply", "-n", namespace, "-f", str(SAMPLE))
    wait_ready(k8s, operator, namespace, SAMPLE_NAME)
    # Two more resyncs of the watched resource: the unwatched one had every chance to be touched.
    def judged() -> float:  # runs, and resyncs that found nothing to run
        return sum(v for k, v in operator.metrics().items() if k.startswith(("qwen_operator_reconciles_total", "qwen_operator_resyncs_unchanged_total")))

    resyncs = judged()
    wait_until(lambda: judged() >= resyncs + 2, 30, "two more resyncs")

    assert "status" not in get(k8s, other_namespace, SAMPLE_NAME)
    assert not deployment_exists(k8s, other_namespace, SAMPLE_NAME)
    assert f"{other_namespace}/" not in operator.log_text()
    degraded = conditions(k8s, namespace, SAMPLE_NAME)["Degraded"]
    assert degraded["status"] == "False", degraded
    assert operator.rbac_denials() == []


def test_without_patch_on_deployments_reconcile_fails_with_403_and_recovers_when_restored(cluster, k8s, install_chart, chart_operators, namespace, tmp_path):
    release = install_chart()
    chart_rules = cluster_role_rules(cluster, release.fullname)
    # Server-side apply is a PATCH: without it the operator cannot create or update its Deployment.
    set_cluster_role_rules(cluster, release.fullname, without_verb(chart_rules, "apps", "deployments", "patch"))
    wait_until(lambda: not can_i(cluster, release, "patch", "deployments.apps", namespace), 30, "patch on deployments revoked")
    assert can_i(cluster, release, "patch", "services", namespace)  # only that one verb went

    operator = start_chart_operator(cluster, release, tmp_path)
    chart_operators.append(operator)
    cluster.kubectl("apply", "-n", namespace, "-f", str(SAMPLE))
    # Two refused applies: the first reconcile and at least one retry at a resync.
    wait_until(lambda: api_requests(operator, "apply", "Deployment", "403") >= 2, 60, "two refused Deployment applies")

    # The status says why, in the API server's words.
    degraded = wait_until(lambda: (c := conditions(k8s, namespace, SAMPLE_NAME).get("Degraded")) and c["reason"] == "ApplyFailed" and c,
                          30, "Degraded=True (ApplyFailed)")
    assert degraded["status"] == "True"
    assert f'User "system:serviceaccount:{release.namespace}:{release.fullname}" cannot patch resource "deployments"' in degraded["message"]
    assert conditions(k8s, namespace, SAMPLE_NAME)["Ready"]["status"] == "False"
    assert not deployment_exists(k8s, namespace, SAMPLE_NAME)
    # Everything the RBAC still allows was applied.
    cluster.kubectl("get", "service", SAMPLE_NAME, "-n", namespace)
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector", "reason=ApplyFailed,type=Warning", "-o", "name").stdout
    assert events.strip(), "an ApplyFailed warning event"

    set_cluster_role_rules(cluster, release.fullname, chart_rules)
    wait_ready(k8s, operator, namespace, SAMPLE_NAME)
    assert deployment_exists(k8s, namespace, SAMPLE_NAME)
    assert api_requests(operator, "apply", "Deployment", "2xx") >= 1
    assert conditions(k8s, namespace, SAMPLE_NAME)["Degraded"]["status"] == "False"


@pytest.mark.parametrize("values, unknown", [
    ({"replicaCount": 2, "replicas": 3}, "replicas"),
    ({"crds": {"enabled": True, "kep": False}}, "kep"),
])
def test_values_schema_rejects_an_unknown_key_at_install(cluster, helm, values, unknown):
    release = Release(name=f"qo-{uuid.uuid4().hex[:5]}", namespace="default")
    result = helm.install(release, values, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert f"additional properties '{unknown}' not allowed" in result.stderr
    assert "not found" in helm.status(release).stderr
    assert cluster.kubectl("get", "serviceaccount", release.fullname, "-n", "default", check=False).returncode != 0


def test_upgrade_then_uninstall_removes_the_operator_and_keeps_the_crds_and_resources(cluster, helm, install_chart, namespace):
    release = install_chart({"crds": {"enabled": True, "keep": True}})
    cluster.kubectl("apply", "-n", namespace, "-f", str(SAMPLE))

    helm.run("upgrade", release.name, str(CHART), "--namespace", release.namespace, "--reuse-values",
             "--set", "replicaCount=1", "--wait", "--timeout", "120s")
    replicas = cluster.kubectl("get", "deployment", release.fullname, "-n", release.namespace, "-o", "jsonpath={.spec.replicas}").stdout
    assert replicas == "1"
    assert "REVISION: 2" in helm.status(release).stdout

    owned = [("deployment", release.namespace), ("serviceaccount", release.namespace), ("service", release.namespace),
             ("clusterrole", None), ("clusterrolebinding", None)]
    result = helm.uninstall(release)
    assert "kept due to the resource policy" in result.stdout + result.stderr
    for kind, ns in owned:
        name = f"{release.fullname}-metrics" if kind == "service" else release.fullname
        scope = ["-n", ns] if ns else []
        gone = cluster.kubectl("get", kind, name, *scope, check=False)
        assert gone.returncode != 0 and "NotFound" in gone.stderr, f"{kind} {name} survived the uninstall"
    for crd in CHART_CRDS:
        cluster.kubectl("get", "crd", crd)
    # The CRD stayed, and with it the user's QwenInference.
    cluster.kubectl("get", "qwi", SAMPLE_NAME, "-n", namespace)

