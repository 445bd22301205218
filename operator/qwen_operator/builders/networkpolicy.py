"""The NetworkPolicy: only the allowed peers and the monitoring namespace reach port 8000."""

from __future__ import annotations

from typing import Any

from qwen_operator.api.models import LabelSelectorPeer, QwenInferenceSpec
from qwen_operator.builders import common
from qwen_operator.builders.common import API_PORT, Owner

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def _selector(match_labels: dict[str, str]) -> dict[str, Any]:
    # An empty selector selects everything (all namespaces, or all pods).
    return {"matchLabels": dict(match_labels)} if match_labels else {}


def _peer(peer: LabelSelectorPeer) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if peer.namespace_selector is not None:
        result["namespaceSelector"] = _selector(peer.namespace_selector)
    if peer.pod_selector is not None:
        result["podSelector"] = _selector(peer.pod_selector)
    # A peer with neither selector means every pod of this namespace, not "anyone".
    return result or {"podSelector": {}}


def build_network_policy(owner: Owner, spec: QwenInferenceSpec) -> dict[str, Any] | None:
    policy = spec.network_policy
    if not policy.enabled:
        return None
    api_port = [{"port": API_PORT, "protocol": "TCP"}]
    clients = [_peer(p) for p in policy.allow_from] or [{"podSelector": {}}]
    # vLLM serves /metrics on the API port, so the scraper needs that port too.
    scrapers = [{"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: policy.monitoring_namespace}}}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": common.metadata(owner),
        "spec": {
            "podSelector": {"matchLabels": common.selector_labels(owner)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": clients, "ports": api_port}, {"from": scrapers, "ports": api_port}],
        },
    }
