"""build_pdb(): a disruption budget only when more than one replica is wanted."""

from __future__ import annotations

from typing import Any

import pytest

from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders.common import Owner, common_labels, selector_labels
from qwen_operator.builders.pdb import build_pdb

OWNER = Owner(name="chat", namespace="team-a", uid="u1")


@pytest.mark.parametrize(
    ("fields", "wanted"),
    [
        ({}, False),
        ({"replicas": 0}, False),
        ({"replicas": 1}, False),
        ({"replicas": 2}, True),
        ({"replicas": 1, "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4}}, True),
        ({"replicas": 3, "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 1}}, False),
        ({"replicas": 3, "autoscaling": {"enabled": False, "maxReplicas": 1}}, True),
    ],
)
def test_pdb(fields: dict[str, Any], wanted: bool) -> None:
    pdb = build_pdb(OWNER, QwenInferenceSpec.model_validate(fields))
    if not wanted:
        assert pdb is None
        return
    assert pdb is not None
    assert pdb["apiVersion"] == "policy/v1" and pdb["kind"] == "PodDisruptionBudget"
    assert pdb["metadata"]["name"] == "chat"
    assert pdb["metadata"]["labels"] == common_labels(OWNER)
    assert pdb["metadata"]["ownerReferences"][0]["uid"] == "u1"
    # AlwaysAllow: pods still loading their model (not Ready) never block a node drain.
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(OWNER)}, "unhealthyPodEvictionPolicy": "AlwaysAllow"}
