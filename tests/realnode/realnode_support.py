"""Helpers for the tests on the real node (hack/real-node.sh): the node, its images, the chart's
operator running as pods, QwenInferences whose pods run the vLLM stand-in image (not vLLM), and a
steady client. Every connection goes to a pod or Service address of the closed pod network on the
bridge; kwok addresses are never used (tests check that an address is on the bridge first)."""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))  # the chart helpers of the helm tests

from conftest import install_crds, wait_until  # noqa: E402
from support_helm import Helm, Release, helm_binary  # noqa: E402

NODE_NAME = "qwen-real-node"
TAINT_TOLERATION = {"key": "qwen.qwenops.io/real-node", "operator": "Exists", "effect": "NoSchedule"}
ON_THE_REAL_NODE = {"nodeSelector": {"kubernetes.io/hostname": NODE_NAME}, "tolerations": [TAINT_TOLERATION]}
GROUP, VERSION, PLURAL = "inference.qwenops.io", "v1alpha1", "qweninferences"
SERVED_NAME = "qwen3-0.6b-fp8"
API_PORT = 8000


@dataclass
class RealNode:
    cluster_dir: Path
    images: dict[str, str]  # pause, operator, standin -> the reference in the node's containerd
    pod_network: ipaddress.IPv4Network
    service_network: ipaddress.IPv4Network
    # Where the pods of the tests go: the tainted real node here; anywhere on a kind cluster (tests/e2e/test_kind.py).
    scheduling: dict[str, Any] = field(default_factory=lambda: dict(ON_THE_REAL_NODE))

    def check_address(self, address: str) -> str:
        """address, after checking that it is on the closed pod network or a Service address."""
        ip = ipaddress.ip_address(address)
        assert ip in self.pod_network or ip in self.service_network, f"{address} is not on the real node's pod or service network"
        return address


def real_node_or_skip(kubeconfig: str, k8s) -> RealNode:
    """The running real node; a skip naming the missing piece where this machine cannot run one."""
    cluster_dir = Path(kubeconfig).parent
    images_file = cluster_dir / "node" / "images.env"
    skip_file = cluster_dir / "real-node.skip"
    if not images_file.exists():
        # A skip only where node-up recorded what this machine lacks, and the node was not required
        # (QWEN_REAL_NODE=1); a node that should be there and is not is a failure.
        if not skip_file.exists():
            pytest.fail("hack/cluster.sh node-up neither started the real node nor recorded why it cannot run")
        reason = skip_file.read_text().strip()
        # Required with QWEN_REAL_NODE=1, and in CI (CI=true) unless QWEN_REAL_NODE=0: CI must run the real node.
        if os.environ.get("QWEN_REAL_NODE") == "1" or (os.environ.get("CI") == "true" and os.environ.get("QWEN_REAL_NODE") != "0"):
            pytest.fail(f"the real node is required (QWEN_REAL_NODE=1, or CI=true) and cannot run: {reason}")
        pytest.skip(f"no real node: {reason}")
    node = client.CoreV1Api(k8s).read_node(NODE_NAME)
    ready = next(c.status for c in node.status.conditions if c.type == "Ready")
    assert ready == "True", f"the real node {NODE_NAME} is not Ready"
    images = dict(line.split("=", 1) for line in images_file.read_text().split())
    cidr = next(a.address for a in node.status.addresses if a.type == "InternalIP")
    return RealNode(cluster_dir, images, ipaddress.ip_network(cidr + "/24", strict=False), ipaddress.ip_network("10.96.0.0/16"))


# ---- the chart's operator, running as pods ----------------------------------------------------------


@dataclass
class InClusterOperator:
    helm: Helm
    release: Release
    watched_namespace: str

    def pods(self, k8s) -> list[client.V1Pod]:
        return client.CoreV1Api(k8s).list_namespaced_pod(
            self.release.namespace, label_selector=f"app.kubernetes.io/instance={self.release.name}").items


