"""The status judgements of issue 11, as pure functions over the API objects the reconcile observes: a rollout
blocked by capacity, a missing Secret seen from the pod, a cache PVC its class cannot provision, GPUs too small."""

from __future__ import annotations

from typing import Any

import pytest

from qwen_operator import status as status_lib
from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders.common import Owner
from qwen_operator.catalog import resolve_model

OWNER = Owner(name="chat", namespace="team-a", uid="u1", generation=2)
NOW = "2026-12-01T12:00:00Z"
UNSCHEDULABLE_GPU = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."


def pod(name: str, template: str, ready: bool, unschedulable: str | None = None) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if unschedulable:
        conditions.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable})
    return {"metadata": {"name": name, "labels": {"pod-template-hash": template}}, "status": {"conditions": conditions}}


def deployment(max_unavailable: int = 0, replicas: int = 2, updated: int = 0, ready: int = 2) -> dict[str, Any]:
    return {
        "metadata": {"generation": 3},
        "spec": {"replicas": replicas, "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": max_unavailable}}},
        "status": {"observedGeneration": 3, "replicas": replicas + 1, "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": ready},
    }


def ready_condition(observation: status_lib.Observation) -> dict[str, Any]:
    status = status_lib.compute_status(OWNER, "qwen3-0.6b-fp8", observation, {}, NOW)
    return next(c for c in status["conditions"] if c["type"] == "Ready")


# --- a rollout blocked by capacity -------------------------------------------------------------


def test_a_surge_pod_without_a_gpu_while_old_pods_hold_theirs_is_a_blocked_rollout() -> None:
    pods = [pod("chat-old-a", "old", True), pod("chat-old-b", "old", True), pod("chat-new-a", "new", False, UNSCHEDULABLE_GPU)]
    ready = ready_condition(status_lib.Observation(desired_replicas=2, deployment=deployment(), pods=pods))
    assert ready["status"] == "False" and ready["reason"] == "RolloutBlockedByCapacity"
    assert "chat-new-a" in ready["message"] and "maxUnavailable: 1" in ready["message"]


@pytest.mark.parametrize(
    ("max_unavailable", "pods", "reason"),
    [
        # The strategy stops old pods first: the scheduler frees a GPU soon, this is plain Unschedulable.
        (1, [pod("chat-old-a", "old", True), pod("chat-new-a", "new", False, UNSCHEDULABLE_GPU)], "Unschedulable"),
        # A first rollout (no old pod holds anything): the cluster lacks GPUs, not the rollout.
        (0, [pod("chat-new-a", "new", False, UNSCHEDULABLE_GPU)], "Unschedulable"),
        # Unschedulable for another reason than capacity (a selector nothing matches).
        (0, [pod("chat-old-a", "old", True), pod("chat-new-a", "new", False, "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.")], "Unschedulable"),
    ],
)
def test_other_unschedulable_pods_are_not_a_blocked_rollout(max_unavailable: int, pods: list[dict[str, Any]], reason: str) -> None:
    ready = ready_condition(status_lib.Observation(desired_replicas=2, deployment=deployment(max_unavailable), pods=pods))
    assert ready["reason"] == reason


# --- a missing Secret, from the pod ------------------------------------------------------------


def test_a_missing_secret_is_read_from_the_pod_status() -> None:
    waiting = {"reason": "CreateContainerConfigError", "message": 'secret "qwen-keys" not found'}
    broken = {"metadata": {"name": "chat-abc-1"}, "status": {"containerStatuses": [{"name": "vllm", "ready": False, "restartCount": 0, "state": {"waiting": waiting}}]}}
    _, crash, _ = status_lib.pod_problems([broken])
    assert crash is not None and crash.reason == "SecretNotFound"
    assert "qwen-keys" in crash.message
    ready = ready_condition(status_lib.Observation(desired_replicas=1, deployment=deployment(replicas=1, ready=0), pods=[broken]))
    assert ready["reason"] == "SecretNotFound"


def test_other_config_errors_keep_their_reason() -> None:
    waiting = {"reason": "CreateContainerConfigError", "message": 'couldn\'t find key api-key in Secret team-a/qwen-keys'}
    broken = {"metadata": {"name": "chat-abc-1"}, "status": {"containerStatuses": [{"name": "vllm", "ready": False, "state": {"waiting": waiting}}]}}
    _, crash, _ = status_lib.pod_problems([broken])
    assert crash is not None and crash.reason == "CreateContainerConfigError"


