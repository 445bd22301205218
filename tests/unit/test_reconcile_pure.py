"""The pure parts of the reconcile: the apply/prune plan, the subset diff, conditions and events."""

from __future__ import annotations

import pytest

from qwen_operator import status as status_lib
from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders.common import Owner
from qwen_operator.catalog import resolve_model
from qwen_operator.config import OperatorConfig
from qwen_operator.reconcile import Capabilities, desired_children, event_for, is_subset, plan

OWNER = Owner(name="chat", namespace="team-a", uid="uid-1", generation=3)
NOW, LATER = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


@pytest.mark.parametrize(
    "desired, live, expected",
    [
        ({"a": 1}, {"a": 1, "b": 2}, True),  # the server adds fields
        ({"a": 1}, {"a": 2}, False),
        ({"a": {"b": [1, 2]}}, {"a": {"b": [1, 2], "c": 0}}, True),
        ({"a": [1, 2]}, {"a": [1, 2, 3]}, False),  # list length matters: an entry added by hand is drift
        ({"cpu": "0.5"}, {"cpu": "500m"}, True),  # the server normalises quantities
        ({"memory": "16Gi"}, {"memory": "17179869184"}, True),
        ({"cpu": "4"}, {"cpu": "5"}, False),
        ({"name": "main"}, {"name": "mainline"}, False),  # not quantities: compared as text
        ({"nodeSelector": {}}, {}, True),  # empty values are not stored by the server
        ({"x": None}, {}, True),
        ({"flag": True}, {"flag": 1}, False),
        ({"a": 1}, None, False),  # missing object
    ],
)
def test_is_subset(desired, live, expected):
    assert is_subset(desired, live) is expected


def built(spec: dict | None = None, caps: Capabilities = Capabilities()) -> list[dict]:
    parsed = QwenInferenceSpec.model_validate(spec or {})
    return desired_children(OWNER, parsed, resolve_model(parsed), OperatorConfig(), caps)


def kinds_of(children: list[dict]) -> list[str]:
    return sorted(c["kind"] for c in children)


def test_desired_children_follow_the_spec():
    assert kinds_of(built()) == ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Service"]
    assert kinds_of(built({"replicas": 2, "networkPolicy": {"enabled": True}, "monitoring": {"dashboard": False}})) == [
        "Deployment", "NetworkPolicy", "PersistentVolumeClaim", "PodDisruptionBudget", "Service"]
    with_prometheus = built(caps=Capabilities(prometheus_operator=True))
    assert {"ServiceMonitor", "PrometheusRule"} <= set(kinds_of(with_prometheus))


def test_autoscaling_hands_replicas_to_the_hpa():
    children = {c["kind"]: c for c in built({"autoscaling": {"enabled": True, "maxReplicas": 3}})}
    assert "HorizontalPodAutoscaler" in children
    assert "replicas" not in children["Deployment"]["spec"]
    assert {c["kind"]: c for c in built({"replicas": 2})}["Deployment"]["spec"]["replicas"] == 2


def as_live(manifest: dict, uid: str = OWNER.uid) -> dict:
    live = {**manifest, "metadata": {**manifest["metadata"], "uid": "child", "resourceVersion": "7"}, "status": {}}
    live["metadata"]["ownerReferences"] = [{**manifest["metadata"]["ownerReferences"][0], "uid": uid}]
    return live


def test_plan_applies_only_what_differs_and_prunes_only_what_it_owns():
    desired = built({"replicas": 2})
    live = [as_live(c) for c in desired]
    assert plan(desired, live, OWNER) == ([], [])

    changed = built({"replicas": 3})
    to_apply, to_delete = plan(changed, live, OWNER)
    assert [c["kind"] for c in to_apply] == ["Deployment"] and to_delete == []

    fewer = built({"replicas": 1})
    to_apply, to_delete = plan(fewer, live, OWNER)
    assert [c["kind"] for c in to_delete] == ["PodDisruptionBudget"]

    strangers = [as_live(c, uid="someone-else") for c in desired if c["kind"] == "PodDisruptionBudget"]
    assert plan(fewer, [as_live(c) for c in fewer] + strangers, OWNER)[1] == []


def pod(name: str, **status) -> dict:
    return {"metadata": {"name": name}, "spec": {"nodeName": "n1"}, "status": status}


def deployment(replicas: int, ready: int, updated: int | None = None) -> dict:
    return {"status": {"replicas": replicas, "readyReplicas": ready, "updatedReplicas": replicas if updated is None else updated}}


def conditions(observation: status_lib.Observation, previous: dict | None = None, now: str = NOW) -> dict[str, dict]:
    result = status_lib.compute_status(OWNER, "qwen3-0.6b-fp8", observation, previous or {}, now)
    return {c["type"]: c for c in result["conditions"]}


