"""On the real node, real containers: the chart runs the operator image as pods, and the vLLM
stand-in image (tests/standin, not vLLM) answers the operator's real vLLM command line. What kwok
can only pretend here executes: probes, kubelet restarts, the preStop sleep and drain in a rolling
update, uid 1000 on a read-only root, the API key through a Service, leader failover.

Addresses used: pod and Service addresses of the real node's closed pod network (checked by
RealNode.check_address) and the apiserver on loopback. Measured figures are printed as JSON lines
({"figure": ..., "value": ...}; run pytest with -s to see them).
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone

import pytest
from kubernetes import client

from conftest import wait_until
from realnode_support import (
    SERVED_NAME,
    Release,
    SteadyClients,
    active_operator_pod,
    create_qwen,
    delete_qwen,
    get_qwen,
    http_call,
    install_operator,
    listening,
    patch_qwen_spec,
    qwen_pods,
    ready_condition,
    real_node_or_skip,
    remove_namespaces,
    server_status,
    service_address,
    standin_spec,
    wait_for_service_to_route,
    write_figure,
)

pytestmark = [pytest.mark.cluster, pytest.mark.realnode]

API_KEY = "sk-realnode-" + uuid.uuid4().hex[:8]


def seconds_between(start: str, end: str) -> float:
    """Seconds between two API timestamps (whole seconds: 2026-12-01T16:15:51Z)."""
    def parse(stamp: str) -> datetime:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)

    return (parse(end) - parse(start)).total_seconds()


@pytest.fixture(scope="module")
def node(real_node_session, k8s):
    return real_node_or_skip(real_node_session.kubeconfig, k8s)


@pytest.fixture(scope="module")
def workspace(cluster, k8s, node):
    """A namespace for the QwenInferences, and the chart's operator (two pods: leader and standby) watching it."""
    core = client.CoreV1Api(k8s)
    suffix = uuid.uuid4().hex[:5]
    namespace = f"realnode-{suffix}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace, labels={"qwen-tests": "true"})))
    core.create_namespaced_secret(namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="keys"), string_data={"api-key": API_KEY}))
    release = Release(name="qwen-operator", namespace=f"realnode-system-{suffix}")
    operator = install_operator(cluster, k8s, node, release, namespace)
    # The QwenInferences of the later tests start now, side by side, so their waits overlap.
    create_qwen(k8s, namespace, "slow", standin_spec(node, env={"VLLM_STANDIN_LOAD_SECONDS": "600"}, startup_timeout=30))
    create_qwen(k8s, namespace, "crashy", standin_spec(node))
    # The preStop sleep at the production default (10 s): it is the time the router and the Service have to stop sending
    # to a terminating pod, and 5 s was once not enough for the router on kind on a loaded machine (1 of 1,064 failed).
    create_qwen(k8s, namespace, "rolling", standin_spec(node, replicas=2, pre_stop_sleep=10, shutdown_timeout=10))
    try:
        yield namespace, operator
    finally:
        for item in client.CustomObjectsApi(k8s).list_namespaced_custom_object("inference.qwenops.io", "v1alpha1", namespace, "qweninferences")["items"]:
            delete_qwen(k8s, namespace, item["metadata"]["name"])
        operator.helm.uninstall(release, check=False)
        remove_namespaces(k8s, namespace, release.namespace)


@pytest.fixture(scope="module")
def chat(k8s, node, workspace):
    """One QwenInference served by the stand-in on the real node, with an API key, after a 20 s load."""
    namespace, _ = workspace
    create_qwen(k8s, namespace, "chat", standin_spec(node, env={"VLLM_STANDIN_LOAD_SECONDS": "20"}, startup_timeout=120, api_key_secret="keys"))
    applied = time.monotonic()
    listened_at = ready_at = None
    deadline = applied + 180
    while ready_at is None and time.monotonic() < deadline:
        pods = qwen_pods(k8s, namespace, "chat")
        if listened_at is None and pods and pods[0].status.pod_ip and listening(node, pods[0].status.pod_ip):
            listened_at = time.monotonic()
        if ready_condition(k8s, namespace, "chat").get("status") == "True":
            ready_at = time.monotonic()
        time.sleep(0.25)
    assert ready_at is not None, f"chat not Ready in 180s: {ready_condition(k8s, namespace, 'chat')}"
    return {"namespace": namespace, "name": "chat", "applied": applied, "listened_at": listened_at, "ready_at": ready_at}


