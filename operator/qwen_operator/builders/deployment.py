"""The vLLM Deployment: one pure function from (owner, spec, resolved model, config) to a manifest."""

from __future__ import annotations

import copy
import json
import math
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders import common
from qwen_operator.builders.common import API_PORT, API_PORT_NAME, Owner
from qwen_operator.catalog import ResolvedModel
from qwen_operator.config import OperatorConfig

CONTAINER_NAME = "vllm"
DOWNLOAD_CONTAINER_NAME = "download-model"
AGENT_CONTAINER_NAME = "health-agent"
# Node labels of the NVIDIA GPU operator (gpu-feature-discovery).
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_COMPUTE_MAJOR_LABEL = "nvidia.com/gpu.compute.major"
GPU_COMPUTE_MINOR_LABEL = "nvidia.com/gpu.compute.minor"
FP8_NATIVE_PREFERENCE_WEIGHT = 100
HEALTH_PATH = "/health"
STARTUP_PROBE_PERIOD_SECONDS = 10

# The deep health agent (spec.engine.deepHealth; qwen_agent): its port, and vLLM's liveness probe on its /livez.
# A probe may name another container's port in the same pod; the kubelet then restarts the probe's own
# container (vLLM). The agent answers from memory, so the probe asks often, and two misses in a row (an agent
# restarting) do not restart vLLM.
AGENT_PORT = 8081
AGENT_PORT_NAME = "agent"
LIVEZ_PATH = "/livez"
AGENT_HEALTH_PATH = "/healthz"
DEEP_LIVENESS_PERIOD_SECONDS = 3
DEEP_LIVENESS_TIMEOUT_SECONDS = 2
DEEP_LIVENESS_FAILURE_THRESHOLD = 2
# A hung engine has nothing to drain (its requests never finish): the kubelet stops it within this many
# seconds instead of the pod's terminationGracePeriodSeconds (probe-level terminationGracePeriodSeconds).
HUNG_ENGINE_GRACE_SECONDS = 5
AGENT_RESOURCES = {"cpu": "50m", "memory": "64Mi", "ephemeral-storage": "64Mi"}
AGENT_STARTUP_SECONDS = 120  # the agent's start (a Python process at 50m of CPU) before the kubelet restarts it
# vLLM's preStop hook with deep health: it asks the agent for its verdict and, when vLLM is being restarted
# because the agent judged it hung, writes the verdict into vLLM's termination message (the operator reads it
# from the pod's status: lastState.terminated.message) and skips the drain; otherwise it sleeps as the
# preStop sleep does. Python's standard library only: every vLLM image has python3.
PRE_STOP_VERDICT_SCRIPT = """\
import sys, time, urllib.error, urllib.request
try:
    urllib.request.urlopen("http://127.0.0.1:%s%s" % (sys.argv[1], sys.argv[2]), timeout=2).read()
except urllib.error.HTTPError as error:
    if error.code == 500:
        with open("/dev/termination-log", "w") as log:
            log.write(error.read().decode("utf-8", "replace")[:3500])
        sys.exit(0)
except Exception:
    pass
time.sleep(float(sys.argv[3]))
"""

# Pod "restricted" Pod Security Standard: a fixed non-root user.
RUN_AS_USER = 1000

# Volumes and where they are mounted.
MODEL_CACHE_VOLUME = "model-cache"
MODEL_CACHE_PATH = "/model-cache"  # HF_HOME: the Hugging Face hub cache lives in <HF_HOME>/hub
MODEL_SOURCE_VOLUME = "model-source"
MODEL_SOURCE_PATH = "/models"  # spec.model.source.pvc, read-only
SCRATCH_VOLUME = "scratch"
SCRATCH_PATH = "/scratch"  # HOME and the compile caches (the root filesystem is read-only)
TMP_VOLUME = "tmp"
SHM_VOLUME = "dshm"

