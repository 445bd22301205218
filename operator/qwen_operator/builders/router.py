"""The router in front of the engine pods (spec.router): the vLLM project's own router, vllm-router.

One router per QwenInference, with these children:
- a Deployment of `vllm-router` with Kubernetes service discovery: it watches the pods of its own namespace,
  keeps those that carry the engine pods' selector labels and are Running and Ready, and sends every request to
  one of them by spec.router.policy. It retries and opens a circuit breaker on failing engines, and drops an
  engine as soon as its pod is being deleted (so a deleted engine gets no new request while it drains);
- a ServiceAccount, and a namespaced Role with what that discovery reads and nothing more (list and watch pods),
  bound to it;
- a PodDisruptionBudget when there is more than one router replica;
- the engine Service `<name>-engine`, which selects the vLLM pods (Prometheus scrapes vLLM through it, and people
  reach one engine through it when debugging), while the QwenInference's own Service selects the router;
- a NetworkPolicy for the router pods when spec.networkPolicy is on (the engines then accept only the router
  and monitoring: networkpolicy.py).

The API key is passed through: the router forwards the client's Authorization header, and vLLM checks it on
/v1/*, so a request without the key is refused by the engine, exactly as without the router. The router's own
/health, /readiness, /liveness and its metrics port stay open, as vLLM's /health and /metrics do.

Pure: no I/O, no globals.
"""

from __future__ import annotations

from typing import Any

from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders import common
from qwen_operator.builders.common import API_PORT, API_PORT_NAME, Owner
from qwen_operator.config import OperatorConfig

COMPONENT_LABEL = "app.kubernetes.io/component"
ROUTER_COMPONENT = "router"
ENGINE_COMPONENT = "inference"  # the engine pods' and their Service's component (common.common_labels)
ROUTER_APP_NAME = "qwen-router"
CONTAINER_NAME = "router"
METRICS_PORT = 29000
METRICS_PORT_NAME = "metrics"
RUN_AS_USER = 65532  # images/router runs as the conventional nonroot uid
# vllm-router's defaults are kept (retries, circuit breaker, cache_aware's thresholds), except how often it asks
# each engine's /health: every 60 s by default, so an engine that died without its pod being deleted (a killed
# container, a crash) would keep getting requests for minutes.
HEALTH_CHECK_INTERVAL_SECONDS = 10
# Kept serving while the endpoints drop the pod, then vllm-router stops on SIGTERM (it finishes what is in flight).
PRE_STOP_SLEEP_SECONDS = 5
TERMINATION_GRACE_SECONDS = 60
RESOURCES_EPHEMERAL = "256Mi"  # logs and /tmp
TMP_SIZE_LIMIT = "64Mi"


def router_enabled(spec: QwenInferenceSpec) -> bool:
    """spec.router.enabled, or, unset, whether the QwenInference can have more than one engine replica."""
    if spec.router.enabled is not None:
        return spec.router.enabled
    return (spec.autoscaling.max_replicas if spec.autoscaling.enabled else spec.replicas) > 1


def router_name(owner: Owner) -> str:
    """The name of the router's Deployment, ServiceAccount, Role, RoleBinding, PDB and NetworkPolicy."""
    return f"{owner.name}-router"


def engine_service_name(owner: Owner) -> str:
    return f"{owner.name}-engine"


def vllm_service_name(owner: Owner, spec: QwenInferenceSpec) -> str:
    """The Service whose endpoints are the vLLM pods: the one Prometheus scrapes vLLM through (its `service` label)."""
    return engine_service_name(owner) if router_enabled(spec) else common.service_name(owner)


def router_selector_labels(owner: Owner) -> dict[str, str]:
    """Labels that select this instance's router pods. Never change them: Deployment selectors are immutable."""
    return {"app.kubernetes.io/name": ROUTER_APP_NAME, "app.kubernetes.io/instance": owner.name}


def router_pod_labels(owner: Owner) -> dict[str, str]:
    # The managed-by and instance labels put the router pods into the operator's pod cache, under their owner.
    return {**router_selector_labels(owner), "app.kubernetes.io/managed-by": common.MANAGED_BY, COMPONENT_LABEL: ROUTER_COMPONENT}


def _metadata(owner: Owner, name: str | None = None) -> dict[str, Any]:
    return common.metadata(owner, name=name or router_name(owner), labels={COMPONENT_LABEL: ROUTER_COMPONENT})


def router_args(owner: Owner, spec: QwenInferenceSpec) -> list[str]:
    """vllm-router's command line (vllm_router/router_args.py of the pinned version)."""
    selector = [f"{k}={v}" for k, v in common.selector_labels(owner).items()]
    return [
        "--host", "0.0.0.0",
        "--port", str(API_PORT),
        "--policy", spec.router.policy,
        "--service-discovery",
        "--selector", *selector,
        "--service-discovery-namespace", owner.namespace,
        "--service-discovery-port", str(API_PORT),
        "--prometheus-host", "0.0.0.0",
        "--prometheus-port", str(METRICS_PORT),
        "--health-check-interval-secs", str(HEALTH_CHECK_INTERVAL_SECONDS),
        "--log-level", "info",
    ]


