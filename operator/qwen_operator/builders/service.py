"""The QwenInference's ClusterIP Service: in front of the vLLM pods (OpenAI API and /metrics on one port), or of
the router when spec.router is on."""

from __future__ import annotations

from typing import Any

from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders import common
from qwen_operator.builders.common import API_PORT, API_PORT_NAME, Owner
from qwen_operator.builders.router import router_enabled, router_service_fields


def build_service(owner: Owner, spec: QwenInferenceSpec) -> dict[str, Any]:
    """The QwenInference's Service (its endpoint). With the router on it selects the router pods, and the
    vLLM pods get their own Service (router.build_engine_service)."""
    if router_enabled(spec):
        fields = router_service_fields(owner)
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": common.metadata(owner, name=common.service_name(owner), labels=fields["labels"]),
            "spec": {"type": "ClusterIP", "selector": fields["selector"], "ports": fields["ports"]},
        }
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
