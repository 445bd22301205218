"""Pure status computation: observed children -> QwenInference status and its conditions.

Conditions follow the Kubernetes API conventions (type, status, reason, message,
lastTransitionTime, observedGeneration). A condition keeps its lastTransitionTime while its
status stays the same, so an unchanged world computes an unchanged status, and the reconcile
then writes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders import common
from qwen_operator.builders.common import Owner
from qwen_operator.builders.deployment import AGENT_CONTAINER_NAME
from qwen_operator.catalog import ResolvedModel, gpu_memory_need

READY, PROGRESSING, DEGRADED, AUTOSCALING, MONITORING = "Ready", "Progressing", "Degraded", "Autoscaling", "Monitoring"
ROUTING = "Routing"
SERVER_CONTAINER = "vllm"
SIDECAR_CONTAINERS = (AGENT_CONTAINER_NAME,)  # init containers that keep running beside vLLM
# A pod whose container restarted this often without becoming ready is called crash looping even
# before the kubelet reports CrashLoopBackOff.
CRASH_LOOP_RESTARTS = 3
# Container waiting reasons that mean the container cannot start as configured (not a passing state).
CONTAINER_START_FAILURES = frozenset({
    "ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull", "InvalidImageName", "ImageInspectError",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError", "PreStartHookError", "PostStartHookError",
})
# The deep health agent's verdict, as vLLM's preStop hook leaves it in the termination message (qwen_agent.judge).
ENGINE_VERDICT = re.compile(r"^(EngineHung|EngineUnhealthy): (.*)$", re.DOTALL)
# Ready=False reasons that are steps of a normal rollout: their Events are Normal, not Warning.
PROGRESS_REASONS = frozenset({"ModelLoading", "ModelDownloading", "ReplicasNotReady", "VolumePending", "RollingOut", "ScaledToZero",
                              "RouterNotReady"})
# Routing=False reasons that are steps of a normal start (their Events are Normal).
ROUTING_PROGRESS_REASONS = frozenset({"RouterPending", "NoEngineReady"})
# The kubelet's message for an env var or volume whose Secret is missing: `secret "NAME" not found`.
MISSING_SECRET = re.compile(r'secret "([^"]+)" not found')
# Provisioners whose volumes are block devices or node-local paths: they never offer ReadWriteMany.
READ_WRITE_ONCE_ONLY_PROVISIONERS = frozenset({
    "ebs.csi.aws.com", "kubernetes.io/aws-ebs", "pd.csi.storage.gke.io", "kubernetes.io/gce-pd",
    "disk.csi.azure.com", "kubernetes.io/azure-disk", "rancher.io/local-path", "kubernetes.io/no-provisioner",
    "cinder.csi.openstack.org", "csi.vsphere.vmware.com", "driver.longhorn.io",
})
# What provisioners write into their ProvisioningFailed Events when a class lacks the access mode asked for.
ACCESS_MODE_REFUSALS = ("access mode", "accessmode", "multi_node", "multi-node", "multi writer", "volume capabilit", "only supports readwriteonce")
PROVISIONER_ANNOTATION = "volume.kubernetes.io/storage-provisioner"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB per GPU, set by gpu-feature-discovery


@dataclass(frozen=True)
class Problem:
    """Why the resource is not Ready. blocking problems stop the rollout (spec or reference errors)."""

    reason: str
    message: str
    degraded: bool = True


@dataclass
class Observation:
    """What the reconcile saw of the world, as plain API dicts."""

    desired_replicas: int
    deployment: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    hpa: dict[str, Any] | None = None
    autoscaling_enabled: bool = False
    monitoring_condition: tuple[str, str, str] | None = None  # (status, reason, message)
    blocking: Problem | None = None  # a spec/reference problem: nothing new was rolled out
    conflicts: list[Problem] = field(default_factory=list)  # children whose names someone else's objects hold
    apply_failures: list[Problem] = field(default_factory=list)  # children the API refused to bring to the desired state
    # ServiceMonitors and PrometheusRules the API refused: a Monitoring problem, never a serving one (Ready and
    # Degraded do not move when, say, someone removes the Prometheus Operator CRDs under a running fleet).
    monitoring_failures: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)  # e.g. FP8 on a weight-only GPU
    # The model cache PVC the operator made (None when it makes none), its StorageClass (None when unknown),
    # and the Events about the PVC (ProvisioningFailed carries the provisioner's refusal): see cache_claim_problem.
    cache_claim: dict[str, Any] | None = None
    cache_storage_class: dict[str, Any] | None = None
    cache_claim_events: list[dict[str, Any]] = field(default_factory=list)
    # The router (spec.router): whether it is on, how many replicas it should have, its Deployment and name.
    router_enabled: bool = False
    router_replicas: int = 0
    router_deployment: dict[str, Any] | None = None
    router_name: str = ""


def pod_problems(pods: list[dict[str, Any]]) -> tuple[Problem | None, Problem | None, Problem | None]:
    """(unschedulable, crash loop, model loading) as seen in the pods' status, most telling first."""
    unschedulable = crash = loading = None
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        if pod["metadata"].get("deletionTimestamp"):
            continue
        name = pod["metadata"]["name"]
        status = pod.get("status", {})
        for condition in status.get("conditions", []):
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False" and condition.get("reason") == "Unschedulable":
                message = condition.get("message", "")
                if "unbound" in message and "PersistentVolumeClaim" in message:
                    # The model cache PVC is not bound yet: a moment after creation this is normal; if it
                    # stays, the cluster has no StorageClass that can provision it.
                    loading = loading or Problem(
                        "VolumePending",
                        f"pod {name} waits for its model cache PVC to bind ({message.strip()}); if this persists, check that a "
                        "StorageClass can provision spec.model.source.cache (accessMode, storageClassName)",
                        degraded=False,
                    )
                else:
                    unschedulable = unschedulable or Problem("Unschedulable", f"pod {name} cannot be scheduled: {message}".strip())
        for container in status.get("initContainerStatuses", []) + status.get("containerStatuses", []):
            waiting = container.get("state", {}).get("waiting") or {}
            restarts = container.get("restartCount", 0)
            if (hang := engine_hang(container)) is not None:
                # Restarted by the deep health agent's verdict, and not serving again yet.
                crash = crash or Problem(
                    hang[0],
                    f"container {container['name']} in pod {name} was restarted by its deep health check ({hang[1]}); "
                    f"see kubectl logs {name} -c {AGENT_CONTAINER_NAME} and kubectl logs {name} -c {container['name']} --previous",
                )
            elif waiting.get("reason") == "CrashLoopBackOff" or (restarts >= CRASH_LOOP_RESTARTS and not container.get("ready")):
                last = container.get("lastState", {}).get("terminated") or {}
                detail = f", last exit code {last['exitCode']}" if "exitCode" in last else ""
                crash = crash or Problem(
                    "CrashLoop",
                    f"container {container['name']} in pod {name} keeps restarting ({waiting.get('reason', 'restarting')}{detail}); "
                    f"see kubectl logs {name} -c {container['name']} --previous",
                )
            elif waiting.get("reason") == "CreateContainerConfigError" and (missing := MISSING_SECRET.search(waiting.get("message", ""))):
                # Seen from the pod, so the operator needs no cluster-wide `get secrets` to tell it.
                crash = crash or Problem(
                    "SecretNotFound",
                    f"container {container['name']} in pod {name} cannot start: Secret {missing.group(1)} does not exist in its "
                    "namespace (spec.auth.apiKeySecretRef or spec.model.source.tokenSecretRef); create it and the pod starts",
                )
            elif waiting.get("reason") in CONTAINER_START_FAILURES:
                crash = crash or Problem(waiting["reason"], f"container {container['name']} in pod {name}: {waiting.get('message', waiting['reason'])}")
        for container in status.get("containerStatuses", []):
            if container.get("name") == SERVER_CONTAINER and "running" in container.get("state", {}) and not container.get("started", True):
                loading = loading or Problem("ModelLoading", f"pod {name} is loading the model (startup probe not passed yet)", degraded=False)
        for container in status.get("initContainerStatuses", []):
            if "running" in container.get("state", {}) and container.get("name") not in SIDECAR_CONTAINERS:
                loading = loading or Problem("ModelDownloading", f"pod {name} is downloading the model ({container['name']})", degraded=False)
    return unschedulable, crash, loading


