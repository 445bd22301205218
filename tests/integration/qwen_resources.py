"""QwenInference helpers shared by the integration tests: create, read and patch the resource, wait
for its conditions, and list its events and pods, all through the real API server."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from conftest import wait_until

# Spelled out rather than imported from the operator, so a renamed API group fails the tests.
GROUP, VERSION, PLURAL = "inference.qwenops.io", "v1alpha1", "qweninferences"
INSTANCE_LABEL = "app.kubernetes.io/instance"
ENGINE_LABEL = "app.kubernetes.io/name=qwen-inference"  # the engine pods; the router's are app.kubernetes.io/name=qwen-router


def qwi(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "QwenInference", "metadata": {"name": name}, "spec": spec}


def create(k8s, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return client.CustomObjectsApi(k8s).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, qwi(name, spec))


def get(k8s, namespace: str, name: str) -> dict[str, Any]:
    return client.CustomObjectsApi(k8s).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def patch_spec(k8s, namespace: str, name: str, spec: dict[str, Any]) -> None:
    """A JSON merge patch of spec: nested keys merge, a None value removes the key."""
    client.CustomObjectsApi(k8s).patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": spec})


def condition(k8s, namespace: str, name: str, type_: str) -> dict[str, Any] | None:
    status = get(k8s, namespace, name).get("status") or {}
    return next((c for c in status.get("conditions", []) if c["type"] == type_), None)


def wait_condition(k8s, namespace: str, name: str, type_: str, status: str, reason: str | None = None, timeout: float = 60) -> dict[str, Any]:
    def matches():
        c = condition(k8s, namespace, name, type_)
        return c if c and c["status"] == status and (reason is None or c["reason"] == reason) else None

    return wait_until(matches, timeout, f"{type_}={status}{f' ({reason})' if reason else ''} on {namespace}/{name}; last: {condition(k8s, namespace, name, type_)}")


def wait_ready(k8s, namespace: str, name: str, timeout: float = 90) -> dict[str, Any]:
    return wait_condition(k8s, namespace, name, "Ready", "True", timeout=timeout)


def events_for(k8s, namespace: str, name: str, kind: str = "QwenInference") -> list[client.CoreV1Event]:
    selector = f"involvedObject.name={name},involvedObject.kind={kind}"
    return client.CoreV1Api(k8s).list_namespaced_event(namespace, field_selector=selector).items


def pods(k8s, namespace: str, name: str) -> list[client.V1Pod]:
    """Every engine pod of the instance, those being deleted included (not its router's pods)."""
    return client.CoreV1Api(k8s).list_namespaced_pod(namespace, label_selector=f"{ENGINE_LABEL},{INSTANCE_LABEL}={name}").items


def live_pods(k8s, namespace: str, name: str) -> list[client.V1Pod]:
    """The instance's pods that are not being deleted."""
    return [p for p in pods(k8s, namespace, name) if p.metadata.deletion_timestamp is None]
