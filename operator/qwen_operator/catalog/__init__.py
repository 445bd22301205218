"""The model and GPU catalog: data files (models.yaml, gpus.yaml) and the rules that apply them.

`resolve_model()` turns a spec's model section into what the pods need (`ResolvedModel`), and
raises `SpecError` for what admission cannot judge (an id the catalog does not know, a context
longer than the model's). Per-model facts live in the YAML files, never in code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from qwen_operator.api.errors import SpecError
from qwen_operator.api.models import QwenInferenceSpec

# Compute capabilities that bound FP8 support (see gpus.yaml).
FP8_NATIVE_MIN_CC = (8, 9)
FP8_WEIGHT_ONLY_MIN_CC = (8, 0)


@dataclass(frozen=True)
class ModelPreset:
    name: str
    parameters: str
    max_context: int
    reasoning_parser: str | None
    fp8: bool
    min_gpu_memory_gib: int
    startup_budget_seconds: int
    suggested_tensor_parallel_size: int
    thinking_only: bool
    weights_gib: float
    kv_cache_kib_per_token: int
    probe_timeout_seconds: int | None = None


@dataclass(frozen=True)
class ProbeTiming:
    """Readiness and liveness timing for a loaded model (catalog defaults.probes; see models.yaml for why)."""

    readiness_period_seconds: int
    readiness_timeout_seconds: int
    readiness_failure_threshold: int
    liveness_period_seconds: int
    liveness_timeout_seconds: int
    liveness_failure_threshold: int


@dataclass(frozen=True)
class GpuProduct:
    product: str
    compute_capability: tuple[int, int]
    memory_gib: int

    @property
    def compute_capability_str(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


@dataclass(frozen=True)
class ResolvedModel:
    """The model as the pods will serve it: catalog defaults merged with the spec."""

    hf_id: str
    revision: str
    served_name: str
    max_model_len: int
    reasoning_parser: str | None
    quantization_flag: str | None  # value of --quantization, or None to pass no flag
    is_fp8: bool  # the served weights are FP8 (pre-quantized or quantized on load)
    startup_budget_seconds: int  # the catalog's; spec.engine.startupTimeoutSeconds overrides it
    min_gpu_memory_gib: int | None  # None when the model is not in the catalog
    thinking_only: bool
    preset: ModelPreset | None
    probes: ProbeTiming


@dataclass(frozen=True)
class Catalog:
    models: dict[str, ModelPreset]
    gpus: dict[str, GpuProduct]
    unknown_model_startup_budget_seconds: int
    probes: dict[str, int]
    activation_overhead_gib: float


def _read_yaml(filename: str) -> dict[str, Any]:
    text = resources.files(__package__).joinpath(filename).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"catalog/{filename}: expected a mapping at the top level")
    return data


def _parse_compute_capability(value: str, product: str) -> tuple[int, int]:
    major, sep, minor = str(value).partition(".")
    if not sep or not major.isdigit() or not minor.isdigit():
        raise ValueError(f"catalog/gpus.yaml: {product}: compute_capability {value!r} is not 'major.minor'")
    return int(major), int(minor)


def parse_catalog(models_doc: dict[str, Any], gpus_doc: dict[str, Any]) -> Catalog:
    """Build a Catalog from the two YAML documents; unknown or missing keys are errors."""
    models = {name: ModelPreset(name=name, **fields) for name, fields in models_doc["models"].items()}
    gpus = {
        product: GpuProduct(
            product=product,
            compute_capability=_parse_compute_capability(fields["compute_capability"], product),
            memory_gib=fields["memory_gib"],
        )
        for product, fields in gpus_doc["gpus"].items()
    }
    return Catalog(
        models=models,
        gpus=gpus,
        unknown_model_startup_budget_seconds=models_doc["defaults"]["unknown_model_startup_budget_seconds"],
        probes=dict(models_doc["defaults"]["probes"]),
        activation_overhead_gib=models_doc["defaults"]["activation_overhead_gib"],
    )


def probe_timing(preset: ModelPreset | None) -> ProbeTiming:
    """The catalog's probe timing for a model: the defaults, with the model's own timeout where it has one.
    Liveness waits twice as long as readiness for an answer."""
    defaults = load_catalog().probes
    timeout = (preset.probe_timeout_seconds if preset else None) or defaults["readiness_timeout_seconds"]
    return ProbeTiming(
        readiness_period_seconds=defaults["readiness_period_seconds"],
        readiness_timeout_seconds=timeout,
        readiness_failure_threshold=defaults["readiness_failure_threshold"],
        liveness_period_seconds=defaults["liveness_period_seconds"],
        liveness_timeout_seconds=2 * timeout,
        liveness_failure_threshold=defaults["liveness_failure_threshold"],
    )


@functools.cache
def load_catalog() -> Catalog:
    """The packaged catalog, read once per process."""
    return parse_catalog(_read_yaml("models.yaml"), _read_yaml("gpus.yaml"))


def lookup_model(name: str) -> ModelPreset | None:
    return load_catalog().models.get(name)


def lookup_gpu(product: str) -> GpuProduct | None:
    return load_catalog().gpus.get(product)


def default_served_name(hf_id: str) -> str:
    return hf_id.rsplit("/", 1)[-1].lower()


def _looks_fp8(hf_id: str) -> bool:
    # For ids outside the catalog: Qwen and most publishers name FP8 checkpoints "...-FP8".
    return hf_id.upper().endswith("-FP8")


def resolve_model(spec: QwenInferenceSpec) -> ResolvedModel:
    """Merge the catalog's defaults with spec.model; raise SpecError for what cannot be served."""
    model = spec.model
    preset = lookup_model(model.name)

    if preset is None:
        if model.max_model_len is None:
            raise SpecError(
                "UnknownModel",
                f"{model.name} is not in the model catalog, so its context length is unknown: "
                "set spec.model.maxModelLen (and spec.engine.startupTimeoutSeconds for large models)",
            )
        max_model_len = model.max_model_len
    else:
        max_model_len = model.max_model_len or preset.max_context
        if max_model_len > preset.max_context:
            raise SpecError(
                "MaxModelLenTooLarge",
                f"spec.model.maxModelLen {max_model_len} exceeds {model.name}'s native context of "
                f"{preset.max_context} tokens: lower it to {preset.max_context} or less",
            )

    checkpoint_fp8 = preset.fp8 if preset is not None else _looks_fp8(model.name)
    quantization_flag: str | None = None
    if model.quantization == "fp8":
        # A pre-quantized FP8 checkpoint declares its quantization in config.json; passing
        # --quantization fp8 again is wrong. A BF16 checkpoint is quantized on load (dynamic FP8).
        if not checkpoint_fp8:
            quantization_flag = "fp8"
    elif model.quantization in ("awq", "gptq"):
        if preset is not None:
            raise SpecError(
                "QuantizationMismatch",
                f"spec.model.quantization is {model.quantization} but {model.name} is a "
                f"{'FP8' if preset.fp8 else 'BF16'} checkpoint: use quantization auto, or name an "
                f"{model.quantization.upper()} repository",
            )
        # No flag either: vLLM reads AWQ/GPTQ from config.json and then picks the fast Marlin
        # kernels; an explicit --quantization awq/gptq would force the slower ones.
    elif model.quantization == "none" and checkpoint_fp8:
        raise SpecError(
            "QuantizationMismatch",
            f"spec.model.quantization is none but {model.name} is an FP8 checkpoint (vLLM serves "
            "it in FP8 regardless): use quantization auto, or name the BF16 repository",
        )

    resolved = ResolvedModel(
        hf_id=model.name,
        revision=model.revision,
        served_name=model.served_name or default_served_name(model.name),
        max_model_len=max_model_len,
        reasoning_parser=model.thinking.reasoning_parser or (preset.reasoning_parser if preset else None),
        quantization_flag=quantization_flag,
        is_fp8=checkpoint_fp8 or model.quantization == "fp8",
        startup_budget_seconds=(
            preset.startup_budget_seconds if preset else load_catalog().unknown_model_startup_budget_seconds
        ),
        min_gpu_memory_gib=preset.min_gpu_memory_gib if preset else None,
        thinking_only=preset.thinking_only if preset else False,
        preset=preset,
        probes=probe_timing(preset),
    )
    refusal, _ = gpu_memory_problems(resolved, spec)
    if refusal is not None:
        raise SpecError("GPUMemoryTooSmall", refusal)
    return resolved


