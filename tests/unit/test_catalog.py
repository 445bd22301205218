"""The model/GPU catalog: every entry loads, and resolve_model() applies its rules."""

from __future__ import annotations

from typing import Any

import pytest

from qwen_operator.api.errors import SpecError
from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.catalog import (
    check_gpu_fp8,
    load_catalog,
    lookup_gpu,
    lookup_model,
    parse_catalog,
    resolve_model,
)

EXPECTED_PRESETS = [
    "Qwen/Qwen3-0.6B-FP8",
    "Qwen/Qwen3-0.6B",
    "Qwen/Qwen3-1.7B",
    "Qwen/Qwen3-1.7B-FP8",
    "Qwen/Qwen3-4B",
    "Qwen/Qwen3-4B-FP8",
    "Qwen/Qwen3-4B-Thinking-2507",
    "Qwen/Qwen3-4B-Thinking-2507-FP8",
    "Qwen/Qwen3-8B",
    "Qwen/Qwen3-8B-FP8",
    "Qwen/Qwen3-14B",
    "Qwen/Qwen3-32B",
    "Qwen/Qwen3-30B-A3B",
]


def spec(**model: Any) -> QwenInferenceSpec:
    return QwenInferenceSpec.model_validate({"model": model})


def test_catalog_holds_exactly_the_expected_presets() -> None:
    assert sorted(load_catalog().models) == sorted(EXPECTED_PRESETS)


def test_default_model_of_the_api_is_in_the_catalog() -> None:
    assert lookup_model(QwenInferenceSpec().model.name) is not None


@pytest.mark.parametrize("name", EXPECTED_PRESETS)
def test_every_preset_is_consistent(name: str) -> None:
    preset = lookup_model(name)
    assert preset is not None and preset.name == name
    assert preset.fp8 == name.endswith("-FP8")
    assert preset.thinking_only == ("Thinking" in name)
    assert preset.max_context == (262144 if preset.thinking_only else 32768)
    assert preset.reasoning_parser in ("qwen3", "deepseek_r1")
    assert 60 <= preset.startup_budget_seconds <= 3600
    assert preset.suggested_tensor_parallel_size in (1, 2, 4, 8)
    assert preset.min_gpu_memory_gib > 0
    # And it resolves with nothing but its name.
    resolved = resolve_model(spec(name=name))
    assert resolved.preset == preset
    assert resolved.max_model_len == preset.max_context


@pytest.mark.parametrize(
    ("smaller", "larger"),
    [
        ("Qwen/Qwen3-0.6B", "Qwen/Qwen3-1.7B"),
        ("Qwen/Qwen3-1.7B", "Qwen/Qwen3-4B"),
        ("Qwen/Qwen3-4B", "Qwen/Qwen3-8B"),
        ("Qwen/Qwen3-8B", "Qwen/Qwen3-14B"),
        ("Qwen/Qwen3-14B", "Qwen/Qwen3-32B"),
        ("Qwen/Qwen3-8B-FP8", "Qwen/Qwen3-8B"),
        ("Qwen/Qwen3-4B-FP8", "Qwen/Qwen3-4B"),
        ("Qwen/Qwen3-4B", "Qwen/Qwen3-4B-Thinking-2507"),  # 8x the context, 8x the KV cache
    ],
)
def test_memory_and_budget_grow_with_the_model(smaller: str, larger: str) -> None:
    small, large = lookup_model(smaller), lookup_model(larger)
    assert small is not None and large is not None
    assert small.min_gpu_memory_gib <= large.min_gpu_memory_gib
    assert small.startup_budget_seconds <= large.startup_budget_seconds


@pytest.mark.parametrize(
    ("product", "cc", "memory"),
    [
        ("NVIDIA-L4", (8, 9), 22),
        ("NVIDIA-L40S", (8, 9), 44),
        ("NVIDIA-H100-80GB-HBM3", (9, 0), 79),
        ("NVIDIA-A100-SXM4-80GB", (8, 0), 80),
        ("NVIDIA-A10G", (8, 6), 22),
        ("Tesla-T4", (7, 5), 15),
        ("NVIDIA-H200", (9, 0), 140),
        ("NVIDIA-B200", (10, 0), 179),
    ],
)
def test_gpu_products(product: str, cc: tuple[int, int], memory: int) -> None:
    gpu = lookup_gpu(product)
    assert gpu is not None
    assert gpu.compute_capability == cc
    assert gpu.memory_gib == memory


