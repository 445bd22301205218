"""The ServiceMonitor that scrapes vLLM and the PrometheusRule that alerts on it. Pure: no I/O.

Which series belong to one QwenInference:
- vLLM's own series (vllm:*, and http_requests_total from the API server's HTTP instrumentation)
  are matched on `namespace` and `service`, the labels prometheus-operator attaches to every
  series a ServiceMonitor scrapes. vLLM's `model_name` label is not used to select: the HTTP
  series do not carry it, and the Service already tells two instances apart. The served model
  name goes into the alert labels (`model`) instead, for routing and for people.
- kube-state-metrics series describe Kubernetes objects in their own `namespace`/`deployment`/
  `pod` labels. Pods are matched by name: `<deployment>-<pod-template-hash>-<suffix>`.

How the error ratio is derived: vLLM's `vllm:request_success_total` counts every finished
request whatever its `finished_reason` (stop, length, abort; "error" only in vLLM newer than the
pinned v0.11), and "abort" is mostly clients that hung up, so it does not measure failures. The
OpenAI server instruments every route with prometheus-fastapi-instrumentator, whose
`http_requests_total{handler, method, status}` groups status codes as 2xx/4xx/5xx. The error
ratio is 5xx responses over all responses on the /v1/ routes: server failures, not client
mistakes (4xx). A stream that fails after its 200 header is not counted (documented in
docs/runbooks.md).
"""

from __future__ import annotations

from typing import Any

from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders.common import API_PORT_NAME, Owner, metadata, selector_labels, service_name
from qwen_operator.builders.router import (
    COMPONENT_LABEL, ENGINE_COMPONENT, METRICS_PORT_NAME, ROUTER_COMPONENT, router_enabled, router_name, vllm_service_name,
)

RUNBOOK_BASE_URL = "https://github.com/qwenops/qwen-operator/blob/main/docs/runbooks.md"

# The windows the rate()-based alerts look over, and how long the condition must hold.
ERROR_RATE_WINDOW = "5m"
LATENCY_WINDOW = "5m"
DOWN_FOR = "3m"
ERROR_RATE_FOR = "5m"
LATENCY_FOR = "5m"
PREEMPTION_WINDOW = "5m"
PREEMPTION_FOR = "10m"
CRASH_LOOP_FOR = "5m"
# More restarts than this within CRASH_RESTART_WINDOW count as crash looping, even between the
# moments kube-state-metrics sees the CrashLoopBackOff waiting reason.
CRASH_RESTARTS = 2
CRASH_RESTART_WINDOW = "15m"
ROUTER_NO_WORKER_FOR = "2m"


def prometheus_duration(seconds: int) -> str:
    """A Prometheus duration for a number of seconds: 600 -> "10m", 90 -> "90s"."""
    if seconds > 0 and seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds > 0 and seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def _pod_name_regex(deployment: str) -> str:
    # Deployment pods are named <deployment>-<pod-template-hash>-<random>; neither suffix has a
    # dash, so a Deployment called "<name>-x" never matches. Dots in names are literal.
    return deployment.replace(".", "[.]") + "-[a-z0-9]+-[a-z0-9]+"


def monitoring_labels(spec: QwenInferenceSpec, default_labels: dict[str, str] | None) -> dict[str, str]:
    """Labels a Prometheus selects monitoring objects by (kube-prometheus-stack: release=<name>): the
    operator-wide defaults (chart value monitoring.labels), then spec.monitoring.labels, which win."""
    return {**(default_labels or {}), **spec.monitoring.labels}


def _monitoring_metadata(owner: Owner, spec: QwenInferenceSpec, default_labels: dict[str, str] | None) -> dict[str, Any]:
    meta = metadata(owner)
    # The operator's own labels come last: they select the children, and a user label may not replace them.
    meta["labels"] = {**monitoring_labels(spec, default_labels), **meta["labels"]}
    return meta