# emptyDir size limits: the kubelet evicts a pod whose emptyDir outgrows its limit, instead of letting it
# fill the node's disk. Scratch holds torch.compile, Triton and vLLM's compile caches (a few GiB for the
# largest models); /tmp only small files.
SCRATCH_SIZE_LIMIT_GIB = 8
TMP_SIZE_LIMIT_GIB = 1
# Container logs and anything else the kubelet counts against a container's ephemeral storage.
LOG_ALLOWANCE_GIB = 1
# With the cache off, the download needs room for the weights plus Hugging Face's temporary files.
DOWNLOAD_HEADROOM = Decimal("1.1")
# CPU per tensor-parallel GPU when spec.resources.cpu is unset: one busy worker process per GPU, plus
# the API server, tokenizer and scheduler.
CPU_PER_TENSOR_PARALLEL_GPU = 4
# A soft spread over nodes, added unless the user places the pods (a spread or an affinity of theirs).
HOSTNAME_TOPOLOGY_KEY = "kubernetes.io/hostname"

# Seconds between SIGKILL's deadline and the end of the drain, for vLLM's own exit.
TERMINATION_MARGIN_SECONDS = 15
# Time the Deployment may make no progress before it reports ProgressDeadlineExceeded: the
# model load budget plus room for the download in the init container.
DOWNLOAD_ALLOWANCE_SECONDS = 600


def startup_budget_seconds(spec: QwenInferenceSpec, model: ResolvedModel) -> int:
    return spec.engine.startup_timeout_seconds or model.startup_budget_seconds


def model_argument(spec: QwenInferenceSpec, model: ResolvedModel) -> str:
    """The positional model argument of `vllm serve`: the repository id, or the preloaded folder."""
    preloaded = spec.model.source.pvc
    if preloaded is None:
        return model.hf_id
    return f"{MODEL_SOURCE_PATH}/{preloaded.path}".rstrip("/")


def vllm_args(spec: QwenInferenceSpec, model: ResolvedModel) -> list[str]:
    engine = spec.engine
    args = [
        model_argument(spec, model),
        "--served-model-name", model.served_name,
        "--host", "0.0.0.0",
        "--port", str(API_PORT),
        "--max-model-len", str(model.max_model_len),
        "--gpu-memory-utilization", str(engine.gpu_memory_utilization),
        "--max-num-seqs", str(engine.max_num_seqs),
    ]  # fmt: skip
    if engine.max_num_batched_tokens is not None:
        args += ["--max-num-batched-tokens", str(engine.max_num_batched_tokens)]
    args += [
        "--tensor-parallel-size", str(engine.tensor_parallel_size),
        "--kv-cache-dtype", engine.kv_cache_dtype,
    ]  # fmt: skip
    if model.reasoning_parser:
        args += ["--reasoning-parser", model.reasoning_parser]
    if spec.model.tool_calling.enabled:
        args += ["--enable-auto-tool-choice", "--tool-call-parser", spec.model.tool_calling.parser]
    if model.quantization_flag:
        args += ["--quantization", model.quantization_flag]
    if spec.model.source.pvc is None:
        args += ["--revision", model.revision]
    args += ["--shutdown-timeout", str(engine.shutdown_timeout_seconds)]
    # Thinking-only models ignore enable_thinking, so the flag would only mislead.
    if not spec.model.thinking.enabled_by_default and not model.thinking_only:
        args += ["--default-chat-template-kwargs", json.dumps({"enable_thinking": False})]
    return args + list(engine.extra_args)


def _secret_env(name: str, ref: Any) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _writable_dirs_env() -> list[dict[str, Any]]:
    return [
        {"name": "HOME", "value": SCRATCH_PATH},
        # Some libraries name cache folders after the user; uid 1000 has no passwd entry.
        {"name": "USER", "value": "vllm"},
        {"name": "XDG_CACHE_HOME", "value": f"{SCRATCH_PATH}/.cache"},
        {"name": "VLLM_CACHE_ROOT", "value": f"{SCRATCH_PATH}/.cache/vllm"},
        {"name": "TRITON_CACHE_DIR", "value": f"{SCRATCH_PATH}/.triton"},
        {"name": "TORCHINDUCTOR_CACHE_DIR", "value": f"{SCRATCH_PATH}/.cache/torchinductor"},
        {"name": "HF_HOME", "value": MODEL_CACHE_PATH},
    ]