def test_unknown_lookups_return_none() -> None:
    assert lookup_model("Qwen/Qwen9-1T") is None
    assert lookup_gpu("NVIDIA-Imaginary") is None


def test_parse_catalog_refuses_unknown_fields() -> None:
    models = {"defaults": {"unknown_model_startup_budget_seconds": 10}, "models": {"a/b": {"max_contxt": 1}}}
    with pytest.raises(TypeError):
        parse_catalog(models, {"gpus": {}})


def test_parse_catalog_refuses_bad_compute_capability() -> None:
    models = {"defaults": {"unknown_model_startup_budget_seconds": 10}, "models": {}}
    with pytest.raises(ValueError, match="compute_capability"):
        parse_catalog(models, {"gpus": {"X": {"compute_capability": "89", "memory_gib": 1}}})


# --- resolve_model ---------------------------------------------------------------------------


def test_resolve_default_preset() -> None:
    resolved = resolve_model(QwenInferenceSpec())
    assert resolved.hf_id == "Qwen/Qwen3-0.6B-FP8"
    assert resolved.revision == "main"
    assert resolved.served_name == "qwen3-0.6b-fp8"
    assert resolved.max_model_len == 32768
    assert resolved.reasoning_parser == "qwen3"
    assert resolved.quantization_flag is None
    assert resolved.is_fp8 is True
    assert resolved.startup_budget_seconds == 300
    assert resolved.min_gpu_memory_gib == 8
    assert resolved.thinking_only is False


@pytest.mark.parametrize(
    ("model", "field", "expected"),
    [
        ({"name": "Qwen/Qwen3-8B", "servedName": "chat"}, "served_name", "chat"),
        ({"name": "Qwen/Qwen3-8B"}, "served_name", "qwen3-8b"),
        ({"name": "Org/My_Model-7B", "maxModelLen": 4096}, "served_name", "my_model-7b"),
        ({"name": "Qwen/Qwen3-8B", "maxModelLen": 8192}, "max_model_len", 8192),
        ({"name": "Qwen/Qwen3-8B", "revision": "abc123"}, "revision", "abc123"),
        ({"name": "Qwen/Qwen3-4B-Thinking-2507"}, "reasoning_parser", "deepseek_r1"),
        ({"name": "Qwen/Qwen3-4B-Thinking-2507"}, "thinking_only", True),
        ({"name": "Qwen/Qwen3-8B", "thinking": {"reasoningParser": "deepseek_r1"}}, "reasoning_parser", "deepseek_r1"),
        ({"name": "Org/Other", "maxModelLen": 4096}, "reasoning_parser", None),
        ({"name": "Org/Other", "maxModelLen": 4096}, "min_gpu_memory_gib", None),
        ({"name": "Org/Other", "maxModelLen": 4096}, "startup_budget_seconds", 1200),
        ({"name": "Org/Other", "maxModelLen": 4096}, "preset", None),
    ],
)
def test_resolve_fields(model: dict[str, Any], field: str, expected: Any) -> None:
    assert getattr(resolve_model(spec(**model)), field) == expected


@pytest.mark.parametrize(
    ("model", "flag", "is_fp8"),
    [
        # Pre-quantized FP8 checkpoints: vLLM reads config.json, so never --quantization fp8.
        ({"name": "Qwen/Qwen3-8B-FP8"}, None, True),
        ({"name": "Qwen/Qwen3-8B-FP8", "quantization": "fp8"}, None, True),
        ({"name": "Qwen/Qwen3-8B-FP8", "quantization": "auto"}, None, True),
        ({"name": "Org/Thing-FP8", "maxModelLen": 4096, "quantization": "fp8"}, None, True),
        ({"name": "Org/Thing-FP8", "maxModelLen": 4096}, None, True),
        # BF16 checkpoints quantized on load (dynamic FP8).
        ({"name": "Qwen/Qwen3-8B", "quantization": "fp8"}, "fp8", True),
        ({"name": "Org/Thing", "maxModelLen": 4096, "quantization": "fp8"}, "fp8", True),
        # Plain BF16.
        ({"name": "Qwen/Qwen3-8B"}, None, False),
        ({"name": "Qwen/Qwen3-8B", "quantization": "none"}, None, False),
        # AWQ/GPTQ repositories outside the catalog: vLLM detects them (and picks Marlin).
        ({"name": "Org/Thing-AWQ", "maxModelLen": 4096, "quantization": "awq"}, None, False),
        ({"name": "Org/Thing-GPTQ", "maxModelLen": 4096, "quantization": "gptq"}, None, False),
    ],
)
def test_resolve_quantization(model: dict[str, Any], flag: str | None, is_fp8: bool) -> None:
    resolved = resolve_model(spec(**model))
    assert resolved.quantization_flag == flag
    assert resolved.is_fp8 is is_fp8