def install_operator(cluster, k8s, node: RealNode, release: Release, watched_namespace: str) -> InClusterOperator:
    """helm install of charts/qwen-operator with the image hack/images.sh built: two replicas (one
    leader, one standby), on the real node, watching one namespace."""
    helm = Helm(helm_binary(), cluster)
    # The CRDs come from crds/, not from this release: every release that installs them owns them,
    # one at a time, and tests/integration/test_helm_install.py's releases run beside these.
    install_crds(cluster)
    repository, tag = node.images["operator"].rsplit(":", 1)
    values = {
        "crds": {"enabled": False},
        "image": {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"},
        "replicaCount": 2,
        "watchNamespaces": [watched_namespace],
        "nodeSelector": node.scheduling.get("nodeSelector", {}),
        "tolerations": node.scheduling.get("tolerations", []),
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
        "env": [{"name": "QWEN_OPERATOR_RESYNC_SECONDS", "value": "10"}],
    }
    helm.install(release, values)
    return InClusterOperator(helm, release, watched_namespace)


def active_operator_pod(k8s, operator: InClusterOperator) -> str:
    """The replica holding the leader Lease (named after the release; its holder names the pod)."""
    lease = client.CoordinationV1Api(k8s).read_namespaced_lease(operator.release.fullname, operator.release.namespace)
    holder = lease.spec.holder_identity or ""
    live = [p.metadata.name for p in operator.pods(k8s) if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
    matches = [name for name in live if name in holder]
    assert len(matches) == 1, f"the Lease holder {holder!r} is not one of the running operator pods {live}"
    return matches[0]


# ---- QwenInferences of the stand-in image on the real node -------------------------------------------


def standin_spec(node: RealNode, *, replicas: int = 1, env: dict[str, str] | None = None, startup_timeout: int | None = None,
                 api_key_secret: str | None = None, pre_stop_sleep: int = 3, shutdown_timeout: int = 10) -> dict[str, Any]:
    engine: dict[str, Any] = {
        "image": node.images["standin"],
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
        "preStopSleepSeconds": pre_stop_sleep,
        "shutdownTimeoutSeconds": shutdown_timeout,
    }
    if startup_timeout is not None:
        engine["startupTimeoutSeconds"] = startup_timeout
    spec: dict[str, Any] = {
        "model": {"name": "Qwen/Qwen3-0.6B-FP8", "source": {"cache": {"enabled": False}}},
        "engine": engine,
        "resources": {"gpu": {"count": 1}, "cpu": "50m", "memory": "256Mi"},
        "replicas": replicas,
        "monitoring": {"serviceMonitor": False, "prometheusRule": False, "dashboard": False},
        "scheduling": node.scheduling,
        # With more than one replica the router runs too (spec.router): small, the node has 2 cores (its RSS was
        # 80 MiB after tests/realnode/test_router.py's load).
        "router": {"resources": {"cpu": "100m", "memory": "256Mi"}},
    }
    if api_key_secret:
        spec["auth"] = {"apiKeySecretRef": {"name": api_key_secret, "key": "api-key"}}
    return spec


def create_qwen(k8s, namespace: str, name: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "QwenInference", "metadata": {"name": name}, "spec": spec}
    client.CustomObjectsApi(k8s).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def get_qwen(k8s, namespace: str, name: str) -> dict[str, Any]:
    return client.CustomObjectsApi(k8s).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def patch_qwen_spec(k8s, namespace: str, name: str, spec: dict[str, Any]) -> None:
    client.CustomObjectsApi(k8s).patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": spec})


def delete_qwen(k8s, namespace: str, name: str) -> None:
    client.CustomObjectsApi(k8s).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def remove_namespaces(k8s, *namespaces: str) -> None:
    """A module's clean-up: its namespaces deleted, and their pods on the real node removed at once
    (grace period 0: the drain a pod's preStop hook would wait for has been tested by then), so the
    next module, and `cluster.sh down`, find the node empty without waiting out every drain."""
    core = client.CoreV1Api(k8s)
    for namespace in namespaces:
        try:
            core.delete_namespace(namespace)
        except client.ApiException as error:
            if error.status != 404:
                raise
    for pod in core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={NODE_NAME}").items:
        if pod.metadata.namespace in namespaces:
            try:
                core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)
            except client.ApiException as error:
                if error.status != 404:
                    raise
    wait_until(lambda: not [p for p in core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={NODE_NAME}").items
                            if p.metadata.namespace in namespaces], 120, f"the pods of {', '.join(namespaces)} to go")


def ready_condition(k8s, namespace: str, name: str) -> dict[str, Any]:
    conditions = (get_qwen(k8s, namespace, name).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), {})


