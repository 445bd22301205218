"""The one level-based reconcile of a QwenInference.

    parse -> resolve the model -> check references -> build the desired children (pure)
    -> apply what differs from the live objects (server-side apply, one field manager)
    -> prune children no longer wanted -> observe -> write status only if it changed.

It runs on every event of the resource, on events of its pods and Deployment, and on a periodic
resync; each run computes the whole picture from scratch, so none of them can lose an update.
A spec problem only the operator can judge (an unknown model, a missing Secret) ends as
Ready=False with a reason and an Event; nothing is retried in a loop and nothing is deleted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable

from pydantic import ValidationError

from qwen_operator import status as status_lib
from qwen_operator.api.errors import SpecError
from qwen_operator.api.models import QwenInference, QwenInferenceSpec, name_problem
from qwen_operator.builders import common
from qwen_operator.builders.autoscaling import asleep, build_hpa, scales_to_zero
from qwen_operator.builders.common import Owner
from qwen_operator.builders.dashboard import build_dashboard_configmap
from qwen_operator.builders.deployment import build_deployment, startup_budget_seconds
from qwen_operator.builders.monitoring import build_prometheus_rule, build_router_service_monitor, build_service_monitor
from qwen_operator.builders.networkpolicy import build_network_policy, build_router_network_policy
from qwen_operator.builders.pdb import build_pdb
from qwen_operator.builders.router import build_router_children, router_enabled, router_name
from qwen_operator.builders.service import build_service
from qwen_operator.builders.storage import build_cache_pvc
from qwen_operator.catalog import ResolvedModel, check_gpu_fp8, gpu_memory_problems, lookup_gpu, resolve_model
from qwen_operator.config import OperatorConfig
from qwen_operator.k8s import client as kinds
from qwen_operator.k8s.client import KubeApi, KubeError, Kind, kind_of

log = logging.getLogger(__name__)

# Every kind the operator may create for a QwenInference: listed (by label) to find what to prune.
CHILD_KINDS: tuple[Kind, ...] = (
    kinds.DEPLOYMENT, kinds.SERVICE, kinds.PVC, kinds.PDB, kinds.NETWORK_POLICY, kinds.HPA, kinds.CONFIG_MAP,
    kinds.SERVICE_ACCOUNT, kinds.ROLE, kinds.ROLE_BINDING,
)
MONITORING_KINDS: tuple[Kind, ...] = (kinds.SERVICE_MONITOR, kinds.PROMETHEUS_RULE)
MONITORING_KIND_NAMES = frozenset(k.kind for k in MONITORING_KINDS)
FP8_NATIVE_MIN_CC = (8, 9)


@dataclass(frozen=True)
class Capabilities:
    """Optional integrations the cluster offers, found by discovery."""

    prometheus_operator: bool = False


class CapabilityCache:
    """Discovers optional APIs, at most once per ttl seconds (they appear when someone installs them)."""

    def __init__(self, api: KubeApi, ttl: float = 30.0):
        self._api, self._ttl = api, ttl
        self._value: Capabilities | None = None
        self._logged: Capabilities | None = None
        self._at = 0.0

    def forget(self) -> None:
        """Discover again on the next get(): an API that was there has gone (e.g. CRDs removed)."""
        self._value = None

    def get(self) -> Capabilities:
        if self._value is None or time.monotonic() - self._at > self._ttl:
            served = self._api.served_resources("monitoring.coreos.com/v1") or set()
            found = Capabilities(prometheus_operator={"servicemonitors", "prometheusrules"} <= served)
            if found != self._logged:
                # A fact about the cluster, said once here: each resource's Monitoring condition says it too, but
                # an Event per resource would repeat it a thousand times on a fleet.
                if found.prometheus_operator:
                    log.info("the monitoring.coreos.com/v1 API is served: ServiceMonitors and PrometheusRules are made")
                else:
                    log.warning("the monitoring.coreos.com/v1 API (Prometheus Operator CRDs) is not served: no ServiceMonitor or "
                                "PrometheusRule is made, and Monitoring is False (PrometheusOperatorMissing) where the spec asks for them")
                self._logged = found
            self._value = found
            self._at = time.monotonic()
        return self._value


# Annotation on every child: a hash of what the operator applied. A child is applied again when
# the hash of the desired object differs (so a removed optional field is rolled out too, which a
# field-by-field comparison of the desired object cannot see), or when it drifted from it.
DESIRED_HASH_ANNOTATION = "qwenops.io/desired-hash"
# The field manager that holds a Deployment's replicas for a moment while the HPA takes them over.
HPA_HANDOVER_MANAGER = "qwen-operator-hpa-handover"
# Kinds whose objects are deleted and made again when an apply is refused because of the live object
# (an immutable field, a list entry edited by hand). Never the PVC: it holds the model cache.
RECREATABLE_KINDS = frozenset({"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "HorizontalPodAutoscaler",
                               "ConfigMap", "ServiceMonitor", "PrometheusRule", "ServiceAccount", "Role", "RoleBinding"})
APPLY_RETRY_SECONDS = 30.0  # a child that could not be applied is tried again this soon, not at the next resync


@dataclass
class ReconcileResult:
    applied: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    recreated: list[str] = field(default_factory=list)
    status_written: bool = False
    outcome: str = "ok"  # ok | spec_error | blocked | apply_error | conflict
    ready: tuple[str, str] = ("Unknown", "")  # the Ready condition's status and reason, for the metrics
    retry_after: float | None = None  # run again this soon: something failed that may pass
    status: dict[str, Any] | None = None  # the status written, when one was
    in_sync: bool = False  # every child was as desired: nothing was applied, deleted or in conflict
    # Every child is as desired now: the ones that differed were applied (their answers in written), nothing was
    # deleted, recreated or in conflict, and nothing failed.
    in_sync_once_applied: bool = False
    written: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (kind, name) -> the API's answer to an apply
    requeue_after: float | None = None  # run again then, though nothing failed (a scale-to-zero deadline)
    scaled_to_zero: bool = False


# Scale to zero (autoscaling.minReplicas 0): the gateway stamps the time of the latest request on the QwenInference.
ACTIVITY_ANNOTATION = "gateway.qwenops.io/last-request"


def idle_verdict(spec: QwenInferenceSpec, metadata: dict[str, Any], now: float) -> tuple[bool, float | None, str]:
    """(scale to zero now, seconds until it should be judged again, the reason), for an awake scale-to-zero
    instance: idle since the gateway's last stamp (or, without one, since its creation)."""
    if not scales_to_zero(spec) or spec.replicas == 0:
        return False, None, ""
    stamp = (metadata.get("annotations") or {}).get(ACTIVITY_ANNOTATION) or metadata.get("creationTimestamp")
    try:
        last = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except (TypeError, ValueError):
        return False, None, ""
    idle = now - last
    after = spec.autoscaling.scale_to_zero_after_seconds
    if idle >= after:
        return True, None, f"no request through the gateway for {int(idle)} s (scaleToZeroAfterSeconds {after})"
    return False, after - idle + 1.0, ""


