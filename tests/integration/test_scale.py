"""Scale behaviour on the real API server (issue 15): bursts collapse, and a steady state reads nothing.

bench/scale.py measures the figures; these tests hold the properties that make them.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from kubernetes import client

from conftest import install_crds, start_operator, stop_operator, wait_until
from qwen_resources import create, wait_ready

pytestmark = pytest.mark.cluster


def reconciles(operator) -> float:
    return sum(v for k, v in operator.metrics().items() if k.startswith("qwen_operator_reconciles_total"))


def test_a_storm_of_200_events_for_one_resource_costs_at_most_3_reconciles(cluster, k8s, namespace, tmp_path):
    install_crds(cluster)
    operator = start_operator(cluster, tmp_path / "operator.log", "--namespace", namespace, resync=3600)
    try:
        create(k8s, namespace, "stormy", {})
        wait_ready(k8s, namespace, "stormy")
        time.sleep(3)  # the rollout's last events drain
        before = reconciles(operator)
        apps = client.AppsV1Api(k8s)

        # A real change of a child each time (someone annotating the Deployment): a watch event the cache reports,
        # of the kind judged soon after its burst (a pod's steps, judged within PROGRESS_WAIT, would only wait longer).
        def touch(i: int) -> None:
            apps.patch_namespaced_deployment("stormy", namespace, {"metadata": {"annotations": {"storm": str(i)}}})

        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(touch, range(200)))
        storm_seconds = time.monotonic() - started
        time.sleep(4)
        runs = reconciles(operator) - before
        print(f"\n200 Deployment events in {storm_seconds:.1f}s -> {runs:.0f} reconciles")
        assert 1 <= runs <= 3, runs
    finally:
        stop_operator(operator)


def metric(operator, name: str) -> float:
    return sum(v for k, v in operator.metrics().items() if k == name or k.startswith(name + "{"))


def test_a_steady_state_makes_no_api_reads_and_no_writes(cluster, k8s, namespace, tmp_path):
    install_crds(cluster)
    operator = start_operator(cluster, tmp_path / "operator.log", "--namespace", namespace, resync=2)
    try:
        for i in range(5):
            create(k8s, namespace, f"steady-{i}", {"replicas": 1})
        for i in range(5):
            wait_ready(k8s, namespace, f"steady-{i}")
        time.sleep(4)
        reads = operator.requests({"get", "list"})
        writes = operator.requests({"apply", "create", "delete", "patch", "patch_status", "replace"})
        judged = metric(operator, "qwen_operator_resyncs_unchanged_total")
        resync_runs = metric(operator, 'qwen_operator_reconcile_triggers_total{trigger="resync"}')
        time.sleep(10)  # up to five resync rounds of five resources (at least two on a busy machine)
        # Each resync judged the five resources from the caches, found the inputs of their last run, and ran none.
        assert metric(operator, "qwen_operator_resyncs_unchanged_total") >= judged + 10, "the resync did not judge the resources"
        assert metric(operator, 'qwen_operator_reconcile_triggers_total{trigger="resync"}') == resync_runs, "a resync ran a resource whose inputs had not changed"
        assert operator.requests({"get", "list"}) == reads
        assert operator.requests({"apply", "create", "delete", "patch", "patch_status", "replace"}) == writes
        # Yet drift is still seen: through the watch, not by polling.
        client.CoreV1Api(k8s).delete_namespaced_service("steady-0", namespace)
        wait_until(lambda: client.CoreV1Api(k8s).read_namespaced_service("steady-0", namespace), 15, "the Service repaired")
    finally:
        stop_operator(operator)
    assert "Traceback" not in operator.log_text()


def test_making_a_resource_reads_no_child_by_name_and_applies_each_child_once(cluster, k8s, namespace, tmp_path):
    """A child the caches do not show is made by an apply that can only create (refused if the name is taken):
    no GET before it, one request per child."""
    install_crds(cluster)
    operator = start_operator(cluster, tmp_path / "operator.log", "--namespace", namespace, resync=3600)
    try:
        gets_before = operator.requests({"get"})
        applies_before = operator.requests_by_kind({"apply"})
        create(k8s, namespace, "fresh", {})
        wait_ready(k8s, namespace, "fresh")
        applies = {kind: n - applies_before.get(kind, 0.0) for kind, n in operator.requests_by_kind({"apply"}).items()}
        assert operator.requests({"get"}) == gets_before, operator.requests_by_kind({"get"})
        made = {kind: n for kind, n in applies.items() if n}
        assert made and all(n == 1 for n in made.values()), made
        assert {"Deployment", "Service", "PersistentVolumeClaim"} <= set(made), made
    finally:
        stop_operator(operator)
    assert "Traceback" not in operator.log_text()


def test_a_start_costs_two_runs_the_one_that_applies_and_the_one_that_finds_it_ready(cluster, k8s, namespace, tmp_path):
    """The counts on the way (a Deployment's replicas; a pod made, scheduled, started, ready) run nothing, nor does a
    short step (a claim binding): the resync, which would show a step that lasts, is an hour here."""
    install_crds(cluster)
    operator = start_operator(cluster, tmp_path / "operator.log", "--namespace", namespace, resync=3600)
    try:
        before = reconciles(operator)
        names = [f"start-{i}" for i in range(4)]
        for name in names:
            create(k8s, namespace, name, {})
        for name in names:
            wait_ready(k8s, namespace, name)
        time.sleep(5)  # the rollouts' last events drain
        runs = reconciles(operator) - before
        by_trigger = {k: v for k, v in operator.metrics().items() if k.startswith("qwen_operator_reconcile_triggers_total")}
        print(f"\n{len(names)} starts -> {runs:.0f} reconciles: {by_trigger}")
        assert runs <= 2 * len(names), by_trigger
    finally:
        stop_operator(operator)
    assert "Traceback" not in operator.log_text()
