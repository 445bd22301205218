"""The router on the real node (issue 12): vllm-router (images/router, the real wheel) in front of vLLM stand-ins
(tests/standin: not vLLM), discovering them through the API server with its own ServiceAccount and Role.

One QwenInference carries the module, in order: it starts with one engine and two router replicas; scaling the
engines 1 -> 3 adds them to every router replica (the time is reported); requests through the Service reach
every engine (under round_robin: vllm-router 0.1.17's cache_aware puts prefix misses on one engine while loads are
equal, see the README); requests with one prefix stick to one engine per router replica under cache_aware; the API key
still guards /v1/* through the router while /health and the metrics stay open; deleting an engine pod under
load fails fewer than 1% of the requests (the figure is reported).

Which engine served a request is read from the engines' own counters (vllm:request_success_total on each pod's
/metrics). Every connection goes to a pod or Service address of the real node's closed network (checked first);
the operator runs as a subprocess on the host and talks to the apiserver on loopback. Figures are printed as
JSON lines (pytest -s)."""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from pathlib import Path

import pytest
from kubernetes import client

from conftest import start_operator, stop_operator, install_crds, wait_until
from realnode_support import (
    SERVED_NAME,
    create_qwen,
    delete_qwen,
    get_qwen,
    http_call,
    patch_qwen_spec,
    qwen_pods,
    real_node_or_skip,
    service_address,
    standin_spec,
    wait_for_service_to_route,
    write_figure,
)

pytestmark = [pytest.mark.cluster, pytest.mark.realnode]

NAME = "routed"
API_KEY = "sk-router-" + uuid.uuid4().hex[:8]
ROUTER_SELECTOR = f"app.kubernetes.io/name=qwen-router,app.kubernetes.io/instance={NAME}"
METRICS_PORT = 29000
# How long scaling may take before the test fails (the figure is reported; the bound in the README is this).
SCALE_BOUND_SECONDS = 90
LOAD_THREADS = 4


@pytest.fixture(scope="module")
def node(real_node_session, k8s):
    return real_node_or_skip(real_node_session.kubeconfig, k8s)


@pytest.fixture(scope="module")
def routed(cluster, k8s, node, tmp_path_factory):
    """The namespace, the API key Secret, the operator (a host subprocess serving this namespace only) and the
    routed QwenInference: one engine to begin with, two router replicas, Ready."""
    core = client.CoreV1Api(k8s)
    namespace = f"router-{uuid.uuid4().hex[:5]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace, labels={"qwen-tests": "true"})))
    core.create_namespaced_secret(namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="keys"), string_data={"api-key": API_KEY}))
    install_crds(cluster)
    log = tmp_path_factory.mktemp("router-operator") / "operator.log"
    operator = start_operator(cluster, log, "--namespace", namespace, resync=5.0)
    spec = standin_spec(node, replicas=1, api_key_secret="keys")
    spec["engine"]["deepHealth"] = {"enabled": False}  # tests/realnode/test_deep_health.py covers the agent; fewer containers here
    spec["router"] = {"enabled": True, "replicas": 2, "resources": {"cpu": "100m", "memory": "128Mi"}}
    try:
        create_qwen(k8s, namespace, NAME, spec)
        wait_until(lambda: condition(k8s, namespace, "Ready").get("status") == "True", 180,
                   f"{NAME} Ready; last: {condition(k8s, namespace, 'Ready')}; Routing: {condition(k8s, namespace, 'Routing')}")
        wait_for_service_to_route(node, service_address(k8s, namespace, NAME))
        yield namespace
    finally:
        delete_qwen(k8s, namespace, NAME)
        stop_operator(operator)
        core.delete_namespace(namespace)
        wait_until(lambda: not [p for p in core.list_pod_for_all_namespaces(field_selector="spec.nodeName=qwen-real-node").items
                                if p.metadata.namespace == namespace], 120, "the router test's pods to go")
        assert "Traceback" not in operator.log_text(), operator.log_text()[-5000:]


def condition(k8s, namespace: str, type_: str) -> dict:
    return next((c for c in (get_qwen(k8s, namespace, NAME).get("status") or {}).get("conditions", []) if c["type"] == type_), {})


def router_pods(k8s, namespace: str) -> list[client.V1Pod]:
    pods = client.CoreV1Api(k8s).list_namespaced_pod(namespace, label_selector=ROUTER_SELECTOR).items
    return [p for p in pods if not p.metadata.deletion_timestamp and p.status.pod_ip]


def workers_of(node, router: client.V1Pod) -> dict[str, bool]:
    """The engines one router replica knows (its GET /workers), by URL, with its health verdict."""
    status, body = http_call(node, router.status.pod_ip, "GET", "/workers", timeout=3)
    assert status == 200, body
    return {w["url"]: w["is_healthy"] for w in json.loads(body)["workers"]}


