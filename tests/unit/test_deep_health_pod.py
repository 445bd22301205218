"""spec.engine.deepHealth in the vLLM pods and in the status: the agent container, vLLM's liveness probe on the
agent's /livez, the preStop hook that records the verdict, and EngineHung read back from the pod's status."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from qwen_operator import cache, status as status_lib
from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.builders.common import Owner
from qwen_operator.builders.deployment import (
    AGENT_CONTAINER_NAME,
    AGENT_PORT,
    PRE_STOP_VERDICT_SCRIPT,
    build_deployment,
)
from qwen_operator.catalog import resolve_model
from qwen_operator.config import DEFAULT_OPERATOR_IMAGE, OperatorConfig, from_env

OWNER = Owner(name="chat", namespace="team-a", uid="0b6d1f4e-uid", generation=3)


def containers(spec_fields: dict[str, Any], config: OperatorConfig = OperatorConfig()) -> dict[str, dict[str, Any]]:
    spec = QwenInferenceSpec.model_validate(spec_fields)
    deployment = build_deployment(OWNER, spec, resolve_model(spec), config, manage_replicas=True)
    pod = deployment["spec"]["template"]["spec"]
    # The agent is a native sidecar: an init container with restartPolicy Always.
    sidecars = [c for c in pod.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    return {c["name"]: c for c in pod["containers"] + sidecars}


DEEP = {"engine": {"deepHealth": {"enabled": True, "intervalSeconds": 4, "timeoutSeconds": 2, "failuresBeforeRestart": 5}}}


def test_on_by_default() -> None:
    assert list(containers({})) == ["vllm", AGENT_CONTAINER_NAME]


@pytest.mark.parametrize("pre_stop", [0, 10])
def test_the_pre_stop_hook_keeps_the_drain_sleep(pre_stop: int) -> None:
    command = containers({"engine": {"preStopSleepSeconds": pre_stop}})["vllm"]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[-1] == str(pre_stop)


def test_disabled_keeps_vllms_own_health_liveness_and_no_agent() -> None:
    found = containers({"engine": {"deepHealth": {"enabled": False}}})
    assert list(found) == ["vllm"]
    assert found["vllm"]["livenessProbe"]["httpGet"]["path"] == "/health"
    assert found["vllm"]["lifecycle"] == {"preStop": {"sleep": {"seconds": 10}}}


def test_enabled_adds_the_agent_and_points_vllms_liveness_at_it() -> None:
    found = containers(DEEP, OperatorConfig(operator_image="registry.example/qwen-operator:1.2.3"))
    vllm, agent = found["vllm"], found[AGENT_CONTAINER_NAME]
    assert vllm["livenessProbe"]["httpGet"] == {"path": "/livez", "port": AGENT_PORT}
    assert vllm["livenessProbe"]["terminationGracePeriodSeconds"] <= 10
    # The startup and readiness probes stay on vLLM's own /health: the load is guarded as before.
    assert vllm["startupProbe"]["httpGet"]["path"] == "/health" and vllm["readinessProbe"]["httpGet"]["path"] == "/health"
    assert agent["image"] == "registry.example/qwen-operator:1.2.3"
    assert agent["args"][:1] == ["agent"]
    arguments = dict(zip(agent["args"][1::2], agent["args"][2::2]))
    assert arguments == {"--port": str(AGENT_PORT), "--vllm-port": "8000", "--served-model-name": "qwen3-0.6b-fp8",
                         "--interval": "4", "--timeout": "2", "--failures": "5"}
    assert agent["ports"] == [{"name": "agent", "containerPort": AGENT_PORT, "protocol": "TCP"}]
    security = agent["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["runAsNonRoot"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert agent["resources"]["requests"] == agent["resources"]["limits"]
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # A native sidecar, started (its startup probe passed) before vLLM, and the last init container (after the download).
    assert agent["restartPolicy"] == "Always" and agent["startupProbe"]["httpGet"]["path"] == "/healthz"
    spec = QwenInferenceSpec.model_validate(DEEP)
    pod = build_deployment(OWNER, spec, resolve_model(spec), OperatorConfig(), manage_replicas=True)["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["download-model", AGENT_CONTAINER_NAME]
    assert [c["name"] for c in pod["containers"]] == ["vllm"]
    command = vllm["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python3", "-c"] and command[3:] == [str(AGENT_PORT), "/livez", "10"]


def test_the_agent_gets_the_api_key_from_the_same_secret_as_vllm() -> None:
    found = containers({**DEEP, "auth": {"apiKeySecretRef": {"name": "keys", "key": "api-key"}}})
    key = {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "api-key"}}}
    assert key in found["vllm"]["env"] and found[AGENT_CONTAINER_NAME]["env"] == [key]
    assert containers(DEEP)[AGENT_CONTAINER_NAME]["env"] == []


def test_the_agent_image_is_the_operators_own() -> None:
    assert OperatorConfig().operator_image == DEFAULT_OPERATOR_IMAGE
    assert from_env({"QWEN_OPERATOR_IMAGE": "r/q:9"}).operator_image == "r/q:9"
    assert from_env({}).operator_image == DEFAULT_OPERATOR_IMAGE


def test_timeout_may_not_exceed_the_interval() -> None:
    spec = QwenInferenceSpec.model_validate(DEEP)
    assert spec.engine.deep_health.timeout_seconds <= spec.engine.deep_health.interval_seconds


@pytest.mark.parametrize(("status", "body", "written", "slept"), [(500, "EngineHung: 3 checks failed", "EngineHung: 3 checks failed", False),
                                                                   (200, "ok", "", True), (None, "", "", True)])
def test_pre_stop_hook_writes_the_verdict_or_sleeps(tmp_path, status, body, written, slept) -> None:
    """The hook, run for real against a small server standing in for the agent (the path of the termination log
    swapped for a temporary file)."""
    import http.server
    import threading

    class Agent(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Agent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    log = tmp_path / "termination-log"
    log.write_text("")
    script = PRE_STOP_VERDICT_SCRIPT.replace("/dev/termination-log", str(log))
    port = str(server.server_address[1]) if status is not None else "1"
    try:
        import time

        started = time.monotonic()
        subprocess.run([sys.executable, "-c", script, port, "/livez", "0.5"], check=True, timeout=20)
        took = time.monotonic() - started
    finally:
        server.shutdown()
    assert log.read_text() == written
    assert (took >= 0.5) == slept


def vllm_status(ready: bool, message: str | None, restarts: int = 1, state: dict | None = None) -> dict[str, Any]:
    terminated = {"exitCode": 137, "reason": "Error", **({"message": message} if message else {})}
    return {"name": "vllm", "ready": ready, "started": ready, "restartCount": restarts, "state": state or {"running": {}},
            "lastState": {"terminated": terminated}}


def observe(container: dict[str, Any], ready: int) -> dict[str, dict[str, Any]]:
    pod = {"metadata": {"name": "p1"}, "spec": {"nodeName": "n1"}, "status": {"containerStatuses": [container]}}
    pod = cache.expand(cache.slim_pod(pod))  # as the reconcile sees pods: through the watch-fed cache
    deployment = {"metadata": {"generation": 1}, "spec": {"replicas": 1},
                  "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": ready, "availableReplicas": ready, "updatedReplicas": 1}}
    result = status_lib.compute_status(OWNER, "qwen3-0.6b-fp8", status_lib.Observation(desired_replicas=1, deployment=deployment, pods=[pod]), {}, "t")
    return {c["type"]: c for c in result["conditions"]}


VERDICT = "EngineHung: 3 checks failed in a row over 30 s; last: /health is 200 but no tokens were generated"


@pytest.mark.parametrize(
    ("case", "container", "ready", "reason", "degraded"),
    [
        ("restarted for a hang, loading again", vllm_status(False, VERDICT), 0, "EngineHung", "True"),
        ("restarted for an unhealthy /health", vllm_status(False, "EngineUnhealthy: /health answered 503"), 0, "EngineUnhealthy", "True"),
        ("restarted for a hang, three times already", vllm_status(False, VERDICT, restarts=4), 0, "EngineHung", "True"),
        ("serving again after the hang", vllm_status(True, VERDICT), 1, "Ready", "False"),
        ("another termination message is not a hang", vllm_status(False, "Traceback: CUDA out of memory"), 0, "ModelLoading", "False"),
    ],
)
def test_engine_hung_in_the_status(case: str, container: dict[str, Any], ready: int, reason: str, degraded: str) -> None:
    found = observe(container, ready)
    assert (found["Ready"]["reason"], found["Degraded"]["status"]) == (reason, degraded), case
    if reason.startswith("Engine"):
        assert "deep health" in found["Ready"]["message"] and container["lastState"]["terminated"]["message"].split(": ", 1)[1] in found["Ready"]["message"]
