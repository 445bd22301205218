"""Queue-depth autoscaling, end to end on the local control plane (issue 5's acceptance).

The real HPA controller (kube-controller-manager, sync period 5s) reads vllm_num_requests_waiting
through the aggregated custom metrics API, served by prometheus-adapter from a real Prometheus that
scrapes vLLM stand-ins on 127.0.0.1 (tests/integration/support_metrics.py).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.utils.quantity import parse_quantity

from conftest import wait_until
from qwen_operator.builders.autoscaling import QUEUE_DEPTH_METRIC
from qwen_resources import condition, create, get, patch_spec, wait_condition
from support_metrics import CustomMetricsStack

pytestmark = pytest.mark.cluster

FIELD_MANAGER = "qwen-operator"
# Figures go to a temporary folder unless QWEN_BENCH_RESULTS names one (bench/results holds a recorded run).
RESULTS_DIR = Path(os.environ.get("QWEN_BENCH_RESULTS", Path(tempfile.gettempdir()) / "qwen-operator-results"))
# Generous bounds: the chain is scrape (1s) + HPA sync (5s) + scheduling + kwok + status.
SPIKE_TO_READY_BOUND_SECONDS = 90
# The HPA removes at most one pod a minute after the stabilisation window: 4 -> 1 takes ~130s.
CALM_TO_MIN_BOUND_SECONDS = 300
# The spike lasts longer than the scale-down policy's period (60s), as real load does: otherwise the
# HPA measures the period from before the scale-up and may drop to minReplicas in one step.
SPIKE_HOLD_SECONDS = 65


@pytest.fixture(scope="module")
def custom_metrics(cluster, k8s, tmp_path_factory) -> CustomMetricsStack:
    stack = CustomMetricsStack(cluster, k8s, tmp_path_factory.mktemp("custom-metrics")).start()
    try:
        yield stack
    finally:
        stack.stop()
    assert not stack.pods_without_port, f"more Running pods than stand-in ports: {stack.pods_without_port}"


@pytest.fixture
def measured_namespace(custom_metrics, namespace) -> str:
    """A fresh namespace whose Running pods each get a vLLM stand-in (queue depth 0 to start)."""
    custom_metrics.watch(namespace, waiting=0)
    yield namespace
    custom_metrics.unwatch(namespace)


def status(k8s, namespace: str, name: str) -> dict[str, Any]:
    return get(k8s, namespace, name).get("status") or {}


def hpa(k8s, namespace: str, name: str) -> dict[str, Any]:
    return client.AutoscalingV2Api(k8s).read_namespaced_horizontal_pod_autoscaler(name, namespace).to_dict()


def hpa_condition(k8s, namespace: str, name: str, type_: str) -> dict[str, Any] | None:
    return next((c for c in hpa(k8s, namespace, name)["status"].get("conditions") or [] if c["type"] == type_), None)


def deployment(k8s, namespace: str, name: str) -> client.V1Deployment:
    return client.AppsV1Api(k8s).read_namespaced_deployment(name, namespace)


def replicas_owners(k8s, namespace: str, name: str) -> dict[str, str]:
    """{manager: operation} of every managedFields entry that owns the Deployment's spec.replicas."""
    return {
        entry.manager: entry.operation + (f"/{entry.subresource}" if entry.subresource else "")
        for entry in deployment(k8s, namespace, name).metadata.managed_fields or []
        if "f:replicas" in (entry.fields_v1 or {}).get("f:spec", {})
    }


def autoscaling_spec(min_replicas: int, max_replicas: int, stabilization: int = 10) -> dict[str, Any]:
    return {"enabled": True, "minReplicas": min_replicas, "maxReplicas": max_replicas,
            "queueDepthPerReplica": 5, "scaleDownStabilizationSeconds": stabilization}


