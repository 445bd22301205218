"""Scale benchmark (issue 15): the operator against a floor, on the same cluster, back to back.

For each N it runs:
- the floor: a plain client that creates, per resource, the same PVC, Deployment, Service and
  dashboard ConfigMap the operator would (made by the operator's own builders), then waits for
  every Deployment to be ready. No operator runs. This is what the cluster itself costs;
- the operator: N QwenInferences, each created when the floor created that resource's objects
  (the floor's own schedule, so both load the cluster at the same pace and their create-to-Ready
  times compare), until every Ready condition is True; then a steady-state window with no changes.
  Readiness is followed with a watch in both runs (a list polled at 1,000 objects would weigh on
  the cluster being measured).

Each run (the floor, then the operator) gets a new local control plane of its own (hack/cluster.sh
with a private QWEN_CLUSTER_DIR and ports, fake GPU pools sized for N, no real node), stopped
afterwards. It prints a table; the figures also go to bench/results/scale-<N>.json. Everything
talks to 127.0.0.1 only.

    .venv/bin/python bench/scale.py --counts 100,1000 [--steady 60]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable

from kubernetes import client, config
from kubernetes.watch.watch import iter_resp_lines

from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders.common import Owner
from qwen_operator.catalog import resolve_model
from qwen_operator.config import OperatorConfig
from qwen_operator.k8s.client import WRITE_VERBS
from qwen_operator.reconcile import Capabilities, desired_children

REPO = Path(__file__).resolve().parent.parent
GROUP, VERSION, PLURAL = "inference.qwenops.io", "v1alpha1", "qweninferences"
RESULTS = REPO / "bench" / "results"
CLUSTER_ENV = {
    "QWEN_CLUSTER_DIR": str(Path.home() / ".cache" / "qwen-operator" / "cluster-scale"),
    "QWEN_APISERVER_PORT": "18443", "QWEN_ETCD_PORT": "25790", "QWEN_REAL_NODE": "0", "QWEN_CPU_NODES": "0",
}
PODS_PER_NODE = 100  # kwok nodes allow 110 pods
# Both runs ask the same of each pod: small CPU and memory requests, so that the fake nodes' CPU
# (96 cores each) does not cap how many pods fit, and one GPU.
SPEC = {"resources": {"cpu": "100m", "memory": "256Mi"}}


def sh(*args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=3600, env={**os.environ, **(env or {})}).stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def total(samples: dict[str, float], prefix: str, verbs: set[str] | None = None) -> float:
    return sum(v for k, v in samples.items() if k.startswith(prefix) and (verbs is None or any(f'verb="{x}"' in k for x in verbs)))


def per_resource_by_labels(before: dict[str, float], after: dict[str, float], metric: str, labels: tuple[str, ...], count: int) -> dict[str, float]:
    """How much a counter grew per resource, by the values of some of its labels ("apply Deployment"), rounded;
    label sets that did not grow are left out."""
    grown: dict[str, float] = {}
    for name, value in after.items():
        if name.startswith(metric + "{"):
            found = dict(part.split("=", 1) for part in name[name.index("{") + 1:-1].split(","))
            key = " ".join(found[label].strip('"') for label in labels)
            grown[key] = grown.get(key, 0.0) + (value - before.get(name, 0.0)) / count
    return {k: round(v, 2) for k, v in sorted(grown.items()) if round(v, 2)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory now (VmRSS), or its high-water mark since the process started (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class ReadyWatch:
    """Records when each named object is first seen ready, from a watch: the API server sends each change
    once, where polling a list of every object would cost it (and this process) a full list every interval
    and weigh on the cluster being measured."""

    def __init__(self, lister, is_ready):
        self.lister, self.is_ready = lister, is_ready  # lister: a kubernetes-client list call of the namespace's objects
        self.ready_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ReadyWatch":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=70)

    def _see(self, item: dict) -> None:
        if self.is_ready(item):
            self.ready_at.setdefault(item["metadata"]["name"], time.monotonic())

    def _run(self) -> None:
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    listed = json.loads(self.lister(_preload_content=False, _request_timeout=60).data)
                    for item in listed["items"]:
                        self._see(item)
                    version = listed["metadata"]["resourceVersion"]
                response = self.lister(watch=True, resource_version=version, allow_watch_bookmarks=True, timeout_seconds=60,
                                       _preload_content=False, _request_timeout=(10, 70))
                for line in iter_resp_lines(response):
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        version = ""  # 410 Gone: list again
                        break
                    version = event["object"]["metadata"].get("resourceVersion", version)
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._see(event["object"])
                    if self._stop.is_set():
                        break
            except Exception:  # noqa: BLE001 - a dropped watch is resumed
                time.sleep(0.5)

    def wait(self, count: int, timeout: float, every: Callable[[], None] = lambda: None, period: float = 10.0) -> dict[str, float]:
        """Until `count` are ready or the timeout; calls every() each `period` seconds meanwhile."""
        deadline, next_call = time.monotonic() + timeout, 0.0
        while len(self.ready_at) < count and time.monotonic() < deadline:
            if time.monotonic() >= next_call:
                every()
                next_call = time.monotonic() + period
            time.sleep(0.2)
        return dict(self.ready_at)


def events_by_reason(api, namespace: str) -> dict[str, int]:
    """The namespace's Events by reason, once at the end of a run (FailedScheduling: pods the scheduler tried again)."""
    counts: dict[str, int] = {}
    for event in client.CoreV1Api(api).list_namespaced_event(namespace).items:
        counts[event.reason or ""] = counts.get(event.reason or "", 0) + (event.count or 1)
    return dict(sorted(counts.items()))