def _merge_env(base: list[dict[str, Any]], overrides: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """base with overrides applied by name: same name replaces in place, new names append.
    Names stay unique, as server-side apply requires of a list keyed by name."""
    merged = {item["name"]: item for item in base}
    for item in overrides:
        merged[item["name"]] = item
    return list(merged.values())


def server_env(spec: QwenInferenceSpec) -> list[dict[str, Any]]:
    writable = _writable_dirs_env()
    if spec.model.source.baked_into_image:
        # The image's own HF_HOME holds the model (images/vllm sets it).
        writable = [e for e in writable if e["name"] != "HF_HOME"]
    env = writable + [
        # The init container downloaded the model; the server never reaches the Hub.
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "DO_NOT_TRACK", "value": "1"},
    ]
    if spec.auth.api_key_secret_ref is not None:
        env.append(_secret_env("VLLM_API_KEY", spec.auth.api_key_secret_ref))
    user_env = [{"name": e.name, "value": e.value} for e in spec.engine.env]
    return _merge_env(env, user_env)


def download_env(spec: QwenInferenceSpec) -> list[dict[str, Any]]:
    env = _writable_dirs_env() + [
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
        {"name": "DO_NOT_TRACK", "value": "1"},
    ]
    if spec.model.source.token_secret_ref is not None:
        env.append(_secret_env("HF_TOKEN", spec.model.source.token_secret_ref))
    return env


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        # A model cache holds many large files: chown them only when the volume's root differs.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def cpu_amount(spec: QwenInferenceSpec) -> str:
    """spec.resources.cpu, or 4 per tensor-parallel GPU. Request and limit are equal (Guaranteed QoS, so
    the static CPU manager can pin whole cores next to the GPUs), and scale with tensorParallelSize."""
    if spec.resources.cpu is not None:
        return spec.resources.cpu
    return str(CPU_PER_TENSOR_PARALLEL_GPU * spec.engine.tensor_parallel_size)


def _gib(value: Decimal) -> str:
    return f"{math.ceil(value / 1024**3)}Gi"


def model_download_size(spec: QwenInferenceSpec, model: ResolvedModel) -> str:
    """The emptyDir a pod downloads into when the cache is off: cache.size, or more when the catalog
    knows the weights are larger."""
    size = parse_quantity(spec.model.source.cache.size)
    if model.preset is not None:
        size = max(size, Decimal(str(model.preset.weights_gib)) * DOWNLOAD_HEADROOM * 1024**3)
    return _gib(size)


def downloads_into_pod(spec: QwenInferenceSpec) -> bool:
    source = spec.model.source
    return source.pvc is None and not source.baked_into_image and not source.cache.enabled


def ephemeral_storage(spec: QwenInferenceSpec, model: ResolvedModel) -> str:
    """What the pod writes to the node's disk: its emptyDirs at their limits, the model too when the
    cache is off, and the logs."""
    total = Decimal((SCRATCH_SIZE_LIMIT_GIB + TMP_SIZE_LIMIT_GIB + LOG_ALLOWANCE_GIB) * 1024**3)
    if downloads_into_pod(spec):
        total += parse_quantity(model_download_size(spec, model))
    return _gib(total)


def _quantity_resources(spec: QwenInferenceSpec, model: ResolvedModel, with_gpu: bool) -> dict[str, Any]:
    res = spec.resources
    amounts: dict[str, str] = {"cpu": cpu_amount(spec), "memory": res.memory, "ephemeral-storage": ephemeral_storage(spec, model)}
    if with_gpu:
        amounts[res.gpu.resource_name] = str(res.gpu.count)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def model_cache_volume(owner: Owner, spec: QwenInferenceSpec, model: ResolvedModel) -> dict[str, Any] | None:
    """The hub cache (HF_HOME): the shared PVC, or an emptyDir the pod downloads into when the cache is off.
    None when the model comes from a PVC or from the image."""
    source = spec.model.source
    if source.pvc is not None or source.baked_into_image:
        return None
    if not source.cache.enabled:
        return {"name": MODEL_CACHE_VOLUME, "emptyDir": {"sizeLimit": model_download_size(spec, model)}}
    claim = source.cache.existing_claim or common.cache_claim_name(owner)
    return {"name": MODEL_CACHE_VOLUME, "persistentVolumeClaim": {"claimName": claim}}


