"""Monitoring discovery against the real local control plane: without the Prometheus Operator CRDs
the operator says so and serves anyway; with the real CRDs (from the prometheus-operator Go module
pinned in hack/versions.env) it makes the ServiceMonitor and PrometheusRule; and its own /metrics."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from conftest import install_prometheus_operator_crds, monitoring_crds_lock, prometheus_operator_crd_files, wait_until
from qwen_resources import GROUP, PLURAL, VERSION, condition, create, get, patch_spec, wait_condition

pytestmark = pytest.mark.cluster

MONITORING = ("monitoring.coreos.com", "v1")
# The operator looks for the monitoring.coreos.com API at most once per 30s (reconcile.CapabilityCache).
CAPABILITY_TTL_SECONDS = 30
ALERTS = {
    "QwenInferenceDown", "QwenInferenceModelNotLoaded", "QwenInferenceHighErrorRate", "QwenInferenceHighTimeToFirstToken",
    "QwenInferenceHighInterTokenLatency", "QwenInferenceQueueGrowing", "QwenInferencePreempting", "QwenInferenceCrashLooping",
}


def remove_prometheus_operator_crds(cluster) -> None:
    names = [line.split("/", 1)[1] for line in cluster.kubectl("get", "crd", "-o", "name").stdout.split() if line.endswith(".monitoring.coreos.com")]
    if names:
        cluster.kubectl("delete", "crd", *names, "--wait=true", "--timeout=120s")


@pytest.fixture
def without_prometheus_operator_crds(cluster) -> Any:
    """No monitoring.coreos.com CRDs, and none installed by another worker's test while this test runs."""
    with monitoring_crds_lock(exclusive=True):
        remove_prometheus_operator_crds(cluster)
        yield


def monitoring_object(k8s, namespace: str, plural: str, name: str) -> dict[str, Any] | None:
    try:
        return client.CustomObjectsApi(k8s).get_namespaced_custom_object(*MONITORING, namespace, plural, name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def test_without_prometheus_operator_crds_monitoring_is_false_and_the_rest_works(operator, cluster, k8s, namespace, without_prometheus_operator_crds):
    create(k8s, namespace, "plain", {})
    missing = wait_condition(k8s, namespace, "plain", "Monitoring", "False", "PrometheusOperatorMissing", timeout=CAPABILITY_TTL_SECONDS + 30)
    assert "monitoring.coreos.com/v1" in missing["message"]
    wait_condition(k8s, namespace, "plain", "Ready", "True")
    assert client.AppsV1Api(k8s).read_namespaced_deployment("plain", namespace).spec.template.spec.containers[0].command == ["vllm", "serve"]
    dashboard = client.CoreV1Api(k8s).read_namespaced_config_map("plain-dashboard", namespace)
    assert dashboard.metadata.labels.get("grafana_dashboard") == "1"
    (text,) = dashboard.data.values()
    assert json.loads(text)["panels"]


def test_installing_the_crds_brings_the_service_monitor_and_rule_and_removing_them_is_noticed(operator, cluster, k8s, namespace, without_prometheus_operator_crds):
    files = prometheus_operator_crd_files()
    name = "watched"
    create(k8s, namespace, name, {})
    wait_condition(k8s, namespace, name, "Monitoring", "False", "PrometheusOperatorMissing", timeout=CAPABILITY_TTL_SECONDS + 30)
    owner_uid = get(k8s, namespace, name)["metadata"]["uid"]

    installed = time.monotonic()
    try:
        install_prometheus_operator_crds(cluster, files)
        budget = CAPABILITY_TTL_SECONDS + 2 * operator.resync_seconds + 15
        monitor = wait_until(lambda: monitoring_object(k8s, namespace, "servicemonitors", name), budget, "the ServiceMonitor")
        rule = wait_until(lambda: monitoring_object(k8s, namespace, "prometheusrules", name), budget, "the PrometheusRule")
        configured = wait_condition(k8s, namespace, name, "Monitoring", "True", timeout=budget)
        print(f"\nCRDs installed -> ServiceMonitor, PrometheusRule and Monitoring=True after {time.monotonic() - installed:.1f}s")
        assert configured["reason"] == "Configured"

        for child in (monitor, rule):
            (ref,) = child["metadata"]["ownerReferences"]
            assert ref["uid"] == owner_uid and ref["controller"] is True and ref["kind"] == "QwenInference"

        # The ServiceMonitor selects exactly the instance's Service, on its vLLM port, in its namespace.
        service = client.CoreV1Api(k8s).read_namespaced_service(name, namespace)
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= service.metadata.labels.items()
        others = client.CoreV1Api(k8s).list_namespaced_service(namespace, label_selector=",".join(f"{k}={v}" for k, v in selector.items())).items
        assert [s.metadata.name for s in others] == [name]
        (endpoint,) = monitor["spec"]["endpoints"]
        (port,) = [p for p in service.spec.ports if p.name == endpoint["port"]]
        container = client.AppsV1Api(k8s).read_namespaced_deployment(name, namespace).spec.template.spec.containers[0]
        assert any(cp.name == port.target_port and cp.container_port == 8000 for cp in container.ports)
        assert endpoint["path"] == "/metrics" and monitor["spec"]["namespaceSelector"]["matchNames"] == [namespace]

        (group,) = rule["spec"]["groups"]
        assert {r["alert"] for r in group["rules"]} == ALERTS
        for r in group["rules"]:
            assert {"summary", "description", "runbook_url"} <= r["annotations"].keys(), r["alert"]
            assert r["labels"]["namespace"] == namespace and r["expr"]

        # Turning the rule off prunes it; the ServiceMonitor stays.
        patch_spec(k8s, namespace, name, {"monitoring": {"prometheusRule": False}})
        wait_until(lambda: monitoring_object(k8s, namespace, "prometheusrules", name) is None, 2 * operator.resync_seconds + 10, "the PrometheusRule to be pruned")
        assert monitoring_object(k8s, namespace, "servicemonitors", name) is not None
        assert condition(k8s, namespace, name, "Monitoring")["status"] == "True"
        serving = serving_conditions(k8s, namespace, name)
        assert [status for status, _, _ in serving] == ["True", "False"], serving
    finally:
        # Other tests expect a cluster without these CRDs.
        remove_prometheus_operator_crds(cluster)
    # The operator notices the API going away too (within its discovery TTL), and keeps serving: the ServiceMonitor's
    # deletion (the CRD took it) runs a reconcile whose apply the API refuses, and that is a Monitoring matter only.
    wait_condition(k8s, namespace, name, "Monitoring", "False", "PrometheusOperatorMissing", timeout=CAPABILITY_TTL_SECONDS + 2 * operator.resync_seconds + 15)
    after = serving_conditions(k8s, namespace, name)
    assert after == serving, f"Ready or Degraded moved when the CRDs went: before {serving}, after {after}"


def serving_conditions(k8s, namespace: str, name: str) -> list[tuple[str, str, str]]:
    """Ready's and Degraded's (status, reason, lastTransitionTime): a flip and back shows in the time."""
    return [(c["status"], c["reason"], c["lastTransitionTime"]) for c in (condition(k8s, namespace, name, t) for t in ("Ready", "Degraded"))]


SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?$')


def samples(metrics: dict[str, float], name: str) -> list[tuple[dict[str, str], float]]:
    """[(labels, value)] of one metric name in RunningOperator.metrics() output."""
    found = []
    for key, value in metrics.items():
        match = SAMPLE.match(key)
        if match and match["name"] == name:
            found.append((dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match["labels"] or "")), value))
    return found


