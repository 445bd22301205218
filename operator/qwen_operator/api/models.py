"""The QwenInference API (inference.qwenops.io/v1alpha1), defined once.

These pydantic models are the single source of the CRD schema: hack/gen-crd.py turns them into
crds/ (descriptions become `kubectl explain` text, defaults become schema defaults, and the
`x-kubernetes-validations` entries become CEL admission rules). The operator parses every
QwenInference it sees with them.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from qwen_operator.api.extra_args import extra_args_item_rules, extra_args_problems

GROUP = "inference.qwenops.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "QwenInference"
PLURAL = "qweninferences"
SINGULAR = "qweninference"
SHORT_NAMES = ["qwi", "qwen"]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A QwenInference's name becomes its Service's name (RFC 1035 label: a letter first) and a label value
# (63 characters at most). 7 characters are kept for the suffixes of the serving path's Services
# ("-engine", "-router"), so the longest child name still fits.
RESOURCE_NAME = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_RESOURCE_NAME_LENGTH = 56
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A Hugging Face repository id ("org/name"); a local path inside a volume is given via source.pvc.
HF_REPO_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$"
DURATION = r"^[0-9]+(ms|s|m|h)$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"



def name_problem(name: str) -> str | None:
    """Why a QwenInference cannot have this name (its children would be invalid), or None."""
    import re

    if len(name) > MAX_RESOURCE_NAME_LENGTH:
        return (f"metadata.name is {len(name)} characters long; a QwenInference name may have at most {MAX_RESOURCE_NAME_LENGTH}, "
                "because it names the Service and labels of its children (63 characters at most, with room for suffixes)")
    if not re.match(RESOURCE_NAME, name):
        return (f"metadata.name {name!r} cannot name a Service: use lower-case letters, digits and '-', "
                "starting with a letter and ending with a letter or digit (no dots)")
    return None


# CEL rules on the whole object, for the name: the same judgement as name_problem, at admission.
NAME_RULES = [
    {
        "rule": f"self.metadata.name.size() <= {MAX_RESOURCE_NAME_LENGTH}",
        "message": f"metadata.name may have at most {MAX_RESOURCE_NAME_LENGTH} characters: it names the Service and "
        "labels of the QwenInference's children (63 characters at most, with room for suffixes)",
    },
    {
        "rule": f"self.metadata.name.matches('{RESOURCE_NAME}')",
        "message": "metadata.name must be a valid Service name: lower-case letters, digits and '-', starting with a "
        "letter and ending with a letter or digit (no dots)",
    },
]


# Kubernetes' own schemas of the pod fields passed through (hack/gen-k8s-schemas.py writes them from
# the pinned k8s.io/kubernetes module's OpenAPI spec), so admission types them as the Pod API does.
K8S_SCHEMAS: dict[str, Any] = json.loads((Path(__file__).parent / "k8s_schemas.json").read_text())["schemas"]


def _k8s_schema(type_name: str, *, array: bool = False, max_items: int | None = None):
    """json_schema_extra that replaces a pass-through field's schema with Kubernetes' schema of type_name."""

    def replace(schema: dict[str, Any]) -> None:
        description, default = schema.get("description"), schema.get("default")
        schema.clear()
        item = copy.deepcopy(K8S_SCHEMAS[type_name])
        if array:
            schema.update({"type": "array", "items": item})
            if max_items is not None:
                schema["maxItems"] = max_items
        else:
            schema.update(item)
        if description:
            schema["description"] = description
        if default is not None:
            schema["default"] = default

    return replace


_JSON_TYPES: dict[str, tuple[type, ...]] = {"object": (dict,), "array": (list,), "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,)}


def schema_errors(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Where value breaks a structural schema (types, required and unknown fields), as the API server
    would judge it; for objects stored before the schema was tightened."""
    expected = schema.get("type")
    allowed = _JSON_TYPES.get(expected or "", (object,))
    if isinstance(value, bool) and expected in ("integer", "number"):
        allowed = ()
    if not isinstance(value, allowed):
        return [f"{path}: expected {expected}, got {type(value).__name__}"]
    errors: list[str] = []
    if expected == "object":
        properties = schema.get("properties")
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}.{name}: required")
        for name, item in value.items():
            if properties is not None:
                if name not in properties:
                    errors.append(f"{path}.{name}: unknown field")
                else:
                    errors += schema_errors(item, properties[name], f"{path}.{name}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += schema_errors(item, schema["additionalProperties"], f"{path}.{name}")
    elif expected == "array" and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{path}[{i}]")
    return errors


class _Model(BaseModel):
    """Base for every API object: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


def _rules(*rules: dict[str, str]) -> dict[str, Any]:
    """CEL rules for a model's schema (x-kubernetes-validations).

    Guard every field a rule reads with has(), even fields with defaults: nested objects default
    to {} in the CRD, and the API server checks each rule against that bare {} (before the inner
    defaults are filled in) when the CRD is applied. On real objects the defaults are always there.
    """
    return {"x-kubernetes-validations": list(rules)}


class SecretKeyRef(_Model):
    """A key in a Secret in the QwenInference's namespace."""

    name: str = Field(description="Name of the Secret.", pattern=DNS_SUBDOMAIN, max_length=253)
    key: str = Field(description="Key inside the Secret.", pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)


class ThinkingSpec(_Model):
    reasoning_parser: Literal["qwen3", "deepseek_r1"] | None = Field(
        default=None,
        description="vLLM --reasoning-parser. Defaults to the catalog's parser for the model "
        "(qwen3 for Qwen3 models); unset and not in the catalog means no reasoning parser.",
    )
    enabled_by_default: bool = Field(
        default=True,
        description="Whether requests think unless they say otherwise. false passes "
        "chat-template kwargs enable_thinking=false as the server default; clients can still "
        "turn thinking on per request.",
    )


class ToolCallingSpec(_Model):
    enabled: bool = Field(default=False, description="Enable automatic tool choice (--enable-auto-tool-choice).")
    parser: Literal["hermes", "qwen3_coder", "qwen3_xml"] = Field(
        default="hermes", description="vLLM --tool-call-parser; hermes is what Qwen3 documents."
    )


class CacheSpec(_Model):
    """The Hugging Face cache volume, shared by the replicas so the model downloads once."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            {
                "rule": "!has(self.existingClaim) || self.enabled",
                "message": "source.cache.existingClaim needs source.cache.enabled: true",
            },
            # Immutability rules sit on the object, not on the fields: a transition rule on an
            # optional field is skipped when either side lacks it, so adding or removing the field
            # would slip through. has() on both sides catches that.
            {
                "rule": "has(self.storageClassName) == has(oldSelf.storageClassName)"
                " && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)",
                "message": "source.cache.storageClassName is immutable (a PVC cannot change class): "
                "it cannot be changed, added or removed",
                "fieldPath": ".storageClassName",
            },
            {
                "rule": "has(self.accessMode) == has(oldSelf.accessMode)"
                " && (!has(self.accessMode) || self.accessMode == oldSelf.accessMode)",
                "message": "source.cache.accessMode is immutable (a PVC cannot change access mode): "
                "it cannot be changed, added or removed",
                "fieldPath": ".accessMode",
            },
        )
    )

    enabled: bool = Field(
        default=True,
        description="Keep the model in a PersistentVolumeClaim. false downloads into an emptyDir "
        "on every pod start.",
    )
    size: str = Field(default="20Gi", pattern=QUANTITY, description="Size of the PVC the operator creates.")
    storage_class_name: str | None = Field(
        default=None,
        max_length=253,
        description="StorageClass of the PVC the operator creates; unset uses the cluster default. Immutable.",
    )
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany"] | None = Field(
        default=None,
        description="Access mode of the PVC the operator creates. Unset: ReadWriteOnce when the spec runs one replica "
        "(replicas 1 or less, no autoscaling), which every default StorageClass offers (EKS, GKE, AKS, kind); "
        "ReadWriteMany otherwise, so replicas on different nodes share one cache (it needs a class that offers it, "
        "e.g. EFS, Filestore, Azure Files, NFS). The mode is chosen when the PVC is created and kept. Immutable.",
    )
    existing_claim: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=253,
        description="Use this existing PVC (e.g. one shared by several QwenInferences) instead of "
        "creating one.",
    )


class PreloadedModelSpec(_Model):
    """A model already on a volume: the server loads it from there and never downloads."""

    model_config = ConfigDict(
        json_schema_extra=_rules({"rule": "!self.path.contains('..')", "message": "source.pvc.path may not contain '..'"})
    )

    claim_name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253, description="PVC that holds the model files.")
    path: str = Field(
        default="",
        pattern=r"^([A-Za-z0-9_-][A-Za-z0-9._/-]*)?$",
        max_length=512,
        description="Path of the model folder inside the PVC (relative, no leading slash).",
    )


class SourceSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra=_rules(
            {
                "rule": "!has(self.bakedIntoImage) || !self.bakedIntoImage || (!has(self.pvc) && !has(self.tokenSecretRef))",
                "message": "model.source.bakedIntoImage serves the model from the image: model.source.pvc and "
                "model.source.tokenSecretRef have no use with it",
            },
        )
    )

    token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Hugging Face token for gated or private repositories (becomes HF_TOKEN)."
    )
    cache: CacheSpec = Field(default_factory=CacheSpec, description="Model cache volume.")
    pvc: PreloadedModelSpec | None = Field(
        default=None, description="Load the model from files already on a PVC instead of downloading it."
    )
    baked_into_image: bool = Field(
        default=False,
        description="The engine image already holds the model in its Hugging Face cache (images/vllm built with "
        "--build-arg MODEL=<model.name>): no download init container, no cache volume, HF_HOME left as the image "
        "sets it, and the hub stays offline. The cache settings are ignored.",
    )


class ModelSpec(_Model):
    name: str = Field(
        default="Qwen/Qwen3-0.6B-FP8",
        pattern=HF_REPO_ID,
        max_length=128,
        description="Hugging Face repository id. Catalog presets (Qwen3 0.6B to 32B) get tuned "
        "defaults; any other id works when maxModelLen is given.",
    )
    revision: str = Field(default="main", pattern=r"^[A-Za-z0-9._/-]+$", max_length=128, description="Model revision (branch, tag or commit).")
    served_name: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$",
        description="Model id clients use in requests; defaults to the lower-cased last part of name.",
    )
    quantization: Literal["auto", "fp8", "awq", "gptq", "none"] = Field(
        default="auto",
        description="auto reads the quantization from the checkpoint (right for -FP8, -AWQ "
        "repositories); fp8 quantizes a BF16 checkpoint on the fly.",
    )
    max_model_len: int | None = Field(
        default=None, ge=256, le=1048576, description="Context length; defaults to the catalog's maximum."
    )
    thinking: ThinkingSpec = Field(default_factory=ThinkingSpec, description="Reasoning (thinking) mode.")
    tool_calling: ToolCallingSpec = Field(default_factory=ToolCallingSpec, description="Tool calling.")
    source: SourceSpec = Field(default_factory=SourceSpec, description="Where the weights come from and are cached.")


class EnvVar(_Model):
    name: str = Field(pattern=ENV_NAME, max_length=128, description="Variable name.")
    value: str = Field(default="", max_length=4096, description="Variable value.")


class ProbeSpec(_Model):
    """Readiness and liveness timing. vLLM answers /health from the same event loop that streams tokens, so a
    saturated server answers slowly: the defaults (from the catalog, per model) give readiness a timeout and a few
    failures before the pod leaves the Service, and liveness a longer timeout and far more failures, so a busy
    server is taken out of rotation long before it is restarted."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            {
                "rule": "!has(self.readinessTimeoutSeconds) || !has(self.livenessTimeoutSeconds)"
                " || self.livenessTimeoutSeconds >= self.readinessTimeoutSeconds",
                "message": "engine.probes.livenessTimeoutSeconds must be at least readinessTimeoutSeconds (liveness is the more tolerant probe)",
            },
        )
    )

    readiness_timeout_seconds: int | None = Field(
        default=None, ge=1, le=120, description="Seconds the readiness probe waits for /health; defaults to the catalog's value for the model.",
    )
    readiness_failure_threshold: int | None = Field(
        default=None, ge=1, le=60, description="Failed readiness probes (10 s apart) before the pod leaves the Service; defaults to the catalog's.",
    )
    liveness_timeout_seconds: int | None = Field(
        default=None, ge=1, le=300, description="Seconds the liveness probe waits for /health; defaults to the catalog's.",
    )
    liveness_failure_threshold: int | None = Field(
        default=None, ge=1, le=120, description="Failed liveness probes (20 s apart) before the kubelet restarts vLLM; defaults to the catalog's.",
    )