CRASHING = pod("p1", containerStatuses=[{"name": "vllm", "restartCount": 4, "ready": False, "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"exitCode": 1}}}])
UNSCHEDULABLE = pod("p1", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/5 nodes are available: 5 Insufficient nvidia.com/gpu."}])
VOLUME_PENDING = pod("p1", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/5 nodes are available: pod has unbound immediate PersistentVolumeClaims."}])
LOADING = pod("p1", containerStatuses=[{"name": "vllm", "restartCount": 0, "ready": False, "started": False, "state": {"running": {}}}])
DOWNLOADING = pod("p1", initContainerStatuses=[{"name": "download-model", "restartCount": 0, "ready": False, "state": {"running": {}}}])


@pytest.mark.parametrize(
    "observation, ready, reason, degraded",
    [
        (status_lib.Observation(desired_replicas=2, deployment=deployment(2, 2)), "True", "Ready", "False"),
        (status_lib.Observation(desired_replicas=2, deployment=deployment(2, 1)), "False", "ReplicasNotReady", "False"),
        (status_lib.Observation(desired_replicas=1, deployment=deployment(1, 0), pods=[CRASHING]), "False", "CrashLoop", "True"),
        (status_lib.Observation(desired_replicas=1, deployment=deployment(1, 0), pods=[UNSCHEDULABLE]), "False", "Unschedulable", "True"),
        (status_lib.Observation(desired_replicas=1, deployment=deployment(1, 0), pods=[VOLUME_PENDING]), "False", "VolumePending", "False"),
        (status_lib.Observation(desired_replicas=1, deployment=deployment(1, 0), pods=[LOADING]), "False", "ModelLoading", "False"),
        (status_lib.Observation(desired_replicas=1, deployment=deployment(1, 0), pods=[DOWNLOADING]), "False", "ModelDownloading", "False"),
        (status_lib.Observation(desired_replicas=0, deployment=deployment(0, 0)), "False", "ScaledToZero", "False"),
        (status_lib.Observation(desired_replicas=1, blocking=status_lib.Problem("UnknownModel", "set maxModelLen")), "False", "UnknownModel", "True"),
        # Rolling update: the old replica set still serves, but not everything is updated yet.
        (status_lib.Observation(desired_replicas=2, deployment=deployment(3, 2, updated=1)), "False", "ReplicasNotReady", "False"),
    ],
)
def test_conditions_from_what_was_observed(observation, ready, reason, degraded):
    found = conditions(observation)
    assert (found["Ready"]["status"], found["Ready"]["reason"]) == (ready, reason)
    assert found["Degraded"]["status"] == degraded
    assert all(c["observedGeneration"] == OWNER.generation for c in found.values())


def test_crash_loop_message_names_the_pod_container_and_exit_code():
    message = conditions(status_lib.Observation(desired_replicas=1, deployment=deployment(1, 0), pods=[CRASHING]))["Degraded"]["message"]
    assert "p1" in message and "vllm" in message and "exit code 1" in message


def test_an_unchanged_world_keeps_transition_times_and_is_not_a_change():
    observation = status_lib.Observation(desired_replicas=1, deployment=deployment(1, 1))
    first = status_lib.compute_status(OWNER, "m", observation, {}, NOW)
    second = status_lib.compute_status(OWNER, "m", observation, first, LATER)
    assert not status_lib.status_changed(first, second)
    assert status_lib.condition_transitions(first, second) == []

    broken = status_lib.Observation(desired_replicas=1, deployment=deployment(1, 0), pods=[CRASHING])
    third = status_lib.compute_status(OWNER, "m", broken, second, LATER)
    transitions = {c["type"]: c for c in status_lib.condition_transitions(second, third)}
    assert set(transitions) == {"Ready", "Progressing", "Degraded"}
    assert transitions["Ready"]["lastTransitionTime"] == LATER
    assert event_for(transitions["Degraded"]) == ("Warning", "CrashLoop", transitions["Degraded"]["message"])


@pytest.mark.parametrize(
    "hpa_conditions, status, reason",
    [
        ([], "Unknown", "Pending"),
        ([{"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"}, {"type": "ScalingActive", "status": "False", "reason": "FailedGetPodsMetric", "message": "no metrics"}], "False", "FailedGetPodsMetric"),
        ([{"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"}, {"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound"}, {"type": "ScalingLimited", "status": "True", "reason": "TooManyReplicas"}], "True", "TooManyReplicas"),
        ([{"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"}, {"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound"}, {"type": "ScalingLimited", "status": "False", "reason": "DesiredWithinRange"}], "True", "ValidMetricFound"),
    ],
)
def test_autoscaling_condition_mirrors_the_hpa(hpa_conditions, status, reason):
    observation = status_lib.Observation(desired_replicas=1, deployment=deployment(1, 1), autoscaling_enabled=True,
                                         hpa={"status": {"conditions": hpa_conditions, "desiredReplicas": 3}})
    result = status_lib.compute_status(OWNER, "m", observation, {}, NOW)
    autoscaling = {c["type"]: c for c in result["conditions"]}["Autoscaling"]
    assert (autoscaling["status"], autoscaling["reason"]) == (status, reason)
    assert result["desiredReplicas"] == 3


@pytest.mark.parametrize(
    "products, outcome",
    [
        ([], None),
        (["NVIDIA-L4"], None),
        (["NVIDIA-A100-SXM4-80GB"], "GPUWithoutNativeFP8"),
        (["Tesla-T4", "NVIDIA-L4"], "GPUWithoutNativeFP8"),  # it can still land on the L4
        (["Tesla-T4"], "GPUIncompatible"),
    ],
)
def test_judge_spec_blocks_fp8_only_where_it_cannot_run(products, outcome):
    from qwen_operator.api.errors import SpecError
    from qwen_operator.reconcile import judge_spec

    spec = QwenInferenceSpec.model_validate({"resources": {"gpu": {"products": products}}})
    try:
        _, warnings = judge_spec(spec)
    except SpecError as error:
        assert error.reason == outcome == "GPUIncompatible"
        return
    assert [w.reason for w in warnings] == ([outcome] if outcome else [])