def engine_urls(k8s, namespace: str, ready_only: bool = True) -> set[str]:
    pods = ready_engines(k8s, namespace) if ready_only else qwen_pods(k8s, namespace, NAME)
    return {f"http://{p.status.pod_ip}:8000" for p in pods if p.status.pod_ip}


def ready_engines(k8s, namespace: str) -> list[client.V1Pod]:
    return [p for p in qwen_pods(k8s, namespace, NAME) if p.status.pod_ip and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]


def served_counts(node, k8s, namespace: str) -> dict[str, float]:
    """Completions each ready engine pod has served (the stand-in's vllm:request_success_total), by pod IP."""
    counts = {}
    for pod in ready_engines(k8s, namespace):
        status, body = http_call(node, pod.status.pod_ip, "GET", "/metrics", timeout=3)
        assert status == 200
        counts[pod.status.pod_ip] = sum(float(m.group(1)) for m in re.finditer(r"^vllm:request_success_total\{[^}]*\} (\S+)$", body.decode(), re.M))
    return counts


def router_rss_mib(pod_uid: str) -> float:
    """Resident memory of a router pod's processes (vllm-router; the pause process is left out), read from /proc on
    this host: the real node's containers are this host's processes (cgroupfs paths carry the pod's uid)."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if pod_uid not in Path(f"/proc/{pid}/cgroup").read_text() or Path(f"/proc/{pid}/comm").read_text().strip() == "pause":
                continue
            total += next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return round(total / 1024, 1)


def complete(node, address: str, prompt: str, token: str | None = API_KEY, timeout: float = 10) -> tuple[int, bytes]:
    request = {"model": SERVED_NAME, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1}
    return http_call(node, address, "POST", "/v1/chat/completions", request, token, timeout=timeout)


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {ip: after.get(ip, 0) - before.get(ip, 0) for ip in after}


def test_scaling_engines_1_to_3_adds_them_to_every_router(node, k8s, routed):
    namespace = routed
    routers = router_pods(k8s, namespace)
    assert len(routers) == 2
    # To begin with, each router knows the one engine.
    assert all(set(workers_of(node, r)) == engine_urls(k8s, namespace) for r in routers)
    started = time.monotonic()
    patch_qwen_spec(k8s, namespace, NAME, {"replicas": 3})
    ready_at: dict[str, float] = {}
    known_at: dict[tuple[str, str], float] = {}

    listed: dict[str, set[str]] = {}

    def all_known() -> bool:
        # Waits for the final three (should the engines roll as they scale): the QwenInference Ready (rolled out)
        # and every router listing exactly the ready engines as healthy.
        now = time.monotonic() - started
        ready = engine_urls(k8s, namespace)
        for url in ready:
            ready_at.setdefault(url, now)
        for router in routers:
            listed[router.metadata.name] = {url for url, healthy in workers_of(node, router).items() if healthy}
            for url in listed[router.metadata.name]:
                known_at.setdefault((router.metadata.name, url), now)
        done = len(ready) == 3 and all(urls == ready for urls in listed.values())
        return done and condition(k8s, namespace, "Ready").get("status") == "True" and get_qwen(k8s, namespace, NAME)["status"]["readyReplicas"] == 3

    wait_until(all_known, SCALE_BOUND_SECONDS, f"3 engines in every router replica; listed: {listed}", interval=0.2)
    final = engine_urls(k8s, namespace)
    lag = max(known_at[(r.metadata.name, url)] - ready_at[url] for r in routers for url in final)
    write_figure("router: engines 1 -> 3, from the patch until every router replica lists the 3 final engines (s)",
                 round(max(known_at[(r.metadata.name, url)] for r in routers for url in final), 1))
    write_figure("router: a new engine's Ready (as the test polls it) until every router lists it, worst (s)", round(lag, 1))
    # The status agrees: two router replicas, three engines to route over.
    wait_until(lambda: condition(k8s, namespace, "Routing").get("message", "").startswith("2/2 router replicas ready, routing over the 3"), 30,
               f"Routing to count 3 engines; last: {condition(k8s, namespace, 'Routing')}")


def set_policy(node, k8s, namespace: str, policy: str) -> None:
    """Changes spec.router.policy and waits until both router replicas run it and list the 3 engines as healthy."""
    patch_qwen_spec(k8s, namespace, NAME, {"router": {"policy": policy}})

    def rolled() -> bool:
        pods = [p for p in router_pods(k8s, namespace) if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]
        every = client.CoreV1Api(k8s).list_namespaced_pod(namespace, label_selector=ROUTER_SELECTOR).items
        return (len(pods) == len(every) == 2 and all(p.spec.containers[0].args[p.spec.containers[0].args.index("--policy") + 1] == policy for p in pods)
                and all({u for u, ok in workers_of(node, p).items() if ok} == engine_urls(k8s, namespace) for p in pods))

    wait_until(rolled, 90, f"the router replicas to run {policy} with the 3 engines", interval=0.5)


def test_requests_through_the_service_reach_every_engine(node, k8s, routed):
    """round_robin: the router sends requests to every engine it discovered. (cache_aware need not: vllm-router
    0.1.17 sends prefix misses to one engine while the engines' loads are equal; see the README.)"""
    namespace = routed
    address = service_address(k8s, namespace, NAME)
    set_policy(node, k8s, namespace, "round_robin")
    before = served_counts(node, k8s, namespace)
    assert len(before) == 3
    for i in range(60):
        status, body = complete(node, address, f"question {i}: " + uuid.uuid4().hex * 8)
        assert status == 200, body
    spread = delta(served_counts(node, k8s, namespace), before)
    write_figure("router: 60 distinct prompts through the Service under round_robin, per engine", sorted(spread.values()))
    assert sum(spread.values()) == 60 and all(n > 0 for n in spread.values()), spread
    set_policy(node, k8s, namespace, "cache_aware")  # back to the default for what follows


def test_same_prefix_requests_stick_to_one_engine_per_router(node, k8s, routed):
    namespace = routed
    system = "You are a support assistant for ACME. " * 40  # a long shared prefix (a system prompt)
    engines_used = set()
    for router in router_pods(k8s, namespace):
        before = served_counts(node, k8s, namespace)
        for i in range(20):
            status, body = complete(node, router.status.pod_ip, f"{system} User {i} asks: {uuid.uuid4().hex}")
            assert status == 200, body
        spread = {ip: n for ip, n in delta(served_counts(node, k8s, namespace), before).items() if n}
        write_figure(f"router: 20 same-prefix prompts through router {router.metadata.name}, per engine", spread)
        assert len(spread) == 1 and sum(spread.values()) == 20, spread  # one engine holds the prefix
        engines_used |= set(spread)
    # Through the Service each router replica keeps its own prefix tree: a prefix lands on one engine per router.
    assert len(engines_used) <= 2


def test_the_api_key_guards_v1_through_the_router_and_health_and_metrics_stay_open(node, k8s, routed):
    namespace = routed
    address = service_address(k8s, namespace, NAME)
    assert complete(node, address, "no key", token=None)[0] == 401  # the engine refuses: the router passes the header through
    assert complete(node, address, "wrong key", token="sk-wrong")[0] == 401
    assert complete(node, address, "right key")[0] == 200
    assert http_call(node, address, "GET", "/health")[0] == 200
    router = router_pods(k8s, namespace)[0]
    status, body = http_call(node, router.status.pod_ip, "GET", "/metrics", port=METRICS_PORT)
    assert status == 200 and b"vllm_router_active_workers 3" in body, body[:2000]
    status, body = http_call(node, address, "GET", "/readiness")
    assert status == 200 and json.loads(body)["healthy_workers"] == 3, body


def test_deleting_an_engine_pod_under_load_fails_under_one_percent(node, k8s, routed):
    namespace = routed
    address = service_address(k8s, namespace, NAME)
    results = {"ok": 0, "failed": []}
    lock, stop = threading.Lock(), threading.Event()

    def client_loop(index: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            prompt = f"prefix {n % 8}: " + "context " * 50 + f"turn {index}-{n}"  # 8 shared prefixes, spread over the engines
            try:
                status, body = complete(node, address, prompt, timeout=30)
                failure = None if status == 200 else f"HTTP {status}: {body[:200]!r}"
            except OSError as error:
                failure = f"{type(error).__name__}: {error}"
            with lock:
                if failure is None:
                    results["ok"] += 1
                else:
                    results["failed"].append(failure)

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(LOAD_THREADS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(5)
        before = served_counts(node, k8s, namespace)
        victim = max(qwen_pods(k8s, namespace, NAME), key=lambda p: before.get(p.status.pod_ip, 0))  # the busiest engine
        client.CoreV1Api(k8s).delete_namespaced_pod(victim.metadata.name, namespace)
        # Load goes on until the replacement serves and every router knows it.
        def replaced() -> bool:
            pods = qwen_pods(k8s, namespace, NAME)
            return victim.metadata.name not in {p.metadata.name for p in pods} and len(engine_urls(k8s, namespace)) == 3

        wait_until(replaced, 120, "the replacement engine Ready")
        wait_until(lambda: all(set(workers_of(node, r)) == engine_urls(k8s, namespace) for r in router_pods(k8s, namespace)), 60,
                   "every router to drop the deleted engine and add its replacement")
        time.sleep(3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=40)
    total = results["ok"] + len(results["failed"])
    ratio = len(results["failed"]) / total
    write_figure("router: engine pod deleted under load (requests, failed, failed %)",
                 [total, len(results["failed"]), round(100 * ratio, 3)])
    write_figure("router: RSS of each router container after the load (MiB)", [router_rss_mib(p.metadata.uid) for p in router_pods(k8s, namespace)])
    assert total > 200
    assert ratio < 0.01, results["failed"][:10]