def total(metrics: dict[str, float], name: str, **labels: str) -> float:
    return sum(v for l, v in samples(metrics, name) if labels.items() <= l.items())


def test_the_operators_own_metrics_count_what_it_did(operator, k8s, namespace):
    before = operator.metrics()
    create(k8s, namespace, "counted", {})
    create(k8s, namespace, "unknown", {"model": {"name": "someone/not-in-the-catalog"}})
    wait_condition(k8s, namespace, "counted", "Ready", "True")
    wait_condition(k8s, namespace, "unknown", "Ready", "False", "UnknownModel")
    time.sleep(2 * operator.resync_seconds)  # a few resyncs of the steady state
    # The counter and the histogram move together; read them when no reconcile is mid-flight.
    after = wait_until(
        lambda: (m := operator.metrics()) and total(m, "qwen_operator_reconciles_total") == total(m, "qwen_operator_reconcile_duration_seconds_count") and m,
        15, "reconciles_total and the duration histogram's count to agree",
    )

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    # Two resources, each reconciled on creation and on its pods' and Deployment's events. The resyncs that
    # followed found what the last runs had read, so they judged both without running them again.
    assert grew("qwen_operator_reconciles_total", result="ok") >= 2
    assert grew("qwen_operator_reconciles_total", result="spec_error") >= 1  # the unknown model
    assert grew("qwen_operator_resyncs_unchanged_total") >= 2
    assert {l["result"] for l, _ in samples(after, "qwen_operator_reconciles_total")} <= {"ok", "spec_error", "blocked", "apply_error", "conflict", "api_error", "error", "gone"}

    count = total(after, "qwen_operator_reconcile_duration_seconds_count")
    assert 0 < total(after, "qwen_operator_reconcile_duration_seconds_sum") / count < 5
    buckets = sorted((float(l["le"]), v) for l, v in samples(after, "qwen_operator_reconcile_duration_seconds_bucket"))
    assert [v for _, v in buckets] == sorted(v for _, v in buckets) and buckets[-1] == (float("inf"), count)

    managed = {(l["ready"], l["reason"]): v for l, v in samples(after, "qwen_operator_managed_resources")}
    assert managed.get(("True", "Ready"), 0) >= 1 and managed.get(("False", "UnknownModel"), 0) >= 1, managed
    existing = len(client.CustomObjectsApi(k8s).list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"])
    assert sum(managed.values()) <= existing, (managed, existing)

    # The new Deployment and Service were applied (once the first time; the steady state writes nothing).
    assert grew("qwen_operator_api_requests_total", verb="apply", kind="Deployment") >= 1
    assert grew("qwen_operator_api_requests_total", verb="apply", kind="Service") >= 1
    assert grew("qwen_operator_api_requests_total", verb="patch_status", kind="QwenInference") >= 2
    # The watches are counted too; the QwenInferences themselves are never read back (the controller's informer feeds them).
    assert grew("qwen_operator_api_requests_total", verb="get", kind="QwenInference") == 0
    assert total(after, "qwen_operator_api_requests_total", verb="watch") >= 1
    codes = {l["code"] for l, _ in samples(after, "qwen_operator_api_requests_total")}
    assert "200" in codes and all(re.fullmatch(r"0|[1-5]\d\d", c) for c in codes), codes
