"""Fault scenarios (issue 9): kill -9 of the operator in the middle of a storm, and an API server
restart under a running operator. Figures are printed (pytest -s) and recorded in the README."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from kubernetes import client

from conftest import CLUSTER_SH, install_crds, start_operator, stop_operator, wait_until
from qwen_resources import GROUP, PLURAL, VERSION, create, qwi, wait_ready

pytestmark = pytest.mark.cluster

STORM = int(os.environ.get("QWEN_FAULT_STORM", "100"))
# A GPU no node has: the storm's pods stay Unschedulable and take no GPU from the fake pools, which
# the tests running beside it in other pytest-xdist workers need.
STORM_SPEC = {"resources": {"gpu": {"products": ["NVIDIA-H200"]}}}


def judged(k8s, namespace: str) -> tuple[int, int]:
    """(resources whose status judges their current generation, of which Ready=True). The storm's
    pods are Unschedulable (STORM_SPEC): judged all the same."""
    items = client.CustomObjectsApi(k8s).list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    done = ready = 0
    for item in items:
        status = item.get("status") or {}
        condition = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
        if condition and status.get("observedGeneration") == item["metadata"]["generation"] and condition["reason"] not in ("ReplicasNotReady", "RollingOut"):
            done += 1
            ready += condition["status"] == "True"
    return done, ready


def test_kill_9_mid_storm_loses_and_duplicates_nothing(cluster, k8s, namespace, tmp_path):
    install_crds(cluster)
    first = start_operator(cluster, tmp_path / "first.log", "--namespace", namespace)
    custom = client.CustomObjectsApi(k8s)
    try:
        for i in range(STORM):
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, qwi(f"storm-{i}", STORM_SPEC | {"monitoring": {"dashboard": i % 2 == 0}}))
            if i == STORM // 2:
                wait_until(lambda: judged(k8s, namespace)[0] >= 5, 60, "the operator well into the storm")
                first.process.send_signal(signal.SIGKILL)  # mid-storm, mid-reconcile
                first.process.wait(10)
    finally:
        if first.process.poll() is None:
            stop_operator(first)
    judged_at_kill, _ = judged(k8s, namespace)
    started = time.monotonic()
    second = start_operator(cluster, tmp_path / "second.log", "--namespace", namespace)
    try:
        wait_until(lambda: judged(k8s, namespace)[0] == STORM, 300, f"all {STORM} judged after the restart")
        converged = time.monotonic() - started
        _, ready = judged(k8s, namespace)
        apps, core = client.AppsV1Api(k8s), client.CoreV1Api(k8s)
        deployments = [d.metadata.name for d in apps.list_namespaced_deployment(namespace).items]
        services = [s.metadata.name for s in core.list_namespaced_service(namespace).items]
        configmaps = [c.metadata.name for c in core.list_namespaced_config_map(namespace, label_selector="app.kubernetes.io/managed-by=qwen-operator").items]
        expected = {f"storm-{i}" for i in range(STORM)}
        assert sorted(deployments) == sorted(expected) and sorted(services) == sorted(expected)  # 0 lost, 0 duplicated
        assert len(configmaps) == (STORM + 1) // 2
        for d in apps.list_namespaced_deployment(namespace).items:
            assert len(d.metadata.owner_references) == 1
        pods = core.list_namespaced_pod(namespace).items
        assert len([p for p in pods if p.metadata.deletion_timestamp is None]) == STORM
        print(f"\nkill -9 mid-storm: {STORM} resources, {judged_at_kill} with a status when killed; after the restart all converged in "
              f"{converged:.1f}s ({ready} Ready, the rest Unschedulable); 0 lost, 0 duplicated")
    finally:
        stop_operator(second)
    assert "Traceback" not in second.log_text()


def restart_apiserver(cluster_dir: Path) -> float:
    """Stops kube-apiserver (started by hack/cluster.sh) and starts it again with the same command
    line; returns the seconds it was away. Its new PID replaces the old in the cluster's pid file,
    so `hack/cluster.sh down` stops it as before."""
    pid_file = cluster_dir / "pids" / "kube-apiserver"
    pid = int(pid_file.read_text())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.1)
    down_at = time.monotonic()
    time.sleep(5)  # the operator meets refused connections for a while
    log = open(cluster_dir / "logs" / "kube-apiserver.log", "ab")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    pid_file.write_text(f"{process.pid}\n")
    return down_at


def test_the_operator_recovers_from_an_api_server_restart_without_restarting(cluster, k8s, namespace, tmp_path):
    install_crds(cluster)
    cluster_dir = Path(cluster.kubeconfig).parent
    if not (cluster_dir / "pids" / "kube-apiserver").exists():
        pytest.skip("the API server is not one hack/cluster.sh started here")
    operator = start_operator(cluster, tmp_path / "operator.log", "--namespace", namespace)
    try:
        create(k8s, namespace, "before", {})
        wait_ready(k8s, namespace, "before")
        down_at = restart_apiserver(cluster_dir)
        wait_until(lambda: subprocess.run([str(CLUSTER_SH), "status"], capture_output=True, timeout=30).returncode == 0, 90, "the API server back")
        back = time.monotonic() - down_at
        started = time.monotonic()
        create(k8s, namespace, "after", {})
        wait_ready(k8s, namespace, "after", timeout=120)
        client.CoreV1Api(k8s).delete_namespaced_service("before", namespace)
        wait_until(lambda: client.CoreV1Api(k8s).read_namespaced_service("before", namespace), 60, "a child repaired after the restart")
        print(f"\nAPI server restart: away {back:.1f}s; a new resource Ready {time.monotonic() - started:.1f}s after it was created, "
              "with the same operator process")
        assert operator.process.poll() is None, "the operator exited"
    finally:
        stop_operator(operator)
    assert "Traceback" not in operator.log_text()
