"""Names, labels and owner references shared by every builder. Pure: no I/O, no globals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qwen_operator.api.models import API_VERSION, KIND

MANAGED_BY = "qwen-operator"
API_PORT = 8000
API_PORT_NAME = "http"


@dataclass(frozen=True)
class Owner:
    """The QwenInference that children are built for: what a builder needs of its metadata."""

    name: str
    namespace: str
    uid: str
    generation: int = 1


def selector_labels(owner: Owner) -> dict[str, str]:
    """Labels that select this instance's pods. Never change them: Deployment selectors are immutable."""
    return {"app.kubernetes.io/name": "qwen-inference", "app.kubernetes.io/instance": owner.name}


def common_labels(owner: Owner) -> dict[str, str]:
    return {**selector_labels(owner), "app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/component": "inference"}


def selector_string(owner: Owner) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(owner).items())


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(owner: Owner, name: str | None = None, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """metadata for a namespaced child: common labels and the controller owner reference."""
    meta: dict[str, Any] = {
        "name": name or owner.name,
        "namespace": owner.namespace,
        "labels": {**common_labels(owner), **(labels or {})},
        "ownerReferences": [owner_reference(owner)],
    }
    if annotations:
        meta["annotations"] = annotations
    return meta


def service_name(owner: Owner) -> str:
    # Never "vllm": Kubernetes would inject VLLM_PORT into pods and confuse vLLM. The operator
    # also sets enableServiceLinks: false, so this is belt and braces.
    return owner.name if owner.name != "vllm" else "vllm-api"


def cache_claim_name(owner: Owner) -> str:
    return f"{owner.name}-model-cache"


def endpoint_url(owner: Owner) -> str:
    return f"http://{service_name(owner)}.{owner.namespace}.svc:{API_PORT}/v1"
