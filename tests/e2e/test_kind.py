"""End to end on a kind cluster: the chart installs the operator image, QwenInferences of the vLLM
stand-in image (not vLLM) become Ready through real probes, and answer through a port-forward and
through their Service; the kubelet restarts an engine that exits; a rolling update under load fails
no request; deleting them and uninstalling the chart leaves nothing of theirs behind.

The flows are the real node's (tests/realnode/test_real_node.py): the same test bodies run here, with
the kind cluster behind the `cluster`, `k8s`, `node` and `workspace` fixtures.

The cluster: hack/kind-up.sh with the node image hack/kind-node-image.sh assembles without any
registry (KIND_NODE_IMAGE=local; QWEN_KIND_NODE_IMAGE=upstream takes kind's own kindest/node
instead), in the Docker engine DOCKER_HOST names, or else in a private one that hack/dockerd.sh starts
and stops. Where no engine can be started, or no node image can be had, these tests skip and say
which; with QWEN_KIND=1 that is a failure instead. QWEN_KIND_KEEP=1 keeps the cluster (and the private
engine) afterwards: hack/kind-down.sh and hack/dockerd.sh down remove them.

Addresses used: the kind API server on 127.0.0.1, kubectl port-forward on 127.0.0.1, and pod and
Service addresses of the kind node (routed from the host to the node over its local bridge; checked by
RealNode.check_address).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "realnode"))

from conftest import KUBECTL, Cluster, wait_until  # noqa: E402
from realnode_support import (  # noqa: E402
    GROUP,
    PLURAL,
    SERVED_NAME,
    VERSION,
    RealNode,
    Release,
    active_operator_pod,
    create_qwen,
    delete_qwen,
    install_operator,
    ready_condition,
    standin_spec,
)
import test_real_node as real_node  # noqa: E402 - its test bodies run here too (assigned below, in the order to run)

HACK = REPO / "hack"
CACHE_DIR = Path(os.environ.get("QWEN_CACHE_DIR") or Path.home() / ".cache" / "qwen-operator")
CLUSTER_NAME = os.environ.get("KIND_CLUSTER_NAME", "qwen-e2e")
# kind-up.sh's ranges, routed from the host to the node.
POD_NETWORK = ipaddress.ip_network("10.246.0.0/16")
SERVICE_NETWORK = ipaddress.ip_network("10.98.0.0/16")

pytestmark = [pytest.mark.kind]


def cannot_run(reason: str) -> None:
    # Required with QWEN_KIND=1, and in CI (CI=true) unless QWEN_KIND=0: CI must show them passed, never skipped.
    if os.environ.get("QWEN_KIND") == "1" or (os.environ.get("CI") == "true" and os.environ.get("QWEN_KIND") != "0"):
        pytest.fail(f"the kind tests are required (QWEN_KIND=1, or CI=true) and cannot run: {reason}")
    pytest.skip(reason)


def docker_answers(env: dict[str, str]) -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30, env=env).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


def private_engine_problem() -> str | None:
    """Why hack/dockerd.sh cannot start an engine here, or None."""
    if os.geteuid() != 0:
        return "starting a Docker engine needs root"
    if not Path("/usr/sbin/dockerd").exists():
        return "no dockerd (Debian's docker.io, which `make tools` installs as root)"
    if shutil.which("docker") is None:
        return "no docker command"
    return None


def node_image_problem() -> str | None:
    """Why hack/kind-node-image.sh cannot assemble the local node image here, or None."""
    if os.geteuid() != 0:
        return "assembling it needs root (debootstrap, chroot)"
    missing = [tool for tool in ("debootstrap", "buildah", "containerd", "ctr", "go") if shutil.which(tool) is None]
    return f"missing {', '.join(missing)} (make tools installs them)" if missing else None


@contextlib.contextmanager
def kind_lock() -> Iterator[None]:
    """Held for the module: one kind cluster and one private engine (their names and files are fixed) per machine."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".kind.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A kind cluster (hack/kind-up.sh, without the chart), in the engine DOCKER_HOST names or a private one."""
    env = dict(os.environ)
    started_engine = False
    with kind_lock():
        try:
            if not docker_answers(env):
                problem = private_engine_problem()
                if problem:
                    cannot_run(f"no Docker engine answers and none can be started: {problem}")
                started_engine = True
                up = subprocess.run([str(HACK / "dockerd.sh"), "up"], capture_output=True, text=True, timeout=120)
                assert up.returncode == 0, f"hack/dockerd.sh up failed:\n{up.stderr[-3000:]}"
                env["DOCKER_HOST"] = up.stdout.strip().splitlines()[-1].split("=", 1)[1]
            if os.environ.get("QWEN_KIND_NODE_IMAGE") != "upstream":
                problem = node_image_problem()
                if problem:
                    cannot_run(f"no kind node image can be had: the local one cannot be assembled here ({problem}), "
                               "and kindest/node would come from a registry (QWEN_KIND_NODE_IMAGE=upstream takes it)")
                env["KIND_NODE_IMAGE"] = "local"
            env.update({"KIND_CLUSTER_NAME": CLUSTER_NAME, "QWEN_KIND_INSTALL_CHART": "0", "KUBECTL": str(KUBECTL)})
            up = subprocess.run([str(HACK / "kind-up.sh")], capture_output=True, text=True, timeout=3600, env=env)
            assert up.returncode == 0, f"hack/kind-up.sh failed:\n{up.stderr[-5000:]}"
            print(up.stderr)  # its timings (pytest -s, or the report of a failing test)
            yield Cluster(kubeconfig=up.stdout.strip().splitlines()[-1])
        finally:
            if os.environ.get("QWEN_KIND_KEEP") != "1":
                if "KIND_CLUSTER_NAME" in env:
                    subprocess.run([str(HACK / "kind-down.sh")], capture_output=True, timeout=600, env=env)
                if started_engine:
                    subprocess.run([str(HACK / "dockerd.sh"), "down"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def k8s(cluster: Cluster):
    return config.new_client_from_config(config_file=cluster.kubeconfig)


@pytest.fixture(scope="module")
def node(cluster: Cluster) -> RealNode:
    """The kind node, as the real node's tests see a node: its images, its networks; pods go anywhere."""
    images_file = CACHE_DIR / f"kind-{CLUSTER_NAME}.images"
    images = dict(line.split("=", 1) for line in images_file.read_text().split())
    return RealNode(Path(cluster.kubeconfig).parent, images, POD_NETWORK, SERVICE_NETWORK, scheduling={})