def engine_hang(container: dict[str, Any]) -> tuple[str, str] | None:
    """(EngineHung or EngineUnhealthy, the agent's verdict) when the vLLM container was last stopped for a deep
    health verdict and is not ready again: its preStop hook wrote the agent's verdict into the termination message."""
    if container.get("name") != SERVER_CONTAINER or container.get("ready"):
        return None
    message = (((container.get("lastState") or {}).get("terminated") or {}).get("message") or "").strip()
    match = ENGINE_VERDICT.match(message)
    if match is None:
        return None
    return match.group(1), match.group(2).strip()


def _template_hash(pod: dict[str, Any]) -> str | None:
    return (pod.get("metadata", {}).get("labels") or {}).get("pod-template-hash")


def is_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in (pod.get("status") or {}).get("conditions", []))


def _insufficient_resources(pod: dict[str, Any]) -> str | None:
    """The scheduler's message when pod is Unschedulable for lack of a resource (a GPU, CPU, memory)."""
    for condition in (pod.get("status") or {}).get("conditions", []):
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable" and "Insufficient" in condition.get("message", ""):
            return condition["message"]
    return None


def rollout_blocked_by_capacity(deployment: dict[str, Any] | None, pods: list[dict[str, Any]]) -> Problem | None:
    """A rollout that waits for capacity the old pods hold: a pod of one template cannot be scheduled for
    lack of resources while ready pods of another template keep theirs, and the strategy stops no old pod
    first (maxUnavailable 0). On a full GPU pool that never ends on its own."""
    if deployment is None:
        return None
    rolling = ((deployment.get("spec") or {}).get("strategy") or {}).get("rollingUpdate") or {}
    if str(rolling.get("maxUnavailable", "25%")) not in ("0", "0%"):
        return None
    live = [p for p in pods if not p.get("metadata", {}).get("deletionTimestamp")]
    for pod in sorted(live, key=lambda p: p["metadata"]["name"]):
        message = _insufficient_resources(pod)
        if message is None:
            continue
        old_ready = [p for p in live if is_ready(p) and _template_hash(p) != _template_hash(pod)]
        if old_ready:
            return Problem(
                "RolloutBlockedByCapacity",
                f"the rollout waits for capacity: new pod {pod['metadata']['name']} cannot be scheduled ({message.strip()}) while "
                f"{len(old_ready)} pod(s) of the previous spec keep theirs, and spec.rollout.maxUnavailable is 0. Free or add "
                "capacity, or set spec.rollout {maxSurge: 0, maxUnavailable: 1} to replace pods one at a time in place",
                degraded=False,
            )
    return None