def build_service_monitor(owner: Owner, spec: QwenInferenceSpec, default_labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A monitoring.coreos.com/v1 ServiceMonitor for the Service of the vLLM pods (vLLM's /metrics): the
    instance's Service, or with the router on the engine Service (the instance's Service then selects the
    router, and the component label tells the two apart).

    /metrics stays open when the API key is set (vLLM protects /v1/* only), so no auth is needed.
    """
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _monitoring_metadata(owner, spec, default_labels),
        "spec": {
            "selector": {"matchLabels": {**selector_labels(owner), COMPONENT_LABEL: ENGINE_COMPONENT}},
            "namespaceSelector": {"matchNames": [owner.namespace]},
            "endpoints": [
                {
                    "port": API_PORT_NAME,
                    "path": "/metrics",
                    "scheme": "http",
                    "interval": spec.monitoring.interval,
                }
            ],
        },
    }


def build_router_service_monitor(owner: Owner, spec: QwenInferenceSpec, default_labels: dict[str, str] | None = None) -> dict[str, Any] | None:
    """A ServiceMonitor for the router's metrics port (on the instance's Service, which selects the router)."""
    if not router_enabled(spec):
        return None
    meta = _monitoring_metadata(owner, spec, default_labels)
    meta["name"] = router_name(owner)
    meta["labels"][COMPONENT_LABEL] = ROUTER_COMPONENT
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": {**selector_labels(owner), COMPONENT_LABEL: ROUTER_COMPONENT}},
            "namespaceSelector": {"matchNames": [owner.namespace]},
            "endpoints": [{"port": METRICS_PORT_NAME, "path": "/metrics", "scheme": "http", "interval": spec.monitoring.interval}],
        },
    }


def _alert(
    name: str,
    expr: str,
    for_: str,
    severity: str,
    summary: str,
    description: str,
    static_labels: dict[str, str],
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity, **static_labels},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": f"{RUNBOOK_BASE_URL}#{name.lower()}",
        },
    }


def build_alert_rules(owner: Owner, spec: QwenInferenceSpec, served_name: str, startup_budget_seconds: int) -> list[dict[str, Any]]:
    """The alerting rules of one instance, in the order docs/runbooks.md lists them."""
    thresholds = spec.monitoring.alerts
    ns, name = owner.namespace, owner.name
    instance = f"{ns}/{name}"
    scraped = f'namespace="{ns}", service="{vllm_service_name(owner, spec)}"'
    deployment = f'namespace="{ns}", deployment="{name}"'
    pods = f'namespace="{ns}", pod=~"{_pod_name_regex(name)}"'
    api_routes = f'{scraped}, handler=~"/v1/.+"'
    budget = prometheus_duration(startup_budget_seconds)
    static_labels = {"namespace": ns, "qwen_inference": name, "model": served_name}

    def p95(histogram: str) -> str:
        return (
            f"histogram_quantile(0.95, sum by (namespace, service, le) "
            f"(rate({histogram}_bucket{{{scraped}}}[{LATENCY_WINDOW}])))"
        )

    return [
        _alert(
            "QwenInferenceDown",
            # No target of the Service is up (or none exists), or kube-state-metrics sees no
            # available replica. Quiet while the Deployment is scaled to zero on purpose, and
            # during the first startup budget after the Deployment was created
            # (QwenInferenceModelNotLoaded covers that window). Both sides are summed to no
            # labels, so the alert keeps one identity whichever side fires.
            f"(((sum(up{{{scraped}}}) or vector(0)) == 0)"
            f" or on() (sum(kube_deployment_status_replicas_available{{{deployment}}}) == 0))"
            f" unless on() (kube_deployment_spec_replicas{{{deployment}}} == 0)"
            f" unless on() ((time() - kube_deployment_created{{{deployment}}}) < {startup_budget_seconds})",
            DOWN_FOR,
            "critical",
            f"QwenInference {instance} is down",
            f"QwenInference {instance} (model {served_name}) has had no available replica, or no "
            f"replica answering metrics scrapes, for {DOWN_FOR}: the OpenAI endpoint is not serving.",
            static_labels,
        ),
        _alert(
            "QwenInferenceModelNotLoaded",
            # A pod that kube-state-metrics reports not ready (finished pods, e.g. evicted ones,
            # left out), or, without kube-state-metrics, one whose vLLM server does not answer
            # scrapes: vLLM listens only once the model is loaded.
            f'((kube_pod_status_ready{{{pods}, condition="true"}} == 0)'
            f' unless on(pod) (kube_pod_status_phase{{{pods}, phase=~"Succeeded|Failed"}} == 1))'
            f" or on(pod) (up{{{scraped}}} == 0)",
            budget,
            "warning",
            f"QwenInference {instance}: model not loaded within {budget}",
            f"Pod {{{{ $labels.pod }}}} of QwenInference {instance} has not become ready within "
            f"its startup budget of {budget}: model {served_name} is still loading, or failed to.",
            static_labels,
        ),
        _alert(
            "QwenInferenceHighErrorRate",
            f'sum by (namespace, service) (rate(http_requests_total{{{api_routes}, status="5xx"}}[{ERROR_RATE_WINDOW}]))'
            f" / sum by (namespace, service) (rate(http_requests_total{{{api_routes}}}[{ERROR_RATE_WINDOW}]))"
            f" > {thresholds.error_ratio}",
            ERROR_RATE_FOR,
            "critical",
            f"QwenInference {instance}: high error rate",
            f"{{{{ $value | humanizePercentage }}}} of the /v1 requests to QwenInference {instance} "
            f"failed with a 5xx status over the last {ERROR_RATE_WINDOW} "
            f"(threshold {thresholds.error_ratio:.2%}).",
            static_labels,
        ),
        _alert(
            "QwenInferenceHighTimeToFirstToken",
            f"{p95('vllm:time_to_first_token_seconds')} > {thresholds.time_to_first_token_p95_seconds}",
            LATENCY_FOR,
            "warning",
            f"QwenInference {instance}: high p95 time to first token",
            f"The p95 time to first token of QwenInference {instance} is "
            f"{{{{ $value | humanizeDuration }}}} (threshold {thresholds.time_to_first_token_p95_seconds}s).",
            static_labels,
        ),
        _alert(
            # Not end-to-end latency: a thinking model's healthy answer can reason for minutes. The time
            # between tokens of a stream is what a user feels slow down when the GPU is overloaded.
            "QwenInferenceHighInterTokenLatency",
            f"{p95('vllm:inter_token_latency_seconds')} > {thresholds.inter_token_latency_p95_seconds}",
            LATENCY_FOR,
            "warning",
            f"QwenInference {instance}: high p95 inter-token latency",
            f"The p95 time between output tokens of QwenInference {instance} is "
            f"{{{{ $value | humanizeDuration }}}} (threshold {thresholds.inter_token_latency_p95_seconds}s).",
            static_labels,
        ),
        _alert(
            "QwenInferenceQueueGrowing",
            f"sum by (namespace, service, pod) (vllm:num_requests_waiting{{{scraped}}}) > {thresholds.queue_depth}",
            thresholds.queue_duration,
            "warning",
            f"QwenInference {instance}: requests are queueing",
            f"Pod {{{{ $labels.pod }}}} of QwenInference {instance} has had {{{{ $value }}}} requests "
            f"waiting (more than {thresholds.queue_depth}) for {thresholds.queue_duration}.",
            static_labels,
        ),
        _alert(
            # A full KV cache is normal at saturation (vLLM fills it on purpose). Preemptions are the harm:
            # running sequences evicted and recomputed because the cache cannot hold them.
            "QwenInferencePreempting",
            f"sum by (namespace, service, pod) (rate(vllm:num_preemptions_total{{{scraped}}}[{PREEMPTION_WINDOW}])) * 60"
            f" > {thresholds.preemptions_per_minute}",
            PREEMPTION_FOR,
            "warning",
            f"QwenInference {instance}: requests are being preempted",
            f"Pod {{{{ $labels.pod }}}} of QwenInference {instance} preempts {{{{ $value | humanize }}}} requests per "
            f"minute (threshold {thresholds.preemptions_per_minute}): its KV cache cannot hold the running sequences.",
            static_labels,
        ),
        _alert(
            "QwenInferenceCrashLooping",
            f"(max by (namespace, pod, container) (max_over_time(kube_pod_container_status_waiting_reason"
            f'{{{pods}, reason="CrashLoopBackOff"}}[5m])) >= 1)'
            f" or (sum by (namespace, pod, container) (increase(kube_pod_container_status_restarts_total"
            f"{{{pods}}}[{CRASH_RESTART_WINDOW}])) > {CRASH_RESTARTS})",
            CRASH_LOOP_FOR,
            "warning",
            f"QwenInference {instance}: pod crash looping",
            f"Container {{{{ $labels.container }}}} of pod {{{{ $labels.pod }}}} of QwenInference "
            f"{instance} keeps restarting (CrashLoopBackOff, or more than {CRASH_RESTARTS} restarts "
            f"in {CRASH_RESTART_WINDOW}).",
            static_labels,
        ),
        *_router_alerts(owner, spec, static_labels),
    ]


def _router_alerts(owner: Owner, spec: QwenInferenceSpec, static_labels: dict[str, str]) -> list[dict[str, Any]]:
    """With the router on: a router replica with no healthy engine (vllm-router's metrics: vllm_router_active_workers
    counts the engines it has registered, vllm_router_worker_health is 1 per engine its health checks pass). Every
    request through that replica fails. Quiet while the engines are scaled to zero on purpose."""
    if not router_enabled(spec):
        return []
    ns, name = owner.namespace, owner.name
    instance = f"{ns}/{name}"
    router = f'namespace="{ns}", service="{service_name(owner)}"'
    deployment = f'namespace="{ns}", deployment="{name}"'
    return [
        _alert(
            "QwenInferenceRouterNoHealthyEngine",
            f"((max by (namespace, pod) (vllm_router_active_workers{{{router}}}) == 0)"
            f" or (sum by (namespace, pod) (vllm_router_worker_health{{{router}}}) == 0))"
            f" unless on() (kube_deployment_spec_replicas{{{deployment}}} == 0)",
            ROUTER_NO_WORKER_FOR,
            "critical",
            f"QwenInference {instance}: the router has no healthy engine",
            f"Router pod {{{{ $labels.pod }}}} of QwenInference {instance} has had no healthy engine to send requests "
            f"to for {ROUTER_NO_WORKER_FOR}: every request through it fails. Check the engine pods, and the router's "
            f"discovery (kubectl logs deploy/{router_name(owner)}).",
            static_labels,
        ),
    ]


def build_prometheus_rule(owner: Owner, spec: QwenInferenceSpec, served_name: str, startup_budget_seconds: int,
                          default_labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A monitoring.coreos.com/v1 PrometheusRule with one group of alerts for this instance."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": _monitoring_metadata(owner, spec, default_labels),
        "spec": {
            "groups": [
                {
                    "name": f"qwen-inference.{owner.namespace}.{owner.name}",
                    "rules": build_alert_rules(owner, spec, served_name, startup_budget_seconds),
                }
            ]
        },
    }
