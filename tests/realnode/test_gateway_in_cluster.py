"""The gateway in-cluster on the real node: the chart (gateway.enabled, 2 replicas, Redis) in front of QwenInferences
whose pods run the stand-in image (not vLLM). Redis is Debian's redis-server, started by the test on the bridge
address (10.85.0.1), which the gateway pods reach. Every connection goes to a Service or pod address of the closed pod
network (checked first).

Acceptance of issue 13: routing by model; 401, 403 and 429 with Retry-After; the quota counted from usage; exact
limits across 2 gateway replicas with Redis; scale from zero with 20 concurrent requests held and all answered (the
time from the first request to the first token is printed); scale back to zero when idle."""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import subprocess
import time
import uuid

import pytest
from kubernetes import client

from conftest import install_crds, wait_until
from realnode_support import (ON_THE_REAL_NODE, Helm, Release, create_qwen, delete_qwen, get_qwen, helm_binary, qwen_pods,
                              ready_condition, real_node_or_skip, remove_namespaces, standin_spec, write_figure)

pytestmark = pytest.mark.realnode
BRIDGE = "10.85.0.1"
KEY_LABEL = "gateway.qwenops.io/key"


@pytest.fixture(scope="module")
def node(real_node_session, k8s):
    return real_node_or_skip(real_node_session.kubeconfig, k8s)