@pytest.mark.parametrize(
    ("model", "reason", "message_part"),
    [
        ({"name": "Org/Unknown"}, "UnknownModel", "maxModelLen"),
        ({"name": "Qwen/Qwen3-8B", "maxModelLen": 32769}, "MaxModelLenTooLarge", "32768"),
        ({"name": "Qwen/Qwen3-4B-Thinking-2507", "maxModelLen": 300000}, "MaxModelLenTooLarge", "262144"),
        ({"name": "Qwen/Qwen3-8B", "quantization": "awq"}, "QuantizationMismatch", "BF16"),
        ({"name": "Qwen/Qwen3-8B-FP8", "quantization": "gptq"}, "QuantizationMismatch", "FP8"),
        ({"name": "Qwen/Qwen3-8B-FP8", "quantization": "none"}, "QuantizationMismatch", "FP8"),
    ],
)
def test_resolve_errors(model: dict[str, Any], reason: str, message_part: str) -> None:
    with pytest.raises(SpecError) as caught:
        resolve_model(spec(**model))
    assert caught.value.reason == reason
    assert message_part in caught.value.message
    assert model["name"] in caught.value.message


def test_max_model_len_at_the_limit_is_accepted() -> None:
    assert resolve_model(spec(name="Qwen/Qwen3-8B", maxModelLen=32768)).max_model_len == 32768


# --- check_gpu_fp8 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "products", "expected_parts", "absent_parts"),
    [
        ("Qwen/Qwen3-8B-FP8", [], None, []),
        ("Qwen/Qwen3-8B-FP8", ["NVIDIA-L4", "NVIDIA-H100-80GB-HBM3", "NVIDIA-B200"], None, []),
        ("Qwen/Qwen3-8B-FP8", ["NVIDIA-Imaginary"], None, []),
        ("Qwen/Qwen3-8B", ["Tesla-T4"], None, []),  # not FP8: any GPU
        ("Qwen/Qwen3-8B-FP8", ["NVIDIA-A100-SXM4-80GB"], ["weight-only", "NVIDIA-A100-SXM4-80GB", "8.0"], ["cannot run"]),
        ("Qwen/Qwen3-8B-FP8", ["NVIDIA-A10G", "NVIDIA-L4"], ["weight-only", "NVIDIA-A10G"], ["NVIDIA-L4", "cannot run"]),
        ("Qwen/Qwen3-8B-FP8", ["Tesla-T4"], ["cannot run", "Tesla-T4", "7.5"], ["weight-only"]),
        ("Qwen/Qwen3-8B-FP8", ["Tesla-T4", "NVIDIA-A10G"], ["cannot run", "Tesla-T4", "weight-only", "NVIDIA-A10G"], []),
    ],
)
def test_check_gpu_fp8(model: str, products: list[str], expected_parts: list[str] | None, absent_parts: list[str]) -> None:
    message = check_gpu_fp8(resolve_model(spec(name=model)), products)
    if expected_parts is None:
        assert message is None
        return
    assert message is not None
    for part in expected_parts:
        assert part in message
    for part in absent_parts:
        assert part not in message


def test_check_gpu_fp8_counts_dynamic_fp8() -> None:
    resolved = resolve_model(spec(name="Qwen/Qwen3-8B", quantization="fp8"))
    message = check_gpu_fp8(resolved, ["Tesla-T4"])
    assert message is not None and "cannot run" in message


# --- GPU memory fit ----------------------------------------------------------------------------

from qwen_operator.catalog import gpu_memory_need, gpu_memory_problems, longest_context_that_fits, probe_timing  # noqa: E402


def fit_spec(**fields: Any) -> QwenInferenceSpec:
    return QwenInferenceSpec.model_validate(fields)