def cache_claim_problem(claim: dict[str, Any] | None, storage_class: dict[str, Any] | None, events: list[dict[str, Any]]) -> Problem | None:
    """Why the model cache PVC stays Pending, when its StorageClass cannot offer the access mode it asks
    for: the provisioner said so in a ProvisioningFailed Event, or the class's provisioner (from the class, or
    the claim's volume.kubernetes.io/storage-provisioner annotation) is known to make node-attached volumes
    only (ReadWriteOnce) and the claim asks for ReadWriteMany. storage_class and events may be left out."""
    if claim is None or (claim.get("status") or {}).get("phase") not in (None, "Pending"):
        return None
    modes = (claim.get("spec") or {}).get("accessModes") or []
    name = claim["metadata"]["name"]
    class_name = (storage_class or {}).get("metadata", {}).get("name") or (claim.get("spec") or {}).get("storageClassName") or "the default class"
    advice = ("set spec.model.source.cache.accessMode: ReadWriteOnce with one replica, a storageClassName that offers "
              f"{' and '.join(modes)} (EFS, Filestore, Azure Files, NFS), or cache.enabled: false (each pod downloads the model); "
              f"the access mode cannot change on an existing claim, so delete PVC {name} after changing it")
    for event in sorted(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "", reverse=True):
        text = event.get("message", "")
        if event.get("reason") == "ProvisioningFailed" and any(word in text.lower() for word in ACCESS_MODE_REFUSALS):
            return Problem("CacheAccessModeUnsupported", f"PVC {name} stays Pending: StorageClass {class_name} cannot provision {', '.join(modes)} ({text.strip()[:300]}); {advice}")
    # The PV controller writes the class's provisioner onto a claim it waits to have provisioned, so the
    # claim alone is enough; the StorageClass, when read, says the same.
    annotations = claim.get("metadata", {}).get("annotations") or {}
    provisioner = (storage_class or {}).get("provisioner") or annotations.get(PROVISIONER_ANNOTATION)
    if "ReadWriteMany" in modes and provisioner in READ_WRITE_ONCE_ONLY_PROVISIONERS:
        return Problem("CacheAccessModeUnsupported", f"PVC {name} stays Pending: StorageClass {class_name} ({provisioner}) makes volumes one node attaches "
                       f"(ReadWriteOnce) and the claim asks for ReadWriteMany; {advice}")
    return None