def volumes(owner: Owner, spec: QwenInferenceSpec, model: ResolvedModel) -> list[dict[str, Any]]:
    cache = model_cache_volume(owner, spec, model)
    vols = [
        *([cache] if cache is not None else []),
        {"name": SCRATCH_VOLUME, "emptyDir": {"sizeLimit": f"{SCRATCH_SIZE_LIMIT_GIB}Gi"}},
        {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": f"{TMP_SIZE_LIMIT_GIB}Gi"}},
        # Tensor parallel workers exchange tensors through shared memory; the runtime's
        # default /dev/shm is 64Mi. Memory-backed, so it counts against the memory limit.
        {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}},
    ]
    if spec.model.source.pvc is not None:
        vols.append(
            {
                "name": MODEL_SOURCE_VOLUME,
                "persistentVolumeClaim": {"claimName": spec.model.source.pvc.claim_name, "readOnly": True},
            }
        )
    return vols


def _common_mounts(spec: QwenInferenceSpec) -> list[dict[str, Any]]:
    cache = [] if spec.model.source.pvc is not None or spec.model.source.baked_into_image else [
        {"name": MODEL_CACHE_VOLUME, "mountPath": MODEL_CACHE_PATH}
    ]
    return cache + [
        {"name": SCRATCH_VOLUME, "mountPath": SCRATCH_PATH},
        {"name": TMP_VOLUME, "mountPath": "/tmp"},
    ]


def server_mounts(spec: QwenInferenceSpec) -> list[dict[str, Any]]:
    mounts = _common_mounts(spec) + [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}]
    if spec.model.source.pvc is not None:
        mounts.append({"name": MODEL_SOURCE_VOLUME, "mountPath": MODEL_SOURCE_PATH, "readOnly": True})
    return mounts


def probes(spec: QwenInferenceSpec, model: ResolvedModel) -> dict[str, Any]:
    def http_get() -> dict[str, Any]:
        return {"path": HEALTH_PATH, "port": API_PORT_NAME}

    budget = startup_budget_seconds(spec, model)
    timing, overrides = model.probes, spec.engine.probes
    readiness_timeout = overrides.readiness_timeout_seconds or timing.readiness_timeout_seconds
    # Liveness stays the more tolerant probe whichever of the two timeouts the spec sets.
    liveness_timeout = max(overrides.liveness_timeout_seconds or timing.liveness_timeout_seconds, readiness_timeout)
    return {
        # vLLM listens only once the model is loaded: the startup probe holds the other two off
        # for the whole load budget instead of letting liveness kill a slow load.
        "startupProbe": {
            "httpGet": http_get(),
            "periodSeconds": STARTUP_PROBE_PERIOD_SECONDS,
            "timeoutSeconds": timing.readiness_timeout_seconds,
            "failureThreshold": math.ceil(budget / STARTUP_PROBE_PERIOD_SECONDS),
        },
        # Under load /health answers slowly (one event loop serves it and every stream): a timeout of
        # seconds, not the kubelet's 1 s, and a few failures before the pod leaves the Service.
        "readinessProbe": {
            "httpGet": http_get(),
            "periodSeconds": timing.readiness_period_seconds,
            "timeoutSeconds": readiness_timeout,
            "failureThreshold": overrides.readiness_failure_threshold or timing.readiness_failure_threshold,
        },
        # Far more tolerant: a saturated pod leaves the Service long before it would be restarted.
        "livenessProbe": deep_liveness_probe() if spec.engine.deep_health.enabled else {
            "httpGet": http_get(),
            "periodSeconds": timing.liveness_period_seconds,
            "timeoutSeconds": liveness_timeout,
            "failureThreshold": overrides.liveness_failure_threshold or timing.liveness_failure_threshold,
        },
    }


def deep_liveness_probe() -> dict[str, Any]:
    """vLLM's liveness probe with deep health: the agent's /livez (the agent counts the failing checks itself)."""
    return {
        "httpGet": {"path": LIVEZ_PATH, "port": AGENT_PORT},
        "periodSeconds": DEEP_LIVENESS_PERIOD_SECONDS,
        "timeoutSeconds": DEEP_LIVENESS_TIMEOUT_SECONDS,
        "failureThreshold": DEEP_LIVENESS_FAILURE_THRESHOLD,
        "terminationGracePeriodSeconds": HUNG_ENGINE_GRACE_SECONDS,
    }