class DeepHealthSpec(_Model):
    """A health agent beside vLLM (the operator's image, `qwen-operator agent`) that tells a hung engine from a busy
    one: vLLM's /health stays 200 while its engine is stuck. Every interval the agent checks that the generated-token
    counter rises or, when it does not, that a 1-token completion on the served model answers within the timeout; after
    failuresBeforeRestart failing checks in a row vLLM's liveness probe (which asks the agent) fails, the kubelet
    restarts vLLM, and the status says EngineHung. Disabled, vLLM's liveness probe asks its own /health."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            {
                "rule": "!has(self.timeoutSeconds) || !has(self.intervalSeconds) || self.timeoutSeconds <= self.intervalSeconds",
                "message": "engine.deepHealth.timeoutSeconds must not exceed intervalSeconds (one check must end before the next)",
            },
        )
    )

    enabled: bool = Field(default=True, description="Run the health agent and point vLLM's liveness probe at it.")
    interval_seconds: int = Field(default=10, ge=2, le=300, description="Seconds between two checks.")
    timeout_seconds: int = Field(
        default=5, ge=1, le=120,
        description="Seconds the 1-token completion may take (each request of a check is bounded by it too).",
    )
    failures_before_restart: int = Field(
        default=3, ge=1, le=60,
        description="Failing checks in a row before vLLM is restarted: a hung engine is restarted about "
        "intervalSeconds x failuresBeforeRestart after it stopped, plus one liveness probe period.",
    )


class RolloutSpec(_Model):
    """How the Deployment replaces pods when the spec changes."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            {
                "rule": "!has(self.maxSurge) || !has(self.maxUnavailable) || self.maxSurge + self.maxUnavailable > 0",
                "message": "rollout.maxSurge and rollout.maxUnavailable cannot both be 0 (the rollout could never start)",
            },
        )
    )

    max_surge: int = Field(
        default=1, ge=0, le=100,
        description="Extra pods (each with its GPUs) a rollout may start above the replica count. The default 1 never "
        "serves with fewer replicas, but needs a spare GPU: on a full GPU pool set maxSurge 0 and maxUnavailable 1 "
        "(Ready=False with reason RolloutBlockedByCapacity says when that is the case).",
    )
    max_unavailable: int = Field(
        default=0, ge=0, le=100,
        description="Pods a rollout may stop before their replacements are ready. 1 frees a GPU for the new pod on a full pool, "
        "at the cost of one replica's capacity (and of all serving with one replica) while it loads.",
    )


class EngineSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra=_rules(
            {
                "rule": "!has(self.tensorParallelSize) || self.tensorParallelSize in [1, 2, 4, 8, 16]",
                "message": "engine.tensorParallelSize must be a power of two (1, 2, 4, 8 or 16)",
            },
            {
                "rule": "!has(self.env) || !self.env.exists(e, e.name == 'VLLM_API_KEY' || e.name == 'HF_TOKEN')",
                "message": "engine.env may not set VLLM_API_KEY or HF_TOKEN: use spec.auth.apiKeySecretRef and spec.model.source.tokenSecretRef",
            },
        )
    )

    image: str | None = Field(
        default=None, min_length=1, max_length=512, pattern=r"^[^\s]+$",
        description="vLLM image; defaults to the operator's pinned vllm/vllm-openai tag. Leave it out for the default (an empty string is refused).",
    )
    gpu_memory_utilization: float = Field(
        default=0.9, ge=0.1, le=0.99, description="Fraction of GPU memory vLLM may use (--gpu-memory-utilization)."
    )
    max_num_seqs: int = Field(default=256, ge=1, le=4096, description="Maximum concurrent sequences (--max-num-seqs).")
    max_num_batched_tokens: int | None = Field(
        default=None, ge=256, le=1048576, description="Tokens per scheduler step (--max-num-batched-tokens)."
    )
    tensor_parallel_size: int = Field(default=1, ge=1, le=16, description="GPUs one replica shards the model across.")
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = Field(
        default="auto", description="KV cache data type (--kv-cache-dtype)."
    )
    shutdown_timeout_seconds: int = Field(
        default=30, ge=0, le=3600, description="Seconds vLLM lets in-flight requests finish on SIGTERM (--shutdown-timeout)."
    )
    pre_stop_sleep_seconds: int = Field(
        default=10, ge=0, le=600, description="Seconds the pod keeps serving after removal from endpoints, before SIGTERM."
    )
    startup_timeout_seconds: int | None = Field(
        default=None, ge=30, le=86400, description="How long the model may take to load; defaults to the catalog's budget."
    )
    probes: ProbeSpec = Field(default_factory=ProbeSpec, description="Readiness and liveness probe timing under load.")
    deep_health: DeepHealthSpec = Field(
        default_factory=DeepHealthSpec, description="The health agent that restarts a hung engine (vLLM's /health stays 200 when it hangs)."
    )
    extra_args: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Extra vllm serve flags, written in full. Flags a spec field owns (e.g. --port, --api-key, in any "
        "spelling vLLM accepts), flags the pinned vLLM does not know, and --config are refused.",
        json_schema_extra={"items": {"type": "string", "maxLength": 512, "x-kubernetes-validations": extra_args_item_rules()}},
    )

    @field_validator("extra_args")
    @classmethod
    def _extra_args_are_allowed(cls, value: list[str]) -> list[str]:
        problems = extra_args_problems(value)
        if problems:
            raise ValueError("; ".join(problems))
        return value

    env: list[EnvVar] = Field(default_factory=list, max_length=64, description="Extra environment variables for vLLM.")


