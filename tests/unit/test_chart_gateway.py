"""The chart's gateway (gateway.enabled): replicas, probes, restricted security, PDB, ServiceMonitor, Redis, and
RBAC that grants exactly what `qwen-operator gateway` uses."""

from __future__ import annotations

import pytest

from test_chart import NAMESPACE, WATCHED, documents, grants, helm, the  # noqa: F401 - helm is a fixture

GATEWAY = "qwen-operator-gateway"
ON = ["--set", "gateway.enabled=true"]


def gateway_docs(helm: str, *args: str) -> list[dict]:
    return [d for d in documents(helm, *ON, *args) if d["metadata"]["name"].startswith(GATEWAY)]


def test_the_gateway_is_off_by_default(helm: str) -> None:
    assert not [d for d in documents(helm) if "gateway" in d["metadata"]["name"]]


def test_the_gateway_deployment_is_probed_restricted_and_spread(helm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = gateway_docs(helm)
    deployment = the(docs, "Deployment", GATEWAY)
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert deployment["spec"]["replicas"] == 2
    assert container["args"][:3] == ["gateway", "--port", "8080"]
    assert container["image"].startswith("qwen-operator:")  # the operator's image, another subcommand
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/liveness", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/readiness", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/health/liveness", "port": "http"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]} and pod["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["QWEN_GATEWAY_KEYS_NAMESPACE"] == NAMESPACE and env["QWEN_GATEWAY_REPLICAS"] == "2"
    # Helm reads numbers as floats: 8388608 would render as "8.388608e+06", which the gateway's int() refused.
    assert env["QWEN_GATEWAY_MAX_BODY_BYTES"] == "8388608"
    from qwen_gateway.server import build_parser

    for name, value in env.items():
        if name.startswith("QWEN_GATEWAY_") and value is not None:
            monkeypatch.setenv(name, value)
    args = build_parser().parse_args(container["args"][1:])  # what the pod's command line and environment give
    assert (args.max_body_bytes, args.replicas, args.upstream_timeout, args.port) == (8388608, 2, 3600.0, 8080)
    assert "QWEN_GATEWAY_REDIS_URL" not in env
    # Its selector never matches the operator's pods, nor the operator's selector its pods.
    operator = the(documents(helm, *ON), "Deployment", "qwen-operator")
    gateway_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert not set(operator["spec"]["selector"]["matchLabels"].items()) <= set(gateway_labels.items())
    service = the(docs, "Service", GATEWAY)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert the(docs, "PodDisruptionBudget", GATEWAY)["spec"]["minAvailable"] == 1


def test_redis_pdb_and_service_monitor_follow_the_values(helm: str) -> None:
    docs = gateway_docs(helm, "--set", "gateway.replicas=1", "--set", "gateway.redis.url=redis://redis:6379/0",
                        "--set", "gateway.serviceMonitor.enabled=true")
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]  # one replica: a budget would only block drains
    env = {e["name"]: e for e in the(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["QWEN_GATEWAY_REDIS_URL"]["value"] == "redis://redis:6379/0"
    monitor = the(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
    from_secret = gateway_docs(helm, "--set", "gateway.redis.urlSecretRef.name=redis-url")
    env = {e["name"]: e for e in the(from_secret, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["QWEN_GATEWAY_REDIS_URL"]["valueFrom"] == {"secretKeyRef": {"name": "redis-url", "key": "url"}}


def test_gateway_rbac_is_exactly_what_it_uses(helm: str) -> None:
    docs = gateway_docs(helm)
    assert grants(the(docs, "ClusterRole", GATEWAY)["rules"]) == {("inference.qwenops.io", "qweninferences"): {"list", "watch", "patch"},
                                                                  ("inference.qwenops.io", "qweninferences/scale"): {"patch"},
                                                                  ("", "secrets"): {"get"}}
    without = gateway_docs(helm, "--set", "gateway.readModelKeys=false")
    assert ("", "secrets") not in grants(the(without, "ClusterRole", GATEWAY)["rules"])
    keys = the(docs, "Role", f"{GATEWAY}-keys", NAMESPACE)
    assert grants(keys["rules"]) == {("", "secrets"): {"list", "watch"}, ("", "events"): {"create"}}
    assert the(docs, "ClusterRoleBinding", GATEWAY)["subjects"][0]["name"] == GATEWAY
    # Namespaced mode: the QwenInference grant only in the watched namespaces, and the gateway routes those only.
    docs = gateway_docs(helm, "--set-json", f'watchNamespaces={__import__("json").dumps(WATCHED)}', "--set", "gateway.keysNamespace=keys")
    assert not [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert sorted(d["metadata"]["namespace"] for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"] == GATEWAY) == WATCHED
    assert the(docs, "Role", f"{GATEWAY}-keys")["metadata"]["namespace"] == "keys"
    args = the(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[3:] == ["--namespace", "team-a", "--namespace", "team-b"]