@pytest.fixture(scope="module")
def workspace(cluster, k8s, node):
    """A namespace for the QwenInferences, and the chart's operator (helm install, two pods) watching it."""
    core = client.CoreV1Api(k8s)
    suffix = uuid.uuid4().hex[:5]
    namespace = f"kind-{suffix}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace, labels={"qwen-tests": "true"})))
    core.create_namespaced_secret(namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="keys"), string_data={"api-key": real_node.API_KEY}))
    release = Release(name="qwen-operator", namespace=f"kind-system-{suffix}")
    operator = install_operator(cluster, k8s, node, release, namespace)
    # The QwenInferences of the later tests start now, side by side, so their waits overlap.
    create_qwen(k8s, namespace, "crashy", standin_spec(node))
    create_qwen(k8s, namespace, "rolling", standin_spec(node, replicas=2, pre_stop_sleep=5, shutdown_timeout=10))
    yield namespace, operator
    # Whatever the last test left (it uninstalls everything when it passes).
    operator.helm.uninstall(release, check=False)


# The first test carries the cluster's setup: where `make tools` did not assemble the node image ahead,
# that builds it (kubeadm, kubectl and the rest from their Go modules, debootstrap), longer than the default timeout.
@pytest.mark.timeout(3600)
def test_the_chart_runs_the_local_operator_image_on_the_kind_node(k8s, node, workspace):
    _, operator = workspace
    wait_until(lambda: all(p.status.phase == "Running" for p in operator.pods(k8s)), 60, "both operator pods Running")
    pods = operator.pods(k8s)
    assert len(pods) == 2
    for pod in pods:
        assert pod.spec.node_name == f"{CLUSTER_NAME}-control-plane"
        assert pod.spec.containers[0].image == node.images["operator"]
        assert all(c.ready for c in pod.status.container_statuses), "the operator's readiness probe (/healthz) did not pass"
    active_operator_pod(k8s, operator)  # exactly one of them holds the leader Lease


