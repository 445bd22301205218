"""The controller's pure trigger rules (qwen_operator.controller): which child event is judged at once."""

from __future__ import annotations

import pytest

from qwen_operator.controller import (
    IGNORE, NOW, PROGRESS, SOON, STEP, _slim_resource, _what_matters, child_event_urgency, not_written_by_the_run, pod_step, rollout_just_completed,
    unpacked_resource,
)
from qwen_operator.k8s.informer import REVISION


def deployment(ready: int, replicas: int = 1, generation: int = 1, observed: int = 1, kind: str = "Deployment") -> dict:
    return {"kind": kind, "metadata": {"name": "q", "generation": generation}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": ready, "availableReplicas": ready}}


@pytest.mark.parametrize(("old", "new", "expected"), [
    (deployment(0), deployment(1), True),  # the last replica became ready: the resource turns Ready now
    (None, deployment(1), True),  # first seen complete (a relist, or an adopted resource)
    (deployment(1), deployment(1), False),  # still complete: nothing new
    (deployment(1, replicas=2), deployment(2, replicas=2), True),
    (deployment(1, replicas=2), deployment(1, replicas=2), False),
    (deployment(0), deployment(1, generation=2, observed=1), False),  # the controller has not seen the new spec yet
    (deployment(0, kind="StatefulSet"), deployment(1, kind="StatefulSet"), False),
    (deployment(1), None, False),  # deleted
    (deployment(0, replicas=0), deployment(0, replicas=0), False),  # scaled to zero is not a completed rollout
])
def test_rollout_just_completed(old, new, expected) -> None:
    assert rollout_just_completed(old, new) is expected


def digested(obj: dict, digest: str = "d1") -> dict:
    return {**obj, "_specDigest": digest}


def pod(phase: str = "Pending", *, node: str = "", ready: bool = False, waiting: str = "", unschedulable: str = "", restarts: int = 0) -> dict:
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if unschedulable:
        conditions.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable})
    state = {"waiting": {"reason": waiting}} if waiting else ({"running": {}} if phase == "Running" else {})
    return {"kind": "Pod", "metadata": {"name": "q-abc"}, "spec": {"nodeName": node},
            "status": {"phase": phase, "conditions": conditions,
                       "containerStatuses": [{"name": "vllm", "ready": ready, "started": ready, "restartCount": restarts, "state": state}]}}


def claim(phase: str | None, digest: str = "d1") -> dict:
    return {"kind": "PersistentVolumeClaim", "metadata": {"name": "q-cache"}, "_specDigest": digest, "status": {"phase": phase} if phase else {}}


def hpa(desired: int, waiting: int, active: tuple[str, str] = ("True", "ValidMetricFound")) -> dict:
    """An HPA on queue depth as the cache holds it: the replicas it wants, the average waiting it saw, its conditions."""
    return digested({"kind": "HorizontalPodAutoscaler", "metadata": {"name": "q"}, "status": {
        "desiredReplicas": desired, "currentReplicas": desired,
        "currentMetrics": [{"type": "Pods", "pods": {"metric": {"name": "vllm:num_requests_waiting"}, "current": {"averageValue": str(waiting)}}}],
        "conditions": [{"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale", "message": "recommended size matches current size"},
                       {"type": "ScalingActive", "status": active[0], "reason": active[1], "message": "the HPA was able to calculate a replica count"}]}})


RWX_PENDING_ON_A_DISK = {"kind": "PersistentVolumeClaim", "_specDigest": "d1", "spec": {"accessModes": ["ReadWriteMany"]}, "status": {"phase": "Pending"},
                         "metadata": {"name": "q-cache", "annotations": {"volume.kubernetes.io/storage-provisioner": "ebs.csi.aws.com"}}}
FAILING = {**deployment(0), "status": {**deployment(0)["status"], "conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": "quota"}]}}


