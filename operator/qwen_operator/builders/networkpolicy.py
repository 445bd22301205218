"""The NetworkPolicies: only the allowed peers and the monitoring namespace reach port 8000.

With the router on (spec.router), the allowed peers reach the router pods, and the engine pods accept only the
router and the monitoring namespace: nothing reaches vLLM around the router."""

from __future__ import annotations

from typing import Any

from qwen_operator.api.models import LabelSelectorPeer, QwenInferenceSpec
from qwen_operator.builders import common
from qwen_operator.builders.common import API_PORT, Owner
from qwen_operator.builders.router import METRICS_PORT, router_enabled, router_name, router_selector_labels

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
    if router_enabled(spec):
        clients = [{"podSelector": {"matchLabels": router_selector_labels(owner)}}]
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


def build_router_network_policy(owner: Owner, spec: QwenInferenceSpec) -> dict[str, Any] | None:
    """The router pods: the allowed peers on the API port, the monitoring namespace on the metrics port."""
    policy = spec.network_policy
    if not policy.enabled or not router_enabled(spec):
        return None
    clients = [_peer(p) for p in policy.allow_from] or [{"podSelector": {}}]
    scrapers = [{"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: policy.monitoring_namespace}}}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": common.metadata(owner, name=router_name(owner), labels={"app.kubernetes.io/component": "router"}),
        "spec": {
            "podSelector": {"matchLabels": router_selector_labels(owner)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": clients, "ports": [{"port": API_PORT, "protocol": "TCP"}]},
                {"from": scrapers, "ports": [{"port": METRICS_PORT, "protocol": "TCP"}]},
            ],
        },
    }