def qwen_pods(k8s, namespace: str, name: str) -> list[client.V1Pod]:
    # The engine pods (the router's, with spec.router on, are app.kubernetes.io/name=qwen-router).
    selector = f"app.kubernetes.io/name=qwen-inference,app.kubernetes.io/instance={name}"
    pods = client.CoreV1Api(k8s).list_namespaced_pod(namespace, label_selector=selector).items
    return [p for p in pods if not p.metadata.deletion_timestamp]


def server_status(pod: client.V1Pod) -> client.V1ContainerStatus | None:
    return next((c for c in pod.status.container_statuses or [] if c.name == "vllm"), None)


def service_address(k8s, namespace: str, name: str) -> str:
    return client.CoreV1Api(k8s).read_namespaced_service(name, namespace).spec.cluster_ip


# ---- talking to pods and Services on the bridge -----------------------------------------------------


def http_call(node: RealNode, address: str, method: str, path: str, body: dict | None = None, token: str | None = None,
              timeout: float = 5, port: int = API_PORT) -> tuple[int, bytes]:
    """One HTTP request to a pod or Service address of the real node's network (checked first)."""
    connection = http.client.HTTPConnection(node.check_address(address), port, timeout=timeout)
    headers = {"Content-Type": "application/json", "Connection": "close"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def listening(node: RealNode, address: str, port: int = API_PORT) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((node.check_address(address), port)) == 0


def wait_for_service_to_route(node: RealNode, address: str, port: int = API_PORT, timeout: float = 30) -> float:
    """Seconds until a Service address accepts connections. Ready says the pods are ready; the endpoints
    controller and then kube-proxy (iptables, at most one sync a second) follow it, and until kube-proxy has
    the endpoint its rule refuses the connection. A test that talks to a Service just after Ready waits here."""
    started = time.monotonic()
    wait_until(lambda: listening(node, address, port), timeout, f"the Service {address}:{port} to route to a ready pod", interval=0.2)
    return time.monotonic() - started


@dataclass
class SteadyClients:
    """Threads that send completions to one address back to back and count what failed, and how."""

    node: RealNode
    address: str
    token: str | None = None
    threads: int = 2
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _run(self) -> None:
        request = {"model": SERVED_NAME, "prompt": "hi", "max_tokens": 1}
        while not self._stop.is_set():
            try:
                status, body = http_call(self.node, self.address, "POST", "/v1/completions", request, self.token, timeout=30)
                outcome = None if status == 200 else f"HTTP {status}: {body[:200]!r}"
            except OSError as error:
                outcome = f"{type(error).__name__}: {error}"
            with self._lock:
                if outcome is None:
                    self.ok += 1
                else:
                    self.failures.append(outcome)
            time.sleep(0.02)

    def __enter__(self) -> "SteadyClients":
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=40)


def write_figure(name: str, value: Any) -> None:
    """Prints a measured figure (pytest -s shows it; -rA lists it with the test) as one JSON line."""
    print(json.dumps({"figure": name, "value": value}))


def kubectl_yaml(cluster, *args: str) -> Any:
    return yaml.safe_load(cluster.kubectl(*args, "-o", "yaml").stdout)


def run(command: list[str], timeout: float = 60) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=timeout).stdout
