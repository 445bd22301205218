"""The model cache PersistentVolumeClaim the replicas share, so a model downloads once."""

from __future__ import annotations

from typing import Any

from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders import common
from qwen_operator.builders.common import Owner


def build_cache_pvc(owner: Owner, spec: QwenInferenceSpec) -> dict[str, Any] | None:
    """None when no claim is to be created: cache disabled, an existing claim, or a preloaded model."""
    source = spec.model.source
    cache = source.cache
    if not cache.enabled or cache.existing_claim or source.pvc is not None:
        return None
    pvc_spec: dict[str, Any] = {
        "accessModes": [cache.access_mode],
        "resources": {"requests": {"storage": cache.size}},
    }
    if cache.storage_class_name is not None:
        # "" is meaningful (no class: bind a pre-provisioned volume); only None means "cluster default".
        pvc_spec["storageClassName"] = cache.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": common.metadata(owner, name=common.cache_claim_name(owner)),
        "spec": pvc_spec,
    }
