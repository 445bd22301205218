"""The pure parts of the reconcile: the apply/prune plan, the subset diff, conditions and events."""

from __future__ import annotations

import pytest

from qwen_operator import status as status_lib
from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders.common import Owner
from qwen_operator.catalog import resolve_model
from qwen_operator.config import OperatorConfig
from qwen_operator.reconcile import (
    DESIRED_HASH_ANNOTATION, Capabilities, desired_children, event_for, events_for, hpa_handover, is_subset, monitoring_condition, owns_replicas, plan,
    with_desired_hash,
)

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


NO_ROUTER = {"router": {"enabled": False}}  # one Deployment and one Service: the plan tests key children by kind


def built(spec: dict | None = None, caps: Capabilities = Capabilities()) -> list[dict]:
    parsed = QwenInferenceSpec.model_validate(spec or {})
    return desired_children(OWNER, parsed, resolve_model(parsed), OperatorConfig(), caps)


def kinds_of(children: list[dict]) -> list[str]:
    return sorted(c["kind"] for c in children)


def test_desired_children_follow_the_spec():
    assert kinds_of(built()) == ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Service"]
    assert kinds_of(built({"replicas": 2, "networkPolicy": {"enabled": True}, "monitoring": {"dashboard": False}, **NO_ROUTER})) == [
        "Deployment", "NetworkPolicy", "PersistentVolumeClaim", "PodDisruptionBudget", "Service"]
    # More than one replica: the router by default, with its own Deployment, Service account, Role, binding, PDB
    # and NetworkPolicy, and the engine Service beside the instance's.
    assert kinds_of(built({"replicas": 2, "networkPolicy": {"enabled": True}, "monitoring": {"dashboard": False}})) == [
        "Deployment", "Deployment", "NetworkPolicy", "NetworkPolicy", "PersistentVolumeClaim", "PodDisruptionBudget",
        "PodDisruptionBudget", "Role", "RoleBinding", "Service", "Service", "ServiceAccount"]
    with_prometheus = built(caps=Capabilities(prometheus_operator=True))
    assert {"ServiceMonitor", "PrometheusRule"} <= set(kinds_of(with_prometheus))


def test_autoscaling_hands_replicas_to_the_hpa():
    children = {c["kind"]: c for c in built({"autoscaling": {"enabled": True, "maxReplicas": 3}, **NO_ROUTER})}
    assert "HorizontalPodAutoscaler" in children
    assert "replicas" not in children["Deployment"]["spec"]
    assert {c["kind"]: c for c in built({"replicas": 2, **NO_ROUTER})}["Deployment"]["spec"]["replicas"] == 2


def as_live(manifest: dict, uid: str = OWNER.uid) -> dict:
    """manifest as the API server would store it after the operator applied it."""
    manifest = with_desired_hash(manifest)
    live = {**manifest, "metadata": {**manifest["metadata"], "uid": "child", "resourceVersion": "7"}, "status": {}}
    live["metadata"]["ownerReferences"] = [{**manifest["metadata"]["ownerReferences"][0], "uid": uid}]
    return live


def kinds_in(manifests: list[dict]) -> list[str]:
    return [c["kind"] for c in manifests]


def test_plan_applies_only_what_differs_and_prunes_only_what_it_owns():
    desired = built({"replicas": 2, **NO_ROUTER})
    live = [as_live(c) for c in desired]
    assert plan(desired, live, OWNER).apply == [] and plan(desired, live, OWNER).delete == []

    changed = built({"replicas": 3, **NO_ROUTER})
    actions = plan(changed, live, OWNER)
    assert kinds_in(actions.apply) == ["Deployment"] and actions.delete == []
    assert actions.apply[0]["metadata"]["annotations"][DESIRED_HASH_ANNOTATION]

    fewer = built({"replicas": 1, **NO_ROUTER})
    assert kinds_in(plan(fewer, live, OWNER).delete) == ["PodDisruptionBudget"]


