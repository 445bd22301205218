"""Helpers for the production-pod and secret-leak tests: the operator's children (containers, volumes,
PVCs, Secrets) and the fake GPU nodes, all through the real API server. QwenInference itself: qwen_resources."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any, Iterator

from kubernetes import client
from kubernetes.client.rest import ApiException

from conftest import wait_until

GPU_RESOURCE = "nvidia.com/gpu"
PRODUCT_LABEL = "nvidia.com/gpu.product"
MAJOR_LABEL = "nvidia.com/gpu.compute.major"
MINOR_LABEL = "nvidia.com/gpu.compute.minor"
FP8_MODEL = "Qwen/Qwen3-0.6B-FP8"
BF16_MODEL = "Qwen/Qwen3-0.6B"


def deployment_or_none(k8s, namespace: str, name: str) -> client.V1Deployment | None:
    try:
        return client.AppsV1Api(k8s).read_namespaced_deployment(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def container(pod_spec: client.V1PodSpec, name: str = "vllm") -> client.V1Container:
    (found,) = [c for c in pod_spec.containers if c.name == name]
    return found


def env_of(c: client.V1Container) -> dict[str, client.V1EnvVar]:
    return {e.name: e for e in c.env or []}


def volume(pod_spec: client.V1PodSpec, name: str) -> client.V1Volume:
    (found,) = [v for v in pod_spec.volumes if v.name == name]
    return found


def mount_path(c: client.V1Container, volume_name: str) -> str | None:
    return next((m.mount_path for m in c.volume_mounts or [] if m.name == volume_name), None)


def create_secret(k8s, namespace: str, name: str, values: dict[str, str]) -> None:
    body = client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data=values)
    client.CoreV1Api(k8s).create_namespaced_secret(namespace, body)


def create_pvc(k8s, namespace: str, name: str, size: str = "1Gi", access_mode: str = "ReadWriteMany") -> None:
    body = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": [access_mode], "resources": {"requests": {"storage": size}}},
    }
    client.CoreV1Api(k8s).create_namespaced_persistent_volume_claim(namespace, body)


def pvcs_of(k8s, namespace: str, name: str) -> list[client.V1PersistentVolumeClaim]:
    return client.CoreV1Api(k8s).list_namespaced_persistent_volume_claim(namespace, label_selector=f"app.kubernetes.io/instance={name}").items


def gpu_nodes(k8s) -> list[client.V1Node]:
    return client.CoreV1Api(k8s).list_node(label_selector="nvidia.com/gpu.present=true").items


def node_labels(k8s, node_name: str) -> dict[str, str]:
    return client.CoreV1Api(k8s).read_node(node_name).metadata.labels or {}


def gpus_in_use(k8s, node_name: str) -> int:
    """GPUs requested by the pods bound to a node that still hold them (not finished)."""
    used = 0
    pods = client.CoreV1Api(k8s).list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node_name}").items
    for pod in pods:
        if pod.status.phase in ("Succeeded", "Failed"):
            continue
        for c in pod.spec.containers:
            used += int(((c.resources and c.resources.requests) or {}).get(GPU_RESOURCE, 0))
    return used


# A test's private fake GPU nodes carry this label and a NoSchedule taint with the pool's name, so the
# tests running beside it (other pytest-xdist workers) never place a pod there.
POOL_KEY = "qwenops.io/test-pool"


def private_pool_scheduling(pool: str) -> dict[str, Any]:
    """spec.scheduling that places a QwenInference's pods on the private pool `pool` only."""
    return {"nodeSelector": {POOL_KEY: pool}, "tolerations": [{"key": POOL_KEY, "operator": "Equal", "value": pool, "effect": "NoSchedule"}]}


def fake_gpu_node(name: str, product: str, major: int, minor: int, gpus: int = 8, pool: str | None = None) -> dict[str, Any]:
    """A kwok-managed fake GPU node labelled as gpu-feature-discovery would (hack/cluster.sh's shape);
    with `pool`, one of a test's private nodes (POOL_KEY)."""
    capacity = {"cpu": "96", "memory": "768Gi", "pods": "110", "ephemeral-storage": "2Ti", GPU_RESOURCE: str(gpus)}
    node = _fake_gpu_node(name, product, major, minor, gpus, capacity)
    if pool:
        node["metadata"]["labels"][POOL_KEY] = pool
        node["spec"] = {"taints": [{"key": POOL_KEY, "value": pool, "effect": "NoSchedule"}]}
    return node


def _fake_gpu_node(name: str, product: str, major: int, minor: int, gpus: int, capacity: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "node-role.qwenops.io/gpu": "true",
                "nvidia.com/gpu.present": "true",
                PRODUCT_LABEL: product,
                "nvidia.com/gpu.count": str(gpus),
                MAJOR_LABEL: str(major),
                MINOR_LABEL: str(minor),
            },
        },
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def node_is_ready(k8s, name: str) -> bool:
    node = client.CoreV1Api(k8s).read_node(name)
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def delete_node_and_wait(k8s, name: str) -> None:
    core = client.CoreV1Api(k8s)
    try:
        core.delete_node(name)
    except ApiException as error:
        if error.status != 404:
            raise

    def gone() -> bool:
        try:
            core.read_node(name)
        except ApiException as error:
            return error.status == 404
        return False

    wait_until(gone, 60, f"node {name} to be deleted")


def raw_json(cluster, namespace: str, *kinds: str) -> str:
    """The objects exactly as the API server serves them (kubectl get -o json)."""
    return cluster.kubectl("get", ",".join(kinds), "-n", namespace, "-o", "json").stdout


@contextlib.contextmanager
def private_gpu_pool(k8s, *products: tuple[str, int, int]) -> Iterator[tuple[str, list[str]]]:
    """Fake GPU nodes of these (product, compute major, minor), private to one test: (pool, node names)."""
    pool = f"pool-{uuid.uuid4().hex[:6]}"
    names = [f"gpu-{pool}-{i}" for i in range(len(products))]
    core = client.CoreV1Api(k8s)
    try:
        for name, (product, major, minor) in zip(names, products):
            core.create_node(fake_gpu_node(name, product, major, minor, pool=pool))
        for name in names:
            wait_until(lambda: node_is_ready(k8s, name), 60, f"the fake node {name} to be Ready")
        yield pool, names
    finally:
        for name in names:
            delete_node_and_wait(k8s, name)
