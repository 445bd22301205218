"""The prometheus-adapter rule that serves vLLM's queue depth to the HPA, in all the places it ships.

deploy/prometheus-adapter/values.yaml (the adapter's Helm chart, rules.custom),
deploy/prometheus-adapter/config.yaml (the adapter's --config file) and the operator chart's
prometheusAdapter.rules must hold the same rule, and that rule must produce exactly the metric
name the HPA asks for. (The end-to-end test runs the real adapter with config.yaml.)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders.autoscaling import build_hpa
from qwen_operator.builders.common import Owner

REPO = Path(__file__).resolve().parents[2]
ADAPTER_DIR = REPO / "deploy" / "prometheus-adapter"
CHART_VALUES = REPO / "charts" / "qwen-operator" / "values.yaml"
EXPECTED_RULE = {
    "seriesQuery": '{__name__=~"^vllm:num_requests_waiting$",namespace!="",pod!=""}',
    "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
    "name": {"matches": "^vllm:(.*)$", "as": "vllm_${1}"},
    "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
}


def helm_values_rules() -> list[dict[str, Any]]:
    values = yaml.safe_load((ADAPTER_DIR / "values.yaml").read_text())
    assert values["rules"]["default"] is False, "the chart's default rules would expose every container metric"
    return values["rules"]["custom"]


def adapter_config_rules() -> list[dict[str, Any]]:
    return yaml.safe_load((ADAPTER_DIR / "config.yaml").read_text())["rules"]


def operator_chart_rules() -> list[dict[str, Any]]:
    return yaml.safe_load(CHART_VALUES.read_text())["prometheusAdapter"]["rules"]


@pytest.mark.parametrize("load", [helm_values_rules, adapter_config_rules, operator_chart_rules])
def test_each_copy_holds_exactly_the_queue_depth_rule(load: Any) -> None:
    assert load() == [EXPECTED_RULE]


def custom_metric_name(rule: dict[str, Any], series_name: str) -> str | None:
    """What the adapter names a series: the name.matches regex, rewritten with name.as.

    Go's regexp and Python's re agree on this pattern; ${1} is Go's group reference.
    """
    match = re.search(rule["name"]["matches"], series_name)
    if match is None:
        return None
    return re.sub(r"\$\{(\d+)\}", lambda ref: match.group(int(ref.group(1))), rule["name"]["as"])


def selected_metric_names(rule: dict[str, Any]) -> str:
    (pattern,) = re.findall(r'__name__=~"([^"]+)"', rule["seriesQuery"])
    return pattern


def test_the_rule_renames_vllm_queue_depth_to_the_hpa_metric() -> None:
    (rule,) = adapter_config_rules()
    hpa = build_hpa(Owner(name="chat", namespace="team-a", uid="u"), QwenInferenceSpec.model_validate({"autoscaling": {"enabled": True}}))
    assert hpa is not None
    hpa_metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert custom_metric_name(rule, "vllm:num_requests_waiting") == hpa_metric == "vllm_num_requests_waiting"


@pytest.mark.parametrize(
    ("series", "selected"),
    [
        ("vllm:num_requests_waiting", True),
        ("vllm:num_requests_running", False),
        ("vllm:num_requests_waiting_total", False),
        ("num_requests_waiting", False),
    ],
)
def test_the_series_query_selects_only_the_queue_gauge(series: str, selected: bool) -> None:
    (rule,) = adapter_config_rules()
    assert bool(re.fullmatch(selected_metric_names(rule), series)) is selected


def test_the_rule_maps_namespace_and_pod_labels_for_a_pods_metric() -> None:
    (rule,) = adapter_config_rules()
    assert 'namespace!=""' in rule["seriesQuery"] and 'pod!=""' in rule["seriesQuery"]
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    # Grouped by the pods the HPA asks about, so each pod gets its own value.
    assert "by (<<.GroupBy>>)" in rule["metricsQuery"]
