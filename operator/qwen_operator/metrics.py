"""The operator's own Prometheus metrics (served on --metrics-port, 9090 by default)."""

from __future__ import annotations

import threading

import os

from prometheus_client import Counter, Gauge, Histogram, start_http_server


RECONCILES = Counter("qwen_operator_reconciles_total", "Reconciles of QwenInference resources, by result.", ["result"])
RECONCILE_DURATION = Histogram(
    "qwen_operator_reconcile_duration_seconds", "Time one reconcile takes.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECONCILE_TRIGGERS = Counter(
    "qwen_operator_reconcile_triggers_total",
    "Reconciles by what queued them: the resource itself, a child's or pod's event (by kind), the resync, a deadline, or a retry.",
    ["trigger"],
)
STATUS_ONLY_RECONCILES = Counter(
    "qwen_operator_status_only_reconciles_total",
    "Reconciles that found every child as a previous run left it (but for its status), so built and compared nothing and only judged the status.",
)
CHILD_EVENTS = Counter(
    "qwen_operator_child_events_total",
    "Changes of children and pods seen by the watches, by kind and by how soon they had their owner judged: "
    "now (a rollout completed), soon (drift, a problem), progress (a step of a rollout, within 30 s to 2 min), ignore (nothing the verdict "
    "reads), during_run (appeared while the owner's run applied: judged at its end unless the run wrote it).",
    ["kind", "judged"],
)
RESYNCS_UNCHANGED = Counter(
    "qwen_operator_resyncs_unchanged_total",
    "Resyncs that found a resource's inputs as its last run read them, so it was not run again (the verdict stands).",
)
API_REQUESTS = Counter("qwen_operator_api_requests_total", "Kubernetes API requests the operator sent.", ["verb", "kind", "code"])
API_ERRORS = Counter("qwen_operator_api_errors_total", "Kubernetes API requests that failed (HTTP >= 400 other than 404, or no answer).", ["verb", "kind", "code"])
MANAGED_RESOURCES = Gauge("qwen_operator_managed_resources", "QwenInference resources by the status and reason of their Ready condition.", ["ready", "reason"])

LEADER = Gauge("qwen_operator_leader", "1 while this replica holds the leader Lease (or runs without leader election), 0 while it stands by.")
LEADER.set(1)

METRICS_PORT = int(os.environ.get("QWEN_OPERATOR_METRICS_PORT", "9090"))
METRICS_ADDRESS = os.environ.get("QWEN_OPERATOR_METRICS_ADDRESS", "0.0.0.0")


def start_server() -> None:
    """Serves /metrics on QWEN_OPERATOR_METRICS_ADDRESS:PORT (0 turns it off); standbys serve it too."""
    if METRICS_PORT:
        start_http_server(METRICS_PORT, addr=METRICS_ADDRESS)


_ready_by_resource: dict[tuple[str, str], tuple[str, str]] = {}
_ready_counts: dict[tuple[str, str], int] = {}  # the gauge's values: how many resources have each (ready, reason)
_ready_lock = threading.Lock()  # workers set it concurrently


def observe_request(verb: str, kind: str, code: int) -> None:
    API_REQUESTS.labels(verb, kind, str(code)).inc()
    if code == 0 or (code >= 400 and code != 404):
        API_ERRORS.labels(verb, kind, str(code)).inc()


def set_resource_ready(namespace: str, name: str, ready: str | None, reason: str = "") -> None:
    """Record (or with ready None, forget) one resource's Ready condition; only the two counts it moves change."""
    with _ready_lock:
        before = _ready_by_resource.pop((namespace, name), None)
        after = (ready, reason) if ready is not None else None
        if after is not None:
            _ready_by_resource[(namespace, name)] = after
        if before == after:
            return
        for value, step in ((before, -1), (after, 1)):
            if value is None:
                continue
            count = _ready_counts[value] = _ready_counts.get(value, 0) + step
            if count > 0:
                MANAGED_RESOURCES.labels(*value).set(count)
            else:
                del _ready_counts[value]
                MANAGED_RESOURCES.remove(*value)