@dataclass(frozen=True)
class GpuMemoryNeed:
    """GPU memory one tensor-parallel GPU of a replica needs to load the model and hold one maxModelLen sequence
    (vLLM refuses to start when its KV cache cannot), and what each part is, in GiB."""

    per_gpu_gib: float
    weights_gib: float
    kv_cache_gib: float
    overhead_gib: float
    utilization: float
    tensor_parallel_size: int

    def describe(self, resolved: ResolvedModel) -> str:
        return (f"{resolved.hf_id} at maxModelLen {resolved.max_model_len} needs {self.per_gpu_gib:.1f} GiB per GPU "
                f"(weights {self.weights_gib:.1f} GiB + KV cache {self.kv_cache_gib:.1f} GiB for one full-length sequence, "
                f"over {self.tensor_parallel_size} GPU(s), + {self.overhead_gib} GiB activations each, "
                f"at gpuMemoryUtilization {self.utilization})")


def gpu_memory_need(resolved: ResolvedModel, spec: QwenInferenceSpec) -> GpuMemoryNeed | None:
    """None for a model outside the catalog (its size is unknown)."""
    preset = resolved.preset
    if preset is None:
        return None
    kv_kib_per_token = preset.kv_cache_kib_per_token / (2 if spec.engine.kv_cache_dtype != "auto" else 1)
    kv_gib = kv_kib_per_token * resolved.max_model_len / 1024**2
    tp = spec.engine.tensor_parallel_size
    overhead = load_catalog().activation_overhead_gib
    utilization = spec.engine.gpu_memory_utilization
    return GpuMemoryNeed(
        per_gpu_gib=((preset.weights_gib + kv_gib) / tp + overhead) / utilization,
        weights_gib=preset.weights_gib, kv_cache_gib=kv_gib, overhead_gib=overhead, utilization=utilization, tensor_parallel_size=tp,
    )