@pytest.mark.parametrize(
    ("fields", "refused"),
    [
        # Qwen3-8B BF16 needs 23.2 GiB at its full 32k context; an L4 has 22.
        ({"model": {"name": "Qwen/Qwen3-8B"}, "resources": {"gpu": {"products": ["NVIDIA-L4"]}}}, True),
        # The FP8 checkpoint, a shorter context, an fp8 KV cache or two GPUs make it fit.
        ({"model": {"name": "Qwen/Qwen3-8B-FP8"}, "resources": {"gpu": {"products": ["NVIDIA-L4"]}}}, False),
        ({"model": {"name": "Qwen/Qwen3-8B", "maxModelLen": 16384}, "resources": {"gpu": {"products": ["NVIDIA-L4"]}}}, False),
        ({"model": {"name": "Qwen/Qwen3-8B"}, "engine": {"kvCacheDtype": "fp8"}, "resources": {"gpu": {"products": ["NVIDIA-L4"]}}}, False),
        ({"model": {"name": "Qwen/Qwen3-8B"}, "engine": {"tensorParallelSize": 2}, "resources": {"gpu": {"count": 2, "products": ["NVIDIA-L4"]}}}, False),
        # Thinking-2507 at its native 262k context: 36 GiB of KV cache for one sequence.
        ({"model": {"name": "Qwen/Qwen3-4B-Thinking-2507"}, "resources": {"gpu": {"products": ["NVIDIA-A10G"]}}}, True),
        ({"model": {"name": "Qwen/Qwen3-4B-Thinking-2507"}, "resources": {"gpu": {"products": ["NVIDIA-H100-80GB-HBM3"]}}}, False),
        # Nothing pinned, or an unknown product or model: not judged here.
        ({"model": {"name": "Qwen/Qwen3-4B-Thinking-2507"}}, False),
        ({"model": {"name": "Qwen/Qwen3-8B"}, "resources": {"gpu": {"products": ["ACME-X1"]}}}, False),
        ({"model": {"name": "Org/Big", "maxModelLen": 262144}, "resources": {"gpu": {"products": ["Tesla-T4"]}}}, False),
    ],
)
def test_gpu_memory_fit_refuses_when_no_pinned_product_fits(fields: dict[str, Any], refused: bool) -> None:
    spec = fit_spec(**fields)
    if refused:
        with pytest.raises(SpecError) as caught:
            resolve_model(spec)
        assert caught.value.reason == "GPUMemoryTooSmall"
        assert "GiB" in caught.value.message and "maxModelLen" in caught.value.message
    else:
        resolve_model(spec)


def test_gpu_memory_warns_when_only_some_pinned_products_fit() -> None:
    spec = fit_spec(model={"name": "Qwen/Qwen3-4B-Thinking-2507"}, resources={"gpu": {"products": ["NVIDIA-L4", "NVIDIA-H100-80GB-HBM3"]}})
    refusal, warning = gpu_memory_problems(resolve_model(spec), spec)
    assert refusal is None
    assert warning is not None and "NVIDIA-L4 (22 GiB)" in warning and "H100" not in warning


def test_gpu_memory_need_adds_weights_kv_cache_and_overhead() -> None:
    spec = fit_spec(model={"name": "Qwen/Qwen3-8B"})
    need = gpu_memory_need(resolve_model(spec), spec)
    assert need is not None
    # (14.9 weights + 144 KiB x 32768 tokens = 4.5 GiB + 1.5) / 0.9 = 23.2, the catalog's min_gpu_memory_gib (24) rounded up.
    assert need.kv_cache_gib == pytest.approx(4.5)
    assert need.per_gpu_gib == pytest.approx(23.22, abs=0.01)
    assert need.per_gpu_gib <= lookup_model("Qwen/Qwen3-8B").min_gpu_memory_gib


def test_longest_context_that_fits_is_advised_and_fits() -> None:
    spec = fit_spec(model={"name": "Qwen/Qwen3-8B"})
    longest = longest_context_that_fits(resolve_model(spec), spec, 22)
    assert longest == 24576
    shorter = fit_spec(model={"name": "Qwen/Qwen3-8B", "maxModelLen": longest}, resources={"gpu": {"products": ["NVIDIA-L4"]}})
    assert gpu_memory_problems(resolve_model(shorter), shorter) == (None, None)


def test_probe_timing_from_the_catalog() -> None:
    default = probe_timing(lookup_model("Qwen/Qwen3-0.6B-FP8"))
    large = probe_timing(lookup_model("Qwen/Qwen3-32B"))
    assert (default.readiness_timeout_seconds, default.liveness_timeout_seconds) == (5, 10)
    assert (large.readiness_timeout_seconds, large.liveness_timeout_seconds) == (10, 20)
    for timing in (default, large, probe_timing(None)):
        # Liveness tolerates a longer silence than readiness, so a busy pod leaves the Service before any restart.
        assert timing.liveness_period_seconds * timing.liveness_failure_threshold > timing.readiness_period_seconds * timing.readiness_failure_threshold
        assert timing.readiness_timeout_seconds > 1  # the kubelet's default would drop a busy server
