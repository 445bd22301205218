"""The PodDisruptionBudget: voluntary evictions (node drains) take one replica at a time."""

from __future__ import annotations

from typing import Any

from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders import common
from qwen_operator.builders.common import Owner


def wants_pdb(spec: QwenInferenceSpec) -> bool:
    # With one replica, maxUnavailable 1 protects nothing, and a budget that allows no
    # eviction would block node drains forever.
    if spec.autoscaling.enabled:
        return spec.autoscaling.max_replicas > 1
    return spec.replicas > 1


def build_pdb(owner: Owner, spec: QwenInferenceSpec) -> dict[str, Any] | None:
    if not wants_pdb(spec):
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": common.metadata(owner),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": common.selector_labels(owner)},
            # A pod still loading its model (or crash looping) is not Ready, and serves nothing: with the
            # default IfHealthyBudget it would count against the budget and block node drains.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