def agent_container(spec: QwenInferenceSpec, model: ResolvedModel, image: str) -> dict[str, Any]:
    """The deep health agent: `qwen-operator agent` from the operator's image, beside vLLM."""
    deep = spec.engine.deep_health
    env = [_secret_env("VLLM_API_KEY", spec.auth.api_key_secret_ref)] if spec.auth.api_key_secret_ref is not None else []
    return {
        "name": AGENT_CONTAINER_NAME,
        "image": image,
        "args": [
            "agent",
            "--port", str(AGENT_PORT),
            "--vllm-port", str(API_PORT),
            "--served-model-name", model.served_name,
            "--interval", str(deep.interval_seconds),
            "--timeout", str(deep.timeout_seconds),
            "--failures", str(deep.failures_before_restart),
        ],  # fmt: skip
        "ports": [{"name": AGENT_PORT_NAME, "containerPort": AGENT_PORT, "protocol": "TCP"}],
        "env": env,
        "resources": {"requests": dict(AGENT_RESOURCES), "limits": dict(AGENT_RESOURCES)},
        # A native sidecar (an init container that keeps running): the kubelet starts vLLM only once the agent
        # answers, so vLLM's liveness probe (the agent's /livez) never meets an agent still starting, and the agent
        # outlives vLLM's preStop hook, which asks it for its verdict. As a plain second container it could start
        # seconds after vLLM on a loaded node, and the kubelet then restarted a healthy engine.
        "restartPolicy": "Always",
        "startupProbe": {
            "httpGet": {"path": AGENT_HEALTH_PATH, "port": AGENT_PORT_NAME},
            "periodSeconds": 1,
            "timeoutSeconds": 3,
            "failureThreshold": AGENT_STARTUP_SECONDS,
        },
        # The agent's own liveness: its check loop runs (/livez is vLLM's, never the agent's).
        "livenessProbe": {
            "httpGet": {"path": AGENT_HEALTH_PATH, "port": AGENT_PORT_NAME},
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "securityContext": container_security_context(),
    }


# With an API key, vLLM runs behind this guard: vLLM turns authentication off for an empty key, and
# a Secret emptied after the rollout would reach a restarted container. The guard refuses to start
# it instead (exit 78, EX_CONFIG), so the pod crash-loops visibly rather than serving without a key.
REQUIRE_API_KEY_SCRIPT = (
    'case "$VLLM_API_KEY" in *[![:space:]]*) exec vllm serve "$@" ;; esac; '
    'echo "VLLM_API_KEY is empty: refusing to serve without authentication (spec.auth.apiKeySecretRef)" >&2; exit 78'
)


def server_command(spec: QwenInferenceSpec) -> list[str]:
    """`vllm serve`, behind the API key guard when spec.auth is set (args follow as "$@")."""
    if spec.auth.api_key_secret_ref is None:
        return ["vllm", "serve"]
    return ["/bin/sh", "-c", REQUIRE_API_KEY_SCRIPT, "vllm-serve"]


def server_container(spec: QwenInferenceSpec, model: ResolvedModel, image: str) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image,
        "command": server_command(spec),
        "args": vllm_args(spec, model),
        "ports": [{"name": API_PORT_NAME, "containerPort": API_PORT, "protocol": "TCP"}],
        "env": server_env(spec),
        "resources": _quantity_resources(spec, model, with_gpu=True),
        **probes(spec, model),
        "volumeMounts": server_mounts(spec),
        "securityContext": container_security_context(),
    }
    if spec.engine.deep_health.enabled:
        # The preStop sleep, plus: a restart for a hang leaves the agent's verdict in vLLM's termination message.
        script = ["python3", "-c", PRE_STOP_VERDICT_SCRIPT, str(AGENT_PORT), LIVEZ_PATH, str(spec.engine.pre_stop_sleep_seconds)]
        container["lifecycle"] = {"preStop": {"exec": {"command": script}}}
    elif spec.engine.pre_stop_sleep_seconds > 0:
        # Keep serving while endpoints controllers and load balancers stop sending traffic.
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": spec.engine.pre_stop_sleep_seconds}}}
    return container