@pytest.mark.parametrize(
    "change, reason",
    [
        ("missing", "it does not exist yet"),
        ("spec", "the spec changed what it should be"),
        ("edited", "it drifted from the spec (changed by someone else)"),
        ("unwanted", "the spec no longer asks for it"),
    ],
)
def test_every_planned_action_says_why(change, reason):
    desired = built({"replicas": 2, **NO_ROUTER})
    live = [as_live(c) for c in desired]
    deployment = ("Deployment", "chat")
    if change == "missing":
        live = [c for c in live if c["kind"] != "Deployment"]
    elif change == "spec":
        desired = built({"replicas": 3, **NO_ROUTER})
    elif change == "edited":
        live_deployment = next(c for c in live if c["kind"] == "Deployment")
        live_deployment["spec"] = {**live_deployment["spec"], "replicas": 5}
    elif change == "unwanted":
        desired = [c for c in desired if c["kind"] != "Deployment"]
    actions = plan(desired, live, OWNER)
    assert actions.reasons == {deployment: reason}
    assert kinds_in(actions.delete if change == "unwanted" else actions.apply) == ["Deployment"]


def test_plan_rolls_out_a_removed_optional_field():
    """The desired object without tolerations is a subset of the live one with them: only the hash sees it."""
    with_tolerations = built({"scheduling": {"tolerations": [{"key": "gpu", "operator": "Exists"}], "priorityClassName": "high"}})
    live = [as_live(c) for c in with_tolerations]
    without = built({})
    deployment = next(c for c in without if c["kind"] == "Deployment")
    assert is_subset(deployment, next(c for c in live if c["kind"] == "Deployment"))  # why a field diff is not enough
    assert kinds_in(plan(without, live, OWNER).apply) == ["Deployment"]


def test_plan_never_touches_an_object_it_does_not_control():
    desired = built({"replicas": 2, **NO_ROUTER})
    service = next(c for c in desired if c["kind"] == "Service")
    users_service = {**service, "metadata": {"name": service["metadata"]["name"], "namespace": "team-a", "uid": "theirs"}}
    other_owner = as_live(next(c for c in desired if c["kind"] == "Deployment"), uid="someone-else")
    live = [as_live(c) for c in desired if c["kind"] not in ("Service", "Deployment")] + [users_service, other_owner]
    actions = plan(desired, live, OWNER)
    assert "Service" not in kinds_in(actions.apply) and "Deployment" not in kinds_in(actions.apply)
    assert [p.reason for p in actions.conflicts] == ["NameConflict", "NameConflict"]
    messages = " ".join(p.message for p in actions.conflicts)
    assert "Service team-a/chat" in messages and "no controlling owner" in messages and "someone-else" in messages
    assert actions.delete == []
    # Owned by another QwenInference and no longer wanted: never pruned.
    strangers = [as_live(c, uid="someone-else") for c in desired if c["kind"] == "PodDisruptionBudget"]
    fewer = built({"replicas": 1, **NO_ROUTER})
    assert plan(fewer, [as_live(c) for c in fewer] + strangers, OWNER).delete == []


def test_hpa_handover_keeps_the_live_replicas_under_another_manager():
    live = {"metadata": {"name": "chat", "namespace": "team-a", "managedFields": [
        {"manager": "qwen-operator", "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}}},
    ]}, "spec": {"replicas": 3}}
    assert owns_replicas(live, "qwen-operator")
    assert not owns_replicas(live, "someone")
    assert hpa_handover(live) == {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "chat", "namespace": "team-a"}, "spec": {"replicas": 3}}
    handed_over = {"metadata": {"managedFields": [{"manager": "qwen-operator", "operation": "Apply", "fieldsV1": {"f:spec": {"f:template": {}}}}]}}
    assert not owns_replicas(handed_over, "qwen-operator")


def pod(name: str, **status) -> dict:
    return {"metadata": {"name": name}, "spec": {"nodeName": "n1"}, "status": status}


