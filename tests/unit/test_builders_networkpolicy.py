"""build_network_policy(): ingress to the API port from allowed peers and the monitoring namespace."""

from __future__ import annotations

from typing import Any

import pytest

from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders.common import Owner, common_labels, selector_labels
from qwen_operator.builders.networkpolicy import build_network_policy

OWNER = Owner(name="chat", namespace="team-a", uid="u1")
PORT = [{"port": 8000, "protocol": "TCP"}]


def policy_for(network_policy: dict[str, Any]) -> dict[str, Any] | None:
    return build_network_policy(OWNER, QwenInferenceSpec.model_validate({"networkPolicy": network_policy}))


def test_disabled_by_default() -> None:
    assert build_network_policy(OWNER, QwenInferenceSpec()) is None
    assert policy_for({"enabled": False, "allowFrom": [{"podSelector": {"a": "b"}}]}) is None


@pytest.mark.parametrize(
    ("allow_from", "expected_clients"),
    [
        ([], [{"podSelector": {}}]),
        ([{"podSelector": {"app": "web"}}], [{"podSelector": {"matchLabels": {"app": "web"}}}]),
        ([{"namespaceSelector": {"team": "b"}}], [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]),
        (
            [{"namespaceSelector": {"team": "b"}, "podSelector": {"app": "web"}}, {"podSelector": {"app": "cli"}}],
            [
                {"namespaceSelector": {"matchLabels": {"team": "b"}}, "podSelector": {"matchLabels": {"app": "web"}}},
                {"podSelector": {"matchLabels": {"app": "cli"}}},
            ],
        ),
        ([{"namespaceSelector": {}}], [{"namespaceSelector": {}}]),  # every namespace, said explicitly
        ([{}], [{"podSelector": {}}]),  # an empty peer stays inside the namespace
    ],
)
def test_ingress(allow_from: list[dict[str, Any]], expected_clients: list[dict[str, Any]]) -> None:
    policy = policy_for({"enabled": True, "allowFrom": allow_from, "monitoringNamespace": "observability"})
    assert policy is not None
    assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["kind"] == "NetworkPolicy"
    assert policy["metadata"]["name"] == "chat"
    assert policy["metadata"]["labels"] == common_labels(OWNER)
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "u1"
    assert policy["spec"] == {
        "podSelector": {"matchLabels": selector_labels(OWNER)},
        "policyTypes": ["Ingress"],
        "ingress": [
            {"from": expected_clients, "ports": PORT},
            {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}], "ports": PORT},
        ],
    }


def test_default_monitoring_namespace() -> None:
    policy = policy_for({"enabled": True})
    assert policy is not None
    scrape = policy["spec"]["ingress"][1]["from"][0]
    assert scrape == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
