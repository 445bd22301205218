"""build_cache_pvc(): the shared model cache claim, only when the operator should own one."""

from __future__ import annotations

from typing import Any

import pytest

from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders.common import Owner, common_labels
from qwen_operator.builders.storage import build_cache_pvc

OWNER = Owner(name="chat", namespace="team-a", uid="u1")


def spec_with(source: dict[str, Any]) -> QwenInferenceSpec:
    return QwenInferenceSpec.model_validate({"model": {"source": source}})


@pytest.mark.parametrize(
    "source",
    [
        {"cache": {"enabled": False}},
        {"cache": {"existingClaim": "shared"}},
        {"pvc": {"claimName": "weights", "path": "m"}},
        {"bakedIntoImage": True},
    ],
)
def test_no_claim(source: dict[str, Any]) -> None:
    assert build_cache_pvc(OWNER, spec_with(source)) is None


@pytest.mark.parametrize(
    ("cache", "expected_spec"),
    [
        # One replica: ReadWriteOnce, which every default StorageClass offers.
        ({}, {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}}}),
        (
            {"size": "100Gi", "accessMode": "ReadWriteOnce", "storageClassName": "fast"},
            {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "100Gi"}}, "storageClassName": "fast"},
        ),
        # "" asks for no class at all (a pre-provisioned volume), unlike unset (the cluster default).
        ({"storageClassName": ""}, {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}}, "storageClassName": ""}),
    ],
)
def test_claim(cache: dict[str, Any], expected_spec: dict[str, Any]) -> None:
    pvc = build_cache_pvc(OWNER, spec_with({"cache": cache}))
    assert pvc is not None
    assert pvc["apiVersion"] == "v1" and pvc["kind"] == "PersistentVolumeClaim"
    assert pvc["metadata"]["name"] == "chat-model-cache"
    assert pvc["metadata"]["labels"] == common_labels(OWNER)
    assert pvc["metadata"]["ownerReferences"][0]["controller"] is True
    assert pvc["spec"] == expected_spec


@pytest.mark.parametrize(
    ("fields", "live_modes", "mode"),
    [
        ({}, None, "ReadWriteOnce"),
        ({"replicas": 0}, None, "ReadWriteOnce"),
        ({"replicas": 2}, None, "ReadWriteMany"),  # replicas on other nodes cannot mount a ReadWriteOnce volume
        ({"autoscaling": {"enabled": True, "maxReplicas": 4}}, None, "ReadWriteMany"),
        # Made ReadWriteOnce for one replica, then scaled: the claim keeps its (immutable) mode.
        ({"replicas": 3}, ["ReadWriteOnce"], "ReadWriteOnce"),
        ({"replicas": 1}, ["ReadWriteMany"], "ReadWriteMany"),
        # An explicit mode always wins.
        ({"replicas": 3, "model": {"source": {"cache": {"accessMode": "ReadWriteOnce"}}}}, None, "ReadWriteOnce"),
        ({"model": {"source": {"cache": {"accessMode": "ReadWriteMany"}}}}, ["ReadWriteOnce"], "ReadWriteMany"),
    ],
)
def test_default_access_mode(fields: dict[str, Any], live_modes: list[str] | None, mode: str) -> None:
    pvc = build_cache_pvc(OWNER, QwenInferenceSpec.model_validate(fields), live_access_modes=live_modes)
    assert pvc is not None
    assert pvc["spec"]["accessModes"] == [mode]
