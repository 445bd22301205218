"""The operator's own settings. Built once at startup by from_env() and passed to the builders,
which never read the environment or module globals themselves."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

# The vLLM image pods run unless spec.engine.image says otherwise. Keep equal to VLLM_IMAGE in
# hack/versions.env.
DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.19.1"
# The operator's own image, which also runs the engine pods' health agent (`qwen-operator agent`); the chart
# sets QWEN_OPERATOR_IMAGE to the image it runs. Keep the tag equal to the chart's appVersion.
DEFAULT_OPERATOR_IMAGE = "qwen-operator:0.1.0"
# The router image spec.router.image defaults to: vllm-router (VLLM_ROUTER_VERSION in hack/versions.env) as
# images/router builds it; hack/images.sh tags its build with this name on the real node. The chart sets
# QWEN_OPERATOR_ROUTER_IMAGE to the image of its registry.
DEFAULT_ROUTER_IMAGE = "localhost/qwen-vllm-router:0.1.17"
FIELD_MANAGER = "qwen-operator"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"

# Environment variables from_env() reads (the Helm chart sets them).
ENV_VLLM_IMAGE = "QWEN_OPERATOR_VLLM_IMAGE"
ENV_OPERATOR_IMAGE = "QWEN_OPERATOR_IMAGE"
ENV_ROUTER_IMAGE = "QWEN_OPERATOR_ROUTER_IMAGE"
ENV_CLUSTER_DOMAIN = "QWEN_OPERATOR_CLUSTER_DOMAIN"
# A JSON object of labels for every ServiceMonitor and PrometheusRule (chart value monitoring.labels).
ENV_MONITORING_LABELS = "QWEN_OPERATOR_MONITORING_LABELS"
# "false" when the operator may not read Secrets (chart value rbac.readSecrets): a missing Secret is then
# seen in the pods' status instead (status.pod_problems: SecretNotFound).
ENV_READ_SECRETS = "QWEN_OPERATOR_READ_SECRETS"


@dataclass(frozen=True)
class OperatorConfig:
    default_vllm_image: str = DEFAULT_VLLM_IMAGE
    operator_image: str = DEFAULT_OPERATOR_IMAGE  # the health agent's image
    router_image: str = DEFAULT_ROUTER_IMAGE  # spec.router.image's default
    field_manager: str = FIELD_MANAGER
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    monitoring_labels: dict[str, str] = field(default_factory=dict)
    read_secrets: bool = True


def parse_labels(text: str) -> dict[str, str]:
    """A JSON object of string labels; raises ValueError for anything else (a typo must not start an
    operator whose monitoring objects no Prometheus selects)."""
    value = json.loads(text)
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"{ENV_MONITORING_LABELS} must be a JSON object of string values, got {text!r}")
    return value


def from_env(environ: Mapping[str, str] | None = None) -> OperatorConfig:
    """OperatorConfig from environment variables; unset or empty ones keep their defaults."""
    env = os.environ if environ is None else environ
    return OperatorConfig(
        default_vllm_image=env.get(ENV_VLLM_IMAGE) or DEFAULT_VLLM_IMAGE,
        operator_image=env.get(ENV_OPERATOR_IMAGE) or DEFAULT_OPERATOR_IMAGE,
        router_image=env.get(ENV_ROUTER_IMAGE) or DEFAULT_ROUTER_IMAGE,
        cluster_domain=env.get(ENV_CLUSTER_DOMAIN) or DEFAULT_CLUSTER_DOMAIN,
        monitoring_labels=parse_labels(env[ENV_MONITORING_LABELS]) if env.get(ENV_MONITORING_LABELS) else {},
        read_secrets=(env.get(ENV_READ_SECRETS) or "true").lower() != "false",
    )
