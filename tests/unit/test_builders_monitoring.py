"""Shapes of the ServiceMonitor and the queue-depth HPA."""

from __future__ import annotations

from typing import Any

import pytest

from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders.autoscaling import build_hpa
from qwen_operator.builders.common import Owner, selector_labels
from qwen_operator.builders.monitoring import build_service_monitor
from qwen_operator.builders.service import build_service

OWNER = Owner(name="chat", namespace="team-a", uid="5f1c7a1e-0000-4000-8000-000000000001")


def spec(**fields: Any) -> QwenInferenceSpec:
    return QwenInferenceSpec.model_validate(fields)


def test_service_monitor_selects_the_instance_service() -> None:
    monitor = build_service_monitor(OWNER, spec())
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    assert monitor["metadata"]["name"] == "chat"
    assert monitor["metadata"]["namespace"] == "team-a"
    assert monitor["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}
    # It selects the instance's Service, which selects the vLLM pods (the router is off for one replica).
    wanted = monitor["spec"]["selector"]["matchLabels"]
    service = build_service(OWNER, spec())
    assert wanted.items() <= service["metadata"]["labels"].items()
    assert service["spec"]["selector"] == selector_labels(OWNER)


@pytest.mark.parametrize(
    ("monitoring", "interval"),
    [({}, "15s"), ({"interval": "30s"}, "30s"), ({"interval": "1m"}, "1m")],
)
def test_service_monitor_endpoint(monitoring: dict[str, Any], interval: str) -> None:
    (endpoint,) = build_service_monitor(OWNER, spec(monitoring=monitoring))["spec"]["endpoints"]
    assert endpoint == {"port": "http", "path": "/metrics", "scheme": "http", "interval": interval}


@pytest.mark.parametrize(
    "autoscaling",
    [{}, {"enabled": False, "minReplicas": 2, "maxReplicas": 4}],
    ids=["default", "explicitly-disabled"],
)
def test_no_hpa_when_autoscaling_is_disabled(autoscaling: dict[str, Any]) -> None:
    assert build_hpa(OWNER, spec(autoscaling=autoscaling)) is None


@pytest.mark.parametrize(
    ("autoscaling", "min_replicas", "max_replicas", "average_value", "scale_down_window"),
    [
        ({"enabled": True}, 1, 8, "5", 300),
        ({"enabled": True, "minReplicas": 2, "maxReplicas": 10, "queueDepthPerReplica": 12}, 2, 10, "12", 300),
        ({"enabled": True, "minReplicas": 3, "maxReplicas": 3, "scaleDownStabilizationSeconds": 0}, 3, 3, "5", 0),
        ({"enabled": True, "queueDepthPerReplica": 1, "scaleDownStabilizationSeconds": 900}, 1, 8, "1", 900),
    ],
)
def test_hpa_shape(autoscaling: dict[str, Any], min_replicas: int, max_replicas: int, average_value: str, scale_down_window: int) -> None:
    hpa = build_hpa(OWNER, spec(autoscaling=autoscaling))
    assert hpa is not None
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["kind"] == "HorizontalPodAutoscaler"
    assert hpa["metadata"]["name"] == "chat"
    assert hpa["metadata"]["namespace"] == "team-a"
    assert hpa["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    hpa_spec = hpa["spec"]
    assert hpa_spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat"}
    assert (hpa_spec["minReplicas"], hpa_spec["maxReplicas"]) == (min_replicas, max_replicas)
    assert hpa_spec["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "vllm_num_requests_waiting"},
                "target": {"type": "AverageValue", "averageValue": average_value},
            },
        }
    ]
    assert hpa_spec["behavior"] == {
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "selectPolicy": "Max",
            "policies": [
                {"type": "Pods", "value": 4, "periodSeconds": 15},
                {"type": "Percent", "value": 100, "periodSeconds": 15},
            ],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": scale_down_window,
            "selectPolicy": "Max",
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
        },
    }


def test_hpa_average_value_is_a_quantity_string() -> None:
    # The API wants a resource.Quantity: a string, never an int.
    hpa = build_hpa(OWNER, spec(autoscaling={"enabled": True, "queueDepthPerReplica": 40}))
    assert hpa is not None
    assert isinstance(hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"], str)


def test_monitoring_objects_carry_extra_labels_from_the_spec_and_the_operator() -> None:
    from qwen_operator.builders.common import common_labels
    from qwen_operator.builders.monitoring import build_prometheus_rule, build_service_monitor

    owner = Owner(name="chat", namespace="team-a", uid="u1")
    spec = QwenInferenceSpec.model_validate({"monitoring": {"labels": {"team": "ml", "release": "team-prom",
                                                                        "app.kubernetes.io/instance": "hijack"}}})
    defaults = {"release": "kube-prometheus-stack", "tier": "gpu"}
    for built in (build_service_monitor(owner, spec, defaults), build_prometheus_rule(owner, spec, "m", 600, defaults)):
        labels = built["metadata"]["labels"]
        # The spec wins over the operator's defaults; neither replaces the labels that select the children.
        assert labels["release"] == "team-prom" and labels["tier"] == "gpu" and labels["team"] == "ml"
        assert {k: labels[k] for k in common_labels(owner)} == common_labels(owner)
    plain = build_service_monitor(owner, QwenInferenceSpec(), defaults)["metadata"]["labels"]
    assert plain["release"] == "kube-prometheus-stack"
