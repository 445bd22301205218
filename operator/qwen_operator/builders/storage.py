"""The model cache PersistentVolumeClaim the replicas share, so a model downloads once."""

from __future__ import annotations

from typing import Any

from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders import common
from qwen_operator.builders.common import Owner


def cache_access_mode(spec: QwenInferenceSpec, live_access_modes: list[str] | None = None) -> str:
    """spec.model.source.cache.accessMode, or when unset: the mode of the claim already made (a PVC's access
    mode is immutable), else ReadWriteOnce for a spec that runs one replica (every default StorageClass
    offers it) and ReadWriteMany for more (replicas on other nodes cannot mount a ReadWriteOnce volume)."""
    if spec.model.source.cache.access_mode is not None:
        return spec.model.source.cache.access_mode
    if live_access_modes:
        return live_access_modes[0]
    single = not spec.autoscaling.enabled and spec.replicas <= 1
    return "ReadWriteOnce" if single else "ReadWriteMany"


def build_cache_pvc(owner: Owner, spec: QwenInferenceSpec, live_access_modes: list[str] | None = None) -> dict[str, Any] | None:
    """None when no claim is to be created: cache disabled, an existing claim, or a model from a PVC or the
    image. live_access_modes: spec.accessModes of the claim as it exists, if it does."""
    source = spec.model.source
    cache = source.cache
    if not cache.enabled or cache.existing_claim or source.pvc is not None or source.baked_into_image:
        return None
    pvc_spec: dict[str, Any] = {
        "accessModes": [cache_access_mode(spec, live_access_modes)],
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
