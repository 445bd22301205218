"""The API key and the Hugging Face token never leave their Secrets (issue 4's acceptance).

A QwenInference whose Secrets hold distinctive random values goes through the transitions that
write the most: created before its Secrets exist, then unblocked, scaled, crash looping, fixed,
rotated. Then everything the operator and the cluster wrote about it is scanned for the values:
Deployments and ReplicaSets (full JSON), Pods, Events, the QwenInference with its status, the
operator's log (the session operator's and a debug-logging one's) and its /metrics. The Secrets
themselves go through the same scan as the positive control.
"""

from __future__ import annotations

import base64
import secrets
import urllib.request

import pytest
from kubernetes import client

from conftest import start_operator, stop_operator, wait_until
from qwen_resources import create, get, live_pods, patch_spec, wait_condition, wait_ready
from support_production import create_secret, raw_json

pytestmark = pytest.mark.cluster

# Everything in the namespace a controller, the scheduler or the operator writes to.
SCANNED_KINDS = (
    "deployments.apps", "replicasets.apps", "pods", "events", "events.events.k8s.io",
    "qweninferences.inference.qwenops.io", "services", "configmaps", "persistentvolumeclaims",
    "poddisruptionbudgets.policy", "networkpolicies.networking.k8s.io", "horizontalpodautoscalers.autoscaling",
    "endpointslices.discovery.k8s.io", "controllerrevisions.apps",
)


def leak_forms(value: str) -> list[str]:
    """How a value could show up: whole, base64-encoded (as in a Secret's data), or a chunk of it
    (a truncated log line or message)."""
    middle = len(value) // 2
    return [value, base64.b64encode(value.encode()).decode(), value[middle - 8 : middle + 8]]


def leaks(text: str, values: dict[str, str]) -> list[str]:
    return [f"{label} ({form!r})" for label, value in values.items() for form in leak_forms(value) if form in text]


def metrics_text(running) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=5).read().decode()


def test_api_key_and_hf_token_appear_only_in_their_secrets(operator, cluster, k8s, namespace, tmp_path):
    values = {"api key": f"sk-canary-{secrets.token_hex(20)}", "hf token": f"hf_canary{secrets.token_hex(20)}"}
    spec = {
        "model": {"source": {"tokenSecretRef": {"name": "hf-token", "key": "token"}}},
        "auth": {"apiKeySecretRef": {"name": "qwen-keys", "key": "api-key"}},
    }
    # A second operator for this namespace only, logging at debug level: whatever it reads (the
    # Secrets included, to check that they exist) must not reach even its most verbose log.
    verbose = start_operator(cluster, tmp_path / "verbose-operator.log", "--namespace", namespace, "--verbose")
    try:
        create(k8s, namespace, "guarded", spec)
        wait_condition(k8s, namespace, "guarded", "Ready", "False", "SecretNotFound")
        create_secret(k8s, namespace, "hf-token", {"token": values["hf token"]})
        create_secret(k8s, namespace, "qwen-keys", {"api-key": values["api key"]})
        wait_ready(k8s, namespace, "guarded", timeout=3 * operator.resync_seconds + 30)

        patch_spec(k8s, namespace, "guarded", {"replicas": 3, "networkPolicy": {"enabled": True}})
        wait_until(lambda: (get(k8s, namespace, "guarded").get("status") or {}).get("ready") == "3/3", 90, "3/3 ready")

        crashing = live_pods(k8s, namespace, "guarded")[0].metadata.name
        client.CoreV1Api(k8s).patch_namespaced_pod(crashing, namespace, {"metadata": {"labels": {"stage.qwenops.io/crash-loop": "true"}}})
        wait_condition(k8s, namespace, "guarded", "Degraded", "True", "CrashLoop")
        client.CoreV1Api(k8s).delete_namespaced_pod(crashing, namespace, grace_period_seconds=0)  # the fix: a fresh pod
        wait_ready(k8s, namespace, "guarded")

        # Rotation: new values in the Secrets change nothing the operator writes.
        rotated = {"api key": f"sk-canary-{secrets.token_hex(20)}", "hf token": f"hf_canary{secrets.token_hex(20)}"}
        client.CoreV1Api(k8s).patch_namespaced_secret("qwen-keys", namespace, {"stringData": {"api-key": rotated["api key"]}})
        client.CoreV1Api(k8s).patch_namespaced_secret("hf-token", namespace, {"stringData": {"token": rotated["hf token"]}})
        values |= {f"rotated {label}": value for label, value in rotated.items()}
        patch_spec(k8s, namespace, "guarded", {"replicas": 1})
        wait_until(lambda: (get(k8s, namespace, "guarded").get("status") or {}).get("ready") == "1/1", 90, "1/1 ready")
        wait_ready(k8s, namespace, "guarded")
        verbose_metrics = metrics_text(verbose)
    finally:
        stop_operator(verbose)

    scanned = {
        "namespace objects": raw_json(cluster, namespace, *SCANNED_KINDS),
        "operator log": operator.log_text(),
        "debug operator log": verbose.log_text(),
        "operator metrics": metrics_text(operator),
        "debug operator metrics": verbose_metrics,
    }
    # The scan looked at the right things: the references are there, the canaries are not.
    objects = scanned["namespace objects"]
    assert '"kind": "ReplicaSet"' in objects and '"kind": "Deployment"' in objects and '"reason": "CrashLoop"' in objects
    assert objects.count('"secretKeyRef"') >= 2 and '"qwen-keys"' in objects and '"hf-token"' in objects
    assert '"reason": "SecretNotFound"' in objects
    assert "guarded" in scanned["debug operator log"] and "qwen_operator_api_requests_total" in scanned["operator metrics"]
    for where, text in scanned.items():
        assert leaks(text, values) == [], f"secret values found in the {where}"

    # Positive control: the same scan finds every value (the current ones) in the Secrets.
    secret_json = raw_json(cluster, namespace, "secrets")
    current = {"api key": values["rotated api key"], "hf token": values["rotated hf token"]}
    assert sorted(leaks(secret_json, current)) == sorted(f"{label} ({base64.b64encode(v.encode()).decode()!r})" for label, v in current.items())


def test_the_scan_finds_a_value_that_does_leak(operator, cluster, k8s, namespace):
    """The scan's control for the objects: a value put in plain engine.env (the wrong way to pass
    a key) is found in the Deployment, the ReplicaSet, the Pod and the QwenInference."""
    leaked = {"plain env value": f"sk-canary-{secrets.token_hex(20)}"}
    create(k8s, namespace, "careless", {"engine": {"env": [{"name": "MY_KEY", "value": leaked["plain env value"]}]}})
    wait_ready(k8s, namespace, "careless")
    for kind in ("deployments.apps", "replicasets.apps", "pods", "qweninferences.inference.qwenops.io"):
        assert leaks(raw_json(cluster, namespace, kind), leaked), f"the scan missed the value in {kind}"
