"""The PrometheusRule's alerts, checked by promtool itself.

The rules are rendered for a sample instance (team-a/chat serving qwen3-0.6b-fp8), written as a
Prometheus rules file, validated with `promtool check rules`, and exercised with `promtool test
rules` on the synthetic series in tests/unit/promtool/*.yaml. Each fixture names `rules.yaml`; the
test writes the rendered rules under that name next to a copy of the fixture.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders.common import Owner
from qwen_operator.builders.monitoring import RUNBOOK_BASE_URL, build_prometheus_rule, prometheus_duration

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "promtool"
OWNER = Owner(name="chat", namespace="team-a", uid="5f1c7a1e-0000-4000-8000-000000000001")
SERVED_NAME = "qwen3-0.6b-fp8"
DEFAULT_SPEC = QwenInferenceSpec()
DEFAULT_BUDGET = 600
CUSTOM_SPEC = QwenInferenceSpec.model_validate(
    {
        "monitoring": {
            "alerts": {
                "errorRatio": 0.5,
                "timeToFirstTokenP95Seconds": 10,
                "interTokenLatencyP95Seconds": 0.5,
                "queueDepth": 5,
                "queueDuration": "2m",
                "preemptionsPerMinute": 5,
            }
        }
    }
)
CUSTOM_BUDGET = 1200
ROUTER_SPEC = QwenInferenceSpec(replicas=2)  # spec.router on by default: its alert is rendered too
ROUTER_ALERT = "QwenInferenceRouterNoHealthyEngine"
ALERT_NAMES = {
    "QwenInferenceDown",
    "QwenInferenceModelNotLoaded",
    "QwenInferenceHighErrorRate",
    "QwenInferenceHighTimeToFirstToken",
    "QwenInferenceHighInterTokenLatency",
    "QwenInferenceQueueGrowing",
    "QwenInferencePreempting",
    "QwenInferenceCrashLooping",
}


def rules_file_content(spec: QwenInferenceSpec, budget: int, annotations: bool) -> dict[str, Any]:
    groups = build_prometheus_rule(OWNER, spec, SERVED_NAME, budget)["spec"]["groups"]
    if not annotations:
        # promtool compares annotations exactly; the behaviour fixtures check labels and timing
        # only, and annotations.yaml checks the rendered annotations.
        for group in groups:
            for rule in group["rules"]:
                rule.pop("annotations")
    return {"groups": groups}


def run_promtool_test(promtool: str, tmp_path: Path, fixture: str, spec: QwenInferenceSpec, budget: int, annotations: bool = False) -> subprocess.CompletedProcess[str]:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules_file_content(spec, budget, annotations), sort_keys=False))
    shutil.copy(FIXTURES / fixture, tmp_path / fixture)
    return subprocess.run(
        [promtool, "test", "rules", fixture], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )


def failed_alertnames(output: str) -> set[str]:
    return set(re.findall(r"alertname: (\w+), time:", output))


@pytest.mark.parametrize(("spec", "budget"), [(DEFAULT_SPEC, DEFAULT_BUDGET), (CUSTOM_SPEC, CUSTOM_BUDGET)], ids=["default", "custom"])
def test_promtool_check_rules_accepts_the_rendered_rules(promtool: str, tmp_path: Path, spec: QwenInferenceSpec, budget: int) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rules_file_content(spec, budget, annotations=True), sort_keys=False))
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in result.stdout


# Fixture -> the alerts whose outcome it checks with the default thresholds.
DEFAULT_FIXTURES = {
    "queue.yaml": {"QwenInferenceQueueGrowing"},
    "error_rate.yaml": {"QwenInferenceHighErrorRate"},
    "preemptions.yaml": {"QwenInferencePreempting"},
    "latency.yaml": {"QwenInferenceHighInterTokenLatency", "QwenInferenceHighTimeToFirstToken"},
    "down.yaml": {"QwenInferenceDown"},
    "model_not_loaded.yaml": {"QwenInferenceModelNotLoaded"},
    "crash_looping.yaml": {"QwenInferenceCrashLooping"},
}


@pytest.mark.parametrize("fixture", sorted(DEFAULT_FIXTURES))
def test_alerts_fire_as_the_fixture_expects_with_default_thresholds(promtool: str, tmp_path: Path, fixture: str) -> None:
    result = run_promtool_test(promtool, tmp_path, fixture, DEFAULT_SPEC, DEFAULT_BUDGET)
    assert result.returncode == 0, result.stdout + result.stderr


# Fixtures written for the default thresholds that the custom thresholds must contradict: the same
# series, a different outcome, for exactly these alerts. (Crash looping has no threshold.)
@pytest.mark.parametrize(
    "fixture", sorted(name for name in DEFAULT_FIXTURES if name != "crash_looping.yaml")
)
def test_custom_thresholds_flip_the_default_outcomes(promtool: str, tmp_path: Path, fixture: str) -> None:
    result = run_promtool_test(promtool, tmp_path, fixture, CUSTOM_SPEC, CUSTOM_BUDGET)
    assert result.returncode != 0, "the custom thresholds changed nothing:\n" + result.stdout + result.stderr
    assert failed_alertnames(result.stdout + result.stderr) == DEFAULT_FIXTURES[fixture], result.stdout + result.stderr


def test_custom_thresholds_give_the_outcomes_written_for_them(promtool: str, tmp_path: Path) -> None:
    result = run_promtool_test(promtool, tmp_path, "custom_thresholds.yaml", CUSTOM_SPEC, CUSTOM_BUDGET)
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_thresholds_contradict_the_custom_outcomes(promtool: str, tmp_path: Path) -> None:
    result = run_promtool_test(promtool, tmp_path, "custom_thresholds.yaml", DEFAULT_SPEC, DEFAULT_BUDGET)
    assert result.returncode != 0
    assert failed_alertnames(result.stdout + result.stderr) == {
        "QwenInferenceQueueGrowing",
        "QwenInferenceHighErrorRate",
        "QwenInferencePreempting",
        "QwenInferenceHighInterTokenLatency",
        "QwenInferenceHighTimeToFirstToken",
        "QwenInferenceModelNotLoaded",
        "QwenInferenceDown",
    }, result.stdout


def test_annotations_render_with_labels_values_and_runbook(promtool: str, tmp_path: Path) -> None:
    result = run_promtool_test(promtool, tmp_path, "annotations.yaml", DEFAULT_SPEC, DEFAULT_BUDGET, annotations=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_router_alert_fires_as_the_fixture_expects(promtool: str, tmp_path: Path) -> None:
    result = run_promtool_test(promtool, tmp_path, "router.yaml", ROUTER_SPEC, DEFAULT_BUDGET)
    assert result.returncode == 0, result.stdout + result.stderr
    # Without the router the rule is not rendered, so the fixture's firing cases fail.
    without = run_promtool_test(promtool, tmp_path, "router.yaml", DEFAULT_SPEC, DEFAULT_BUDGET)
    assert without.returncode != 0 and failed_alertnames(without.stdout + without.stderr) == {ROUTER_ALERT}


def test_every_alert_has_severity_summary_description_and_a_runbook_section() -> None:
    rules = build_prometheus_rule(OWNER, ROUTER_SPEC, SERVED_NAME, DEFAULT_BUDGET)["spec"]["groups"][0]["rules"]
    assert {rule["alert"] for rule in rules} == ALERT_NAMES | {ROUTER_ALERT}
    runbook_headings = re.findall(r"^## (\w+)$", (REPO / "docs" / "runbooks.md").read_text(), flags=re.MULTILINE)
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["labels"]["model"] == SERVED_NAME
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        anchor = rule["annotations"]["runbook_url"].removeprefix(RUNBOOK_BASE_URL + "#")
        # GitHub's anchor for "## QwenInferenceDown" is "#qweninferencedown".
        assert anchor in {heading.lower() for heading in runbook_headings}, rule["alert"]


def test_prometheus_rule_shape() -> None:
    rule = build_prometheus_rule(OWNER, DEFAULT_SPEC, SERVED_NAME, DEFAULT_BUDGET)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["namespace"] == "team-a"
    assert rule["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    assert [group["name"] for group in rule["spec"]["groups"]] == ["qwen-inference.team-a.chat"]


def test_startup_budget_sets_the_model_not_loaded_wait() -> None:
    rules = build_prometheus_rule(OWNER, DEFAULT_SPEC, SERVED_NAME, 1500)["spec"]["groups"][0]["rules"]
    (not_loaded,) = [rule for rule in rules if rule["alert"] == "QwenInferenceModelNotLoaded"]
    assert not_loaded["for"] == "25m"


@pytest.mark.parametrize(("seconds", "expected"), [(600, "10m"), (90, "90s"), (3600, "1h"), (5400, "90m"), (45, "45s")])
def test_prometheus_duration(seconds: int, expected: str) -> None:
    assert prometheus_duration(seconds) == expected


def test_no_alert_on_end_to_end_latency_or_a_full_kv_cache() -> None:
    # Long reasoning is healthy and vLLM fills its KV cache on purpose: neither may page anyone.
    rules = build_prometheus_rule(OWNER, DEFAULT_SPEC, SERVED_NAME, DEFAULT_BUDGET)["spec"]["groups"][0]["rules"]
    for rule in rules:
        assert "e2e_request_latency" not in rule["expr"] and "kv_cache_usage" not in rule["expr"], rule["alert"]


def test_deprecated_thresholds_are_accepted_and_ignored() -> None:
    # Objects stored before the change still carry latencyP95Seconds and kvCacheUsage (the old CRD defaulted them).
    old = QwenInferenceSpec.model_validate({"monitoring": {"alerts": {"latencyP95Seconds": 30, "kvCacheUsage": 0.95}}})
    assert build_prometheus_rule(OWNER, old, SERVED_NAME, DEFAULT_BUDGET) == build_prometheus_rule(OWNER, DEFAULT_SPEC, SERVED_NAME, DEFAULT_BUDGET)


def test_every_alert_has_a_firing_and_a_not_firing_case_in_the_fixtures() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for fixture in FIXTURES.glob("*.yaml"):
        for case in yaml.safe_load(fixture.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing >= ALERT_NAMES | {ROUTER_ALERT}, ALERT_NAMES - firing
    assert quiet >= ALERT_NAMES | {ROUTER_ALERT}, ALERT_NAMES - quiet