# --- a cache claim its class cannot provision --------------------------------------------------


def claim(modes: list[str], phase: str = "Pending") -> dict[str, Any]:
    return {"metadata": {"name": "chat-model-cache"}, "spec": {"accessModes": modes, "storageClassName": "standard"}, "status": {"phase": phase}}


def annotated(pvc: dict[str, Any], provisioner: str) -> dict[str, Any]:
    pvc["metadata"]["annotations"] = {"volume.kubernetes.io/storage-provisioner": provisioner}
    return pvc


def storage_class(provisioner: str) -> dict[str, Any]:
    return {"metadata": {"name": "standard"}, "provisioner": provisioner}


# What real provisioners write when asked for ReadWriteMany.
LOCAL_PATH_REFUSAL = "failed to provision volume with StorageClass \"standard\": Only support ReadWriteOnce access mode"
EBS_REFUSAL = "failed to provision volume with StorageClass \"gp2\": rpc error: code = InvalidArgument desc = Volume capabilities MULTI_NODE_MULTI_WRITER not supported. Only AccessModes[ReadWriteOnce] supported."


@pytest.mark.parametrize(
    ("pvc", "sc", "events", "problem"),
    [
        (claim(["ReadWriteMany"]), storage_class("example.com/csi"), [{"reason": "ProvisioningFailed", "message": EBS_REFUSAL}], True),
        (claim(["ReadWriteMany"]), None, [{"reason": "ProvisioningFailed", "message": LOCAL_PATH_REFUSAL}], True),
        # No Event yet, but the class's provisioner only ever makes node-attached volumes...
        (claim(["ReadWriteMany"]), storage_class("ebs.csi.aws.com"), [], True),
        # ...as the PV controller's annotation on the claim says, without reading the class.
        (annotated(claim(["ReadWriteMany"]), "pd.csi.storage.gke.io"), None, [], True),
        (annotated(claim(["ReadWriteMany"]), "filestore.csi.storage.gke.io"), None, [], False),
        # A ReadWriteOnce claim on the same class is fine, and so is a bound claim.
        (claim(["ReadWriteOnce"]), storage_class("ebs.csi.aws.com"), [], False),
        (claim(["ReadWriteMany"], phase="Bound"), storage_class("ebs.csi.aws.com"), [{"reason": "ProvisioningFailed", "message": EBS_REFUSAL}], False),
        # A class that may offer ReadWriteMany, still provisioning, or failing for another reason: not this problem.
        (claim(["ReadWriteMany"]), storage_class("efs.csi.aws.com"), [], False),
        (claim(["ReadWriteMany"]), storage_class("efs.csi.aws.com"), [{"reason": "ProvisioningFailed", "message": "quota exceeded"}], False),
        (None, None, [], False),
    ],
)
def test_cache_claim_pending_for_its_access_mode(pvc, sc, events, problem: bool) -> None:
    found = status_lib.cache_claim_problem(pvc, sc, events)
    if not problem:
        assert found is None
        return
    assert found is not None and found.reason == "CacheAccessModeUnsupported"
    assert "ReadWriteMany" in found.message and "accessMode" in found.message


def test_cache_access_mode_problem_is_the_ready_reason_over_volume_pending() -> None:
    waiting_pod = {"metadata": {"name": "chat-abc-1"}, "status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims."}]}}
    observation = status_lib.Observation(desired_replicas=1, pods=[waiting_pod], cache_claim=claim(["ReadWriteMany"]),
                                         cache_storage_class=storage_class("rancher.io/local-path"))
    assert ready_condition(observation)["reason"] == "CacheAccessModeUnsupported"
    observation.cache_claim = None
    assert ready_condition(observation)["reason"] == "VolumePending"


# --- GPU memory on the candidate nodes ---------------------------------------------------------


def gpu_node(name: str, memory_mib: int | None) -> dict[str, Any]:
    labels = {} if memory_mib is None else {"nvidia.com/gpu.memory": str(memory_mib)}
    return {"metadata": {"name": name, "labels": labels}}


@pytest.mark.parametrize(
    ("nodes", "reason"),
    [
        ([gpu_node("l4-a", 23034), gpu_node("l4-b", 23034)], "GPUMemoryTooSmall"),
        ([gpu_node("l4-a", 23034), gpu_node("h100-a", 81559)], "GPUMemoryTooSmallOnSomeNodes"),
        ([gpu_node("h100-a", 81559)], None),
        ([gpu_node("unlabelled", None)], None),
    ],
)
def test_gpu_memory_on_candidate_nodes(nodes: list[dict[str, Any]], reason: str | None) -> None:
    spec = QwenInferenceSpec.model_validate({"model": {"name": "Qwen/Qwen3-8B"}})  # 23.2 GiB per GPU at 32k
    problem = status_lib.gpu_memory_problem_on_nodes(resolve_model(spec), spec, nodes)
    assert (problem.reason if problem else None) == reason
    if problem:
        assert "l4-a (22 GiB)" in problem.message