def longest_context_that_fits(resolved: ResolvedModel, spec: QwenInferenceSpec, gpu_memory_gib: float) -> int:
    """The longest maxModelLen whose one sequence still fits beside the weights (0 when the weights alone do not)."""
    need = gpu_memory_need(resolved, spec)
    assert need is not None and resolved.preset is not None
    kv_kib_per_token = resolved.preset.kv_cache_kib_per_token / (2 if spec.engine.kv_cache_dtype != "auto" else 1)
    free_gib = (gpu_memory_gib * need.utilization - need.overhead_gib) * need.tensor_parallel_size - need.weights_gib
    return max(0, int(free_gib * 1024**2 / kv_kib_per_token) // 256 * 256)


def gpu_memory_advice(resolved: ResolvedModel, spec: QwenInferenceSpec, gpu_memory_gib: float) -> str:
    longest = longest_context_that_fits(resolved, spec, gpu_memory_gib)
    lower = f"lower spec.model.maxModelLen to {longest} or less, " if longest >= 256 else ""
    return (f"{lower}serve an FP8 checkpoint, set engine.kvCacheDtype fp8, raise engine.tensorParallelSize, "
            "or pin a GPU with more memory")


def gpu_memory_problems(resolved: ResolvedModel, spec: QwenInferenceSpec) -> tuple[str | None, str | None]:
    """(refusal, warning) for the GPU products spec.resources.gpu.products pins, by their memory in gpus.yaml.

    A refusal when every pinned product is known and none has the memory (the pods would crash-loop on load);
    a warning when some do and some do not (pods on the small ones would). Unknown models and products are not
    judged: the candidate nodes' nvidia.com/gpu.memory labels are (status.gpu_memory_problem_on_nodes).
    """
    need = gpu_memory_need(resolved, spec)
    products = spec.resources.gpu.products
    if need is None or not products:
        return None, None
    known = [gpu for gpu in (lookup_gpu(p) for p in products) if gpu is not None]
    too_small = [gpu for gpu in known if gpu.memory_gib < need.per_gpu_gib]
    if not too_small:
        return None, None
    largest = max(gpu.memory_gib for gpu in too_small)
    names = ", ".join(f"{gpu.product} ({gpu.memory_gib} GiB)" for gpu in too_small)
    message = f"{need.describe(resolved)}; {names} {'has' if len(too_small) == 1 else 'have'} less: {gpu_memory_advice(resolved, spec, largest)}"
    if len(too_small) == len(products):
        return message, None
    return None, message + " (or remove those products)"


def check_gpu_fp8(resolved: ResolvedModel, products: list[str]) -> str | None:
    """A message when an FP8 model is pinned to GPU products that cannot run FP8 natively.

    Compute capability below 8.0 cannot run FP8 at all (the pods will fail to load the model);
    8.0 to 8.8 runs it weight-only through Marlin (works, slower). Products not in the catalog
    are not judged. None when there is nothing to say.
    """
    if not resolved.is_fp8 or not products:
        return None
    known = [gpu for gpu in (lookup_gpu(p) for p in products) if gpu is not None]
    unusable = [g for g in known if g.compute_capability < FP8_WEIGHT_ONLY_MIN_CC]
    weight_only = [g for g in known if FP8_WEIGHT_ONLY_MIN_CC <= g.compute_capability < FP8_NATIVE_MIN_CC]

    def describe(gpus: list[GpuProduct]) -> str:
        return ", ".join(f"{g.product} (compute capability {g.compute_capability_str})" for g in gpus)

    messages = []
    if unusable:
        messages.append(
            f"{resolved.hf_id} is FP8 and cannot run on {describe(unusable)}: FP8 needs compute "
            "capability 8.0 or newer; remove these products or serve a BF16 model"
        )
    if weight_only:
        messages.append(
            f"{resolved.hf_id} is FP8 and runs weight-only (Marlin, slower) on {describe(weight_only)}: "
            "native FP8 needs compute capability 8.9 or newer (L4, L40S, H100, H200, B200)"
        )
    return "; ".join(messages) or None
