"""build_service(): the ClusterIP Service in front of the pods."""

from __future__ import annotations

import pytest

from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders.common import Owner, common_labels, selector_labels
from qwen_operator.builders.service import build_service


@pytest.mark.parametrize(("owner_name", "service_name"), [("chat", "chat"), ("vllm", "vllm-api")])
def test_service(owner_name: str, service_name: str) -> None:
    owner = Owner(name=owner_name, namespace="team-a", uid="u1")
    svc = build_service(owner, QwenInferenceSpec())
    assert svc["apiVersion"] == "v1" and svc["kind"] == "Service"
    assert svc["metadata"]["name"] == service_name
    assert svc["metadata"]["namespace"] == "team-a"
    assert svc["metadata"]["labels"] == common_labels(owner)
    assert svc["metadata"]["ownerReferences"][0]["uid"] == "u1"
    assert svc["spec"] == {
        "type": "ClusterIP",
        "selector": selector_labels(owner),
        "ports": [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}],
    }