def read_write_once_cache_shared(claim: dict[str, Any] | None, desired_replicas: int) -> Problem | None:
    """A ReadWriteOnce cache claim (made for one replica, and kept: the mode is immutable) while more replicas
    are wanted: a pod on another node cannot mount it (Multi-Attach error, or all pods pinned to the volume's
    node)."""
    if claim is None or desired_replicas <= 1 or (claim.get("spec") or {}).get("accessModes") != ["ReadWriteOnce"]:
        return None
    name = claim["metadata"]["name"]
    return Problem(
        "CacheReadWriteOnce",
        f"{desired_replicas} replicas share the model cache PVC {name}, which is ReadWriteOnce (made when the spec had one "
        "replica): pods on other nodes cannot mount it. Set spec.model.source.cache.accessMode: ReadWriteMany with a class "
        f"that offers it, or cache.enabled: false, and delete PVC {name} so that it is made again",
    )


def _matches_expression(labels: dict[str, str], expression: dict[str, Any]) -> bool:
    key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
    if operator == "In":
        return labels.get(key) in values
    if operator == "NotIn":
        return labels.get(key) not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    if operator in ("Gt", "Lt") and labels.get(key, "").lstrip("-").isdigit() and values and values[0].lstrip("-").isdigit():
        value, bound = int(labels[key]), int(values[0])
        return value > bound if operator == "Gt" else value < bound
    return False


