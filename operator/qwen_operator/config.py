"""The operator's own settings. Built once at startup by from_env() and passed to the builders,
which never read the environment or module globals themselves."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

# The vLLM image pods run unless spec.engine.image says otherwise. Keep equal to VLLM_IMAGE in
# hack/versions.env.
DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.19.1"
FIELD_MANAGER = "qwen-operator"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"

# Environment variables from_env() reads (the Helm chart sets them).
ENV_VLLM_IMAGE = "QWEN_OPERATOR_VLLM_IMAGE"
ENV_CLUSTER_DOMAIN = "QWEN_OPERATOR_CLUSTER_DOMAIN"


@dataclass(frozen=True)
class OperatorConfig:
    default_vllm_image: str = DEFAULT_VLLM_IMAGE
    field_manager: str = FIELD_MANAGER
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN


def from_env(environ: Mapping[str, str] | None = None) -> OperatorConfig:
    """OperatorConfig from environment variables; unset or empty ones keep their defaults."""
    env = os.environ if environ is None else environ
    return OperatorConfig(
        default_vllm_image=env.get(ENV_VLLM_IMAGE) or DEFAULT_VLLM_IMAGE,
        cluster_domain=env.get(ENV_CLUSTER_DOMAIN) or DEFAULT_CLUSTER_DOMAIN,
    )