def test_the_chart_runs_the_operator_image_as_pods_on_the_real_node(k8s, node, workspace):
    _, operator = workspace
    pods = operator.pods(k8s)
    assert len(pods) == 2
    for pod in pods:
        assert pod.spec.node_name == "qwen-real-node" and pod.status.phase == "Running"
        assert pod.spec.containers[0].image == node.images["operator"]
        assert pod.spec.service_account_name == "qwen-operator"
        assert all(c.ready for c in pod.status.container_statuses), "the operator's readiness probe (/healthz) did not pass"


def test_ready_comes_from_the_real_probes_after_the_model_loads(k8s, node, chat):
    """With a 20 s load, the stand-in listens only after it: Ready is never reported before that."""
    assert chat["listened_at"] is not None, "the stand-in never listened"
    assert chat["listened_at"] - chat["applied"] >= 20
    assert chat["ready_at"] >= chat["listened_at"], "Ready was reported before the engine listened"
    write_figure("apply_to_ready_seconds_with_20s_load", round(chat["ready_at"] - chat["applied"], 1))
    write_figure("listen_to_ready_seconds", round(chat["ready_at"] - chat["listened_at"], 1))
    status = get_qwen(k8s, chat["namespace"], "chat")["status"]
    assert status["readyReplicas"] == 1 and status["endpoint"] == f"http://chat.{chat['namespace']}.svc:8000/v1"


def test_the_api_key_guards_v1_through_the_service_and_health_and_metrics_stay_open(k8s, node, chat):
    address = service_address(k8s, chat["namespace"], "chat")
    write_figure("ready_to_service_routing_seconds", round(wait_for_service_to_route(node, address), 1))
    assert http_call(node, address, "GET", "/v1/models")[0] == 401
    status, body = http_call(node, address, "GET", "/v1/models", token=API_KEY)
    assert status == 200 and [m["id"] for m in json.loads(body)["data"]] == [SERVED_NAME]
    completion = {"model": SERVED_NAME, "prompt": "hi"}
    assert http_call(node, address, "POST", "/v1/completions", completion)[0] == 401
    assert http_call(node, address, "POST", "/v1/completions", completion, token="sk-wrong")[0] == 401
    assert http_call(node, address, "POST", "/v1/completions", completion, token=API_KEY)[0] == 200
    assert http_call(node, address, "GET", "/health")[0] == 200
    status, metrics = http_call(node, address, "GET", "/metrics")
    assert status == 200 and b"vllm:num_requests_waiting" in metrics


def test_the_engine_runs_as_uid_1000_on_a_read_only_root_and_all_its_writes_succeed(k8s, node, chat):
    (pod,) = qwen_pods(k8s, chat["namespace"], "chat")
    container = pod.spec.containers[0]
    assert container.security_context.read_only_root_filesystem is True
    state = json.loads(http_call(node, pod.status.pod_ip, "GET", "/stand-in/state")[1])
    assert state["uid"] == 1000 and state["gid"] == 1000
    assert state["root_read_only"] is True, "the container could write to its root filesystem"
    # The vLLM cache and HOME on /scratch, HF_HOME on /model-cache, the IPC socket in /tmp, shared memory in /dev/shm.
    written = state["written"]
    assert [path.split("/")[1] for path in written] == ["scratch", "model-cache", "tmp", "dev"], written
    assert written[3].startswith("/dev/shm/")


def test_a_load_longer_than_the_startup_budget_is_reported(k8s, node, workspace):
    namespace, _ = workspace
    # "slow" loads for 600 s with a startup budget of 30 s (made with the workspace).
    # The kubelet kills the engine after the startup probe's budget (3 x 10 s) and restarts it.
    def restarted_and_reported():
        pods = qwen_pods(k8s, namespace, "slow")
        container = server_status(pods[0]) if pods else None
        ready = ready_condition(k8s, namespace, "slow")
        if container and container.restart_count >= 1 and ready.get("status") == "False" and ready.get("reason") != "ModelLoading":
            return container, ready
        return None

    container, ready = wait_until(restarted_and_reported, 150, "the startup budget to run out and the status to say so", interval=1)
    assert container.last_state.terminated is not None and container.last_state.terminated.exit_code != 0
    assert ready["reason"] in ("StartupTimeout", "StartupProbeFailed", "CrashLoop"), ready
    assert "restart" in ready["message"] or "startup" in ready["message"].lower(), ready
    # It was the kubelet's startup probe that gave up, not the engine.
    pod_name = qwen_pods(k8s, namespace, "slow")[0].metadata.name
    events = client.CoreV1Api(k8s).list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod_name}").items
    assert any("failed startup probe" in (e.message or "") for e in events), [e.message for e in events]
    delete_qwen(k8s, namespace, "slow")


