"""Leader election on a Lease (issue 9, peering): one active replica, a fast takeover, never two at once.

Two `qwen-operator run --leader-elect` processes against the real API server. The failover time is
printed (pytest -s shows it) and recorded in the README.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from kubernetes import client

from conftest import REPO, RunningOperator, free_loopback_port, install_crds, stop_operator, wait_until
from qwen_resources import create, wait_ready

pytestmark = pytest.mark.cluster

LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 6.0, 4.0, 1.0


HEALTH_PORTS: dict[int, int] = {}  # metrics port -> health port


def healthz(candidate: RunningOperator) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{HEALTH_PORTS[candidate.metrics_port]}/healthz", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def start_candidate(cluster, work_dir: Path, identity: str, namespace: str) -> RunningOperator:
    port, health_port = free_loopback_port(), free_loopback_port()
    HEALTH_PORTS[port] = health_port
    env = {
        **os.environ, "KUBECONFIG": cluster.kubeconfig, "QWEN_OPERATOR_RESYNC_SECONDS": "3",
        "QWEN_OPERATOR_METRICS_PORT": str(port), "QWEN_OPERATOR_METRICS_ADDRESS": "127.0.0.1",
    }
    log_path = work_dir / f"{identity}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            ["timeout", "--kill-after=10", "600", str(REPO / ".venv" / "bin" / "qwen-operator"), "run", "--namespace", namespace,
             "--leader-elect", "--lease-namespace", namespace, "--lease-name", "qwen-operator-test", "--identity", identity,
             "--liveness", f"http://127.0.0.1:{health_port}/healthz", "--lease-duration", str(LEASE_DURATION), "--renew-deadline", str(RENEW_DEADLINE), "--retry-period", str(RETRY_PERIOD)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    running = RunningOperator(process, port, log_path, 3.0)
    wait_until(lambda: running.metrics(), 60, f"{identity}'s metrics endpoint")
    return running


def is_leader(candidate: RunningOperator) -> bool:
    try:
        return candidate.metrics().get("qwen_operator_leader", 0) == 1
    except OSError:
        return False  # stopped: not active


def reconciles(candidate: RunningOperator) -> float:
    try:
        return sum(v for k, v in candidate.metrics().items() if k.startswith("qwen_operator_reconciles_total"))
    except OSError:
        return 0.0


def holder(k8s, namespace: str) -> str:
    lease = client.CoordinationV1Api(k8s).read_namespaced_lease("qwen-operator-test", namespace)
    return lease.spec.holder_identity or ""


class Overlap:
    """Samples both candidates every 50 ms and counts the samples where both say they lead."""

    def __init__(self, candidates: list[RunningOperator]):
        self.candidates, self.both, self.samples = candidates, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples += 1
            if all(is_leader(c) for c in self.candidates):
                self.both += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.parametrize("how", ["kill -9", "SIGTERM (rolling upgrade)"])
def test_one_replica_reconciles_and_the_standby_takes_over(cluster, k8s, namespace, tmp_path, how):
    install_crds(cluster)
    first = start_candidate(cluster, tmp_path, "first", namespace)
    wait_until(lambda: holder(k8s, namespace) == "first", 30, "first to hold the Lease")
    second = start_candidate(cluster, tmp_path, "second", namespace)
    overlap = Overlap([first, second])
    try:
        create(k8s, namespace, "elected", {})
        wait_ready(k8s, namespace, "elected")
        time.sleep(2 * RETRY_PERIOD)
        assert is_leader(first) and not is_leader(second)
        assert reconciles(second) == 0, "the standby reconciled"
        assert holder(k8s, namespace) == "first"
        assert healthz(first) == (200, "leader: reconciling")
        assert healthz(second) == (200, "standby: waiting for the Lease")  # alive: the kubelet must not restart it

        started = time.monotonic()
        if how == "kill -9":
            os.killpg(first.process.pid, signal.SIGKILL)
        else:
            os.killpg(first.process.pid, signal.SIGTERM)
        wait_until(lambda: holder(k8s, namespace) == "second" and is_leader(second), LEASE_DURATION + 4 * RETRY_PERIOD + 10, "second to take over")
        failover = time.monotonic() - started
        print(f"\nleader failover after {how}: {failover:.1f}s (lease {LEASE_DURATION:.0f}s, retry {RETRY_PERIOD:.0f}s)")
        if how == "kill -9":
            assert failover <= LEASE_DURATION + 3 * RETRY_PERIOD + 2
        else:
            assert failover <= 3 * RETRY_PERIOD + 2  # released on shutdown: no lease to wait out
        # The new leader serves the resource: a deleted child comes back.
        client.CoreV1Api(k8s).delete_namespaced_service("elected", namespace)
        wait_until(lambda: client.CoreV1Api(k8s).read_namespaced_service("elected", namespace), 30, "the Service repaired by the new leader")
    finally:
        overlap.stop()
        for candidate in (first, second):
            if candidate.process.poll() is None:
                stop_operator(candidate)
    # Each sample asks both replicas over HTTP: a loaded 2-core machine took 47 in the window, a quiet one over 100.
    assert overlap.samples >= 20 and overlap.both == 0, f"both replicas led in {overlap.both} of {overlap.samples} samples"
    assert "Traceback" not in second.log_text()