@pytest.mark.parametrize(("old", "new", "running", "expected"), [
    (digested(deployment(0)), digested(deployment(1)), False, NOW),
    # the counts on the way of a rollout going as it should, and what the verdict does not read: nothing runs (the
    # resync's record takes the new revision); the next run shows the counts
    (digested(deployment(0, observed=0)), digested(deployment(0)), False, IGNORE),
    (None, pod(), False, IGNORE),
    (pod(), pod(node="n1"), False, IGNORE),
    (pod(node="n1"), pod("Running", node="n1", ready=True), False, IGNORE),
    (pod("Running", node="n1", ready=True), None, False, IGNORE),
    (claim("Pending"), claim("Bound"), False, IGNORE),
    (claim("Pending"), claim("Lost"), False, IGNORE),
    ({**digested({"kind": "Service", "metadata": {"name": "q"}}), "status": {}},
     {**digested({"kind": "Service", "metadata": {"name": "q"}}), "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}}, False, IGNORE),
    (digested({"kind": "PodDisruptionBudget", "metadata": {"name": "q"}, "status": {"currentHealthy": 1}}),
     digested({"kind": "PodDisruptionBudget", "metadata": {"name": "q"}, "status": {"currentHealthy": 2}}), False, IGNORE),
    (hpa(2, 5), hpa(2, 9), False, IGNORE),  # the HPA's current metric moved; it still wants 2 replicas
    (None, digested(deployment(0)), True, PROGRESS),  # the running reconcile's own apply, seen by the watch first
    # what a user must hear of soon, or what the operator must repair
    (None, digested(deployment(0)), False, SOON),  # a child appeared outside a run
    (digested(deployment(0)), None, False, SOON),  # a child deleted: made again at once
    (digested(deployment(0)), digested(deployment(0), "d2"), False, SOON),  # its spec changed: drift
    (digested(deployment(0)), digested(FAILING), False, SOON),
    (digested(FAILING), digested(deployment(0)), False, SOON),  # the failure cleared
    (pod(), pod(unschedulable="0/3 nodes are available: 3 Insufficient nvidia.com/gpu."), False, SOON),
    (pod("Running", node="n1"), pod("Running", node="n1", waiting="CrashLoopBackOff", restarts=3), False, SOON),
    (pod("Running", node="n1", waiting="CrashLoopBackOff", restarts=3), pod("Running", node="n1", ready=True, restarts=3), False, SOON),
    # a step of a start a user waits on: no run of its own, left for the resync to show if it lasts
    (pod(node="n1"), pod("Running", node="n1"), False, STEP),  # loading the model on its first start
    (pod(), pod(unschedulable="0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims."), False, STEP),  # VolumePending
    (pod("Running", node="n1"), pod("Running", node="n1", ready=True), False, IGNORE),  # loaded and ready: the Deployment says when all are
    (pod("Running", node="n1", ready=True), pod("Running", node="n1"), False, SOON),  # a serving replica stopped serving
    (hpa(2, 5), hpa(3, 9), False, SOON),  # the HPA wants another replica: the status's desiredReplicas
    (hpa(2, 5), hpa(2, 5, active=("False", "FailedGetPodsMetric")), False, SOON),  # and its conditions: Autoscaling
    (digested(deployment(1)), digested(deployment(0)), False, SOON),  # the Deployment is no longer complete
    (claim("Pending"), claim("Pending", "d2"), False, SOON),
    (RWX_PENDING_ON_A_DISK, {**RWX_PENDING_ON_A_DISK, "status": {"phase": "Bound"}}, False, SOON),  # CacheAccessModeUnsupported clears
])
def test_child_event_urgency(old, new, running, expected) -> None:
    assert child_event_urgency(old, new, owner_running=running) == expected


def test_the_managed_resources_gauge_moves_only_the_counts_a_change_touches() -> None:
    from qwen_operator import metrics

    def gauge() -> dict:
        return {tuple(s.labels.values()): s.value for m in metrics.MANAGED_RESOURCES.collect() for s in m.samples}

    metrics.set_resource_ready("gauge-test", "a", "False", "ReplicasNotReady")
    metrics.set_resource_ready("gauge-test", "b", "False", "ReplicasNotReady")
    before = gauge()
    metrics.set_resource_ready("gauge-test", "a", "True", "Ready")
    after = gauge()
    assert after[("False", "ReplicasNotReady")] == before[("False", "ReplicasNotReady")] - 1
    assert after[("True", "Ready")] == before.get(("True", "Ready"), 0) + 1
    metrics.set_resource_ready("gauge-test", "a", None)
    metrics.set_resource_ready("gauge-test", "b", None)
    assert gauge().get(("True", "Ready"), 0) == before.get(("True", "Ready"), 0)
    assert gauge().get(("False", "ReplicasNotReady"), 0) == before[("False", "ReplicasNotReady")] - 2


@pytest.mark.parametrize("pod_, step", [
    (pod(), None),
    (pod(unschedulable="0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims."), "VolumePending"),
    (pod("Running", node="n1"), "ModelLoading"),
    (pod("Running", node="n1", ready=True), None),
    (pod(unschedulable="0/3 nodes are available: 3 Insufficient nvidia.com/gpu."), None),  # a problem, not a step
])
def test_the_step_a_pod_is_in_is_named_as_the_status_names_it(pod_, step):
    assert pod_step(pod_) == step


def test_a_child_that_appeared_during_its_owners_run_is_judged_unless_the_run_wrote_exactly_it():
    written = {("Service", "q"): {"metadata": {"name": "q", "resourceVersion": "41"}},
               ("Deployment", "q"): {"metadata": {"name": "q", "resourceVersion": "40"}}}
    appeared = {("Service", "q", "41"),  # the run's own create, delivered by the watch before the API's answer
                ("Deployment", "q", "39"),  # a version the run did not write
                ("ConfigMap", "q-dashboard", "42")}  # a child the run did not write at all
    assert not_written_by_the_run(appeared, written) == [("ConfigMap", "q-dashboard"), ("Deployment", "q")]
    assert not_written_by_the_run({("Service", "q", "41")}, written) == []


def _resource(spec: dict, status: dict, resource_version: str = "7") -> dict:
    return {"apiVersion": "inference.qwenops.io/v1alpha1", "kind": "QwenInference",
            "metadata": {"name": "a", "namespace": "n", "uid": "u1", "generation": 2, "resourceVersion": resource_version,
                         "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
            "spec": spec, "status": status}


def test_a_kept_resource_is_packed_and_a_run_gets_it_back_whole_as_a_copy_of_its_own() -> None:
    resource = _resource({"model": {"name": "Qwen/Qwen3-0.6B-FP8"}, "replicas": 2}, {"conditions": [{"type": "Ready", "status": "True"}]})
    kept = _slim_resource(resource)
    assert "spec" not in kept and "status" not in kept and "managedFields" not in kept["metadata"]
    body = unpacked_resource({**kept, REVISION: 3})
    assert body == {**resource, "metadata": {k: v for k, v in resource["metadata"].items() if k != "managedFields"}}
    body["spec"]["replicas"] = 5
    body["metadata"]["labels"] = {"changed": "by the run"}
    assert unpacked_resource(kept)["spec"]["replicas"] == 2 and "labels" not in kept["metadata"]


def test_what_matters_of_a_kept_resource_moves_with_its_spec_and_not_with_its_status() -> None:
    spec = {"model": {"name": "Qwen/Qwen3-0.6B-FP8"}, "replicas": 2, "router": {"policy": "cache_aware", "replicas": 2}}
    same_spec_keys_reordered = {"router": {"replicas": 2, "policy": "cache_aware"}, "replicas": 2, "model": {"name": "Qwen/Qwen3-0.6B-FP8"}}
    before = _slim_resource(_resource(spec, {}))
    assert _what_matters(_slim_resource(_resource(same_spec_keys_reordered, {"ready": "1/1"}, resource_version="8"))) == _what_matters(before)
    assert _what_matters(_slim_resource(_resource({**spec, "replicas": 3}, {}))) != _what_matters(before)
