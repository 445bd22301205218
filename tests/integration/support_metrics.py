"""A real custom metrics API for the local control plane, for the autoscaling tests.

    vLLM stand-ins (tests/standin, one port per fake pod, 127.0.0.1)
      <- scraped every second by Prometheus (Debian's /usr/bin/prometheus, file_sd targets)
      <- queried by prometheus-adapter (built by hack/build-tools.sh, deploy/prometheus-adapter/config.yaml)
      <- registered through the aggregation layer (APIService -> ExternalName Service -> 127.0.0.1)
      <- read by the real HPA controller in kube-controller-manager.

kwok pods have no process behind them, so a sync loop gives each Running pod of a watched
namespace a stand-in port and writes Prometheus' file_sd file with the labels a ServiceMonitor
scrape of that pod would carry (namespace, pod, service, container). Nothing connects to a kwok
IP: every target is 127.0.0.1:<stand-in port>.

Every process started here runs under `timeout` (it stops by itself) and is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import REPO, Cluster, free_loopback_port, wait_until

STANDIN = REPO / "tests" / "standin" / "vllm_standin.py"
ADAPTER_CONFIG = REPO / "deploy" / "prometheus-adapter" / "config.yaml"
PROMETHEUS = "/usr/bin/prometheus"
ADAPTER_NAMESPACE = "qwen-custom-metrics"
ADAPTER_SERVICE = "prometheus-adapter"
CUSTOM_METRICS_GROUP = "custom.metrics.k8s.io"
CUSTOM_METRICS_VERSIONS = ("v1beta1", "v1beta2")
# Upper bound on the life of every helper process, whatever happens to the test run.
MAX_SECONDS = 7200
SCRAPE_INTERVAL = "1s"
RELIST_INTERVAL = "2s"
INSTANCE_LABEL = "app.kubernetes.io/instance"


def adapter_binary() -> str:
    """Builds prometheus-adapter (once; cached) and returns its path."""
    build_tools = REPO / "hack" / "build-tools.sh"
    subprocess.run([str(build_tools), "prometheus-adapter"], check=True, timeout=1800)
    return subprocess.run([str(build_tools), "path", "prometheus-adapter"], check=True, capture_output=True, text=True).stdout.strip()


def http(method: str, url: str, timeout: float = 5) -> bytes:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


@dataclass
class Process:
    """A helper process, started under `timeout` so it ends by itself, stopped by its PID."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    @classmethod
    def start(cls, name: str, args: list[str], log_path: Path) -> "Process":
        with open(log_path, "w") as log:
            popen = subprocess.Popen(
                ["timeout", "--kill-after=10", str(MAX_SECONDS), *args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        return cls(name, popen, log_path)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.popen.terminate()  # timeout passes SIGTERM on to the command
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@dataclass
class Namespace:
    """A watched namespace: the queue depth its pods report, which pod has which port, and the
    QwenInference (its Service) each pod belongs to."""

    waiting: float = 0.0
    pods: dict[str, int] = field(default_factory=dict)
    services: dict[str, str] = field(default_factory=dict)


class CustomMetricsStack:
    """Stand-ins, Prometheus, prometheus-adapter and the APIService registration, for one test run."""

    def __init__(self, cluster: Cluster, k8s, workdir: Path, standin_ports: int = 12):
        self.cluster, self.k8s, self.workdir = cluster, k8s, workdir
        self.standin_count = standin_ports
        self.processes: list[Process] = []
        self.free_ports: list[int] = []
        self.namespaces: dict[str, Namespace] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.sync_thread: threading.Thread | None = None
        self.sync_error: str | None = None  # the last error of the sync loop (it keeps going)
        self.pods_without_port: set[str] = set()
        self.targets_path = workdir / "targets.json"
        self.prometheus_port = 0
        self.adapter_port = 0

    # Start and stop

    def start(self) -> "CustomMetricsStack":
        try:
            self._start_standins()
            self._write_targets()
            self._start_prometheus()
            self._start_adapter()
            self._register_api_service()
            self.sync_thread = threading.Thread(target=self._sync_loop, name="stand-in-pod-sync", daemon=True)
            self.sync_thread.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self.sync_thread is not None:
            self.sync_thread.join(timeout=10)
        # Unregister first: an APIService whose server is gone makes discovery fail, and namespace
        # deletion waits on discovery of every group.
        for version in CUSTOM_METRICS_VERSIONS:
            self.cluster.kubectl("delete", "apiservice", f"{version}.{CUSTOM_METRICS_GROUP}", "--ignore-not-found", "--wait=false", check=False)
        self.cluster.kubectl("delete", "namespace", ADAPTER_NAMESPACE, "--ignore-not-found", "--wait=false", check=False)
        for process in reversed(self.processes):
            process.stop()

    def _start_standins(self) -> None:
        ports_file = self.workdir / "standin-ports.json"
        process = Process.start(
            "vllm-stand-in",
            [sys.executable, str(STANDIN), "pods", "--count", str(self.standin_count), "--served-model-name", "qwen3-0.6b-fp8",
             "--ports-file", str(ports_file), "--stand-in-max-seconds", str(MAX_SECONDS)],
            self.workdir / "standin.log",
        )
        self.processes.append(process)
        wait_until(ports_file.exists, 30, f"the stand-in's ports ({process.log_tail()})", interval=0.1)
        self.free_ports = json.loads(ports_file.read_text())["ports"]
        for port in self.free_ports:
            assert http("GET", f"http://127.0.0.1:{port}/health") == b""

    def _start_prometheus(self) -> None:
        self.prometheus_port = free_loopback_port()
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "scrape_configs": [{
                "job_name": "vllm-stand-in",
                "file_sd_configs": [{"files": [str(self.targets_path)], "refresh_interval": "2s"}],
            }],
        }
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(json.dumps(config))
        process = Process.start(
            "prometheus",
            [PROMETHEUS, f"--config.file={config_path}", f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
             f"--web.listen-address=127.0.0.1:{self.prometheus_port}", "--storage.tsdb.retention.time=3h", "--log.level=warn"],
            self.workdir / "prometheus.log",
        )
        self.processes.append(process)
        wait_until(lambda: http("GET", f"{self.prometheus_url}/-/ready") is not None, 60, f"Prometheus ready ({process.log_tail()})")

    def _start_adapter(self) -> None:
        binary = adapter_binary()
        self.adapter_port = free_loopback_port()
        kubeconfig = self.cluster.kubeconfig
        process = Process.start(
            "prometheus-adapter",
            [binary, f"--config={ADAPTER_CONFIG}", f"--prometheus-url={self.prometheus_url}/",
             f"--metrics-relist-interval={RELIST_INTERVAL}", f"--lister-kubeconfig={kubeconfig}",
             f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
             "--bind-address=127.0.0.1", f"--secure-port={self.adapter_port}", f"--cert-dir={self.workdir / 'adapter-certs'}",
             "--v=1"],
            self.workdir / "adapter.log",
        )
        self.processes.append(process)

        def serving() -> bool:
            assert process.alive(), process.log_tail()
            # Self-signed serving cert: this probe only asks whether it listens and answers.
            import ssl

            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            try:
                urllib.request.urlopen(f"https://127.0.0.1:{self.adapter_port}/healthz", context=context, timeout=3)
            except urllib.error.HTTPError:
                pass  # 401/403: it listens
            return True

        wait_until(serving, 60, f"prometheus-adapter listening ({process.log_tail()})")

    def _register_api_service(self) -> None:
        manifests = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ADAPTER_NAMESPACE}},
            # The aggregator sends requests for an ExternalName Service to externalName:port, so this
            # reaches the adapter on the host's loopback; no kwok IP is involved.
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": ADAPTER_SERVICE, "namespace": ADAPTER_NAMESPACE},
             "spec": {"type": "ExternalName", "externalName": "127.0.0.1", "ports": [{"name": "https", "port": self.adapter_port}]}},
        ]
        for priority, version in enumerate(CUSTOM_METRICS_VERSIONS, start=1):
            manifests.append({
                "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                "metadata": {"name": f"{version}.{CUSTOM_METRICS_GROUP}"},
                "spec": {
                    "group": CUSTOM_METRICS_GROUP, "version": version, "insecureSkipTLSVerify": True,
                    "groupPriorityMinimum": 100, "versionPriority": 100 * priority,
                    "service": {"name": ADAPTER_SERVICE, "namespace": ADAPTER_NAMESPACE, "port": self.adapter_port},
                },
            })
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager", "qwen-tests", "-f", "-",
                             input="\n---\n".join(json.dumps(m) for m in manifests))
        for version in CUSTOM_METRICS_VERSIONS:
            self.cluster.kubectl("wait", "--for=condition=Available", f"apiservice/{version}.{CUSTOM_METRICS_GROUP}", "--timeout=90s")

    # Pods <-> stand-in ports

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def watch(self, namespace: str, waiting: float = 0) -> None:
        """From now on the Running pods of `namespace` get a stand-in reporting `waiting`."""
        with self.lock:
            self.namespaces.setdefault(namespace, Namespace()).waiting = waiting

    def unwatch(self, namespace: str) -> None:
        with self.lock:
            gone = self.namespaces.pop(namespace, Namespace())
            for port in gone.pods.values():
                self._release(port)
            self._write_targets()

    def set_waiting(self, namespace: str, waiting: float) -> None:
        """Sets the queue depth every pod of the namespace reports, now and as pods come."""
        with self.lock:
            watched = self.namespaces[namespace]
            watched.waiting = waiting
            for port in watched.pods.values():
                http("PUT", f"http://127.0.0.1:{port}/stand-in/queue?waiting={waiting}")

    def set_pod_waiting(self, namespace: str, pod: str, waiting: float) -> None:
        """Sets the queue depth of one pod's stand-in (through the stand-in's control endpoint)."""
        with self.lock:
            port = self.namespaces[namespace].pods[pod]
            http("PUT", f"http://127.0.0.1:{port}/stand-in/queue?waiting={waiting}")

    def pod_ports(self, namespace: str) -> dict[str, int]:
        with self.lock:
            return dict(self.namespaces[namespace].pods)

    def _release(self, port: int) -> None:
        http("PUT", f"http://127.0.0.1:{port}/stand-in/queue?waiting=0&running=0")
        self.free_ports.append(port)

    def _sync_loop(self) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.k8s)
        while not self.stopping.wait(0.3):
            try:
                with self.lock:
                    names = list(self.namespaces)
                running = {}
                for namespace in names:
                    # The vLLM pods only: a router's pods (app.kubernetes.io/name=qwen-router) serve no vllm:* metrics.
                    pods = core.list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/name=qwen-inference,{INSTANCE_LABEL}").items
                    running[namespace] = {
                        p.metadata.name: p.metadata.labels[INSTANCE_LABEL] for p in pods
                        if p.status.phase == "Running" and p.metadata.deletion_timestamp is None
                    }
                self._assign(running)
            except Exception as error:  # noqa: BLE001 - kept for the tests to report; the loop goes on
                self.sync_error = repr(error)

    def _assign(self, running: dict[str, dict[str, str]]) -> None:
        with self.lock:
            changed = False
            for namespace, pods in running.items():
                watched = self.namespaces.get(namespace)
                if watched is None:
                    continue
                for pod in [p for p in watched.pods if p not in pods]:
                    self._release(watched.pods.pop(pod))
                    watched.services.pop(pod, None)
                    changed = True
                for pod in sorted(p for p in pods if p not in watched.pods):
                    if not self.free_ports:
                        self.pods_without_port.add(f"{namespace}/{pod}")
                        break
                    port = self.free_ports.pop(0)
                    http("PUT", f"http://127.0.0.1:{port}/stand-in/queue?waiting={watched.waiting}")
                    watched.pods[pod] = port
                    watched.services[pod] = pods[pod]
                    changed = True
            if changed:
                self._write_targets()

    def _write_targets(self) -> None:
        """file_sd targets: one per mapped pod, labelled as a ServiceMonitor scrape of it would be."""
        groups = [
            {"targets": [f"127.0.0.1:{port}"],
             "labels": {"namespace": namespace, "pod": pod, "service": watched.services[pod], "container": "vllm", "endpoint": "http"}}
            for namespace, watched in self.namespaces.items()
            for pod, port in sorted(watched.pods.items())
        ]
        temporary = self.targets_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(groups))
        os.replace(temporary, self.targets_path)  # Prometheus must never read a half-written file

    # Reading back

    def prometheus_query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        answer = json.loads(http("GET", url))
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def custom_metric(self, namespace: str, metric: str, version: str = "v1beta1", selector: str | None = None) -> dict[str, Any]:
        """What the aggregated custom metrics API answers for every pod of the namespace."""
        path = f"/apis/{CUSTOM_METRICS_GROUP}/{version}/namespaces/{namespace}/pods/*/{metric}"
        if selector:
            path += "?" + urllib.parse.urlencode({"labelSelector": selector})
        return json.loads(self.cluster.kubectl("get", "--raw", path).stdout)

    def served_metrics(self, version: str = "v1beta1") -> set[str]:
        """The resources/metrics the adapter lists in discovery, e.g. 'pods/vllm_num_requests_waiting'."""
        answer = json.loads(self.cluster.kubectl("get", "--raw", f"/apis/{CUSTOM_METRICS_GROUP}/{version}").stdout)
        return {r["name"] for r in answer.get("resources", [])}
