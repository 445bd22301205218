"""engine.extraArgs is judged the way vLLM's own parser reads flags (api/vllm_flags.yaml)."""

from __future__ import annotations

import pytest

from qwen_operator.api.extra_args import KNOWN_NAMES, OWNED_FLAGS, VLLM_FLAGS, extra_args_problems, flag_name
from qwen_operator.builders.deployment import vllm_args
from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.catalog import resolve_model


@pytest.mark.parametrize(
    "token, name",
    [("--api_key=x", "--api-key"), ("--max-loras", "--max-loras"), ("-tp", "-tp"), ("-O3", "-O"), ("-cc.mode=3", "-cc"),
     ("--compilation_config.mode", "--compilation-config"), ("-1", None), ("4", None), ('{"a": 1}', None)],
)
def test_flag_name_normalises_like_vllm(token, name):
    assert flag_name(token) == name


@pytest.mark.parametrize(
    "args, refused",
    [
        (["--max-loras", "4", "--enable-prefix-caching", "--no-enable-log-requests", "-O3", "--max-logprobs", "-1"], []),
        (["--api_key=secret"], ["--api-key"]),
        (["--api-key", "x"], ["--api-key"]),
        (["--api-k", "x"], ["--api-k"]),  # argparse prefix: refused, write flags in full
        (["-tp", "4"], ["-tp"]),
        (["--tensor_parallel_size=4"], ["--tensor-parallel-size"]),
        (["--max_model_len", "1024"], ["--max-model-len"]),
        (["--config", "f.yaml"], ["--config"]),
        (["--no-enable-auto-tool-choice"], ["--no-enable-auto-tool-choice"]),
        (["--enable-reasoning"], ["--enable-reasoning"]),
        (["--disable-log-requests"], ["--disable-log-requests"]),
        (["--made-up-flag"], ["--made-up-flag"]),
        (["-q", "fp8"], ["-q"]),
    ],
)
def test_extra_args_problems(args, refused):
    problems = extra_args_problems(args)
    assert len(problems) == len(refused)
    for problem, name in zip(problems, refused):
        assert name in problem
    assert all("secret" not in p for p in problems)  # values are never quoted


def test_every_flag_the_operator_passes_exists_in_the_pinned_vllm():
    spec = QwenInferenceSpec.model_validate({"engine": {"maxNumBatchedTokens": 8192}, "model": {"toolCalling": {"enabled": True}, "thinking": {"enabledByDefault": False}}})
    passed = {a for a in vllm_args(spec, resolve_model(spec)) if a.startswith("--")}
    assert passed <= set(VLLM_FLAGS["flags"]), passed - set(VLLM_FLAGS["flags"])
    assert set(OWNED_FLAGS) <= set(VLLM_FLAGS["flags"])


def test_the_flag_list_names_its_vllm_version_and_that_version_is_the_pinned_image():
    from qwen_operator.config import OperatorConfig

    assert OperatorConfig().default_vllm_image.endswith(":" + VLLM_FLAGS["vllm_version"])
    assert "--enable-reasoning" not in KNOWN_NAMES and "--reasoning-parser" in KNOWN_NAMES
