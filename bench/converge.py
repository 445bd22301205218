"""Convergence benchmark: how fast the operator takes N QwenInferences to Ready, what one reconcile
costs, and what a steady state costs. Runs against the local control plane (hack/cluster.sh) with
the operator as a subprocess; everything on 127.0.0.1; stops by itself.

    .venv/bin/python bench/converge.py [--count 20] [--resync 10]     (or: make bench)

Prints the figures; nothing is asserted here (the tests do that).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from kubernetes import client, config

from qwen_operator.k8s.client import WRITE_VERBS

REPO = Path(__file__).resolve().parent.parent
GROUP, VERSION, PLURAL = "inference.qwenops.io", "v1alpha1", "qweninferences"


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=3600).stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def total(samples: dict[str, float], prefix: str, verbs: set[str] | None = None) -> float:
    return sum(v for k, v in samples.items() if k.startswith(prefix) and (verbs is None or any(f'verb="{x}"' in k for x in verbs)))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The default cluster has 24 FP8-capable fake GPUs (3 x L4); FP8 models are kept off its T4 node.
    parser.add_argument("--count", type=int, default=20, help="QwenInferences to create, one GPU each (default 20; at most 24 fit)")
    parser.add_argument("--resync", type=float, default=10.0, help="operator resync seconds (default 10)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    args = parser.parse_args()

    cluster_was_running = subprocess.run([str(REPO / "hack/cluster.sh"), "status"], capture_output=True).returncode == 0
    t0 = time.monotonic()
    sh(str(REPO / "hack/cluster.sh"), "up")
    cluster_up_seconds = time.monotonic() - t0
    kubeconfig = sh(str(REPO / "hack/cluster.sh"), "kubeconfig")
    sh(str(REPO / "hack/cluster.sh"), "crds")
    api = config.new_client_from_config(config_file=kubeconfig)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)

    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="bench-operator-", suffix=".log", delete=False)
    env = {**os.environ, "KUBECONFIG": kubeconfig, "QWEN_OPERATOR_RESYNC_SECONDS": str(args.resync),
           "QWEN_OPERATOR_METRICS_PORT": str(port), "QWEN_OPERATOR_METRICS_ADDRESS": "127.0.0.1"}
    operator = subprocess.Popen([str(REPO / ".venv/bin/qwen-operator"), "run", "--namespace", namespace, "--standalone"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                scrape(port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

        names = [f"bench-{i:03d}" for i in range(args.count)]
        created: dict[str, float] = {}
        start = time.monotonic()
        for name in names:
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "QwenInference", "metadata": {"name": name},
                    "spec": {"replicas": 1}}
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
            created[name] = time.monotonic()
        ready_at: dict[str, float] = {}
        while len(ready_at) < len(names) and time.monotonic() - start < args.timeout:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
            now = time.monotonic()
            for item in items:
                name = item["metadata"]["name"]
                conditions = {c["type"]: c["status"] for c in (item.get("status") or {}).get("conditions", [])}
                if name not in ready_at and conditions.get("Ready") == "True":
                    ready_at[name] = now
            time.sleep(0.1)
        all_ready = time.monotonic() - start
        latencies = [ready_at[n] - created[n] for n in ready_at]

        # Steady state: nothing changes for three resync periods.
        time.sleep(2)
        before = scrape(port)
        time.sleep(3 * args.resync + 1)
        after = scrape(port)
        steady_writes = total(after, "qwen_operator_api_requests_total{", WRITE_VERBS) - total(before, "qwen_operator_api_requests_total{", WRITE_VERBS)
        steady_reads = total(after, "qwen_operator_api_requests_total{", {"get", "list"}) - total(before, "qwen_operator_api_requests_total{", {"get", "list"})
        reconciles = total(after, "qwen_operator_reconciles_total{")
        steady_reconciles = reconciles - total(before, "qwen_operator_reconciles_total{")
        duration_sum = after.get("qwen_operator_reconcile_duration_seconds_sum", 0.0)
        requests_total = total(after, "qwen_operator_api_requests_total{")

        # Cleanup: delete every QwenInference; the garbage collector removes the children.
        start_delete = time.monotonic()
        for name in names:
            custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        selector = "app.kubernetes.io/managed-by=qwen-operator"
        apps = client.AppsV1Api(api)
        while apps.list_namespaced_deployment(namespace, label_selector=selector).items and time.monotonic() - start_delete < args.timeout:
            time.sleep(0.2)
        cleanup = time.monotonic() - start_delete
    finally:
        operator.terminate()
        try:
            operator.wait(timeout=20)
        except subprocess.TimeoutExpired:
            operator.kill()
        core.delete_namespace(namespace)
        if not cluster_was_running:
            sh(str(REPO / "hack/cluster.sh"), "down")

    print(f"qwen-operator convergence benchmark ({args.count} QwenInferences, resync {args.resync:g}s, 2 cores)")
    print(f"  cluster up (reused={cluster_was_running}):      {cluster_up_seconds:7.2f} s")
    print(f"  ready:                              {len(ready_at)}/{len(names)}")
    if latencies:
        print(f"  create -> Ready  p50 / p95 / max:   {statistics.median(latencies):7.2f} / {percentile(latencies, 0.95):.2f} / {max(latencies):.2f} s")
    print(f"  all {args.count} Ready after:                {all_ready:7.2f} s")
    print(f"  reconciles (total):                 {reconciles:7.0f}")
    print(f"  mean reconcile duration:            {1000 * duration_sum / max(reconciles, 1):7.1f} ms")
    print(f"  API requests per reconcile:         {requests_total / max(reconciles, 1):7.1f}")
    print(f"  steady state over {3 * args.resync + 1:g}s: {steady_reconciles:.0f} reconciles, {steady_reads:.0f} reads, {steady_writes:.0f} writes")
    print(f"  delete all -> children gone:        {cleanup:7.2f} s")
    return 0 if len(ready_at) == len(names) else 1


if __name__ == "__main__":
    sys.exit(main())