def download_container(spec: QwenInferenceSpec, model: ResolvedModel, image: str) -> dict[str, Any]:
    # `hf` is huggingface_hub's CLI (>= 0.34), which every vLLM image since transformers 4.56
    # ships; the older `huggingface-cli` is gone in huggingface_hub 1.x.
    return {
        "name": DOWNLOAD_CONTAINER_NAME,
        "image": image,
        "command": ["hf", "download", model.hf_id, "--revision", model.revision],
        "env": download_env(spec),
        "resources": _quantity_resources(spec, model, with_gpu=False),
        "volumeMounts": _common_mounts(spec),
        "securityContext": container_security_context(),
    }


def _has_requirements(term: dict[str, Any]) -> bool:
    return bool(term.get("matchExpressions") or term.get("matchFields"))


def require_node_terms(affinity: dict[str, Any] | None, terms: list[dict[str, Any]]) -> dict[str, Any]:
    """A copy of affinity whose required node affinity also demands one of terms.

    nodeSelectorTerms are ORed and the expressions inside a term ANDed, so (u1 or u2) and (t1 or
    t2) is the cross product (u1 and t1) or (u1 and t2) or (u2 and t1) or (u2 and t2). With no
    required terms of the user's, terms become the requirement as they are.
    """
    merged = copy.deepcopy(affinity) if affinity else {}
    required = merged.setdefault("nodeAffinity", {}).setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    user_terms = required.get("nodeSelectorTerms") or []
    if not user_terms:
        required["nodeSelectorTerms"] = copy.deepcopy(terms)
        return merged
    combined = []
    for user_term in user_terms:
        if not _has_requirements(user_term):
            # A term without requirements matches no node; ANDing more keeps it so.
            combined.append(user_term)
            continue
        for term in terms:
            both = copy.deepcopy(user_term)
            both["matchExpressions"] = (both.get("matchExpressions") or []) + copy.deepcopy(term["matchExpressions"])
            combined.append(both)
    required["nodeSelectorTerms"] = combined
    return merged


def prefer_node_terms(affinity: dict[str, Any], preferences: list[dict[str, Any]]) -> dict[str, Any]:
    """A copy of affinity with preferences added to the preferred node affinity (their weights add up)."""
    merged = copy.deepcopy(affinity)
    preferred = merged.setdefault("nodeAffinity", {}).setdefault("preferredDuringSchedulingIgnoredDuringExecution", [])
    preferred.extend(copy.deepcopy(preferences))
    return merged


def gpu_product_terms(products: list[str]) -> list[dict[str, Any]]:
    return [{"matchExpressions": [{"key": GPU_PRODUCT_LABEL, "operator": "In", "values": list(products)}]}]


def fp8_capable_terms() -> list[dict[str, Any]]:
    """Nodes that can run FP8 at all (compute capability 8.0 or newer), or that carry no GPU
    feature labels: without gpu-feature-discovery nothing is known, and the pods must still schedule."""
    return [
        {"matchExpressions": [{"key": GPU_COMPUTE_MAJOR_LABEL, "operator": "Gt", "values": ["7"]}]},
        {"matchExpressions": [{"key": GPU_COMPUTE_MAJOR_LABEL, "operator": "DoesNotExist"}]},
    ]


def native_fp8_preferences() -> list[dict[str, Any]]:
    """Nodes with native FP8 (compute capability 8.9 or newer) over weight-only Ampere (8.0 to 8.6)."""
    return [
        {"weight": FP8_NATIVE_PREFERENCE_WEIGHT, "preference": {"matchExpressions": [{"key": GPU_COMPUTE_MAJOR_LABEL, "operator": "Gt", "values": ["8"]}]}},
        {
            "weight": FP8_NATIVE_PREFERENCE_WEIGHT,
            "preference": {
                "matchExpressions": [
                    {"key": GPU_COMPUTE_MAJOR_LABEL, "operator": "In", "values": ["8"]},
                    {"key": GPU_COMPUTE_MINOR_LABEL, "operator": "Gt", "values": ["8"]},
                ]
            },
        },
    ]