def deployment_ready(item: dict) -> bool:
    return ((item.get("status") or {}).get("readyReplicas") or 0) >= 1


def qwen_inference_ready(item: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in (item.get("status") or {}).get("conditions", []))


def component_cpu(cluster_dir: str) -> dict[str, float]:
    """CPU seconds so far of each control plane process hack/cluster.sh started, and of this benchmark."""
    seconds = {"bench": time.process_time()}
    for pid_file in sorted((Path(cluster_dir) / "pids").glob("*")):
        try:
            seconds[pid_file.name] = cpu_seconds(int(pid_file.read_text().strip()))
        except (OSError, ValueError):
            pass
    return seconds


def cpu_spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: round(after[name] - before.get(name, 0.0), 1) for name in after}


def run_floor(api, namespace: str, count: int, timeout: float) -> dict:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    spec = QwenInferenceSpec.model_validate(SPEC)
    model = resolve_model(spec)
    names = [f"r{i:05d}" for i in range(count)]
    created: dict[str, float] = {}
    watch = ReadyWatch(functools.partial(apps.list_namespaced_deployment, namespace), deployment_ready).__enter__()
    cpu_before = component_cpu(CLUSTER_ENV["QWEN_CLUSTER_DIR"])
    start = time.monotonic()
    for name in names:
        owner = Owner(name=name, namespace=namespace, uid="00000000-0000-0000-0000-000000000000")
        for manifest in desired_children(owner, spec, model, OperatorConfig(), Capabilities()):
            manifest = json.loads(json.dumps(manifest))
            manifest["metadata"].pop("ownerReferences", None)  # no owner object exists in the floor run
            manifest["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "floor"
            kind = manifest["kind"]
            if kind == "PersistentVolumeClaim":
                core.create_namespaced_persistent_volume_claim(namespace, manifest)
            elif kind == "Deployment":
                apps.create_namespaced_deployment(namespace, manifest)
            elif kind == "Service":
                core.create_namespaced_service(namespace, manifest)
            elif kind == "ConfigMap":
                core.create_namespaced_config_map(namespace, manifest)
        created[name] = time.monotonic()

    try:
        ready_at = watch.wait(count, timeout)
    finally:
        watch.__exit__()
    cpu = cpu_spent(cpu_before, component_cpu(CLUSTER_ENV["QWEN_CLUSTER_DIR"]))
    latencies = [ready_at[n] - created[n] for n in ready_at]
    return {"ready": len(ready_at), "all_ready_s": max(ready_at.values()) - start if len(ready_at) == count else float("nan"),
            "created_at_s": [round(created[n] - start, 3) for n in names],
            "p50_s": statistics.median(latencies) if latencies else float("nan"), "p95_s": percentile(latencies, 0.95), "p99_s": percentile(latencies, 0.99),
            "cpu_seconds_by_process": cpu, "events_by_reason": events_by_reason(api, namespace)}


def run_operator(api, kubeconfig: str, namespace: str, count: int, timeout: float, steady_seconds: float, resync: float,
                 schedule: list[float] | None = None) -> dict:
    """schedule: when (seconds from the start) to create each resource, the floor's own creation times, so both
    runs put the same load on the cluster at the same pace and create-to-Ready means the same in both; None: at once."""
    custom = client.CustomObjectsApi(api)
    port = free_port()
    log_path = Path(tempfile.gettempdir()) / f"qwen-scale-operator-{count}.log"
    env = {**os.environ, "KUBECONFIG": kubeconfig, "QWEN_OPERATOR_RESYNC_SECONDS": str(resync),
           "QWEN_OPERATOR_METRICS_PORT": str(port), "QWEN_OPERATOR_METRICS_ADDRESS": "127.0.0.1"}
    with open(log_path, "w") as log:
        # Its own session, and the timeout as the last resort: a benchmark killed midway must not
        # leave an operator behind to act on the next run's cluster.
        operator = subprocess.Popen(["timeout", str(int(2 * timeout + steady_seconds + 300)), str(REPO / ".venv/bin/qwen-operator"), "run", "--namespace", namespace],
                                    env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
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
        pid = int(subprocess.run(["pgrep", "-P", str(operator.pid)], capture_output=True, text=True).stdout.split()[0])
        time.sleep(2)
        cpu_before, base = cpu_seconds(pid), scrape(port)
        names = [f"r{i:05d}" for i in range(count)]
        created: dict[str, float] = {}
        watch = ReadyWatch(functools.partial(custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL), qwen_inference_ready).__enter__()
        components_before = component_cpu(CLUSTER_ENV["QWEN_CLUSTER_DIR"])
        start = time.monotonic()
        for i, name in enumerate(names):
            if schedule is not None:
                time.sleep(max(0.0, start + schedule[i] - time.monotonic()))
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "QwenInference", "metadata": {"name": name}, "spec": SPEC}
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
            created[name] = time.monotonic()

        # The operator's memory over the run, with how many were Ready then: where in a start it grows.
        rss_timeline: list[tuple[float, float, int]] = []
        try:
            ready_at = watch.wait(count, timeout, lambda: rss_timeline.append((round(time.monotonic() - start, 1), round(rss_mib(pid), 1), len(watch.ready_at))))
        finally:
            watch.__exit__()
        all_ready = max(ready_at.values()) - start if len(ready_at) == count else float("nan")
        components = cpu_spent(components_before, component_cpu(CLUSTER_ENV["QWEN_CLUSTER_DIR"]))
        components["operator"] = round(cpu_seconds(pid) - cpu_before, 1)
        events = events_by_reason(api, namespace)
        time.sleep(5)  # the last events drain
        converged, cpu_converged = scrape(port), cpu_seconds(pid)
        rss_converged = rss_mib(pid)
        reconciles = total(converged, "qwen_operator_reconciles_total{") - total(base, "qwen_operator_reconciles_total{")
        requests = total(converged, "qwen_operator_api_requests_total{") - total(base, "qwen_operator_api_requests_total{")
        status_only = total(converged, "qwen_operator_status_only_reconciles_total") - total(base, "qwen_operator_status_only_reconciles_total")
        by_request = per_resource_by_labels(base, converged, "qwen_operator_api_requests_total", ("verb", "kind"), count)
        child_events = per_resource_by_labels(base, converged, "qwen_operator_child_events_total", ("kind", "judged"), count)
        triggers = per_resource_by_labels(base, converged, "qwen_operator_reconcile_triggers_total", ("trigger",), count)
        # Steady state: nothing changes; the resync judges everything every `resync` seconds.
        cpu_steady_start, steady_start_wall = cpu_seconds(pid), time.monotonic()
        time.sleep(steady_seconds)
        after = scrape(port)
        steady_wall = time.monotonic() - steady_start_wall
        steady_cpu = cpu_seconds(pid) - cpu_steady_start
        reads = total(after, "qwen_operator_api_requests_total{", {"get", "list"}) - total(converged, "qwen_operator_api_requests_total{", {"get", "list"})
        writes = total(after, "qwen_operator_api_requests_total{", WRITE_VERBS) - total(converged, "qwen_operator_api_requests_total{", WRITE_VERBS)
        steady_reconciles = total(after, "qwen_operator_reconciles_total{") - total(converged, "qwen_operator_reconciles_total{")
        latencies = [ready_at[n] - created[n] for n in ready_at]
        return {
            "ready": len(ready_at), "all_ready_s": all_ready,
            "p50_s": statistics.median(latencies) if latencies else float("nan"), "p95_s": percentile(latencies, 0.95), "p99_s": percentile(latencies, 0.99),
            "rss_mib": rss_converged, "rss_mib_after_steady": rss_mib(pid), "rss_mib_peak": rss_mib(pid, "VmHWM"), "rss_timeline_s_mib_ready": rss_timeline,
            "cpu_ms_per_resource": 1000 * (cpu_converged - cpu_before) / count,
            "reconciles_per_resource": reconciles / count, "requests_per_reconcile": requests / max(reconciles, 1),
            "status_only_reconciles_per_resource": status_only / count,
            "reconciles_per_resource_by_trigger": triggers,
            "requests_per_resource": requests / count,
            "child_events_per_resource_by_kind_and_urgency": child_events,
            "requests_per_resource_by_verb_and_kind": by_request,
            "steady_seconds": steady_wall, "steady_reconciles": steady_reconciles,
            "steady_reads_per_minute": 60 * reads / steady_wall, "steady_writes_per_minute": 60 * writes / steady_wall,
            "steady_cpu_fraction": steady_cpu / steady_wall,
            "cpu_seconds_by_process": components, "events_by_reason": events,
        }
    finally:
        os.killpg(operator.pid, signal.SIGTERM)
        try:
            operator.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(operator.pid, signal.SIGKILL)


def fresh_namespace(core, name: str) -> str:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    for _ in range(120):
        try:
            core.read_namespaced_service_account("default", name)
            return name
        except client.ApiException:
            time.sleep(0.5)
    return name


@contextlib.contextmanager
def fresh_cluster(env: dict[str, str]):
    """A new local control plane (hack/cluster.sh with the benchmark's private directory and ports), the CRD
    installed: (API client, kubeconfig path). Taken down afterwards, whatever happens."""
    sh(str(REPO / "hack/cluster.sh"), "down", env=env)
    try:
        sh(str(REPO / "hack/cluster.sh"), "up", env=env)
        kubeconfig = sh(str(REPO / "hack/cluster.sh"), "kubeconfig", env=env)
        sh(str(REPO / "hack/cluster.sh"), "crds", env=env)
        api = config.new_client_from_config(config_file=kubeconfig)
        api.configuration.connection_pool_maxsize = 8
        yield api, kubeconfig
    finally:
        sh(str(REPO / "hack/cluster.sh"), "down", env=env)


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop the operator, the cluster
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="100,1000", help="comma-separated N (default 100,1000; 5000 takes about an hour)")
    parser.add_argument("--steady", type=float, default=60.0, help="steady-state window in seconds (default 60)")
    parser.add_argument("--resync", type=float, default=60.0, help="operator resync seconds (default 60, the operator's default)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds each run waits for every resource to be Ready (default 120 + N); the figures then cover those Ready by then")
    parser.add_argument("--no-floor", action="store_true", help="the operator alone (its cost, without the time ratio): for N=5000 on a short budget")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []
    for count in counts:
        nodes = math.ceil(count / PODS_PER_NODE) + 1
        env = {**CLUSTER_ENV, "QWEN_GPU_POOLS": f"NVIDIA-L4:{nodes}", "QWEN_GPUS_PER_NODE": str(PODS_PER_NODE + 10)}
        timeout = args.timeout if args.timeout is not None else 120 + 1.0 * count
        floor = None
        if not args.no_floor:
            # Each run gets a control plane of its own, made for it: a cluster still deleting the floor's 1,000
            # Deployments, pods and volumes would bill that work to the operator's run (it did: up to 2x).
            with fresh_cluster(env) as (api, kubeconfig):
                floor = run_floor(api, fresh_namespace(client.CoreV1Api(api), f"floor-{count}"), count, timeout)
        with fresh_cluster(env) as (api, kubeconfig):
            operator = run_operator(api, kubeconfig, fresh_namespace(client.CoreV1Api(api), f"operator-{count}"), count, timeout, args.steady, args.resync,
                                    schedule=floor.pop("created_at_s") if floor else None)
        row = {"count": count, "floor": floor, "operator": operator}
        (RESULTS / f"scale-{count}{'-no-floor' if floor is None else ''}.json").write_text(json.dumps(row, indent=1) + "\n")
        rows.append(row)

    print("qwen-operator scale benchmark (bench/scale.py; local control plane, 2 cores; floor = plain client, same objects, no operator)")
    print(f"{'N':>6} | {'operator all Ready':>18} | {'floor all Ready':>15} | {'ratio':>5} | {'p50/p95/p99 op (s)':>20} | {'p50/p95/p99 floor (s)':>21} | "
          f"{'RSS MiB':>7} | {'CPU ms/res':>10} | {'reconciles/res':>14} | {'req/reconcile':>13} | {'steady reads/min':>16} | {'steady writes/min':>17} | {'steady CPU':>10}")
    nan = float("nan")
    for row in rows:
        o = row["operator"]
        f = row["floor"] or {"all_ready_s": nan, "p50_s": nan, "p95_s": nan, "p99_s": nan}  # --no-floor: not measured
        print(f"{row['count']:>6} | {o['all_ready_s']:>16.1f} s | {f['all_ready_s']:>13.1f} s | {o['all_ready_s'] / f['all_ready_s']:>5.2f} | "
              f"{o['p50_s']:>6.1f}/{o['p95_s']:>5.1f}/{o['p99_s']:>6.1f} | {f['p50_s']:>6.1f}/{f['p95_s']:>5.1f}/{f['p99_s']:>7.1f} | "
              f"{o['rss_mib']:>7.0f} | {o['cpu_ms_per_resource']:>10.1f} | {o['reconciles_per_resource']:>14.2f} | {o['requests_per_reconcile']:>13.2f} | "
              f"{o['steady_reads_per_minute']:>16.1f} | {o['steady_writes_per_minute']:>17.1f} | {100 * o['steady_cpu_fraction']:>9.2f}%")
    for row in rows:
        for name in ("floor", "operator"):
            if row[name] is not None and row[name]["ready"] < row["count"]:
                print(f"N={row['count']}: the {name} run had {row[name]['ready']} of {row['count']} Ready when its wait ended (--timeout)")
        by_trigger = ", ".join(f"{k} {v:.2f}" for k, v in row["operator"]["reconciles_per_resource_by_trigger"].items())
        print(f"N={row['count']}: reconciles per resource by what queued them: {by_trigger}; "
              f"of the {row['operator']['reconciles_per_resource']:.2f}, {row['operator']['status_only_reconciles_per_resource']:.2f} only judged the status "
              "(every child as a previous run left it: nothing built or compared)")
        if row["floor"] is not None:
            # A steadier figure than ms per resource across machines and runs: the floor's client made the same objects
            # and watched them become ready, on the same machine, minutes before.
            operator_cpu, client_cpu = row["operator"]["cpu_seconds_by_process"]["operator"], row["floor"]["cpu_seconds_by_process"]["bench"]
            print(f"N={row['count']}: operator CPU {operator_cpu:.1f} s, the floor's plain client {client_cpu:.1f} s "
                  f"({operator_cpu / client_cpu:.2f}x; the client makes the same objects and watches their Deployments)")
        if "rss_mib_peak" in row["operator"]:
            print(f"N={row['count']}: operator RSS {row['operator']['rss_mib']:.0f} MiB converged, {row['operator']['rss_mib_after_steady']:.0f} MiB "
                  f"after the steady window, {row['operator']['rss_mib_peak']:.0f} MiB at its peak (VmHWM)")
            timeline = row["operator"].get("rss_timeline_s_mib_ready") or []
            shown = timeline[::max(1, math.ceil(len(timeline) / 12))]
            print(f"N={row['count']}: operator RSS while converging (s after the first create: MiB, Ready): "
                  + ", ".join(f"{t:.0f}: {m:.0f}, {r}" for t, m, r in shown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