def free_bridge_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((BRIDGE, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis(node, tmp_path_factory):
    """redis-server on the bridge address only (the pods' only way out is the bridge; nothing else can reach it)."""
    port = free_bridge_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", BRIDGE, "--protected-mode", "no", "--save", "",
                                "--appendonly", "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: subprocess.run(["redis-cli", "-h", BRIDGE, "-p", str(port), "ping"], capture_output=True, text=True).stdout.strip() == "PONG",
                   20, "redis-server on the bridge")
        yield f"redis://{BRIDGE}:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def key_secret(name: str, key: str, **annotations: str) -> client.V1Secret:
    return client.V1Secret(metadata=client.V1ObjectMeta(name=name, labels={KEY_LABEL: "true"},
                                                        annotations={f"gateway.qwenops.io/{k}": v for k, v in annotations.items()}),
                           string_data={"key": key})


@pytest.fixture(scope="module")
def workspace(cluster, k8s, node, redis):
    """The chart with the operator and the gateway (2 replicas, Redis), keys in the release namespace, and the
    QwenInferences the tests use, started side by side."""
    core = client.CoreV1Api(k8s)
    suffix = uuid.uuid4().hex[:5]
    namespace, system = f"realnode-gw-{suffix}", f"realnode-gw-system-{suffix}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace, labels={"qwen-tests": "true"})))
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=system, labels={"qwen-tests": "true"})))
    keys = {name: "sk-" + uuid.uuid4().hex for name in ("all", "alpha-only", "slow", "metered")}
    core.create_namespaced_secret(system, key_secret("all", keys["all"], models="*", **{"requests-per-second": "100", "burst": "100"}))
    core.create_namespaced_secret(system, key_secret("alpha-only", keys["alpha-only"], models="gw-alpha"))
    core.create_namespaced_secret(system, key_secret("slow", keys["slow"], models="*", **{"requests-per-second": "0.2", "burst": "6"}))
    core.create_namespaced_secret(system, key_secret("metered", keys["metered"], models="gw-alpha", **{"tokens-per-minute": "40"}))
    create_qwen(k8s, namespace, "alpha", {**standin_spec(node), "model": {"name": "Qwen/Qwen3-0.6B-FP8", "servedName": "gw-alpha",
                                                                          "source": {"cache": {"enabled": False}}}})
    create_qwen(k8s, namespace, "beta", {**standin_spec(node), "model": {"name": "Qwen/Qwen3-0.6B-FP8", "servedName": "gw-beta",
                                                                         "source": {"cache": {"enabled": False}}}})
    sleepy = {**standin_spec(node, env={"VLLM_STANDIN_LOAD_SECONDS": "3"}), "replicas": 0,
              "model": {"name": "Qwen/Qwen3-0.6B-FP8", "servedName": "gw-sleepy", "source": {"cache": {"enabled": False}}},
              "autoscaling": {"enabled": True, "minReplicas": 0, "maxReplicas": 1, "scaleToZeroAfterSeconds": 20}}
    create_qwen(k8s, namespace, "sleepy", sleepy)
    # A release name of its own: the chart's cluster-scoped objects are named after it.
    release = Release(name=f"gw-{suffix}", namespace=system)
    helm = Helm(helm_binary(), cluster)
    install_crds(cluster)  # from crds/: the chart's own CRD templates stay off (crds.enabled), see install_operator
    repository, tag = node.images["operator"].rsplit(":", 1)
    small = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
    install = lambda values: helm.install(release, values)  # noqa: E731
    try:
        install_or_explain(node, core, system, install, {
            "crds": {"enabled": False}, "image": {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"},
            "replicaCount": 1, "leaderElection": {"enabled": False}, "watchNamespaces": [namespace],
            "nodeSelector": ON_THE_REAL_NODE["nodeSelector"], "tolerations": ON_THE_REAL_NODE["tolerations"], "resources": small,
            "env": [{"name": "QWEN_OPERATOR_RESYNC_SECONDS", "value": "10"}],
            "gateway": {"enabled": True, "replicas": 2, "redis": {"url": redis}, "resources": small, "terminationGracePeriodSeconds": 10,
                        "env": [{"name": "QWEN_GATEWAY_ACTIVITY_INTERVAL", "value": "5"}]},
        })
        yield {"namespace": namespace, "system": system, "keys": keys, "gateway": f"{release.fullname}-gateway"}
    finally:
        for item in client.CustomObjectsApi(k8s).list_namespaced_custom_object("inference.qwenops.io", "v1alpha1", namespace, "qweninferences")["items"]:
            delete_qwen(k8s, namespace, item["metadata"]["name"])
        helm.uninstall(release, check=False)
        remove_namespaces(k8s, namespace, system)


def install_or_explain(node, core, system: str, install, values: dict) -> None:
    """helm install; when it fails, the pods' states, the namespace's Events and the containers' last log lines (read
    from the node's /var/log/pods on this host) go into the failure."""
    try:
        install(values)
    except AssertionError as failure:
        lines = [str(failure)]
        for pod in core.list_namespaced_pod(system).items:
            lines.append(f"pod {pod.metadata.name}: {pod.status.phase} " + "; ".join(
                f"{c.name} ready={c.ready} restarts={c.restart_count} state={c.state.to_dict()}" for c in pod.status.container_statuses or []))
        lines += [f"event {e.involved_object.name}: {e.reason}: {e.message}" for e in core.list_namespaced_event(system).items][-30:]
        import glob
        for path in sorted(glob.glob(str(node.cluster_dir / "node" / "pod-logs" / f"{system}_*" / "*" / "*.log"))):
            lines.append(f"--- {path}\n" + "".join(open(path, errors="replace").readlines()[-25:]))
        raise AssertionError("\n".join(lines)) from None


def call(node, address: str, port: int, key: str | None, body: dict | None, path: str = "/v1/chat/completions",
         timeout: float = 60) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection(node.check_address(address), port, timeout=timeout)
    headers = {"Content-Type": "application/json", "Connection": "close", **({"Authorization": f"Bearer {key}"} if key else {})}
    try:
        connection.request("POST" if body is not None else "GET", path, body=json.dumps(body) if body is not None else None, headers=headers)
        answer = connection.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        connection.close()


def chat(model: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}


@pytest.fixture(scope="module")
def gateway(k8s, node, workspace):
    """The gateway Service's address, once both replicas are ready and route alpha and beta; the pods' addresses."""
    core = client.CoreV1Api(k8s)
    system = workspace["system"]
    service = core.read_namespaced_service(workspace["gateway"], system).spec.cluster_ip

    def pods() -> list[str]:
        found = core.list_namespaced_pod(system, label_selector="app.kubernetes.io/name=qwen-operator-gateway").items
        return [p.status.pod_ip for p in found if p.status.pod_ip and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]

    wait_until(lambda: len(pods()) == 2, 120, "two ready gateway pods")
    for name in ("alpha", "beta"):
        wait_until(lambda: ready_condition(k8s, workspace["namespace"], name).get("status") == "True", 180, f"{name} Ready")

    def routed() -> bool:
        for pod in pods():
            status, _, body = call(node, pod, 8080, workspace["keys"]["all"], None, "/v1/models")
            if status != 200 or {"gw-alpha", "gw-beta"} - {m["id"] for m in json.loads(body)["data"]}:
                return False
        return True

    wait_until(routed, 60, "both gateway replicas to route alpha and beta")
    return {"service": service, "pods": pods()}


def test_routing_by_model_through_the_gateway_service(node, workspace, gateway):
    for model in ("gw-alpha", "gw-beta"):
        status, _, body = call(node, gateway["service"], 80, workspace["keys"]["all"], chat(model))
        assert status == 200, body
        assert json.loads(body)["model"] == model
    status, _, body = call(node, gateway["service"], 80, workspace["keys"]["alpha-only"], None, "/v1/models")
    assert [m["id"] for m in json.loads(body)["data"]] == ["gw-alpha"]


def test_401_403_429_with_retry_after(node, workspace, gateway):
    service = gateway["service"]
    status, headers, body = call(node, service, 80, None, chat("gw-alpha"))
    assert status == 401 and json.loads(body)["error"]["code"] == "missing_api_key"
    status, _, body = call(node, service, 80, "sk-" + uuid.uuid4().hex, chat("gw-alpha"))
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    status, _, body = call(node, service, 80, workspace["keys"]["alpha-only"], chat("gw-beta"))
    assert status == 403 and json.loads(body)["error"]["type"] == "permission_error"


def test_exact_limits_across_two_replicas_with_redis(node, workspace, gateway):
    """Key 'slow': 0.2 requests a second, burst 6, shared through Redis: across both replicas exactly 6 pass, and the
    seventh waits 5 s (Retry-After)."""
    assert len(gateway["pods"]) == 2
    answers = [call(node, gateway["pods"][i % 2], 8080, workspace["keys"]["slow"], chat("gw-alpha")) for i in range(10)]
    codes = [status for status, _, _ in answers]
    assert codes == [200] * 6 + [429] * 4, codes
    status, headers, body = answers[6]
    assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(headers["Retry-After"]) <= 5


def test_quota_counted_from_usage(node, workspace, gateway):
    key = workspace["keys"]["metered"]
    left = 60 - time.time() % 60
    if left < 8:
        time.sleep(left + 0.5)  # one UTC minute for the whole test
    used, codes = 0, []
    while used < 40 and len(codes) < 20:
        status, _, body = call(node, gateway["service"], 80, key, chat("gw-alpha"))
        codes.append(status)
        if status == 200:
            used += json.loads(body)["usage"]["total_tokens"]
    status, headers, body = call(node, gateway["service"], 80, key, chat("gw-alpha"))
    assert status == 429, body
    error = json.loads(body)["error"]
    assert error["type"] == "tokens" and "40 tokens per minute" in error["message"]
    assert abs(int(headers["Retry-After"]) - (60 - time.time() % 60)) <= 2
    write_figure("gateway_quota_tokens_used_before_refusal", used)


def test_scale_from_zero_with_20_held_requests_then_back_to_zero(k8s, node, workspace, gateway):
    namespace = workspace["namespace"]
    wait_until(lambda: ready_condition(k8s, namespace, "sleepy").get("reason") == "ScaledToZero", 60, "sleepy asleep")
    assert not qwen_pods(k8s, namespace, "sleepy")
    key = workspace["keys"]["all"]

    def streamed() -> tuple[int, float | None]:
        sent = time.monotonic()
        connection = http.client.HTTPConnection(node.check_address(gateway["service"]), 80, timeout=300)
        try:
            connection.request("POST", "/v1/chat/completions", body=json.dumps(chat("gw-sleepy", stream=True)),
                               headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
            answer = connection.getresponse()
            if answer.status != 200:
                return answer.status, None
            first = None
            while line := answer.readline():
                if first is None and b'"content": "stand' in line:
                    first = time.monotonic() - sent
            return 200, first
        finally:
            connection.close()

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = [f.result(timeout=400) for f in [pool.submit(streamed) for _ in range(20)]]
    assert [code for code, _ in results] == [200] * 20, results
    first_token = min(t for _, t in results if t is not None)
    write_figure("gateway_scale_from_zero_first_token_seconds", round(first_token, 2))
    write_figure("gateway_scale_from_zero_all_20_answered_seconds", round(time.monotonic() - started, 2))
    # Idle for scaleToZeroAfterSeconds (20 s) after the last stamp: spec.replicas 0 and the pod gone.
    idle_from = time.monotonic()
    wait_until(lambda: get_qwen(k8s, namespace, "sleepy")["spec"]["replicas"] == 0, 90, "sleepy back to zero")
    wait_until(lambda: not qwen_pods(k8s, namespace, "sleepy"), 60, "sleepy's pod to go")
    write_figure("gateway_scale_back_to_zero_seconds_after_last_request", round(time.monotonic() - idle_from, 1))
    # The gateway says so.
    wait_until(lambda: json.loads(call(node, gateway["pods"][0], 8080, None, None, "/health/detailed")[2])["models"]["gw-sleepy"]["state"]
               == "scaled-to-zero", 30, "the gateway to see it scaled to zero")