def merge_node_affinity(affinity: dict[str, Any] | None, products: list[str], is_fp8: bool) -> dict[str, Any] | None:
    """The user's affinity plus what the GPU choice demands.

    Pinned products become a required `nvidia.com/gpu.product In products` (the reconcile judges
    those products against FP8 itself). An FP8 model with no products pinned must not land
    silently on a GPU that cannot run it: it requires compute capability 8.0 or newer by the node
    labels and prefers native FP8.
    """
    if products:
        return require_node_terms(affinity, gpu_product_terms(products))
    if is_fp8:
        return prefer_node_terms(require_node_terms(affinity, fp8_capable_terms()), native_fp8_preferences())
    return copy.deepcopy(affinity) if affinity else None


def hostname_spread(owner: Owner) -> list[dict[str, Any]]:
    """Replicas on different nodes where the scheduler can, so one node's loss takes one replica. Soft
    (ScheduleAnyway): GPU nodes are scarce, and a replica on a busy node beats no replica."""
    return [{
        "maxSkew": 1,
        "topologyKey": HOSTNAME_TOPOLOGY_KEY,
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": common.selector_labels(owner)},
        "matchLabelKeys": ["pod-template-hash"],
    }]


def scheduling_fields(owner: Owner, spec: QwenInferenceSpec, model: ResolvedModel) -> dict[str, Any]:
    sched = spec.scheduling
    fields: dict[str, Any] = {}
    if sched.node_selector:
        fields["nodeSelector"] = dict(sched.node_selector)
    if sched.tolerations:
        fields["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in sched.tolerations]
    affinity = merge_node_affinity(sched.affinity, spec.resources.gpu.products, model.is_fp8)
    if affinity:
        fields["affinity"] = affinity
    if sched.priority_class_name:
        fields["priorityClassName"] = sched.priority_class_name
    if sched.runtime_class_name:
        fields["runtimeClassName"] = sched.runtime_class_name
    if sched.topology_spread_constraints:
        fields["topologySpreadConstraints"] = copy.deepcopy(sched.topology_spread_constraints)
    elif not sched.affinity:
        # The user's affinity may already place the pods (e.g. a pod anti-affinity): never second-guess it.
        # Even for one replica: it changes nothing then, and a template that gained it on scaling to 2
        # would roll the running engine (and reload its model) for nothing.
        fields["topologySpreadConstraints"] = hostname_spread(owner)
    return fields


def build_deployment(
    owner: Owner,
    spec: QwenInferenceSpec,
    model: ResolvedModel,
    config: OperatorConfig,
    *,
    manage_replicas: bool,
) -> dict[str, Any]:
    """The apps/v1 Deployment that runs vLLM. With manage_replicas False, spec.replicas is left
    out so the field stays with its other owner (the HPA)."""
    image = spec.engine.image or config.default_vllm_image
    engine = spec.engine
    pod_spec: dict[str, Any] = {
        "enableServiceLinks": False,  # else a Service named vllm injects VLLM_PORT and confuses vLLM
        "automountServiceAccountToken": False,  # vLLM never talks to the Kubernetes API
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": (
            engine.pre_stop_sleep_seconds + engine.shutdown_timeout_seconds + TERMINATION_MARGIN_SECONDS
        ),
        "containers": [server_container(spec, model, image)],
        "volumes": volumes(owner, spec, model),
        **scheduling_fields(owner, spec, model),
    }
    init_containers = []
    if spec.model.source.pvc is None and not spec.model.source.baked_into_image:
        init_containers.append(download_container(spec, model, image))
    if engine.deep_health.enabled:
        init_containers.append(agent_container(spec, model, config.operator_image))  # after the download: a sidecar
    if init_containers:
        pod_spec["initContainers"] = init_containers

    deployment_spec: dict[str, Any] = {}
    if manage_replicas:
        deployment_spec["replicas"] = spec.replicas
    deployment_spec.update(
        {
            "selector": {"matchLabels": common.selector_labels(owner)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": spec.rollout.max_unavailable, "maxSurge": spec.rollout.max_surge},
            },
            "progressDeadlineSeconds": startup_budget_seconds(spec, model) + DOWNLOAD_ALLOWANCE_SECONDS,
            "template": {
                "metadata": {"labels": common.common_labels(owner)},
                "spec": pod_spec,
            },
        }
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": common.metadata(owner),
        "spec": deployment_spec,
    }
