"""The Grafana dashboard: it parses, has the panels operators expect, and queries only real metrics."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders.common import Owner
from qwen_operator.builders.dashboard import DASHBOARD_TEMPLATE_PATH, build_dashboard, build_dashboard_configmap
from qwen_operator.builders.monitoring import build_alert_rules

REPO = Path(__file__).resolve().parents[2]
OWNER = Owner(name="chat", namespace="team-a", uid="5f1c7a1e-0000-4000-8000-000000000001")
SERVED_NAME = "qwen3-0.6b-fp8"

# Every metric a panel or an alert may name, with where it comes from. A name that is not here is
# a typo or a metric that no exporter we rely on produces.
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# vLLM V1: vllm/v1/metrics/loggers.py, PrometheusStatLogger (vllm-project/vllm). prometheus_client
# appends _total to counters and _bucket/_sum/_count to histograms when it exposes them.
VLLM_GAUGES = {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"}
VLLM_COUNTERS = {
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",  # label finished_reason: stop | length | abort
    "vllm:num_preemptions_total",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
}
VLLM_HISTOGRAMS = {
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:request_inference_time_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds",
    "vllm:request_prompt_tokens",
    "vllm:request_generation_tokens",
}
# vLLM's OpenAI server: vllm/entrypoints/serve/instrumentator/metrics.py (older releases:
# vllm/entrypoints/openai/api_server.py) runs prometheus-fastapi-instrumentator's default metrics
# (prometheus_fastapi_instrumentator/metrics.py, default()): http_requests_total{method, status,
# handler}, status grouped as 2xx/4xx/5xx.
VLLM_HTTP = {"http_requests_total"}
# kube-state-metrics: docs/metrics/workload/{deployment,pod,horizontalpodautoscaler}-metrics.md.
KUBE_STATE_METRICS = {
    "kube_deployment_spec_replicas",
    "kube_deployment_status_replicas_available",
    "kube_deployment_created",
    "kube_pod_status_ready",
    "kube_pod_status_phase",
    "kube_pod_container_status_restarts_total",
    "kube_pod_container_status_waiting_reason",
    "kube_horizontalpodautoscaler_status_desired_replicas",
}
# NVIDIA dcgm-exporter: etc/default-counters.csv.
DCGM_EXPORTER = {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"}
# Prometheus itself, for every scrape target.
PROMETHEUS = {"up"}
# vllm-router (spec.router), as the pinned 0.1.17 exposes them on its metrics port (src/metrics.rs of
# vllm-project/router; the names are in the wheel's binary too). The histogram is a Prometheus histogram.
VLLM_ROUTER = {
    "vllm_router_active_workers", "vllm_router_worker_health", "vllm_router_processed_requests_total",
    "vllm_router_retries_total", "vllm_router_retries_exhausted_total", "vllm_router_request_errors_total",
    "vllm_router_cache_hits_total", "vllm_router_cache_misses_total",
} | {"vllm_router_request_duration_seconds" + suffix for suffix in HISTOGRAM_SUFFIXES}
KNOWN_METRICS = (
    VLLM_GAUGES
    | VLLM_COUNTERS
    | {name + suffix for name in VLLM_HISTOGRAMS for suffix in HISTOGRAM_SUFFIXES}
    | VLLM_HTTP
    | KUBE_STATE_METRICS
    | DCGM_EXPORTER
    | PROMETHEUS
    | VLLM_ROUTER
)

PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right", "inf", "nan"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range"}


def metric_names(promql: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', promql)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![A-Za-z0-9_:.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        token = match.group(0)
        is_function = text[match.end():].lstrip().startswith("(")
        if not is_function and token.lower() not in PROMQL_KEYWORDS:
            names.add(token)
    return names


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


# One replica (no router) and two (the router, with its panels).
SPECS = [QwenInferenceSpec(), QwenInferenceSpec(replicas=2)]


@pytest.fixture(scope="module", params=SPECS, ids=["engines", "with-router"])
def dashboard(request: pytest.FixtureRequest) -> dict:
    return build_dashboard(OWNER, request.param, SERVED_NAME)


@pytest.mark.parametrize(
    ("promql", "expected"),
    [
        ("up", {"up"}),
        ('sum by (le) (rate(vllm:e2e_request_latency_seconds_bucket{namespace="$namespace"}[$__rate_interval]))', {"vllm:e2e_request_latency_seconds_bucket"}),
        ('histogram_quantile(0.95, sum(rate(a_bucket{handler=~"/v1/.+", x="rate(b)"}[5m])) by (le)) > 30.0', {"a_bucket"}),
        ("sum(x_total) / on() group_left(pod) y offset 5m > bool 1e3", {"x_total", "y"}),
        ("(sum(up{a=\"b\"}) or vector(0)) == 0 unless on() (time() - kube_deployment_created < 600)", {"up", "kube_deployment_created"}),
        ("max_over_time(DCGM_FI_DEV_GPU_UTIL[5m:1m])", {"DCGM_FI_DEV_GPU_UTIL"}),
    ],
)
def test_metric_name_parser(promql: str, expected: set[str]) -> None:
    assert metric_names(promql) == expected


def test_metric_name_check_catches_an_unknown_metric() -> None:
    query = 'sum by (pod) (rate(vllm:request_failure_total{namespace="$namespace"}[$__rate_interval])) / sum(vllm:num_requests_waiting)'
    assert metric_names(query) - KNOWN_METRICS == {"vllm:request_failure_total"}
    # The V0 name that V1 renamed is not accepted either.
    assert metric_names("vllm:gpu_cache_usage_perc > 0.9") - KNOWN_METRICS == {"vllm:gpu_cache_usage_perc"}


def test_the_data_file_is_valid_json_with_panels() -> None:
    template = json.loads(DASHBOARD_TEMPLATE_PATH.read_text())
    assert template["panels"], "the dashboard has no panels"
    assert {variable["name"] for variable in template["templating"]["list"]} >= {"datasource", "namespace", "service", "deployment"}


# Each required panel, and a metric its queries must use.
REQUIRED_PANELS = {
    "Request rate": "http_requests_total",
    "Error rate": "http_requests_total",
    "End-to-end latency (p50, p95)": "vllm:e2e_request_latency_seconds_bucket",
    "Time to first token (p50, p95)": "vllm:time_to_first_token_seconds_bucket",
    "Tokens per second": "vllm:generation_tokens_total",
    "Queue depth (waiting requests)": "vllm:num_requests_waiting",
    "Running requests": "vllm:num_requests_running",
    "KV cache usage": "vllm:kv_cache_usage_perc",
    "Replicas": "kube_deployment_status_replicas_available",
    "GPU utilisation": "DCGM_FI_DEV_GPU_UTIL",
}


@pytest.mark.parametrize(("title", "metric"), sorted(REQUIRED_PANELS.items()))
def test_dashboard_has_the_panel(dashboard: dict, title: str, metric: str) -> None:
    panels = [panel for panel in dashboard["panels"] if panel["title"] == title]
    assert len(panels) == 1, f"panel {title!r} missing or repeated"
    used = set().union(*(metric_names(target["expr"]) for target in panels[0]["targets"]))
    assert metric in used


@pytest.mark.parametrize("title", ["End-to-end latency (p50, p95)", "Time to first token (p50, p95)"])
def test_latency_panels_show_p50_and_p95(dashboard: dict, title: str) -> None:
    (panel,) = [panel for panel in dashboard["panels"] if panel["title"] == title]
    exprs = [target["expr"] for target in panel["targets"]]
    assert any(expr.startswith("histogram_quantile(0.5,") for expr in exprs)
    assert any(expr.startswith("histogram_quantile(0.95,") for expr in exprs)


def test_every_dashboard_query_names_only_known_metrics(dashboard: dict) -> None:
    for title, expr in dashboard_queries(dashboard):
        names = metric_names(expr)
        assert names, f"{title}: no metric found in {expr}"
        assert names <= KNOWN_METRICS, f"{title}: unknown metrics {names - KNOWN_METRICS}"


@pytest.mark.parametrize("spec", SPECS, ids=["engines", "with-router"])
def test_every_alert_expression_names_only_known_metrics(spec: QwenInferenceSpec) -> None:
    for rule in build_alert_rules(OWNER, spec, SERVED_NAME, 600):
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= KNOWN_METRICS, f"{rule['alert']}: unknown metrics {names - KNOWN_METRICS}"


def test_every_query_is_scoped_to_the_instance_namespace(dashboard: dict) -> None:
    for title, expr in dashboard_queries(dashboard):
        for selector in re.findall(r"\{([^}]*)\}", expr):
            assert 'namespace="$namespace"' in selector, f"{title}: {expr}"


def test_every_variable_a_query_uses_is_defined(dashboard: dict) -> None:
    defined = {variable["name"] for variable in dashboard["templating"]["list"]} | GRAFANA_BUILTINS
    for title, expr in dashboard_queries(dashboard):
        used = set(re.findall(r"\$(\w+)", expr))
        assert used <= defined, f"{title}: undefined {used - defined}"



def test_every_dashboard_query_is_valid_promql(dashboard: dict, promtool: str, tmp_path: Path) -> None:
    # promtool parses rule expressions: wrap each query, with Grafana's variables substituted, in
    # a recording rule.
    values = {"namespace": "team-a", "service": "chat", "deployment": "chat", "model": SERVED_NAME, "__rate_interval": "1m",
              "router_service": "chat"}
    rules = []
    for index, (_, expr) in enumerate(dashboard_queries(dashboard)):
        concrete = re.sub(r"\$(\w+)", lambda match: values[match.group(1)], expr)
        rules.append({"record": f"dashboard:query_{index}", "expr": concrete})
    rules_file = tmp_path / "dashboard-queries.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_configmap_holds_the_instance_dashboard() -> None:
    spec = QwenInferenceSpec.model_validate({"monitoring": {"alerts": {"errorRatio": 0.2, "queueDepth": 7}}})
    configmap = build_dashboard_configmap(OWNER, spec, SERVED_NAME)
    assert configmap["apiVersion"] == "v1" and configmap["kind"] == "ConfigMap"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "team-a"
    assert configmap["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    ((key, text),) = configmap["data"].items()
    assert key == "qwen-inference-team-a-chat.json"
    dashboard = json.loads(text)
    assert 0 < len(dashboard["uid"]) <= 40
    assert dashboard["title"] == "Qwen inference: team-a/chat"
    constants = {variable["name"]: variable["query"] for variable in dashboard["templating"]["list"] if variable["type"] == "constant"}
    assert constants == {"namespace": "team-a", "service": "chat", "deployment": "chat", "model": SERVED_NAME}
    thresholds = {
        panel["title"]: panel["fieldConfig"]["defaults"]["thresholds"]["steps"][-1]["value"]
        for panel in dashboard["panels"]
        if "thresholds" in panel["fieldConfig"]["defaults"]
    }
    assert thresholds["Error rate"] == 0.2
    assert thresholds["Queue depth (waiting requests)"] == 7


def test_dashboard_uid_differs_per_instance() -> None:
    spec = QwenInferenceSpec()
    uids = {
        build_dashboard(Owner(name=name, namespace=namespace, uid="u"), spec, SERVED_NAME)["uid"]
        for namespace, name in [("team-a", "chat"), ("team-b", "chat"), ("team-a", "chat2")]
    }
    assert len(uids) == 3


@pytest.mark.parametrize("honor_labels", [False, True], ids=["honorLabels-false", "honorLabels-true"])
def test_gpu_panel_reads_dcgm_labels_as_they_arrive(dashboard: dict, promtool: str, tmp_path: Path, honor_labels: bool) -> None:
    # dcgm-exporter labels a GPU's series with the pod using it. Scraped with honorLabels false, Prometheus
    # keeps its own pod/namespace (the exporter's) and renames the exporter's to exported_pod/exported_namespace.
    (panel,) = [panel for panel in dashboard["panels"] if panel["title"] == "GPU utilisation"]
    values = {"namespace": "team-a", "deployment": "chat"}
    expr = re.sub(r"\$(\w+)", lambda match: values[match.group(1)], panel["targets"][0]["expr"])
    if honor_labels:
        labels = 'namespace="team-a",pod="chat-7d9f8b6c5-x2x4z"'
    else:
        labels = 'namespace="gpu-operator",pod="nvidia-dcgm-exporter-abcde",exported_namespace="team-a",exported_pod="chat-7d9f8b6c5-x2x4z"'
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": [{"name": "gpu", "rules": [{"record": "panel:gpu_util", "expr": expr}]}]}))
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": f'DCGM_FI_DEV_GPU_UTIL{{{labels},gpu="0",Hostname="node-1"}}', "values": "87x5"},
                # Another namespace's pod with the same name on the same node: never shown.
                {"series": 'DCGM_FI_DEV_GPU_UTIL{namespace="gpu-operator",pod="nvidia-dcgm-exporter-abcde",exported_namespace="team-b",exported_pod="chat-7d9f8b6c5-x2x4z",gpu="1"}', "values": "5x5"},
            ],
            "promql_expr_test": [{"expr": "panel:gpu_util", "eval_time": "2m", "exp_samples": [
                {"labels": f'panel:gpu_util{{{"pod" if honor_labels else "exported_pod"}="chat-7d9f8b6c5-x2x4z",gpu="0"}}', "value": 87},
            ]}],
        }],
    }))
    result = subprocess.run([promtool, "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