class GpuSpec(_Model):
    count: int = Field(default=1, ge=1, le=128, description="GPUs per replica (the scheduler reports Unschedulable when no node has that many).")
    resource_name: str = Field(
        default="nvidia.com/gpu", pattern=r"^[a-z0-9.-]+/[a-z0-9._-]+$", description="Extended resource the GPUs are requested as."
    )
    products: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Acceptable GPU products (node label nvidia.com/gpu.product, e.g. NVIDIA-L4); "
        "becomes required node affinity.",
    )


class ResourcesSpec(_Model):
    gpu: GpuSpec = Field(default_factory=GpuSpec, description="GPUs per replica.")
    cpu: str | None = Field(
        default=None, pattern=QUANTITY,
        description="CPU request and limit per replica (equal, for Guaranteed QoS: the static CPU manager then gives vLLM "
        "whole cores next to its GPUs). Unset: 4 per tensor-parallel GPU (engine.tensorParallelSize), since each "
        "tensor-parallel worker is its own process feeding its GPU, and a fixed limit throttles them.",
    )
    memory: str = Field(default="16Gi", pattern=QUANTITY, description="Memory request (and limit) per replica.")


class AutoscalingSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra=_rules(
            {
                "rule": "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
                "message": "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas",
            }
        )
    )

    enabled: bool = Field(default=False, description="Scale on queue depth with an HPA (needs the custom metrics API).")
    min_replicas: int = Field(
        default=1, ge=0, le=100,
        description="Fewest replicas. 0 scales to zero when idle: no request through the gateway for "
        "scaleToZeroAfterSeconds (the HPA keeps at least 1 while awake); the gateway wakes the model by setting "
        "spec.replicas to 1 through the scale subresource, and spec.replicas 0 means asleep.",
    )
    max_replicas: int = Field(default=8, ge=1, le=100, description="Most replicas.")
    queue_depth_per_replica: int = Field(
        default=5, ge=1, le=10000, description="Target average of vllm:num_requests_waiting per pod."
    )
    scale_down_stabilization_seconds: int = Field(
        default=300, ge=0, le=3600, description="How long load must stay low before replicas are removed."
    )
    scale_to_zero_after_seconds: int = Field(
        default=900, ge=10, le=604800,
        description="With minReplicas 0: scale to zero after this long without a request through the gateway "
        "(the gateway's gateway.qwenops.io/last-request annotation).",
    )