def test_the_kubelet_restarts_an_engine_that_exits_and_the_status_follows(k8s, node, workspace):
    namespace, _ = workspace
    ready = wait_until(lambda: (c := ready_condition(k8s, namespace, "crashy")).get("status") == "True" and c, 120, "crashy Ready", interval=0.25)
    created = get_qwen(k8s, namespace, "crashy")["metadata"]["creationTimestamp"]
    write_figure("apply_to_ready_seconds_without_load", seconds_between(created, ready["lastTransitionTime"]))
    (pod,) = qwen_pods(k8s, namespace, "crashy")
    # The engine exits now, and its next two starts crash (the stand-in's fault switch); no pod is deleted.
    assert http_call(node, pod.status.pod_ip, "PUT", "/stand-in/fault?mode=exit&crash_starts=2")[0] == 204
    crash = wait_until(lambda: (c := ready_condition(k8s, namespace, "crashy")).get("reason") == "CrashLoop" and c, 120,
                       "Ready=False CrashLoop", interval=0.5)
    assert crash["status"] == "False" and "keeps restarting" in crash["message"]
    wait_until(lambda: ready_condition(k8s, namespace, "crashy").get("status") == "True", 180, "crashy Ready again after the crashes", interval=1)
    (same_pod,) = qwen_pods(k8s, namespace, "crashy")
    assert same_pod.metadata.uid == pod.metadata.uid, "the pod was replaced: the kubelet should have restarted the container"
    assert server_status(same_pod).restart_count >= 3
    write_figure("restarts_before_recovery", server_status(same_pod).restart_count)
    delete_qwen(k8s, namespace, "crashy")


def test_a_rolling_update_under_steady_load_fails_no_request(k8s, node, workspace):
    """2 replicas, maxNumSeqs changed under load: preStop sleep, drain and readiness gating together."""
    namespace, _ = workspace
    wait_until(lambda: ready_condition(k8s, namespace, "rolling").get("status") == "True", 120, "rolling Ready with 2 replicas")
    old_pods = {p.metadata.uid for p in qwen_pods(k8s, namespace, "rolling")}
    address = service_address(k8s, namespace, "rolling")
    wait_for_service_to_route(node, address)
    started = time.monotonic()
    with SteadyClients(node, address) as clients:
        time.sleep(2)
        patch_qwen_spec(k8s, namespace, "rolling", {"engine": {"maxNumSeqs": 128}})

        def rolled_out():
            pods = qwen_pods(k8s, namespace, "rolling")
            uids = {p.metadata.uid for p in pods}
            ready = ready_condition(k8s, namespace, "rolling")
            return len(pods) == 2 and not uids & old_pods and ready.get("status") == "True" and ready.get("observedGeneration") == 2

        wait_until(rolled_out, 240, "the rollout to finish with 2 new ready pods", interval=1)
        time.sleep(3)
    total = clients.ok + len(clients.failures)
    write_figure("rolling_update_requests", {"total": total, "failed": len(clients.failures), "seconds": round(time.monotonic() - started, 1)})
    assert clients.ok > 100, f"too few requests to prove anything: {clients.ok}"
    assert clients.failures == [], f"{len(clients.failures)} of {total} requests failed: {clients.failures[:5]}"
    for pod in qwen_pods(k8s, namespace, "rolling"):
        assert "--max-num-seqs" in pod.spec.containers[0].args and pod.spec.containers[0].args[pod.spec.containers[0].args.index("--max-num-seqs") + 1] == "128"
    delete_qwen(k8s, namespace, "rolling")


def test_killing_the_active_operator_pod_hands_over_to_the_other(k8s, node, workspace):
    namespace, operator = workspace
    wait_until(lambda: len([p for p in operator.pods(k8s) if p.status.phase == "Running"]) == 2, 120, "two operator pods")
    active = active_operator_pod(k8s, operator)
    client.CoreV1Api(k8s).delete_namespaced_pod(active, operator.release.namespace)
    killed = time.monotonic()

    def other_leads():
        try:
            return active_operator_pod(k8s, operator) != active
        except AssertionError:  # nobody holds the Lease for a moment
            return False

    wait_until(other_leads, 60, "another operator pod to take the leader Lease", interval=0.2)
    took_over = time.monotonic()
    write_figure("operator_failover_seconds", round(took_over - killed, 1))
    create_qwen(k8s, namespace, "after-failover", standin_spec(node))
    wait_until(lambda: (get_qwen(k8s, namespace, "after-failover").get("status") or {}).get("observedGeneration") == 1,
               60, "the new leader to reconcile a new QwenInference", interval=0.25)
    wait_until(lambda: ready_condition(k8s, namespace, "after-failover").get("status") == "True", 120, "after-failover Ready")
    delete_qwen(k8s, namespace, "after-failover")