def owner_of(body: dict[str, Any]) -> Owner:
    meta = body["metadata"]
    return Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"], generation=meta.get("generation", 1))


# Pure parts


def desired_children(owner: Owner, spec: QwenInferenceSpec, model: ResolvedModel, config: OperatorConfig, caps: Capabilities) -> list[dict[str, Any]]:
    """Every child the spec asks for, fully built. The HPA owns replicas while autoscaling is on, except while a
    scale-to-zero instance sleeps (then the operator holds them at 0, and there is no HPA)."""
    autoscaling = spec.autoscaling.enabled and not asleep(spec)
    children: list[dict[str, Any] | None] = [
        # Applied in this order: the cache PVC before the Deployment, or the first pods meet a
        # claim that does not exist yet and are reported Unschedulable.
        build_cache_pvc(owner, spec),
        build_deployment(owner, spec, model, config, manage_replicas=not autoscaling),
        build_service(owner, spec),
        build_pdb(owner, spec),
        build_network_policy(owner, spec),
        build_hpa(owner, spec),
        # The router (spec.router): its ServiceAccount and Role first, then its Deployment, the engine Service, its PDB.
        *build_router_children(owner, spec, config),
        build_router_network_policy(owner, spec),
    ]
    if spec.monitoring.dashboard:
        children.append(build_dashboard_configmap(owner, spec, model.served_name))
    if caps.prometheus_operator:
        if spec.monitoring.service_monitor:
            children.append(build_service_monitor(owner, spec, config.monitoring_labels))
            children.append(build_router_service_monitor(owner, spec, config.monitoring_labels))
        if spec.monitoring.prometheus_rule:
            children.append(build_prometheus_rule(owner, spec, model.served_name, startup_budget_seconds(spec, model), config.monitoring_labels))
    return [c for c in children if c is not None]