class AuthSpec(_Model):
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key that becomes vLLM's API key (VLLM_API_KEY); protects /v1/*."
    )


class AlertThresholds(_Model):
    error_ratio: float = Field(default=0.05, gt=0, le=1, description="Alert when failed/total requests over 5m exceeds this.")
    latency_p95_seconds: float | None = Field(
        default=None, gt=0,
        description="Deprecated and ignored: end-to-end latency grows with the answer's length (long reasoning is healthy); "
        "the alerts use timeToFirstTokenP95Seconds and interTokenLatencyP95Seconds.",
    )
    time_to_first_token_p95_seconds: float = Field(default=5.0, gt=0, description="Alert when p95 time to first token exceeds this.")
    inter_token_latency_p95_seconds: float = Field(
        default=0.25, gt=0,
        description="Alert when the p95 time between two output tokens of one stream exceeds this (0.25 s is 4 tokens/s).",
    )
    preemptions_per_minute: float = Field(
        default=1.0, gt=0,
        description="Alert when a pod preempts more requests than this per minute (its KV cache cannot hold the running "
        "sequences, so vLLM evicts and recomputes them).",
    )
    queue_depth: int = Field(default=20, ge=1, description="Alert when waiting requests per pod stay above this.")
    queue_duration: str = Field(default="10m", pattern=DURATION, description="...for this long.")
    kv_cache_usage: float | None = Field(
        default=None, gt=0, le=1,
        description="Deprecated and ignored: a full KV cache is normal at saturation; the alerts use preemptionsPerMinute.",
    )


