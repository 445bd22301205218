"""The HorizontalPodAutoscaler that scales an instance on vLLM queue depth. Pure: no I/O.

The metric is vLLM's per-pod gauge vllm:num_requests_waiting, which the custom metrics API serves
as `vllm_num_requests_waiting` (prometheus-adapter renames it: deploy/prometheus-adapter/).
"""

from __future__ import annotations

from typing import Any

from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders.common import Owner, metadata

QUEUE_DEPTH_METRIC = "vllm_num_requests_waiting"
# Scale up fast: no stabilisation, and each 15 s add up to 4 pods or double, whichever is more.
SCALE_UP_PERIOD_SECONDS = 15
SCALE_UP_MAX_PODS = 4
SCALE_UP_MAX_PERCENT = 100
# Scale down slowly: after the spec's stabilisation window, remove at most one pod a minute.
SCALE_DOWN_MAX_PODS = 1
SCALE_DOWN_PERIOD_SECONDS = 60


def scales_to_zero(spec: QwenInferenceSpec) -> bool:
    """Autoscaling with minReplicas 0: spec.replicas (the scale subresource) says awake (>= 1) or asleep (0)."""
    return spec.autoscaling.enabled and spec.autoscaling.min_replicas == 0


def asleep(spec: QwenInferenceSpec) -> bool:
    """Scaled to zero: no HPA (it cannot go below 1), and the operator holds the Deployment at 0 replicas."""
    return scales_to_zero(spec) and spec.replicas == 0


def build_hpa(owner: Owner, spec: QwenInferenceSpec) -> dict[str, Any] | None:
    """An autoscaling/v2 HPA on the instance's Deployment, or None when autoscaling is off or the instance sleeps
    at zero. The HPA's minReplicas is at least 1 (its own floor); below that the operator scales to zero."""
    autoscaling = spec.autoscaling
    if not autoscaling.enabled or asleep(spec):
        return None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(owner),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": owner.name},
            "minReplicas": max(1, autoscaling.min_replicas),
            "maxReplicas": autoscaling.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": QUEUE_DEPTH_METRIC},
                        "target": {"type": "AverageValue", "averageValue": str(autoscaling.queue_depth_per_replica)},
                    },
                }
            ],
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "selectPolicy": "Max",
                    "policies": [
                        {"type": "Pods", "value": SCALE_UP_MAX_PODS, "periodSeconds": SCALE_UP_PERIOD_SECONDS},
                        {"type": "Percent", "value": SCALE_UP_MAX_PERCENT, "periodSeconds": SCALE_UP_PERIOD_SECONDS},
                    ],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": autoscaling.scale_down_stabilization_seconds,
                    "selectPolicy": "Max",
                    "policies": [
                        {"type": "Pods", "value": SCALE_DOWN_MAX_PODS, "periodSeconds": SCALE_DOWN_PERIOD_SECONDS},
                    ],
                },
            },
        },
    }
