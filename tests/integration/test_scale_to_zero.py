"""Scale to zero, the operator's side, on kwok nodes: an idle QwenInference with autoscaling.minReplicas 0 goes to
zero (spec.replicas 0 through the scale subresource, no HPA, the Deployment at 0, Ready=False ScaledToZero), and a
wake through the scale subresource (what the gateway does) brings the Deployment back to one replica and the HPA
back, which then holds the replicas. The gateway's side is in test_gateway.py."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
from kubernetes import client

from conftest import wait_until
from qwen_resources import GROUP, PLURAL, VERSION, create, events_for, get, wait_condition

pytestmark = pytest.mark.cluster
ACTIVITY = "gateway.qwenops.io/last-request"


def stamp(k8s, namespace: str, name: str) -> None:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    client.CustomObjectsApi(k8s).patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"metadata": {"annotations": {ACTIVITY: now}}})


def deployment_replicas(k8s, namespace: str, name: str) -> int | None:
    return client.AppsV1Api(k8s).read_namespaced_deployment(name, namespace).spec.replicas


def hpa_exists(k8s, namespace: str, name: str) -> bool:
    return any(h.metadata.name == name for h in client.AutoscalingV2Api(k8s).list_namespaced_horizontal_pod_autoscaler(namespace).items)


def test_idle_to_zero_and_woken_by_the_scale_subresource(operator, namespace, k8s):
    name = "sleepy"
    create(k8s, namespace, name, {"router": {"enabled": False}, "autoscaling": {
        "enabled": True, "minReplicas": 0, "maxReplicas": 3, "scaleToZeroAfterSeconds": 10}})
    stamp(k8s, namespace, name)
    wait_until(lambda: hpa_exists(k8s, namespace, name), 30, "the HPA")
    hpa = client.AutoscalingV2Api(k8s).read_namespaced_horizontal_pod_autoscaler(name, namespace)
    assert hpa.spec.min_replicas == 1
    stamped = time.monotonic()
    # Idle: spec.replicas 0, the HPA gone, the Deployment at 0, Ready=False ScaledToZero, and an Event that says why.
    wait_until(lambda: get(k8s, namespace, name)["spec"]["replicas"] == 0, 30, "scale to zero")
    slept = time.monotonic() - stamped
    assert 9 <= slept <= 16, slept  # 10 s after the stamp, judged at that deadline (not at a resync)
    wait_until(lambda: not hpa_exists(k8s, namespace, name) and deployment_replicas(k8s, namespace, name) == 0, 30, "no HPA, 0 replicas")
    wait_condition(k8s, namespace, name, "Ready", "False", "ScaledToZero", timeout=30)
    wait_condition(k8s, namespace, name, "Autoscaling", "True", "ScaledToZero", timeout=30)
    assert any(e.reason == "ScalingToZero" and "no request through the gateway" in e.message for e in events_for(k8s, namespace, name))
    # Woken as the gateway does: stamp, then spec.replicas 1 through the scale subresource.
    stamp(k8s, namespace, name)
    client.CustomObjectsApi(k8s).patch_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, name, {"spec": {"replicas": 1}})
    wait_until(lambda: deployment_replicas(k8s, namespace, name) == 1 and hpa_exists(k8s, namespace, name), 30, "one replica and the HPA")
    wait_condition(k8s, namespace, name, "Ready", "True", timeout=60)
    # The HPA holds the replicas now: the operator no longer applies them.
    deployment = client.AppsV1Api(k8s).read_namespaced_deployment(name, namespace)
    managers = {m.manager for m in deployment.metadata.managed_fields or [] if "f:replicas" in str((m.fields_v1 or {}).get("f:spec", {}))}
    assert managers, managers
    # And idle again, it sleeps again.
    wait_until(lambda: get(k8s, namespace, name)["spec"]["replicas"] == 0, 30, "scale to zero a second time")
