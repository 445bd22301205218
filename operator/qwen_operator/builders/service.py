"""The ClusterIP Service in front of the vLLM pods (OpenAI API and /metrics on one port)."""

from __future__ import annotations

from typing import Any

from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders import common
from qwen_operator.builders.common import API_PORT, API_PORT_NAME, Owner


def build_service(owner: Owner, spec: QwenInferenceSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": common.metadata(owner, name=common.service_name(owner)),
        "spec": {
            "type": "ClusterIP",
            "selector": common.selector_labels(owner),
            "ports": [{"name": API_PORT_NAME, "port": API_PORT, "targetPort": API_PORT_NAME, "protocol": "TCP"}],
        },
    }