def _resources(spec: QwenInferenceSpec) -> dict[str, Any]:
    amounts = {"cpu": spec.router.resources.cpu, "memory": spec.router.resources.memory, "ephemeral-storage": RESOURCES_EPHEMERAL}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def router_container(owner: Owner, spec: QwenInferenceSpec, image: str) -> dict[str, Any]:
    return {
        "name": CONTAINER_NAME,
        "image": image,
        "command": ["vllm-router"],
        "args": router_args(owner, spec),
        "ports": [
            {"name": API_PORT_NAME, "containerPort": API_PORT, "protocol": "TCP"},
            {"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # /readiness is 200 only while the router has a healthy engine to send requests to, so a router that
        # has not discovered one yet (just started, or its discovery is broken) gets no traffic.
        "readinessProbe": {
            "httpGet": {"path": "/readiness", "port": API_PORT_NAME},
            "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 2, "successThreshold": 1,
        },
        # /liveness answers from the router's own event loop, whatever the engines do.
        "livenessProbe": {
            "httpGet": {"path": "/liveness", "port": API_PORT_NAME},
            "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3, "successThreshold": 1,
        },
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SLEEP_SECONDS}}},
        "resources": _resources(spec),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def _spread(owner: Owner) -> list[dict[str, Any]]:
    """Router replicas on different nodes where the scheduler can (soft: a router on a busy node beats none)."""
    return [{
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": router_selector_labels(owner)},
        "matchLabelKeys": ["pod-template-hash"],
    }]


def build_router_deployment(owner: Owner, spec: QwenInferenceSpec, config: OperatorConfig) -> dict[str, Any]:
    sched = spec.scheduling
    pod_spec: dict[str, Any] = {
        "serviceAccountName": router_name(owner),
        "automountServiceAccountToken": True,  # the discovery watches pods through the API
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "containers": [router_container(owner, spec, spec.router.image or config.router_image)],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}}],
    }
    # Where the engines may run, the router may too (the real node's taint, a dedicated pool); the GPU node
    # affinity and the runtime class are the engines' own.
    if sched.node_selector:
        pod_spec["nodeSelector"] = dict(sched.node_selector)
    if sched.tolerations:
        pod_spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in sched.tolerations]
    if sched.priority_class_name:
        pod_spec["priorityClassName"] = sched.priority_class_name
    if spec.router.replicas >= 2:
        pod_spec["topologySpreadConstraints"] = _spread(owner)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner),
        "spec": {
            "replicas": spec.router.replicas,
            "selector": {"matchLabels": router_selector_labels(owner)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": router_pod_labels(owner)}, "spec": pod_spec},
        },
    }


def build_router_service_account(owner: Owner) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(owner)}


def build_router_role(owner: Owner) -> dict[str, Any]:
    """What vllm-router's discovery reads: a watch of the pods of this namespace (it filters by label itself)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(owner),
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}],
    }


def build_router_role_binding(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(owner),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": router_name(owner)},
        "subjects": [{"kind": "ServiceAccount", "name": router_name(owner), "namespace": owner.namespace}],
    }


def build_router_pdb(owner: Owner, spec: QwenInferenceSpec) -> dict[str, Any] | None:
    if spec.router.replicas < 2:
        return None  # one replica: maxUnavailable 1 protects nothing
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": router_selector_labels(owner)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def build_engine_service(owner: Owner) -> dict[str, Any]:
    """The Service of the vLLM pods themselves, beside the QwenInference's Service (which selects the router)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": common.metadata(owner, name=engine_service_name(owner)),
        "spec": {
            "type": "ClusterIP",
            "selector": common.selector_labels(owner),
            "ports": [{"name": API_PORT_NAME, "port": API_PORT, "targetPort": API_PORT_NAME, "protocol": "TCP"}],
        },
    }


def router_service_fields(owner: Owner) -> dict[str, Any]:
    """What the QwenInference's Service becomes with the router on: it selects the router pods, and also
    exposes the router's metrics port (for the router's ServiceMonitor)."""
    return {
        "labels": {COMPONENT_LABEL: ROUTER_COMPONENT},
        "selector": router_selector_labels(owner),
        "ports": [
            {"name": API_PORT_NAME, "port": API_PORT, "targetPort": API_PORT_NAME, "protocol": "TCP"},
            {"name": METRICS_PORT_NAME, "port": METRICS_PORT, "targetPort": METRICS_PORT_NAME, "protocol": "TCP"},
        ],
    }


def build_router_children(owner: Owner, spec: QwenInferenceSpec, config: OperatorConfig) -> list[dict[str, Any]]:
    """Every child of the router (none when it is off), the ServiceAccount and its Role before the Deployment."""
    if not router_enabled(spec):
        return []
    children = [
        build_router_service_account(owner),
        build_router_role(owner),
        build_router_role_binding(owner),
        build_router_deployment(owner, spec, config),
        build_engine_service(owner),
        build_router_pdb(owner, spec),
    ]
    return [c for c in children if c is not None]