def deployment(replicas: int, ready: int, updated: int | None = None, *, generation: int = 2, observed: int = 2,
               spec_replicas: int | None = None, conditions: list[dict] | None = None) -> dict:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas if spec_replicas is None else spec_replicas},
        "status": {"observedGeneration": observed, "replicas": replicas, "readyReplicas": ready, "availableReplicas": ready,
                   "updatedReplicas": replicas if updated is None else updated, "conditions": conditions or []},
    }


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
        (status_lib.Observation(desired_replicas=2, deployment=deployment(3, 2, updated=1)), "False", "RollingOut", "False"),
        # A 1-replica rollout: the old pod serves while the new one loads.
        (status_lib.Observation(desired_replicas=1, deployment=deployment(2, 1, updated=1, spec_replicas=1), pods=[LOADING]), "False", "ModelLoading", "False"),
        # All counts fine, but the Deployment controller has not seen the new template yet.
        (status_lib.Observation(desired_replicas=1, deployment=deployment(1, 1, generation=3, observed=2)), "False", "RollingOut", "False"),
        # The last old pod is still terminating-but-counted: not complete.
        (status_lib.Observation(desired_replicas=2, deployment=deployment(3, 3, updated=2, spec_replicas=2)), "False", "RollingOut", "False"),
        # What the Deployment says fails (e.g. a missing PriorityClass) is the reason.
        (status_lib.Observation(desired_replicas=1, deployment=deployment(0, 0, conditions=[
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": 'pods "x" is forbidden: no PriorityClass with name high was found'}])),
         "False", "ReplicaFailure", "True"),
        (status_lib.Observation(desired_replicas=1, deployment=deployment(1, 0), pods=[pod("p1", containerStatuses=[
            {"name": "vllm", "restartCount": 0, "ready": False, "state": {"waiting": {"reason": "CreateContainerError", "message": "no such file"}}}])]),
         "False", "CreateContainerError", "True"),
        # A child the API refuses, or a name someone else holds: Ready says so even when the pods are fine.
        (status_lib.Observation(desired_replicas=1, deployment=deployment(1, 1), apply_failures=[status_lib.Problem("ApplyFailed", "Service chat: 422")]),
         "False", "ApplyFailed", "True"),
        (status_lib.Observation(desired_replicas=1, deployment=deployment(1, 1), conflicts=[status_lib.Problem("NameConflict", "Service x")]),
         "False", "NameConflict", "True"),
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


def cond(type_, status, reason):
    return {"type": type_, "status": status, "reason": reason, "message": f"{type_} {reason}"}


@pytest.mark.parametrize(
    "condition, expected",
    [
        (cond("Ready", "True", "Ready"), "Normal"),
        (cond("Ready", "False", "ReplicasNotReady"), None),  # a step of a normal start: in the status, not an Event
        (cond("Ready", "False", "ModelDownloading"), None),
        (cond("Ready", "False", "RollingOut"), None),
        (cond("Ready", "False", "CrashLoop"), "Warning"),
        (cond("Ready", "False", "UnknownModel"), "Warning"),
        (cond("Degraded", "True", "CrashLoop"), "Warning"),
        (cond("Degraded", "False", "AsExpected"), None),
        (cond("Monitoring", "False", "Disabled"), None),  # the user turned it off
        (cond("Monitoring", "True", "Configured"), None),
        (cond("Monitoring", "False", "PrometheusOperatorMissing"), None),  # the cluster's, not the resource's: logged once
        (cond("Monitoring", "False", "ApplyFailed"), "Warning"),
        (cond("Autoscaling", "Unknown", "Pending"), None),
        (cond("Autoscaling", "False", "FailedGetPodsMetric"), "Warning"),
        (cond("Routing", "False", "NoEngineReady"), None),
        (cond("Routing", "False", "RouterCrashLoop"), "Warning"),
        (cond("Progressing", "True", "RollingOut"), None),
    ],
)
def test_only_problems_and_reaching_ready_make_events(condition, expected):
    event = event_for(condition)
    assert (event[0] if event else None) == expected
    if event is not None:
        assert event[1:] == (condition["reason"], condition["message"])


def test_a_failure_seen_by_ready_and_degraded_is_one_event():
    failure = {"status": "False", "reason": "CrashLoop", "message": "pod p1 crashes"}
    transitions = [{"type": "Ready", **failure}, {"type": "Progressing", **failure}, {"type": "Degraded", **failure, "status": "True"}]
    assert events_for(transitions) == [("Warning", "CrashLoop", "pod p1 crashes")]
    assert events_for([cond("Ready", "False", "ReplicasNotReady"), cond("Monitoring", "False", "Disabled")]) == []


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
        _, warnings = judge_spec("chat", spec)
    except SpecError as error:
        assert error.reason == outcome == "GPUIncompatible"
        return
    assert [w.reason for w in warnings] == ([outcome] if outcome else [])


@pytest.mark.parametrize(
    "name, reason",
    [("chat", None), ("a" * 56, None), ("a" * 57, "InvalidName"), ("chat.v2", "InvalidName"), ("1chat", "InvalidName"), ("Chat", "InvalidName")],
)
def test_judge_spec_refuses_names_whose_children_would_be_invalid(name, reason):
    from qwen_operator.api.errors import SpecError
    from qwen_operator.reconcile import judge_spec

    try:
        judge_spec(name, QwenInferenceSpec())
        found = None
    except SpecError as error:
        found = error.reason
    assert found == reason


def test_failure_status_keeps_counts_and_says_why():
    healthy = status_lib.compute_status(OWNER, "m", status_lib.Observation(desired_replicas=1, deployment=deployment(1, 1)), {}, NOW)
    failed = status_lib.failure_status(OWNER, healthy, status_lib.Problem("APIUnavailable", "503 x5"), LATER)
    by_type = {c["type"]: c for c in failed["conditions"]}
    assert (by_type["Ready"]["status"], by_type["Ready"]["reason"]) == ("False", "APIUnavailable")
    assert (by_type["Degraded"]["status"], by_type["Degraded"]["reason"]) == ("True", "APIUnavailable")
    assert by_type["Progressing"] == next(c for c in healthy["conditions"] if c["type"] == "Progressing")
    assert failed["readyReplicas"] == 1 and status_lib.status_changed(healthy, failed)
    assert not status_lib.status_changed(failed, status_lib.failure_status(OWNER, failed, status_lib.Problem("APIUnavailable", "503 x5"), LATER))


REFUSED_MONITOR = status_lib.Problem("ApplyFailed", "ServiceMonitor chat could not be applied: the server could not find the requested resource")


@pytest.mark.parametrize(
    "monitoring, caps, failures, expected",
    [
        ({}, Capabilities(prometheus_operator=True), [], ("True", "Configured")),
        ({"serviceMonitor": False, "prometheusRule": False}, Capabilities(prometheus_operator=True), [], ("False", "Disabled")),
        ({}, Capabilities(prometheus_operator=False), [], ("False", "PrometheusOperatorMissing")),
        # Refused while the API is served: said, with a Warning Event (event_for), on Monitoring alone.
        ({}, Capabilities(prometheus_operator=True), [REFUSED_MONITOR], ("False", "ApplyFailed")),
        # Refused because the CRDs went (discovery, asked again after the refusal, no longer serves them): the fleet-wide fact.
        ({}, Capabilities(prometheus_operator=False), [REFUSED_MONITOR], ("False", "PrometheusOperatorMissing")),
    ],
)
def test_monitoring_condition(monitoring, caps, failures, expected):
    spec = QwenInferenceSpec.model_validate({"model": {"name": "Qwen/Qwen3-0.6B-FP8"}, "monitoring": monitoring})
    status, reason, message = monitoring_condition(spec, caps, failures)
    assert (status, reason) == expected
    assert (REFUSED_MONITOR.message in message) == (expected[1] == "ApplyFailed")


def test_a_refused_service_monitor_moves_neither_ready_nor_degraded():
    observation = status_lib.Observation(desired_replicas=1, deployment=deployment(1, 1), monitoring_failures=[REFUSED_MONITOR],
                                         monitoring_condition=("False", "ApplyFailed", REFUSED_MONITOR.message))
    found = conditions(observation)
    assert (found["Ready"]["status"], found["Degraded"]["status"], found["Monitoring"]["status"]) == ("True", "False", "False")
    assert event_for(found["Monitoring"]) == ("Warning", "ApplyFailed", REFUSED_MONITOR.message)