def _quantity(value: str) -> Decimal | None:
    from kubernetes.utils.quantity import parse_quantity

    try:
        return parse_quantity(value)
    except (ValueError, TypeError):
        return None


def is_subset(desired: Any, live: Any) -> bool:
    """True when every field of desired is in live with the same value.

    The API server adds defaults and status, so live has more; it also normalises quantities
    ("0.5" -> "500m"), so equal quantities count as equal. An apply is needed exactly when this
    is False.
    """
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(
            (v in (None, {}, []) and k not in live) or (k in live and is_subset(v, live[k])) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return isinstance(live, list) and len(desired) == len(live) and all(is_subset(d, l) for d, l in zip(desired, live))
    if isinstance(desired, bool) or isinstance(live, bool):
        return type(desired) is type(live) and desired == live  # in Python True == 1; not in the API
    if desired == live:
        return True
    if isinstance(desired, (str, int)) and isinstance(live, (str, int)):
        a, b = _quantity(str(desired)), _quantity(str(live))
        return a is not None and a == b
    return False


def key(manifest: dict[str, Any]) -> tuple[str, str]:
    return manifest["kind"], manifest["metadata"]["name"]


def desired_hash(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:20]


def with_desired_hash(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with the hash of itself in its annotations."""
    digest = desired_hash(manifest)
    meta = dict(manifest["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), DESIRED_HASH_ANNOTATION: digest}
    return {**manifest, "metadata": meta}


def owned_by(manifest: dict[str, Any], owner: Owner) -> bool:
    """True when owner is the object's controller."""
    return any(ref.get("uid") == owner.uid and ref.get("controller") for ref in manifest["metadata"].get("ownerReferences") or [])


def ownership(manifest: dict[str, Any]) -> str:
    """Who controls a live object, in words, for a NameConflict message."""
    refs = manifest["metadata"].get("ownerReferences") or []
    controller = next((r for r in refs if r.get("controller")), None)
    if controller is None:
        return "it has no controlling owner (it was made by hand or by another tool)"
    return f"it is controlled by {controller.get('kind')} {controller.get('name')} (uid {controller.get('uid')})"


@dataclass
class Plan:
    """What to do with the children: each list holds manifests, each conflict a Problem naming the object."""

    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[dict[str, Any]] = field(default_factory=list)
    conflicts: list[status_lib.Problem] = field(default_factory=list)
    reasons: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> why it is applied or deleted


def plan(desired: list[dict[str, Any]], live: list[dict[str, Any]], owner: Owner) -> Plan:
    """Desired children (with their hash annotation) that are missing, changed or drifted; owned live
    children no longer desired; and desired names taken by an object this QwenInference does not
    control, which are left alone."""
    live_by_key = {key(obj): obj for obj in live}
    wanted = {key(obj) for obj in desired}
    result = Plan()
    for manifest in desired:
        manifest = with_desired_hash(manifest)
        current = live_by_key.get(key(manifest))
        if current is not None and not owned_by(current, owner):
            kind, name = key(manifest)
            result.conflicts.append(status_lib.Problem(
                "NameConflict",
                f"{kind} {owner.namespace}/{name} already exists and {ownership(current)}, not by this QwenInference (uid {owner.uid}); the operator never adopts, "
                f"changes or deletes it. Rename the QwenInference or remove that {kind}",
            ))
            continue
        live_hash = ((current or {}).get("metadata", {}).get("annotations") or {}).get(DESIRED_HASH_ANNOTATION)
        if current is None:
            reason = "it does not exist yet"
        elif live_hash != manifest["metadata"]["annotations"][DESIRED_HASH_ANNOTATION]:
            reason = "the spec changed what it should be"
        elif not is_subset(manifest, current):
            reason = "it drifted from the spec (changed by someone else)"
        else:
            continue
        result.apply.append(manifest)
        result.reasons[key(manifest)] = reason
    result.delete = [obj for obj in live if key(obj) not in wanted and owned_by(obj, owner)]
    for obj in result.delete:
        result.reasons[key(obj)] = "the spec no longer asks for it"
    return result


REPLICAS_MANAGERS = "_replicasManagers"  # what the cache keeps of a Deployment's managedFields (cache.py)


def keep_immutable_fields(desired: list[dict[str, Any]], live: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """desired with what cannot change on a live object taken from it: a PVC's access modes (the
    default access mode follows the replica count, but a claim keeps the one it was made with)."""
    live_by_key = {key(obj): obj for obj in live}
    kept = []
    for manifest in desired:
        current = live_by_key.get(key(manifest))
        if manifest["kind"] == "PersistentVolumeClaim" and current is not None and (current.get("spec") or {}).get("accessModes"):
            manifest = {**manifest, "spec": {**manifest["spec"], "accessModes": list(current["spec"]["accessModes"])}}
        kept.append(manifest)
    return kept


def owns_replicas(deployment: dict[str, Any], manager: str) -> bool:
    """True when manager applied the Deployment's spec.replicas (server-side apply managedFields)."""
    if REPLICAS_MANAGERS in deployment:
        return f"{manager}/Apply" in deployment[REPLICAS_MANAGERS]
    for entry in deployment.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") == manager and entry.get("operation") == "Apply":
            if "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {}):
                return True
    return False


def hpa_handover(deployment: dict[str, Any]) -> dict[str, Any]:
    """The apply that lets another manager hold spec.replicas at its live value, so the operator's
    next apply (without replicas) does not reset them: the documented server-side apply handover."""
    meta = deployment["metadata"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
        "spec": {"replicas": deployment.get("spec", {}).get("replicas", 1)},
    }


def gpu_warnings(model: ResolvedModel, pods: list[dict[str, Any]], nodes: dict[str, dict[str, Any]]) -> list[status_lib.Problem]:
    """FP8 models that landed on GPUs without native FP8 (by the node's GPU feature labels)."""
    if not model.is_fp8:
        return []
    slow = set()
    for pod in pods:
        node = nodes.get(pod.get("spec", {}).get("nodeName", ""))
        labels = (node or {}).get("metadata", {}).get("labels", {})
        try:
            cc = (int(labels["nvidia.com/gpu.compute.major"]), int(labels["nvidia.com/gpu.compute.minor"]))
        except (KeyError, ValueError):
            continue
        if cc < FP8_NATIVE_MIN_CC:
            slow.add(f"{labels.get('nvidia.com/gpu.product', 'unknown GPU')} (compute capability {cc[0]}.{cc[1]}) on node {pod['spec']['nodeName']}")
    if not slow:
        return []
    return [status_lib.Problem("GPUWithoutNativeFP8", f"{model.hf_id} is FP8 but runs on " + ", ".join(sorted(slow)) + ": FP8 needs compute capability 8.9 (weight-only below, unusable below 8.0)")]


# The reconcile


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def judge_spec(name: str, spec: QwenInferenceSpec) -> tuple[ResolvedModel, list[status_lib.Problem]]:
    """What only the operator can judge of a spec: the model (or SpecError) and non-blocking warnings.

    A name whose children would be invalid (admission refuses those; objects stored before that
    rule existed are caught here). An FP8 model pinned only to GPUs below compute capability 8.0
    cannot run at all (blocking); pinned to 8.0-8.8 it runs weight-only (a warning).
    """
    problem = name_problem(name)
    if problem is not None:
        raise SpecError("InvalidName", problem)
    model = resolve_model(spec)
    warnings: list[status_lib.Problem] = []
    _, memory_warning = gpu_memory_problems(model, spec)
    if memory_warning:
        warnings.append(status_lib.Problem("GPUMemoryTooSmallOnSomeProducts", memory_warning))
    products = spec.resources.gpu.products
    message = check_gpu_fp8(model, products)
    if message is None:
        return model, warnings
    unusable = [p for p in products if (gpu := lookup_gpu(p)) is not None and gpu.compute_capability < (8, 0)]
    if len(unusable) == len(products):
        raise SpecError("GPUIncompatible", message)
    return model, warnings + [status_lib.Problem("GPUWithoutNativeFP8", message)]


def secret_value(secret: dict[str, Any], key_name: str) -> str | None:
    """The decoded value of one key of a stored Secret (None when absent or not valid base64)."""
    encoded = (secret.get("data") or {}).get(key_name)  # stringData is write-only: stored Secrets hold data
    if encoded is None:
        return None
    try:
        return base64.b64decode(encoded, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return None


def check_references(api: KubeApi, owner: Owner, spec: QwenInferenceSpec, read_secrets: bool = True) -> status_lib.Problem | None:
    """A Secret or PVC the spec names that does not exist (yet), or an unusable key: the rollout waits.
    Without read_secrets (the chart's rbac.readSecrets=false) Secrets are not read: a missing one
    shows in the pods' status instead, and the pod's own guard refuses an empty API key."""
    secret_refs = [("spec.model.source.tokenSecretRef", spec.model.source.token_secret_ref), ("spec.auth.apiKeySecretRef", spec.auth.api_key_secret_ref)]
    for path, ref in secret_refs if read_secrets else []:
        if ref is None:
            continue
        secret = api.get(kinds.SECRET, owner.namespace, ref.name)
        if secret is None:
            return status_lib.Problem("SecretNotFound", f"{path}: Secret {ref.name} does not exist in namespace {owner.namespace}; create it and the rollout continues")
        value = secret_value(secret, ref.key)
        if value is None:
            return status_lib.Problem("SecretKeyNotFound", f"{path}: Secret {ref.name} has no key {ref.key}")
        if not value.strip():
            # vLLM turns authentication off for an empty key: never roll that out.
            return status_lib.Problem("SecretKeyEmpty", f"{path}: key {ref.key} of Secret {ref.name} is empty; put a non-empty value in it and the rollout continues")
    claims = [("spec.model.source.cache.existingClaim", spec.model.source.cache.existing_claim if spec.model.source.cache.enabled else None)]
    if spec.model.source.pvc is not None:
        claims.append(("spec.model.source.pvc.claimName", spec.model.source.pvc.claim_name))
    for path, claim in claims:
        if claim and api.get(kinds.PVC, owner.namespace, claim) is None:
            return status_lib.Problem("ClaimNotFound", f"{path}: PersistentVolumeClaim {claim} does not exist in namespace {owner.namespace}; create it and the rollout continues")
    return None


@dataclass
class Snapshot:
    """What the watch-fed caches hold of one QwenInference's world (cache.ChildCaches)."""

    children: list[dict[str, Any]]  # every object with the operator's labels and this instance's name
    pods: list[dict[str, Any]]
    node: Callable[[str], dict[str, Any] | None]  # a node's GPU labels by name
    previous_status: dict[str, Any]  # the status as last written (the cache may lag the operator's own write)
    remember: Callable[[dict[str, Any]], None] = lambda written: None  # put what the operator applied into the cache
    # True when the children are exactly as they were when a reconcile of this generation last
    # found them in sync (the same objects, unchanged but for their status): the desired set is not built again,
    # and the children may be slim (cache.py: spec packed, spec.replicas kept) rather than unpacked.
    children_in_sync: bool = False


def needs_reference_check(previous_status: dict[str, Any], generation: int, plan_applies: bool) -> bool:
    """Secrets and claims the spec names are read only when something is to be rolled out or the
    resource is not Ready for its current generation: a steady state reads nothing."""
    ready = next((c for c in previous_status.get("conditions", []) if c.get("type") == status_lib.READY), None)
    return plan_applies or ready is None or ready.get("status") != "True" or previous_status.get("observedGeneration") != generation


def reconcile(body: dict[str, Any], api: KubeApi, config: OperatorConfig, capabilities: CapabilityCache, post_event,
              snapshot: Snapshot) -> ReconcileResult:
    """Reconciles one QwenInference (body as the watch delivered it) from a snapshot of the caches.
    post_event(type, reason, message).

    Raises KubeError for failures that may pass (no answer, 429, 5xx): the caller retries with backoff.
    """
    result = ReconcileResult()
    owner = owner_of(body)
    previous_status = snapshot.previous_status
    observation = status_lib.Observation(desired_replicas=0)
    model: ResolvedModel | None = None
    spec: QwenInferenceSpec | None = None
    try:
        spec = QwenInference.model_validate(body).spec
        model, warnings = judge_spec(owner.name, spec)
        observation.warnings.extend(warnings)
    except ValidationError as error:
        observation.blocking = status_lib.Problem("InvalidSpec", "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())[:1000])
        result.outcome = "spec_error"
    except SpecError as error:
        observation.blocking = status_lib.Problem(error.reason, error.message)
        result.outcome = "spec_error"

    caps = capabilities.get()
    live: list[dict[str, Any]] = list(snapshot.children)
    actions = Plan()
    rolling_out = spec is not None and model is not None and observation.blocking is None and not snapshot.children_in_sync
    if rolling_out:
        desired = keep_immutable_fields(desired_children(owner, spec, model, config, caps), live)
        actions = plan(desired, live, owner)
        if needs_reference_check(previous_status, owner.generation, bool(actions.apply)):
            observation.blocking = check_references(api, owner, spec, read_secrets=config.read_secrets)
            if observation.blocking is not None:
                result.outcome = "blocked"
                rolling_out = False  # nothing is rolled out while a reference is missing
    live_by_key = {key(obj): obj for obj in live}
    if rolling_out:
        desired_by_key = {key(obj): obj for obj in desired}
        for manifest in actions.apply:
            log.info("%s/%s: applying %s %s: %s", owner.namespace, owner.name, manifest["kind"], manifest["metadata"]["name"], actions.reasons[key(manifest)])
            current = live_by_key.get(key(manifest))
            if current is None:
                made, holder = create_child(api, manifest, result, snapshot.remember)
                if made:
                    continue
                if holder is not None:
                    # The name is held by an object the caches do not show: someone else's (a NameConflict, never
                    # touched), or rarely this resource's own, made by a run the watch has not delivered yet.
                    live_by_key[key(manifest)] = holder
                    again = plan(keep_immutable_fields([desired_by_key[key(manifest)]], [holder]), [holder], owner)
                    actions.conflicts.extend(again.conflicts)
                    if not again.apply:
                        continue
                    manifest, current = again.apply[0], holder
            problem = apply_child(api, manifest, current, spec, result, snapshot.remember)
            if problem is None:
                continue
            result.outcome = "apply_error"
            result.retry_after = APPLY_RETRY_SECONDS
            if manifest["kind"] in MONITORING_KIND_NAMES:
                observation.monitoring_failures.append(problem)
            else:
                observation.apply_failures.append(problem)
        if observation.monitoring_failures:
            capabilities.forget()  # the Prometheus Operator CRDs may have gone: discover again, once per run
            caps = capabilities.get()
        for manifest in actions.delete:
            log.info("%s/%s: deleting %s %s: %s", owner.namespace, owner.name, manifest["kind"], manifest["metadata"]["name"], actions.reasons[key(manifest)])
            api.delete(kind_of(manifest), owner.namespace, manifest["metadata"]["name"], manifest["metadata"].get("uid"))
            result.pruned.append("/".join(key(manifest)))
        observation.conflicts = actions.conflicts
        if actions.conflicts:
            result.outcome = "conflict"
        result.in_sync = not (actions.apply or actions.delete or actions.conflicts)
        result.in_sync_once_applied = (bool(actions.apply) and not (actions.delete or actions.conflicts or result.recreated)
                                       and result.retry_after is None and len(result.written) == len(actions.apply))
    elif snapshot.children_in_sync and observation.blocking is None and model is not None:
        result.in_sync = True
    if spec is not None:
        observation.deployment = result.written.get(("Deployment", owner.name)) or live_by_key.get(("Deployment", owner.name))
        observation.hpa = result.written.get(("HorizontalPodAutoscaler", owner.name)) or live_by_key.get(("HorizontalPodAutoscaler", owner.name))
        observation.router_deployment = (result.written.get(("Deployment", router_name(owner)))
                                         or live_by_key.get(("Deployment", router_name(owner))))

    if spec is not None:
        observe(owner, spec, model, caps, observation, snapshot)
        sleep, recheck, reason = idle_verdict(spec, body["metadata"], time.time())
        if sleep and observation.blocking is None:
            log.info("%s/%s: scaling to zero: %s", owner.namespace, owner.name, reason)
            api.patch_scale(kinds.QWEN_INFERENCE, owner.namespace, owner.name, 0)
            post_event("Normal", "ScalingToZero", f"Scaling to zero: {reason}")
            result.scaled_to_zero = True
            result.requeue_after = 0.0
        else:
            result.requeue_after = recheck

    new_status = status_lib.compute_status(owner, model.served_name if model else "", observation, previous_status, now_rfc3339())
    ready = next(c for c in new_status["conditions"] if c["type"] == status_lib.READY)
    result.ready = (ready["status"], ready["reason"])
    if status_lib.status_changed(previous_status, new_status):
        api.patch_status(kinds.QWEN_INFERENCE, owner.namespace, owner.name, new_status)
        result.status_written = True
        result.status = new_status
        for event in events_for(status_lib.condition_transitions(previous_status, new_status)):
            post_event(*event)
    return result


def apply_child(api: KubeApi, manifest: dict[str, Any], live: dict[str, Any] | None, spec: QwenInferenceSpec,
                result: ReconcileResult, remember: Callable[[dict[str, Any]], None]) -> status_lib.Problem | None:
    """Applies one child; None when it is now as desired, else the Problem that stops it.

    Transient API failures propagate (the whole reconcile is retried). A refusal caused by the live
    object (an immutable field, a list entry edited by hand) is repaired by deleting and making the
    child again, but only when the desired object is valid on its own (a server-side dry run), so a
    bad spec never costs a running child.
    """
    kind, name = key(manifest)
    if (kind == "Deployment" and live is not None and scales_to_zero(spec) and spec.replicas >= 1
            and ((live.get("spec") or {}).get("replicas") or 0) == 0 and "replicas" not in manifest["spec"]):
        # Woken from zero: the HPA never scales a Deployment up from 0, so start it at spec.replicas; the HPA takes
        # the replicas over from there (the handover below, on a later apply).
        manifest = {**manifest, "spec": {**manifest["spec"], "replicas": spec.replicas}}
    elif kind == "Deployment" and live is not None and spec.autoscaling.enabled and owns_replicas(live, api.field_manager):
        # Hand replicas over before the apply that leaves them out, or they would reset to 1.
        api.apply(hpa_handover(live), field_manager=HPA_HANDOVER_MANAGER)
    def apply_and_record(done: list[str]) -> None:
        record_written(result, done, api.apply(manifest), remember)

    try:
        apply_and_record(result.applied)
        return None
    except KubeError as error:
        if error.transient:
            raise
        first_error = error
    if live is not None and kind in RECREATABLE_KINDS and first_error.status in (409, 422):
        try:
            api.create_dry_run(kind_of(manifest), manifest["metadata"]["namespace"], manifest)
        except KubeError as error:
            if error.transient:
                raise
            return status_lib.Problem("ApplyFailed", f"{kind} {name} is invalid: {error.message}"[:1000])
        log.info("recreating %s %s/%s: the API refused the apply because of the live object: %s", kind, live["metadata"]["namespace"], name, first_error.message)
        api.delete(kind_of(manifest), live["metadata"]["namespace"], name, live["metadata"].get("uid"))
        try:
            apply_and_record(result.recreated)
            return None
        except KubeError as error:
            if error.transient:
                raise
            first_error = error
    return status_lib.Problem("ApplyFailed", f"{kind} {name} could not be applied: {first_error.message}"[:1000])


def create_child(api: KubeApi, manifest: dict[str, Any], result: ReconcileResult,
                 remember: Callable[[dict[str, Any]], None]) -> tuple[bool, dict[str, Any] | None]:
    """Makes a child the caches do not show, with an apply that can only create: an object that holds the name
    (one without the operator's labels is invisible to its watches) is never changed by it. (True, None) when
    made; else (False, the object that holds the name, read once), or (False, None) when nothing holds it and the
    refusal was about the manifest: the caller's ordinary apply then reports it.

    One request where a read before each create took two, and no window between the read and the write."""
    kind, name = key(manifest)
    try:
        written = api.apply(manifest, create_only=True)
    except KubeError as error:
        if error.transient:
            raise
        holder = api.get(kind_of(manifest), manifest["metadata"]["namespace"], name)
        if holder is not None:
            holder.setdefault("apiVersion", manifest["apiVersion"])
            holder.setdefault("kind", kind)
        return False, holder
    record_written(result, result.applied, written, remember)
    return True, None


def record_written(result: ReconcileResult, done: list[str], written: dict[str, Any], remember: Callable[[dict[str, Any]], None]) -> None:
    """A child as the API server answered its apply: in the run's result, and in the caches (remember)."""
    kind, name = key(written)
    done.append(f"{kind}/{name}")
    result.written[(kind, name)] = written
    remember(written)


def observe(owner: Owner, spec: QwenInferenceSpec, model: ResolvedModel | None, caps: Capabilities,
            observation: status_lib.Observation, snapshot: Snapshot) -> None:
    """Fills in what the status needs from the snapshot: only the Deployment and HPA this
    QwenInference controls, its pods, the nodes of FP8 pods, and the monitoring condition."""
    if observation.deployment is not None and not owned_by(observation.deployment, owner):
        observation.deployment = None  # someone else's Deployment of that name (a NameConflict): never its status
    if observation.hpa is not None and not owned_by(observation.hpa, owner):
        observation.hpa = None
    observation.router_enabled = router_enabled(spec)
    observation.router_name = router_name(owner)
    observation.router_replicas = spec.router.replicas
    if not observation.router_enabled or (observation.router_deployment is not None and not owned_by(observation.router_deployment, owner)):
        observation.router_deployment = None
    observation.autoscaling_enabled = spec.autoscaling.enabled
    if not spec.autoscaling.enabled:
        observation.hpa = None
        observation.desired_replicas = spec.replicas
    else:
        replicas = ((observation.deployment or {}).get("spec") or {}).get("replicas")
        observation.desired_replicas = replicas if replicas is not None else spec.autoscaling.min_replicas
    if observation.deployment is not None:
        selector = common.selector_labels(owner)
        observation.pods = [p for p in snapshot.pods if selector.items() <= (p["metadata"].get("labels") or {}).items()]
        node_names = {p.get("spec", {}).get("nodeName") for p in observation.pods} - {None, ""}
        if model is not None and node_names:
            observation.nodes = {n: node for n in node_names if (node := snapshot.node(n)) is not None}
            if model.is_fp8:
                observation.warnings.extend(gpu_warnings(model, observation.pods, observation.nodes))
            if (memory := status_lib.gpu_memory_problem_on_nodes(model, spec, list(observation.nodes.values()))) is not None:
                observation.warnings.append(memory)
    observation.cache_claim = next((c for c in snapshot.children if c.get("kind") == "PersistentVolumeClaim"
                                    and c["metadata"]["name"] == common.cache_claim_name(owner)), None)
    observation.monitoring_condition = monitoring_condition(spec, caps, observation.monitoring_failures)


def monitoring_condition(spec: QwenInferenceSpec, caps: Capabilities, failures: list[status_lib.Problem]) -> tuple[str, str, str]:
    """The Monitoring condition (status, reason, message). A ServiceMonitor or PrometheusRule the API refused is
    said here and only here: monitoring is not serving, so Ready and Degraded stay as the pods make them."""
    if not (spec.monitoring.service_monitor or spec.monitoring.prometheus_rule):
        return ("False", "Disabled", "spec.monitoring turns the ServiceMonitor and PrometheusRule off")
    if not caps.prometheus_operator:
        return ("False", CLUSTER_WIDE_MONITORING_REASON,
                "the monitoring.coreos.com/v1 API (Prometheus Operator CRDs) is not served, so no ServiceMonitor or PrometheusRule was made; the rest works")
    if failures:
        return ("False", failures[0].reason, f"{failures[0].message}; serving is not affected")
    return ("True", "Configured", "ServiceMonitor and PrometheusRule are applied")


CLUSTER_WIDE_MONITORING_REASON = "PrometheusOperatorMissing"


def event_for(condition: dict[str, Any]) -> tuple[str, str, str] | None:
    """The Event a condition transition deserves: a Warning for a problem, a Normal one for reaching Ready.

    The steps of a normal start or rollout (ReplicasNotReady, ModelDownloading, RollingOut, ...) and the states a
    user chose or expects (Monitoring Disabled or Configured, Autoscaling active) are in the status and get no
    Event: at one Event per step, a fleet's rollout cost the API server more Event writes than child writes.
    Nor does a cluster without the Prometheus Operator: one fact for the whole fleet, which the operator's log
    says once (CapabilityCache) and each resource's Monitoring condition says too."""
    type_, status, reason, message = condition["type"], condition["status"], condition["reason"], condition["message"]
    if type_ == status_lib.READY:
        if status == "True":
            return ("Normal", reason, message)
        return None if reason in status_lib.PROGRESS_REASONS else ("Warning", reason, message)
    if type_ == status_lib.DEGRADED and status == "True":
        return ("Warning", reason, message)
    if type_ in (status_lib.MONITORING, status_lib.AUTOSCALING):
        return ("Warning", reason, message) if status == "False" and reason not in ("Disabled", CLUSTER_WIDE_MONITORING_REASON) else None
    if type_ == status_lib.ROUTING:
        return ("Warning", reason, message) if status == "False" and reason not in status_lib.ROUTING_PROGRESS_REASONS else None
    return None


def events_for(transitions: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The Events of a status change's condition transitions, each (type, reason, message) once: a failure that
    turns Ready False and Degraded True with the same words is one Warning, not two."""
    events: list[tuple[str, str, str]] = []
    for condition in transitions:
        event = event_for(condition)
        if event is not None and event not in events:
            events.append(event)
    return events
