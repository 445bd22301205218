"""Scale to zero (autoscaling.minReplicas 0), the operator's pure side: the idle verdict from the gateway's stamp,
no HPA and 0 replicas while asleep, an HPA floor of 1 while awake."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders.common import Owner
from qwen_operator.catalog import resolve_model
from qwen_operator.config import OperatorConfig
from qwen_operator.reconcile import ACTIVITY_ANNOTATION, Capabilities, desired_children, idle_verdict

OWNER = Owner(name="chat", namespace="team-a", uid="uid-1", generation=3)
NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()


def spec(replicas: int = 1, min_replicas: int = 0, after: int = 60, enabled: bool = True) -> QwenInferenceSpec:
    return QwenInferenceSpec.model_validate({"replicas": replicas, "router": {"enabled": False}, "autoscaling": {
        "enabled": enabled, "minReplicas": min_replicas, "maxReplicas": 4, "scaleToZeroAfterSeconds": after}})


def children(s: QwenInferenceSpec) -> dict[str, dict]:
    return {c["kind"]: c for c in desired_children(OWNER, s, resolve_model(s), OperatorConfig(), Capabilities())}


def meta(stamp: str | None, created: str = "2026-01-01T00:00:00Z") -> dict:
    return {"creationTimestamp": created, "annotations": {ACTIVITY_ANNOTATION: stamp} if stamp else {}}


def test_idle_verdict_from_the_gateways_stamp():
    assert idle_verdict(spec(), meta("2026-01-01T11:59:30Z"), NOW) == (False, 31.0, "")  # 30 s idle of 60: judged again in 31 s
    sleep, recheck, reason = idle_verdict(spec(), meta("2026-01-01T11:58:59Z"), NOW)
    assert sleep and recheck is None and reason == "no request through the gateway for 61 s (scaleToZeroAfterSeconds 60)"
    # Never stamped: idle since its creation.
    assert idle_verdict(spec(), meta(None, created="2026-01-01T11:59:50Z"), NOW)[:2] == (False, 51.0)
    assert idle_verdict(spec(), meta(None), NOW)[0]
    # Not a scale-to-zero instance, already asleep, or a stamp that is not a time: nothing to judge.
    assert idle_verdict(spec(min_replicas=1), meta(None), NOW) == (False, None, "")
    assert idle_verdict(spec(enabled=False), meta(None), NOW) == (False, None, "")
    assert idle_verdict(spec(replicas=0), meta(None), NOW) == (False, None, "")
    assert idle_verdict(spec(), meta("yesterday"), NOW) == (False, None, "")


def test_asleep_means_no_hpa_and_zero_replicas_awake_an_hpa_from_one():
    awake = children(spec(replicas=1))
    assert awake["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 1  # the HPA's own floor
    assert "replicas" not in awake["Deployment"]["spec"]  # the HPA holds them
    asleep = children(spec(replicas=0))
    assert "HorizontalPodAutoscaler" not in asleep
    assert asleep["Deployment"]["spec"]["replicas"] == 0
    # minReplicas 1 and up: unchanged, whatever spec.replicas says.
    plain = children(spec(replicas=0, min_replicas=2))
    assert plain["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 2 and "replicas" not in plain["Deployment"]["spec"]


def test_min_replicas_zero_is_valid_and_the_delay_bounded():
    assert spec().autoscaling.min_replicas == 0
    assert QwenInferenceSpec().autoscaling.scale_to_zero_after_seconds == 900
    with pytest.raises(ValidationError):
        spec(after=5)