class MonitoringSpec(_Model):
    service_monitor: bool = Field(default=True, description="Create a ServiceMonitor (when the Prometheus Operator CRDs exist).")
    prometheus_rule: bool = Field(default=True, description="Create a PrometheusRule with the alerts.")
    dashboard: bool = Field(default=True, description="Create a Grafana dashboard ConfigMap (sidecar label grafana_dashboard=1).")
    interval: str = Field(default="15s", pattern=DURATION, description="Scrape interval.")
    labels: dict[str, str] = Field(
        default_factory=dict,
        max_length=32,
        description="Extra labels on the ServiceMonitor and PrometheusRule, for the Prometheus that selects them "
        "(kube-prometheus-stack selects release: <its release name> by default). Added to the operator-wide defaults "
        "(chart value monitoring.labels); a key here wins.",
        json_schema_extra={"additionalProperties": {"type": "string", "maxLength": 63}},
    )
    alerts: AlertThresholds = Field(default_factory=AlertThresholds, description="Alert thresholds.")


class LabelSelectorPeer(_Model):
    namespace_selector: dict[str, str] | None = Field(default=None, description="Namespaces whose labels match (matchLabels).")
    pod_selector: dict[str, str] | None = Field(default=None, description="Pods whose labels match (matchLabels).")


class NetworkPolicySpec(_Model):
    enabled: bool = Field(default=False, description="Restrict ingress with a NetworkPolicy.")
    allow_from: list[LabelSelectorPeer] = Field(
        default_factory=list, max_length=32, description="Who may reach the API port; empty means only this namespace."
    )
    monitoring_namespace: str = Field(
        default="monitoring", pattern=DNS_LABEL, description="Namespace allowed to scrape the metrics."
    )


class Toleration(_Model):
    """A corev1 Toleration."""

    key: str | None = Field(default=None, description="Taint key the toleration applies to; empty matches all keys.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal (the default).")
    value: str | None = Field(default=None, description="Taint value the toleration matches (with operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="How long a NoExecute taint is tolerated before eviction; unset means forever."
    )