def node_may_run(pod_spec: dict[str, Any], node: dict[str, Any]) -> bool:
    """Whether a node's labels satisfy a pod's nodeSelector and required node affinity (the scheduler's label
    filters; taints and free capacity are not judged)."""
    labels = node.get("metadata", {}).get("labels") or {}
    if any(labels.get(k) != v for k, v in (pod_spec.get("nodeSelector") or {}).items()):
        return False
    required = ((pod_spec.get("affinity") or {}).get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    if not required:
        return True
    # Terms are ORed, the expressions of a term ANDed; a term without expressions matches nothing.
    return any(term.get("matchExpressions") and all(_matches_expression(labels, e) for e in term["matchExpressions"])
               for term in required.get("nodeSelectorTerms") or [])


def candidate_nodes(pod_spec: dict[str, Any], nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The nodes the pods of pod_spec may be scheduled on, by labels: judge GPU memory before any pod lands."""
    return [node for node in nodes if node_may_run(pod_spec, node)]


def gpu_memory_problem_on_nodes(model: ResolvedModel, spec: QwenInferenceSpec, nodes: list[dict[str, Any]]) -> Problem | None:
    """Nodes the pods may land on (their GPU memory label, nvidia.com/gpu.memory in MiB) whose GPUs are too
    small for the model at its maxModelLen: a pod there would crash-loop while loading. Nodes without the
    label are not judged. Blocking when every labelled candidate is too small."""
    need = gpu_memory_need(model, spec)
    if need is None:
        return None
    labelled = {}
    for node in nodes:
        value = (node.get("metadata", {}).get("labels") or {}).get(GPU_MEMORY_LABEL, "")
        if value.isdigit():
            labelled[node["metadata"]["name"]] = int(value) / 1024
    too_small = {n: gib for n, gib in labelled.items() if gib < need.per_gpu_gib}
    if not too_small:
        return None
    names = ", ".join(f"{n} ({gib:.0f} GiB)" for n, gib in sorted(too_small.items()))
    if len(too_small) == len(labelled):
        return Problem("GPUMemoryTooSmall", f"{need.describe(model)}; every candidate node's GPU has less: {names}")
    return Problem("GPUMemoryTooSmallOnSomeNodes", f"{need.describe(model)}; pods placed on {names} would fail to load: "
                   "pin spec.resources.gpu.products or a nodeSelector to the larger GPUs")


def discoverable_engines(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The engine pods vllm-router's Kubernetes discovery admits (its service_discovery.rs: a pod address, phase
    Running and the Ready condition True), and not being deleted (it drops a pod once its deletion starts)."""
    return [
        pod for pod in pods
        if not pod["metadata"].get("deletionTimestamp") and (pod.get("status") or {}).get("podIP")
        and (pod.get("status") or {}).get("phase") == "Running" and is_ready(pod)
    ]


def router_ready_replicas(observed: Observation) -> int:
    return (((observed.router_deployment or {}).get("status") or {}).get("readyReplicas") or 0)


def routing_condition(observed: Observation, generation: int) -> dict[str, Any] | None:
    """The Routing condition: the router's ready replicas against the engine pods it can route to.

    Read from the caches only, never from the router: the operator does not connect to pods (a resync costs no
    I/O, and pod addresses may not be reachable from it). What the router reports is its readiness: its probe
    asks vllm-router's /readiness, which is 200 only while it has a healthy engine. So a ready router replica
    has discovered and health-checked at least one engine; the engines it can route to are those its discovery
    admits (discoverable_engines); its exact view is in its metrics (vllm_router_active_workers,
    vllm_router_worker_health), which the ServiceMonitor scrapes and an alert watches."""
    if not observed.router_enabled:
        return None
    name, desired = observed.router_name, observed.router_replicas
    if observed.router_deployment is None:
        return _condition(ROUTING, False, "RouterPending", f"the router Deployment {name} is not there yet", generation)
    ready = router_ready_replicas(observed)
    engines = len(discoverable_engines(observed.pods))
    if engines == 0:
        return _condition(ROUTING, False, "NoEngineReady",
                          f"{ready}/{desired} router replicas ready, and no engine pod is Running and Ready for the router to route to", generation)
    if ready == 0:
        return _condition(
            ROUTING, False, "RouterNotReady",
            f"0/{desired} router replicas ready while {engines} engine pod(s) are Running and Ready: a router replica becomes ready "
            f"once it has discovered a healthy engine (vllm-router's /readiness). If this lasts, see kubectl logs deployment/{name} "
            "(its discovery watches this namespace's pods with its ServiceAccount)", generation)
    reason = "Routing" if ready >= desired else "RouterReplicasNotReady"
    return _condition(ROUTING, True, reason,
                      f"{ready}/{desired} router replicas ready, routing over the {engines} engine pod(s) Running and Ready "
                      "(those vllm-router's discovery admits)", generation)


def _condition(type_: str, status: bool | str, reason: str, message: str, generation: int) -> dict[str, Any]:
    value = status if isinstance(status, str) else ("True" if status else "False")
    return {"type": type_, "status": value, "reason": reason, "message": message, "observedGeneration": generation}


def merge_conditions(previous: list[dict[str, Any]], current: list[dict[str, Any]], now: str) -> list[dict[str, Any]]:
    """current conditions with lastTransitionTime kept from previous where the status did not change."""
    before = {c["type"]: c for c in previous}
    merged = []
    for condition in current:
        old = before.get(condition["type"])
        changed = old is None or old.get("status") != condition["status"]
        merged.append({**condition, "lastTransitionTime": now if changed or not old.get("lastTransitionTime") else old["lastTransitionTime"]})
    return merged


def rollout_complete(deployment: dict[str, Any] | None, desired: int) -> bool:
    """The Deployment controller has seen the current template, and every replica runs it and is
    ready, with no old pod left: updated = ready = available = replicas = desired."""
    if deployment is None or desired <= 0:
        return False
    generation = deployment.get("metadata", {}).get("generation", 0)
    status = deployment.get("status") or {}
    if status.get("observedGeneration", 0) < generation:
        return False
    if ((deployment.get("spec") or {}).get("replicas", desired)) != desired:
        return False
    counts = [status.get(k, 0) for k in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas")]
    return all(count == desired for count in counts)


def deployment_failure(deployment: dict[str, Any] | None) -> Problem | None:
    """What the Deployment itself reports as failing: ReplicaFailure (e.g. a missing PriorityClass or
    a quota, copied up from its ReplicaSet) or a rollout past its progress deadline."""
    for condition in ((deployment or {}).get("status") or {}).get("conditions", []):
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            return Problem("ReplicaFailure", f"the Deployment cannot create pods ({condition.get('reason', 'ReplicaFailure')}): {condition.get('message', '')}".strip())
    for condition in ((deployment or {}).get("status") or {}).get("conditions", []):
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return Problem("ProgressDeadlineExceeded", condition.get("message", "the rollout did not finish in time"))
    return None


def compute_status(owner: Owner, served_model: str, observed: Observation, previous: dict[str, Any], now: str) -> dict[str, Any]:
    generation = owner.generation
    deployment_status = (observed.deployment or {}).get("status", {})
    replicas = deployment_status.get("replicas", 0)
    ready_replicas = deployment_status.get("readyReplicas", 0)
    updated = deployment_status.get("updatedReplicas", 0)
    desired = observed.desired_replicas
    unschedulable, crash, loading = pod_problems(observed.pods)
    if unschedulable is not None:
        unschedulable = rollout_blocked_by_capacity(observed.deployment, observed.pods) or unschedulable
    # A cache claim its class can never provision: a failure, not the VolumePending step of a normal start.
    unschedulable = cache_claim_problem(observed.cache_claim, observed.cache_storage_class, observed.cache_claim_events) or unschedulable
    # Most telling first: a spec or reference problem, a name held by someone else, a child the API
    # refuses, then what the Deployment and its pods report.
    failure = (observed.blocking or next(iter(observed.conflicts), None) or next(iter(observed.apply_failures), None)
               or deployment_failure(observed.deployment) or unschedulable or crash)
    stopped = observed.blocking or next(iter(observed.conflicts), None) or next(iter(observed.apply_failures), None)
    all_ready = rollout_complete(observed.deployment, desired)
    # With the router on, the endpoint serves only through a ready router replica.
    router_missing = observed.router_enabled and router_ready_replicas(observed) == 0
    router_waiting = Problem("RouterNotReady", f"{ready_replicas}/{desired} replicas ready, but no replica of the router "
                             f"({observed.router_name}) is ready yet: the endpoint does not serve until one is", degraded=False)

    if stopped is not None:
        ready = _condition(READY, False, stopped.reason, stopped.message, generation)
    elif all_ready and router_missing:
        ready = _condition(READY, False, router_waiting.reason, router_waiting.message, generation)
    elif all_ready:
        ready = _condition(READY, True, "Ready", f"{ready_replicas}/{desired} replicas ready; serving {served_model}", generation)
    elif desired == 0:
        ready = _condition(READY, False, "ScaledToZero", "replicas is 0", generation)
    elif failure is not None:
        ready = _condition(READY, False, failure.reason, failure.message, generation)
    elif loading is not None:
        ready = _condition(READY, False, loading.reason, loading.message, generation)
    elif observed.deployment is not None and ready_replicas >= desired:
        ready = _condition(READY, False, "RollingOut", f"rolling out the current spec: {updated}/{desired} replicas updated, {ready_replicas} ready, {replicas} running", generation)
    else:
        ready = _condition(READY, False, "ReplicasNotReady", f"{ready_replicas}/{desired} replicas ready", generation)

    if observed.blocking is not None:
        progressing = _condition(PROGRESSING, False, "Blocked", "fix the spec or the missing reference; nothing new was rolled out", generation)
    elif stopped is not None:
        progressing = _condition(PROGRESSING, False, stopped.reason, stopped.message, generation)
    elif all_ready and router_missing:
        progressing = _condition(PROGRESSING, True, router_waiting.reason, router_waiting.message, generation)
    elif all_ready:
        progressing = _condition(PROGRESSING, False, "Complete", "the rollout is complete", generation)
    elif failure is not None:
        progressing = _condition(PROGRESSING, False, failure.reason, failure.message, generation)
    else:
        step = loading or Problem("RollingOut", f"{updated}/{desired} replicas updated, {ready_replicas} ready", degraded=False)
        progressing = _condition(PROGRESSING, True, step.reason, step.message, generation)

    shared_cache = read_write_once_cache_shared(observed.cache_claim, desired)
    degraded_by = next((p for p in (failure, shared_cache, *observed.warnings) if p is not None and p.degraded), None)
    if degraded_by is not None:
        degraded = _condition(DEGRADED, True, degraded_by.reason, degraded_by.message, generation)
    else:
        degraded = _condition(DEGRADED, False, "AsExpected", "no problems seen", generation)

    conditions = [ready, progressing, degraded]
    autoscaling = autoscaling_condition(observed, generation)
    if autoscaling is not None:
        conditions.append(autoscaling)
    if observed.monitoring_condition is not None:
        conditions.append(_condition(MONITORING, *observed.monitoring_condition, generation))
    routing = routing_condition(observed, generation)
    if routing is not None:
        conditions.append(routing)

    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": merge_conditions(previous.get("conditions", []), conditions, now),
        "replicas": replicas,
        "readyReplicas": ready_replicas,
        "ready": f"{ready_replicas}/{desired}",
        "selector": common.selector_string(owner),
        "endpoint": common.endpoint_url(owner),
        "model": served_model,
    }
    # None (not absent) when autoscaling is off, so the merge patch removes a value left from before.
    status["desiredReplicas"] = ((observed.hpa or {}).get("status") or {}).get("desiredReplicas", desired) if observed.autoscaling_enabled else None
    return status


def autoscaling_condition(observed: Observation, generation: int) -> dict[str, Any] | None:
    """The Autoscaling condition, summarising the HPA's own AbleToScale/ScalingActive/ScalingLimited."""
    if not observed.autoscaling_enabled:
        return None
    if observed.hpa is None and observed.desired_replicas == 0:  # only a scale-to-zero instance asleep: the HPA never goes below 1
        return _condition(AUTOSCALING, True, "ScaledToZero", "idle, so scaled to zero without an HPA; a request through the gateway wakes it", generation)
    hpa_conditions = {c["type"]: c for c in ((observed.hpa or {}).get("status") or {}).get("conditions", [])}
    if not hpa_conditions:
        return _condition(AUTOSCALING, "Unknown", "Pending", "the HPA controller has not reported yet", generation)
    for type_ in ("AbleToScale", "ScalingActive"):
        c = hpa_conditions.get(type_)
        if c is not None and c.get("status") != "True":
            return _condition(AUTOSCALING, False, c.get("reason", type_), f"{type_}: {c.get('message', '')}", generation)
    limited = hpa_conditions.get("ScalingLimited")
    if limited is not None and limited.get("status") == "True":
        return _condition(AUTOSCALING, True, limited.get("reason", "ScalingLimited"), f"ScalingLimited: {limited.get('message', '')}", generation)
    active = hpa_conditions.get("ScalingActive", {})
    return _condition(AUTOSCALING, True, active.get("reason", "ScalingActive"), active.get("message", "the HPA is scaling on queue depth"), generation)


def failure_status(owner: Owner, previous: dict[str, Any], problem: Problem, now: str) -> dict[str, Any]:
    """The previous status with Ready=False and Degraded=True for a failure the reconcile could not
    finish over (an API refusal, an unexpected error); counts and other conditions are kept as seen."""
    generation = owner.generation
    replaced = {
        READY: _condition(READY, False, problem.reason, problem.message, generation),
        DEGRADED: _condition(DEGRADED, True, problem.reason, problem.message, generation),
    }
    kept = [c for c in previous.get("conditions", []) if c.get("type") not in replaced]
    conditions = merge_conditions(previous.get("conditions", []), list(replaced.values()), now) + kept
    status = {
        "observedGeneration": previous.get("observedGeneration"),
        "conditions": conditions,
        "replicas": previous.get("replicas", 0),
        "readyReplicas": previous.get("readyReplicas", 0),
        "ready": previous.get("ready", "0/0"),
        "selector": common.selector_string(owner),
        "endpoint": common.endpoint_url(owner),
    }
    return status


def status_changed(previous: dict[str, Any], new: dict[str, Any]) -> bool:
    """True when writing new would change the stored status (a None in new means absent)."""
    return any(previous.get(k) != v for k, v in new.items())


def condition_transitions(previous: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Conditions whose status or reason changed: each becomes an Event."""
    before = {c["type"]: (c.get("status"), c.get("reason")) for c in previous.get("conditions", [])}
    return [c for c in new["conditions"] if before.get(c["type"]) != (c["status"], c["reason"])]