@pytest.mark.parametrize(
    ("modes", "desired", "degraded"),
    [(["ReadWriteOnce"], 3, "CacheReadWriteOnce"), (["ReadWriteOnce"], 1, None), (["ReadWriteMany"], 3, None)],
)
def test_a_read_write_once_cache_shared_by_several_replicas_is_degraded(modes: list[str], desired: int, degraded: str | None) -> None:
    observation = status_lib.Observation(desired_replicas=desired, deployment=deployment(replicas=desired, ready=desired), cache_claim=claim(modes, phase="Bound"))
    status = status_lib.compute_status(OWNER, "m", observation, {}, NOW)
    condition = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (condition["reason"] if condition["status"] == "True" else None) == degraded


# --- the nodes the pods may land on ------------------------------------------------------------


def labelled(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}}}


NODES = [
    labelled("l4-a", **{"nvidia.com/gpu.product": "NVIDIA-L4", "nvidia.com/gpu.memory": "23034", "nvidia.com/gpu.compute.major": "8", "pool": "gpu"}),
    labelled("t4-a", **{"nvidia.com/gpu.product": "Tesla-T4", "nvidia.com/gpu.memory": "15360", "nvidia.com/gpu.compute.major": "7", "pool": "gpu"}),
    labelled("h100-a", **{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.memory": "81559", "nvidia.com/gpu.compute.major": "9"}),
    labelled("cpu-a"),
]


def names_for(spec_fields: dict[str, Any]) -> list[str]:
    from qwen_operator.builders.deployment import build_deployment
    from qwen_operator.config import OperatorConfig

    spec = QwenInferenceSpec.model_validate(spec_fields)
    pod_spec = build_deployment(OWNER, spec, resolve_model(spec), OperatorConfig(), manage_replicas=True)["spec"]["template"]["spec"]
    return [n["metadata"]["name"] for n in status_lib.candidate_nodes(pod_spec, NODES)]


@pytest.mark.parametrize(
    ("spec_fields", "names"),
    [
        # A BF16 model with no placement: anywhere (the GPU request does the rest at scheduling).
        ({"model": {"name": "Qwen/Qwen3-8B"}}, ["l4-a", "t4-a", "h100-a", "cpu-a"]),
        # Pinned products become required node affinity.
        ({"model": {"name": "Qwen/Qwen3-8B-FP8"}, "resources": {"gpu": {"products": ["NVIDIA-L4", "NVIDIA-H100-80GB-HBM3"]}}}, ["l4-a", "h100-a"]),
        # An FP8 model requires compute capability 8.0 or more, or no GPU labels at all.
        ({"model": {"name": "Qwen/Qwen3-0.6B-FP8"}}, ["l4-a", "h100-a", "cpu-a"]),
        ({"model": {"name": "Qwen/Qwen3-8B"}, "scheduling": {"nodeSelector": {"pool": "gpu"}}}, ["l4-a", "t4-a"]),
    ],
)
def test_candidate_nodes_follow_the_pods_placement(spec_fields: dict[str, Any], names: list[str]) -> None:
    assert names_for(spec_fields) == names


def test_gpu_memory_is_judged_on_the_candidate_nodes_before_any_pod_lands() -> None:
    spec = QwenInferenceSpec.model_validate({"model": {"name": "Qwen/Qwen3-8B"}, "scheduling": {"nodeSelector": {"pool": "gpu"}}})
    from qwen_operator.builders.deployment import build_deployment
    from qwen_operator.config import OperatorConfig

    pod_spec = build_deployment(OWNER, spec, resolve_model(spec), OperatorConfig(), manage_replicas=True)["spec"]["template"]["spec"]
    problem = status_lib.gpu_memory_problem_on_nodes(resolve_model(spec), spec, status_lib.candidate_nodes(pod_spec, NODES))
    # Both the L4 (22.5 GiB) and the T4 (15 GiB) are below the 23.2 GiB Qwen3-8B needs at 32k.
    assert problem is not None and problem.reason == "GPUMemoryTooSmall"