# The real node's fixture and test bodies, on the kind cluster (pytest collects them in this order).
chat = real_node.chat
test_ready_comes_from_the_real_probes_after_the_model_loads = real_node.test_ready_comes_from_the_real_probes_after_the_model_loads
test_the_api_key_guards_v1_through_the_service_and_health_and_metrics_stay_open = \
    real_node.test_the_api_key_guards_v1_through_the_service_and_health_and_metrics_stay_open


def test_a_port_forward_to_the_service_answers_the_openai_api(cluster, k8s, chat):
    process = subprocess.Popen(
        ["timeout", "120", str(KUBECTL), "--kubeconfig", cluster.kubeconfig, "port-forward", "-n", chat["namespace"],
         "--address", "127.0.0.1", f"service/{chat['name']}", ":8000"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        line = process.stdout.readline()  # "Forwarding from 127.0.0.1:PORT -> 8000"
        match = re.search(r"127\.0\.0\.1:(\d+) ->", line)
        assert match, f"kubectl port-forward did not start: {line}"
        base = f"http://127.0.0.1:{match.group(1)}"
        headers = {"Authorization": f"Bearer {real_node.API_KEY}", "Content-Type": "application/json"}
        models = json.loads(http_request(f"{base}/v1/models", headers))
        assert [m["id"] for m in models["data"]] == [SERVED_NAME]
        body = {"model": SERVED_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        answer = json.loads(http_request(f"{base}/v1/chat/completions", headers, json.dumps(body).encode()))
        assert answer["choices"][0]["message"]["content"]
    finally:
        process.terminate()
        process.wait(timeout=10)


def http_request(url: str, headers: dict[str, str], data: bytes | None = None) -> bytes:
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=10) as response:
        return response.read()


test_the_kubelet_restarts_an_engine_that_exits_and_the_status_follows = real_node.test_the_kubelet_restarts_an_engine_that_exits_and_the_status_follows
test_a_rolling_update_under_steady_load_fails_no_request = real_node.test_a_rolling_update_under_steady_load_fails_no_request


def children_of_qwen(k8s, namespace: str) -> list[str]:
    """Everything in the namespace that a QwenInference made (labelled managed-by qwen-operator)."""
    selector = "app.kubernetes.io/managed-by=qwen-operator"
    core, apps = client.CoreV1Api(k8s), client.AppsV1Api(k8s)
    found = [f"deployment/{d.metadata.name}" for d in apps.list_namespaced_deployment(namespace, label_selector=selector).items]
    found += [f"service/{s.metadata.name}" for s in core.list_namespaced_service(namespace, label_selector=selector).items]
    found += [f"configmap/{c.metadata.name}" for c in core.list_namespaced_config_map(namespace, label_selector=selector).items]
    found += [f"pod/{p.metadata.name}" for p in core.list_namespaced_pod(namespace, label_selector=selector).items]
    found += [f"pdb/{p.metadata.name}" for p in client.PolicyV1Api(k8s).list_namespaced_pod_disruption_budget(namespace, label_selector=selector).items]
    return found


def test_deleting_the_qwen_inferences_and_uninstalling_the_chart_leaves_nothing_behind(k8s, workspace, chat):
    namespace, operator = workspace
    custom = client.CustomObjectsApi(k8s)
    assert ready_condition(k8s, namespace, chat["name"]).get("status") == "True"
    assert children_of_qwen(k8s, namespace), "a Ready QwenInference with no children to look for"
    for item in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]:
        delete_qwen(k8s, namespace, item["metadata"]["name"])
    wait_until(lambda: not custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"], 120, "the QwenInferences to go")
    wait_until(lambda: not children_of_qwen(k8s, namespace), 180, f"no QwenInference children left in {namespace}", interval=1)
    operator.helm.uninstall(operator.release)
    wait_until(lambda: not operator.pods(k8s), 120, "the operator pods to go", interval=1)
    leftovers = client.AppsV1Api(k8s).list_namespaced_deployment(operator.release.namespace).items
    assert not leftovers, [d.metadata.name for d in leftovers]
    time.sleep(2)
    assert children_of_qwen(k8s, namespace) == []