def write_results(name: str, figures: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    return path


class Timeline:
    """Seconds from a start until each named observation first held (polled every 0.2s)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.seen: dict[str, float] = {}

    def watch(self, checks: dict[str, Any], until: str, timeout: float) -> dict[str, float]:
        deadline = self.start + timeout
        while time.monotonic() < deadline:
            for what, check in checks.items():
                if what not in self.seen:
                    try:
                        if check():
                            self.seen[what] = round(time.monotonic() - self.start, 1)
                    except ApiException:
                        pass
            if until in self.seen:
                return self.seen
            time.sleep(0.2)
        raise AssertionError(f"'{until}' did not happen within {timeout}s; seen so far: {self.seen}")


def test_queue_depth_scales_a_qweninference_up_to_max_and_back_down(operator, custom_metrics, k8s, measured_namespace):
    namespace, name = measured_namespace, "chat"
    create(k8s, namespace, name, {"autoscaling": autoscaling_spec(1, 4)})
    wait_condition(k8s, namespace, name, "Ready", "True", timeout=90)
    # ScalingActive=True needs the metric: the pod's stand-in scraped, the adapter relisted, the HPA synced.
    wait_condition(k8s, namespace, name, "Autoscaling", "True", timeout=120)
    assert status(k8s, namespace, name)["desiredReplicas"] == 1
    assert deployment(k8s, namespace, name).spec.replicas == 1

    spike = Timeline()
    custom_metrics.set_waiting(namespace, 20)
    up = spike.watch({
        "metric API reports 20": lambda: all(parse_quantity(i["value"]) == 20 for i in custom_metrics.custom_metric(namespace, QUEUE_DEPTH_METRIC)["items"]),
        "HPA desiredReplicas 4": lambda: hpa(k8s, namespace, name)["status"]["desired_replicas"] == 4,
        "Deployment replicas 4": lambda: deployment(k8s, namespace, name).spec.replicas == 4,
        "QwenInference readyReplicas 4": lambda: status(k8s, namespace, name).get("readyReplicas") == 4,
    }, until="QwenInference readyReplicas 4", timeout=SPIKE_TO_READY_BOUND_SECONDS)
    spike_to_ready = up["QwenInference readyReplicas 4"]
    print(f"\nqueue spike (20 waiting per pod, target 5) -> 4/4 ready: {spike_to_ready}s; timeline {up}")

    # The HPA read the spike through the API; status follows the HPA.
    current = hpa(k8s, namespace, name)["status"]["current_metrics"][0]["pods"]
    assert current["metric"]["name"] == QUEUE_DEPTH_METRIC and parse_quantity(current["current"]["average_value"]) >= 5
    wait_until(lambda: status(k8s, namespace, name).get("desiredReplicas") == 4, 3 * operator.resync_seconds + 5, "status.desiredReplicas 4")
    limited = wait_condition(k8s, namespace, name, "Autoscaling", "True", timeout=30)
    assert limited["reason"] in ("TooManyReplicas", "ValidMetricFound"), limited
    assert wait_condition(k8s, namespace, name, "Ready", "True", timeout=90)["message"].startswith("4/4")

    # While the load lasts, resync after resync, the operator leaves the HPA's replicas alone.
    hold_end = spike.start + SPIKE_HOLD_SECONDS
    while time.monotonic() < hold_end:
        assert deployment(k8s, namespace, name).spec.replicas == 4
        time.sleep(0.5)
    assert FIELD_MANAGER not in replicas_owners(k8s, namespace, name)

    calm = Timeline()
    custom_metrics.set_waiting(namespace, 0)
    down = calm.watch({
        "HPA desiredReplicas < 4": lambda: hpa(k8s, namespace, name)["status"]["desired_replicas"] < 4,
        "Deployment replicas 3": lambda: deployment(k8s, namespace, name).spec.replicas == 3,
        "Deployment replicas 2": lambda: deployment(k8s, namespace, name).spec.replicas == 2,
        "Deployment replicas 1": lambda: deployment(k8s, namespace, name).spec.replicas == 1,
        "QwenInference back to 1/1": lambda: (s := status(k8s, namespace, name)).get("replicas") == 1 and s.get("readyReplicas") == 1,
    }, until="QwenInference back to 1/1", timeout=CALM_TO_MIN_BOUND_SECONDS)
    calm_to_min = down["QwenInference back to 1/1"]
    print(f"queue calm (0 waiting) -> back to 1/1: {calm_to_min}s (stabilisation 10s, then 1 pod/min); timeline {down}")
    # One pod at a time, a minute apart (the behavior's scale-down policy), after the window.
    # The window holds the highest recommendation of the last 10s; the last "4" may predate the calm
    # by one HPA sync (5s).
    assert down["Deployment replicas 3"] >= 5
    assert down["Deployment replicas 2"] - down["Deployment replicas 3"] >= 50
    assert down["Deployment replicas 1"] - down["Deployment replicas 2"] >= 50
    wait_until(lambda: status(k8s, namespace, name).get("desiredReplicas") == 1, 3 * operator.resync_seconds + 5, "status.desiredReplicas 1")
    assert condition(k8s, namespace, name, "Autoscaling")["status"] == "True"

    path = write_results("autoscaling-e2e", {
        "what": "local control plane (kwok pods), real HPA controller (sync 5s), prometheus-adapter "
                "reading Prometheus (scrape 1s) that scrapes vLLM stand-ins; queueDepthPerReplica 5",
        "spike": f"vllm:num_requests_waiting 0 -> 20 per pod for {SPIKE_HOLD_SECONDS}s, minReplicas 1, maxReplicas 4",
        "spike_to_4_ready_seconds": spike_to_ready,
        "spike_timeline_seconds": up,
        "calm": "vllm:num_requests_waiting 20 -> 0, scaleDownStabilizationSeconds 10, scale-down policy 1 pod per 60s",
        "calm_to_1_ready_seconds": calm_to_min,
        "calm_timeline_seconds": down,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    print(f"figures written to {path}")


def test_operator_leaves_replicas_to_the_hpa_and_takes_them_back_when_autoscaling_stops(operator, custom_metrics, k8s, measured_namespace):
    namespace, name = measured_namespace, "owned"
    create(k8s, namespace, name, {"replicas": 1, "autoscaling": autoscaling_spec(2, 3)})
    # The HPA lifts the Deployment to minReplicas; the operator, which applies without replicas, lets it.
    wait_until(lambda: deployment(k8s, namespace, name).spec.replicas == 2, 60, "the HPA to raise replicas to minReplicas 2")
    # (The HPA writes through the scale subresource, which records no owner of spec.replicas.)
    assert FIELD_MANAGER not in replicas_owners(k8s, namespace, name)

    # Several resyncs later the operator still has not touched replicas (nor anything else).
    generation = deployment(k8s, namespace, name).metadata.generation
    observed_end = time.monotonic() + 3 * operator.resync_seconds + 1
    while time.monotonic() < observed_end:
        assert deployment(k8s, namespace, name).spec.replicas == 2
        time.sleep(0.3)
    assert deployment(k8s, namespace, name).metadata.generation == generation
    assert FIELD_MANAGER not in replicas_owners(k8s, namespace, name)

    patch_spec(k8s, namespace, name, {"autoscaling": {"enabled": False}})
    wait_until(lambda: deployment(k8s, namespace, name).spec.replicas == 1, 3 * operator.resync_seconds + 10, "the Deployment back at spec.replicas 1")
    assert replicas_owners(k8s, namespace, name).get(FIELD_MANAGER) == "Apply"

    def hpa_gone() -> bool:
        try:
            hpa(k8s, namespace, name)
        except ApiException as error:
            return error.status == 404
        return False

    wait_until(hpa_gone, 3 * operator.resync_seconds + 10, "the HPA to be pruned")
    wait_until(lambda: condition(k8s, namespace, name, "Autoscaling") is None, 3 * operator.resync_seconds + 10, "the Autoscaling condition to go")
    wait_condition(k8s, namespace, name, "Ready", "True", timeout=90)
    wait_until(lambda: "desiredReplicas" not in status(k8s, namespace, name), 3 * operator.resync_seconds + 10,
               f"status.desiredReplicas (an HPA figure) to go; status: {status(k8s, namespace, name)}")


def test_autoscaling_condition_reports_the_hpa_failure_when_the_metric_is_missing(operator, custom_metrics, k8s, namespace):
    # This namespace is not watched: its pods get no stand-in, so Prometheus has no series for them.
    name = "unmeasured"
    create(k8s, namespace, name, {"autoscaling": autoscaling_spec(1, 3)})
    failed = wait_condition(k8s, namespace, name, "Autoscaling", "False", timeout=120)
    scaling_active = hpa_condition(k8s, namespace, name, "ScalingActive")
    assert scaling_active["status"] == "False"
    assert failed["reason"] == scaling_active["reason"] == "FailedGetPodsMetric"
    assert QUEUE_DEPTH_METRIC in failed["message"] and failed["message"].startswith("ScalingActive: ")
    assert deployment(k8s, namespace, name).spec.replicas == 1


def test_the_adapter_serves_each_pods_queue_under_the_name_the_hpa_asks_for(operator, custom_metrics, k8s, measured_namespace):
    namespace, name = measured_namespace, "measured"
    create(k8s, namespace, name, {"autoscaling": autoscaling_spec(2, 2)})
    wait_until(lambda: len(custom_metrics.pod_ports(namespace)) == 2, 90, "two pods with stand-ins")
    asked_for = hpa(k8s, namespace, name)["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert asked_for == QUEUE_DEPTH_METRIC == "vllm_num_requests_waiting"

    # Different depths per pod, set on the stand-ins directly: the answer must be per pod.
    depths = dict(zip(sorted(custom_metrics.pod_ports(namespace)), (3, 7)))
    for pod, depth in depths.items():
        custom_metrics.set_pod_waiting(namespace, pod, depth)

    def per_pod(version: str) -> dict[str, float]:
        answer = custom_metrics.custom_metric(namespace, asked_for, version=version, selector=f"app.kubernetes.io/instance={name}")
        return {item["describedObject"]["name"]: float(parse_quantity(item["value"])) for item in answer["items"]}

    wait_until(lambda: per_pod("v1beta1") == depths, 30, f"the custom metrics API to report {depths}")
    assert per_pod("v1beta2") == depths
    assert f"pods/{asked_for}" in custom_metrics.served_metrics()
    assert not any(":" in metric for metric in custom_metrics.served_metrics()), "the rule renames vllm:* to vllm_*"
    # The same numbers Prometheus holds under vLLM's own name, with the labels a ServiceMonitor sets.
    series = custom_metrics.prometheus_query(f'vllm:num_requests_waiting{{namespace="{namespace}"}}')
    assert {s["metric"]["pod"]: float(s["value"][1]) for s in series} == depths
    assert {s["metric"]["service"] for s in series} == {name}
    # The HPA sees their average.
    wait_until(lambda: parse_quantity(hpa(k8s, namespace, name)["status"]["current_metrics"][0]["pods"]["current"]["average_value"]) == 5,
               60, "the HPA to read the average queue depth 5")
