"""The router (spec.router): its API defaults and refusals, its children (pure builders), what the instance's
Service, the NetworkPolicies and the monitoring objects become with it, and the Routing condition."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from qwen_operator import status as status_lib
from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders.common import Owner, selector_labels
from qwen_operator.builders.dashboard import build_dashboard
from qwen_operator.builders.monitoring import build_prometheus_rule, build_router_service_monitor, build_service_monitor
from qwen_operator.builders.networkpolicy import build_network_policy, build_router_network_policy
from qwen_operator.builders.router import (
    build_engine_service, build_router_children, build_router_deployment, build_router_role, router_enabled, router_selector_labels,
)
from qwen_operator.builders.service import build_service
from qwen_operator.catalog import resolve_model
from qwen_operator.config import DEFAULT_ROUTER_IMAGE, OperatorConfig, from_env
from qwen_operator.reconcile import desired_children, Capabilities

REPO = Path(__file__).resolve().parents[2]
OWNER = Owner(name="chat", namespace="team-a", uid="5f1c7a1e-0000-4000-8000-000000000001", generation=3)
CONFIG = OperatorConfig()


def spec(**fields: Any) -> QwenInferenceSpec:
    return QwenInferenceSpec.model_validate(fields)


def by_key(children: list[dict]) -> dict[tuple[str, str], dict]:
    return {(c["kind"], c["metadata"]["name"]): c for c in children}


# ---- the API ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "enabled"),
    [
        ({}, False),  # one replica: no router
        ({"replicas": 2}, True),
        ({"replicas": 0}, False),
        ({"autoscaling": {"enabled": True, "maxReplicas": 4}}, True),
        ({"autoscaling": {"enabled": True, "maxReplicas": 1}}, False),
        ({"replicas": 3, "router": {"enabled": False}}, False),
        ({"router": {"enabled": True}}, True),
    ],
)
def test_the_router_is_on_whenever_more_than_one_replica_may_run(fields: dict, enabled: bool) -> None:
    assert router_enabled(spec(**fields)) is enabled


def test_router_defaults() -> None:
    router = spec().router
    assert (router.policy, router.replicas, router.resources.cpu, router.resources.memory, router.image) == ("cache_aware", 2, "500m", "1Gi", None)


@pytest.mark.parametrize("router", [{"policy": "random"}, {"replicas": 0}, {"image": ""}, {"resources": {"cpu": "lots"}}, {"sticky": True}])
def test_bad_router_specs_are_refused(router: dict) -> None:
    with pytest.raises(ValidationError):
        spec(router=router)


def test_the_default_router_image_is_the_pinned_version_hack_images_builds() -> None:
    versions = dict(line.split("=", 1) for line in (REPO / "hack" / "versions.env").read_text().splitlines() if re.match(r"^[A-Z_]+=", line))
    assert DEFAULT_ROUTER_IMAGE == f"localhost/qwen-vllm-router:{versions['VLLM_ROUTER_VERSION']}"
    images_sh = (REPO / "hack" / "images.sh").read_text()
    assert "ROUTER_IMAGE=localhost/qwen-vllm-router:$VLLM_ROUTER_VERSION" in images_sh
    assert from_env({"QWEN_OPERATOR_ROUTER_IMAGE": "registry.example.com/vllm-router:0.1.17"}).router_image == "registry.example.com/vllm-router:0.1.17"
    assert from_env({}).router_image == DEFAULT_ROUTER_IMAGE


# ---- the children -------------------------------------------------------------------------------------------


def test_children_with_the_router_on() -> None:
    children = by_key(build_router_children(OWNER, spec(replicas=2), CONFIG))
    assert set(children) == {
        ("ServiceAccount", "chat-router"), ("Role", "chat-router"), ("RoleBinding", "chat-router"),
        ("Deployment", "chat-router"), ("Service", "chat-engine"), ("PodDisruptionBudget", "chat-router"),
    }
    for child in children.values():
        assert child["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "qwen-operator"  # the operator's caches see it
        assert child["metadata"]["labels"]["app.kubernetes.io/instance"] == "chat"
    assert build_router_children(OWNER, spec(), CONFIG) == []
    one = by_key(build_router_children(OWNER, spec(replicas=2, router={"replicas": 1}), CONFIG))
    assert ("PodDisruptionBudget", "chat-router") not in one  # a budget for one replica protects nothing


def test_the_role_grants_only_what_discovery_reads() -> None:
    assert build_router_role(OWNER)["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]
    binding = by_key(build_router_children(OWNER, spec(replicas=2), CONFIG))[("RoleBinding", "chat-router")]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "chat-router"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "chat-router", "namespace": "team-a"}]


def test_router_deployment() -> None:
    deployment = build_router_deployment(OWNER, spec(replicas=3, router={"policy": "power_of_two", "replicas": 3}), CONFIG)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["selector"]["matchLabels"] == router_selector_labels(OWNER)
    assert router_selector_labels(OWNER).items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # The engine selector must not select router pods (the engines' Deployment, PDB and Service).
    assert not selector_labels(OWNER).items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert container["image"] == DEFAULT_ROUTER_IMAGE
    args = container["args"]
    # vllm-router's own flags (vllm_router/router_args.py of the pinned version).
    assert args[args.index("--policy") + 1] == "power_of_two"
    assert "--service-discovery" in args
    selector = args[args.index("--selector") + 1: args.index("--service-discovery-namespace")]
    assert selector == ["app.kubernetes.io/name=qwen-inference", "app.kubernetes.io/instance=chat"]
    assert args[args.index("--service-discovery-namespace") + 1] == "team-a"
    assert args[args.index("--service-discovery-port") + 1] == "8000"
    assert args[args.index("--prometheus-port") + 1] == "29000"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readiness"
    assert container["livenessProbe"]["httpGet"]["path"] == "/liveness"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["runAsNonRoot"] and security["capabilities"] == {"drop": ["ALL"]}
    assert not security["allowPrivilegeEscalation"] and pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert pod["serviceAccountName"] == "chat-router" and pod["automountServiceAccountToken"] is True
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway" and spread["labelSelector"]["matchLabels"] == router_selector_labels(OWNER)


def test_router_pods_go_where_the_engines_may_and_take_their_own_image() -> None:
    placed = spec(replicas=2, router={"replicas": 1, "image": "registry.example.com/router:1"}, scheduling={
        "nodeSelector": {"kubernetes.io/hostname": "qwen-real-node"}, "tolerations": [{"key": "qwen.qwenops.io/real-node", "operator": "Exists"}],
        "priorityClassName": "high", "runtimeClassName": "nvidia"})
    pod = build_router_deployment(OWNER, placed, CONFIG)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/hostname": "qwen-real-node"}
    assert pod["tolerations"] == [{"key": "qwen.qwenops.io/real-node", "operator": "Exists"}]
    assert pod["priorityClassName"] == "high"
    assert "runtimeClassName" not in pod and "affinity" not in pod  # the GPU runtime and node affinity are the engines'
    assert "topologySpreadConstraints" not in pod  # one replica
    assert pod["containers"][0]["image"] == "registry.example.com/router:1"


def test_the_instance_service_selects_the_router_and_the_engine_service_the_engines() -> None:
    on, off = spec(replicas=2), spec()
    assert build_service(OWNER, on)["spec"]["selector"] == router_selector_labels(OWNER)
    assert [p["name"] for p in build_service(OWNER, on)["spec"]["ports"]] == ["http", "metrics"]
    assert build_service(OWNER, off)["spec"]["selector"] == selector_labels(OWNER)
    engine = build_engine_service(OWNER)
    assert engine["metadata"]["name"] == "chat-engine" and engine["spec"]["selector"] == selector_labels(OWNER)


def test_the_service_monitors_select_the_vllm_pods_service_and_the_routers() -> None:
    on = spec(replicas=2)
    engine_monitor = build_service_monitor(OWNER, on)["spec"]["selector"]["matchLabels"]
    router_monitor = build_router_service_monitor(OWNER, on)
    services = {"engine": build_engine_service(OWNER), "instance": build_service(OWNER, on)}
    selects = {name: [m for m, sel in (("vllm", engine_monitor), ("router", router_monitor["spec"]["selector"]["matchLabels"]))
                      if sel.items() <= s["metadata"]["labels"].items()] for name, s in services.items()}
    assert selects == {"engine": ["vllm"], "instance": ["router"]}
    assert router_monitor["metadata"]["name"] == "chat-router" and router_monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert build_router_service_monitor(OWNER, spec()) is None


def test_network_policies_with_the_router() -> None:
    on = spec(replicas=2, networkPolicy={"enabled": True, "allowFrom": [{"namespaceSelector": {"team": "a"}}]})
    engines = build_network_policy(OWNER, on)
    api, scrape = engines["spec"]["ingress"]
    assert api["from"] == [{"podSelector": {"matchLabels": router_selector_labels(OWNER)}}]  # only the router
    assert scrape["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    router = build_router_network_policy(OWNER, on)
    clients, metrics = router["spec"]["ingress"]
    assert router["spec"]["podSelector"]["matchLabels"] == router_selector_labels(OWNER)
    assert clients["from"] == [{"namespaceSelector": {"matchLabels": {"team": "a"}}}] and clients["ports"][0]["port"] == 8000
    assert metrics["ports"][0]["port"] == 29000
    assert build_router_network_policy(OWNER, spec(replicas=2)) is None
    off = spec(networkPolicy={"enabled": True, "allowFrom": [{"namespaceSelector": {"team": "a"}}]})
    assert build_network_policy(OWNER, off)["spec"]["ingress"][0]["from"] == [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]


def test_alerts_and_dashboard_follow_the_service_of_the_vllm_pods() -> None:
    on = spec(replicas=2)
    rules = {r["alert"]: r for r in build_prometheus_rule(OWNER, on, "m", 600)["spec"]["groups"][0]["rules"]}
    assert 'service="chat-engine"' in rules["QwenInferenceHighErrorRate"]["expr"]
    assert 'vllm_router_worker_health{namespace="team-a", service="chat"}' in rules["QwenInferenceRouterNoHealthyEngine"]["expr"]
    off_rules = {r["alert"] for r in build_prometheus_rule(OWNER, spec(), "m", 600)["spec"]["groups"][0]["rules"]}
    assert "QwenInferenceRouterNoHealthyEngine" not in off_rules
    with_router = build_dashboard(OWNER, on, "m")
    assert any(p["title"].startswith("Router: ") for p in with_router["panels"])
    values = {v["name"]: v["query"] for v in with_router["templating"]["list"]}
    assert (values["service"], values["router_service"]) == ("chat-engine", "chat")
    assert not any(p["title"].startswith("Router: ") for p in build_dashboard(OWNER, spec(), "m")["panels"])


def test_desired_children_have_unique_names_per_kind() -> None:
    parsed = spec(replicas=2, networkPolicy={"enabled": True})
    children = desired_children(OWNER, parsed, resolve_model(parsed), CONFIG, Capabilities(prometheus_operator=True))
    keys = [(c["kind"], c["metadata"]["name"]) for c in children]
    assert len(keys) == len(set(keys))
    assert ("ServiceMonitor", "chat-router") in keys and ("NetworkPolicy", "chat-router") in keys
    # The ServiceAccount and its Role come before the Deployment that uses them.
    assert keys.index(("ServiceAccount", "chat-router")) < keys.index(("Deployment", "chat-router"))


# ---- the Routing condition ------------------------------------------------------------------------------------


def engine_pod(name: str, ready: bool = True, ip: str | None = "10.85.0.7", phase: str = "Running", deleting: bool = False) -> dict:
    meta: dict[str, Any] = {"name": name, "labels": selector_labels(OWNER)}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": "n1"},
            "status": {"phase": phase, "podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def engines_deployment(ready: int) -> dict:
    return {"metadata": {"generation": 1}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 1, "replicas": 2, "readyReplicas": ready, "availableReplicas": ready, "updatedReplicas": 2}}


def router_deployment(ready: int) -> dict:
    return {"metadata": {"name": "chat-router"}, "status": {"readyReplicas": ready}}


def observed(pods: list[dict], router: dict | None, engines_ready: int = 2) -> status_lib.Observation:
    return status_lib.Observation(desired_replicas=2, deployment=engines_deployment(engines_ready), pods=pods,
                                  router_enabled=True, router_replicas=2, router_deployment=router, router_name="chat-router")


@pytest.mark.parametrize(
    ("pods", "router", "routing", "reason", "ready"),
    [
        ([engine_pod("a"), engine_pod("b")], router_deployment(2), "True", "Routing", ("True", "Ready")),
        ([engine_pod("a"), engine_pod("b")], router_deployment(1), "True", "RouterReplicasNotReady", ("True", "Ready")),
        ([engine_pod("a"), engine_pod("b")], router_deployment(0), "False", "RouterNotReady", ("False", "RouterNotReady")),
        ([engine_pod("a"), engine_pod("b")], None, "False", "RouterPending", ("False", "RouterNotReady")),
        # Engines the router's discovery does not admit: not Ready, no address yet, not Running, being deleted.
        ([engine_pod("a", ready=False), engine_pod("b", ip=None), engine_pod("c", phase="Pending"), engine_pod("d", deleting=True)],
         router_deployment(2), "False", "NoEngineReady", None),
    ],
)
def test_routing_condition(pods: list[dict], router: dict | None, routing: str, reason: str, ready: tuple[str, str] | None) -> None:
    result = status_lib.compute_status(OWNER, "m", observed(pods, router), {}, "2026-12-01T00:00:00Z")
    found = {c["type"]: c for c in result["conditions"]}
    assert (found["Routing"]["status"], found["Routing"]["reason"]) == (routing, reason)
    assert found["Routing"]["observedGeneration"] == OWNER.generation
    if ready is not None:
        assert (found["Ready"]["status"], found["Ready"]["reason"]) == ready


def test_routing_message_counts_the_engines_the_router_can_route_to() -> None:
    pods = [engine_pod("a"), engine_pod("b"), engine_pod("c", ready=False)]
    condition = status_lib.routing_condition(observed(pods, router_deployment(2)), 1)
    assert condition["message"].startswith("2/2 router replicas ready, routing over the 2 engine pod(s)")


def test_no_routing_condition_without_the_router() -> None:
    result = status_lib.compute_status(OWNER, "m", status_lib.Observation(desired_replicas=1, deployment=engines_deployment(1)), {}, "t")
    assert "Routing" not in {c["type"] for c in result["conditions"]}
