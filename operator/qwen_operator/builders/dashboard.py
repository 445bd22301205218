"""The Grafana dashboard of one QwenInference, as a ConfigMap the Grafana sidecar picks up.

The dashboard itself is data: dashboards/qwen-inference.json, a complete Grafana dashboard whose
queries use the hidden constant variables $namespace, $service (the Service of the vLLM pods), $deployment,
$model and $router_service (the router's, whose panels are dropped when spec.router is off). The
builder fills those variables, the uid and the title for one instance, and draws the alert
thresholds from the spec as lines on the matching panels.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import orjson

from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders.common import Owner, metadata, service_name
from qwen_operator.builders.router import router_enabled, vllm_service_name

# Package data next to this module. pyproject's package-data must list
# "builders/dashboards/*.json" for wheels to carry it; a source checkout always has it.
DASHBOARD_TEMPLATE_PATH = Path(__file__).parent / "dashboards" / "qwen-inference.json"
GRAFANA_SIDECAR_LABEL = {"grafana_dashboard": "1"}
ROUTER_PANEL_PREFIX = "Router: "  # the router's panels (vllm-router's metrics), shown only with spec.router on


@functools.lru_cache(maxsize=1)
def _template_text() -> str:
    # Read once per process; the file ships with the package and never changes at run time.
    return DASHBOARD_TEMPLATE_PATH.read_text(encoding="utf-8")


def dashboard_template() -> dict[str, Any]:
    """A fresh copy of the dashboard template (callers may mutate it)."""
    return json.loads(_template_text())


def dashboard_uid(owner: Owner) -> str:
    """A stable Grafana uid (at most 40 characters) unique per namespace/name."""
    digest = hashlib.sha256(f"{owner.namespace}/{owner.name}".encode()).hexdigest()
    return f"qwen-{digest[:20]}"


def dashboard_configmap_name(owner: Owner) -> str:
    return f"{owner.name}-dashboard"


def _set_threshold_line(panel: dict[str, Any], value: float) -> None:
    defaults = panel.setdefault("fieldConfig", {}).setdefault("defaults", {})
    defaults["thresholds"] = {
        "mode": "absolute",
        "steps": [{"color": "green", "value": None}, {"color": "red", "value": value}],
    }
    defaults.setdefault("custom", {})["thresholdsStyle"] = {"mode": "line"}


def build_dashboard(owner: Owner, spec: QwenInferenceSpec, served_name: str) -> dict[str, Any]:
    """The Grafana dashboard JSON (as a dict) for one instance."""
    dashboard = dashboard_template()
    dashboard["uid"] = dashboard_uid(owner)
    dashboard["title"] = f"Qwen inference: {owner.namespace}/{owner.name}"
    dashboard["description"] = f"vLLM serving {served_name} for QwenInference {owner.namespace}/{owner.name}."
    values = {
        "namespace": owner.namespace,
        "service": vllm_service_name(owner, spec),
        "router_service": service_name(owner),
        "deployment": owner.name,
        "model": served_name,
    }
    for variable in dashboard["templating"]["list"]:
        if variable["name"] in values:
            value = values[variable["name"]]
            variable["query"] = value
            variable["current"] = {"text": value, "value": value}
            variable["options"] = [{"text": value, "value": value, "selected": True}]

    if not router_enabled(spec):
        dashboard["panels"] = [panel for panel in dashboard["panels"] if not panel["title"].startswith(ROUTER_PANEL_PREFIX)]
        dashboard["templating"]["list"] = [v for v in dashboard["templating"]["list"] if v["name"] != "router_service"]

    alerts = spec.monitoring.alerts
    thresholds_by_title = {
        "Error rate": alerts.error_ratio,
        "Time to first token (p50, p95)": alerts.time_to_first_token_p95_seconds,
        "Queue depth (waiting requests)": alerts.queue_depth,
    }
    for panel in dashboard["panels"]:
        if panel["title"] in thresholds_by_title:
            _set_threshold_line(panel, thresholds_by_title[panel["title"]])
    return dashboard


def build_dashboard_configmap(owner: Owner, spec: QwenInferenceSpec, served_name: str) -> dict[str, Any]:
    """A ConfigMap labelled grafana_dashboard=1 holding the instance's dashboard JSON."""
    dashboard = build_dashboard(owner, spec, served_name)
    # The sidecar writes every key into one folder: make the file name unique per instance.
    key = f"qwen-inference-{owner.namespace}-{owner.name}.json"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, name=dashboard_configmap_name(owner), labels=GRAFANA_SIDECAR_LABEL),
        "data": {key: orjson.dumps(dashboard, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()},  # json.dumps's text, in a third of the time
    }