class SchedulingSpec(_Model):
    node_selector: dict[str, str] = Field(default_factory=dict, description="Pod nodeSelector.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64, description="Pod tolerations.")
    affinity: dict[str, Any] | None = Field(
        default=None, description="Pod affinity (corev1 Affinity), passed through; typed by Kubernetes' own schema.",
        json_schema_extra=_k8s_schema("Affinity"),
    )
    priority_class_name: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, description="Pod priorityClassName.")
    runtime_class_name: str | None = Field(
        default=None, pattern=DNS_SUBDOMAIN, max_length=253,
        description="Pod runtimeClassName, e.g. nvidia where the NVIDIA container runtime is not the node's default "
        "(k3s, RKE2, some GPU operator installs).",
    )
    topology_spread_constraints: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=32,
        description="Pod topologySpreadConstraints (corev1), passed through; typed by Kubernetes' own schema. Empty, and with "
        "no affinity of the user's, the operator adds a soft spread over nodes (kubernetes.io/hostname, maxSkew 1, "
        "ScheduleAnyway), for one replica too: scaling to two then rolls nothing.",
        json_schema_extra=_k8s_schema("TopologySpreadConstraint", array=True, max_items=32),
    )

    @field_validator("affinity")
    @classmethod
    def _affinity_is_an_affinity(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        errors = [] if value is None else schema_errors(value, K8S_SCHEMAS["Affinity"], "affinity")
        if errors:
            raise ValueError("; ".join(errors[:5]))
        return value

    @field_validator("topology_spread_constraints")
    @classmethod
    def _constraints_are_constraints(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        schema = {"type": "array", "items": K8S_SCHEMAS["TopologySpreadConstraint"]}
        errors = schema_errors(value, schema, "topologySpreadConstraints")
        if errors:
            raise ValueError("; ".join(errors[:5]))
        return value


ROUTER_POLICIES = ("cache_aware", "power_of_two", "consistent_hash", "round_robin")


class RouterResourcesSpec(_Model):
    cpu: str = Field(
        default="500m", pattern=QUANTITY,
        description="CPU request and limit per router replica (equal: the router's latency is the client's, and a "
        "pod that asks for what it uses is never throttled below it).",
    )
    memory: str = Field(
        default="1Gi", pattern=QUANTITY,
        description="Memory request and limit per router replica. cache_aware keeps a prefix tree per engine, evicted "
        "every 120 s down to 32 Mi characters per engine.",
    )


class RouterSpec(_Model):
    """The vLLM project's router (vllm-router) in front of the engine pods: it discovers them through the Kubernetes
    API and sends each request to one of them by policy. The QwenInference's Service then selects the router."""

    enabled: bool | None = Field(
        default=None,
        description="Run the router. Unset: on whenever the QwenInference can have more than one engine replica "
        "(replicas > 1, or autoscaling with maxReplicas > 1), off for one replica.",
    )
    policy: Literal[ROUTER_POLICIES] = Field(  # type: ignore[valid-type]
        default="cache_aware",
        description="How the router picks an engine. cache_aware: the engine that served the longest shared prefix of "
        "the prompt (its vLLM prefix cache holds it), unless the load is unbalanced; power_of_two: the less loaded of "
        "two random engines; consistent_hash: by a hash of the session (an x-session-id or x-user-id header, the "
        "request's user field), else of the request; "
        "round_robin: in turn.",
    )
    replicas: int = Field(default=2, ge=1, le=20, description="Router replicas (each discovers every engine).")
    resources: RouterResourcesSpec = Field(default_factory=RouterResourcesSpec, description="Resources per router replica.")
    image: str | None = Field(
        default=None, min_length=1, max_length=512, pattern=r"^[^\s]+$",
        description="Router image; defaults to the operator's pinned vllm-router image (images/router). Leave it out for "
        "the default (an empty string is refused).",
    )


class QwenInferenceSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra=_rules(
            {
                "rule": "!has(self.resources) || !has(self.resources.gpu) || !has(self.resources.gpu.count)"
                " || !has(self.engine) || !has(self.engine.tensorParallelSize)"
                " || self.resources.gpu.count >= self.engine.tensorParallelSize",
                "message": "resources.gpu.count must be at least engine.tensorParallelSize",
            },
            {
                "rule": "!has(self.model) || !has(self.model.source)"
                " || !has(self.model.source.pvc) || !has(self.model.source.tokenSecretRef)",
                "message": "model.source.pvc loads from a volume, so model.source.tokenSecretRef has no use with it",
            },
        )
    )

    model: ModelSpec = Field(default_factory=ModelSpec, description="Which model to serve and how.")
    engine: EngineSpec = Field(default_factory=EngineSpec, description="vLLM engine settings.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Resources per replica.")
    replicas: int = Field(default=1, ge=0, le=100, description="Replicas; ignored while autoscaling is enabled.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="How pods are replaced when the spec changes.")
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec, description="Queue-depth autoscaling.")
    auth: AuthSpec = Field(default_factory=AuthSpec, description="API authentication.")
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec, description="Metrics, alerts and dashboard.")
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec, description="Ingress restriction.")
    router: RouterSpec = Field(default_factory=RouterSpec, description="The cache-aware router in front of the engines.")
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec, description="Where the pods may run.")


class Condition(_Model):
    """A status condition, as the Kubernetes API conventions define it."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class QwenInferenceStatus(_Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    replicas: int = 0
    ready_replicas: int = 0
    desired_replicas: int | None = None
    ready: str = Field(default="0/0", description="readyReplicas/replicas, for kubectl get.")
    selector: str = ""
    endpoint: str = ""
    model: str = Field(default="", description="The model being served.")


class QwenInference(BaseModel):
    """The custom resource. metadata is kept as the API server sent it."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    api_version: str = Field(default=API_VERSION, alias="apiVersion")
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: QwenInferenceSpec = Field(default_factory=QwenInferenceSpec)
    status: QwenInferenceStatus | None = None
