"""End to end on kind: the operator image installed by the chart, really running in a cluster,
turns the stand-in sample into pods whose OpenAI API answers through a port-forward.

Needs a Docker engine (kind runs its node as a container). Where `docker info` fails these tests
are skipped and say so; the same flows run against the local control plane in tests/integration.
hack/kind-up.sh builds kind and helm (Go module proxy), both images, and installs the chart.
QWEN_KIND_KEEP=1 keeps the kind cluster afterwards (hack/kind-down.sh deletes it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KIND_UP = REPO / "hack" / "kind-up.sh"
KIND_DOWN = REPO / "hack" / "kind-down.sh"
KUBECTL = REPO / ".venv" / "bin" / "kubectl"
SAMPLE = Path(__file__).parent / "standin-sample.yaml"
STANDIN_IMAGE = os.environ.get("STANDIN_IMAGE", "qwen-vllm-standin:e2e")
RELEASE, RELEASE_NAMESPACE = "qwen-operator", "qwen-system"


def docker_problem() -> str | None:
    """Why there is no usable Docker engine, or None when `docker info` succeeds."""
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return "the docker command is not installed"
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30s"
    if result.returncode != 0:
        last_line = ((result.stderr or result.stdout).strip().splitlines() or ["no output"])[-1]
        return f"`docker info` failed: {last_line}"
    return None


DOCKER_PROBLEM = docker_problem()

pytestmark = [
    pytest.mark.kind,
    pytest.mark.skipif(
        DOCKER_PROBLEM is not None,
        reason=f"kind e2e needs a Docker engine and there is none here ({DOCKER_PROBLEM}); "
               "tests/integration runs the same flows against the local control plane",
    ),
]


def wait_until(predicate, timeout: float, what: str, interval: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Kind:
    def __init__(self, kubeconfig: str):
        self.kubeconfig = kubeconfig

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(KUBECTL), "--kubeconfig", self.kubeconfig, *args],
                              input=input, capture_output=True, text=True, check=check, timeout=120)

    def json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)


@pytest.fixture(scope="module")
def kind() -> Iterator[Kind]:
    up = subprocess.run([str(KIND_UP)], capture_output=True, text=True, timeout=3600)
    assert up.returncode == 0, f"hack/kind-up.sh failed:\n{up.stderr[-5000:]}"
    yield Kind(up.stdout.strip().splitlines()[-1])
    if os.environ.get("QWEN_KIND_KEEP") != "1":
        subprocess.run([str(KIND_DOWN)], capture_output=True, timeout=600)


@pytest.fixture
def e2e_namespace(kind: Kind) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    kind.kubectl("create", "namespace", name)
    yield name
    kind.kubectl("delete", "namespace", name, "--wait=false", check=False)


def ready(kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
    status = kind.json("qwi", name, "-n", namespace).get("status") or {}
    return next((c for c in status.get("conditions", []) if c["type"] == "Ready" and c["status"] == "True"), None)


def port_forward(kind: Kind, namespace: str, target: str, remote_port: int) -> tuple[subprocess.Popen, int]:
    """`kubectl port-forward` to a free port on 127.0.0.1; returns the process and the local port."""
    process = subprocess.Popen(
        ["timeout", "300", str(KUBECTL), "--kubeconfig", kind.kubeconfig, "port-forward", "-n", namespace,
         "--address", "127.0.0.1", target, f":{remote_port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    line = process.stdout.readline()  # "Forwarding from 127.0.0.1:PORT -> 8000"
    match = re.search(r"127\.0\.0\.1:(\d+) ->", line)
    if not match:
        process.terminate()
        raise AssertionError(f"kubectl port-forward did not start: {line}{process.stdout.read()[:2000]}")
    return process, int(match.group(1))


def http_json(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_chart_installed_operator_serves_the_standin_sample_through_a_port_forward(kind, e2e_namespace):
    # The chart's two replicas are ready (the standby's health endpoint answers too) and both
    # joined the peering under their pod names; one of them is active.
    assert kind.json("deployment", RELEASE, "-n", RELEASE_NAMESPACE)["status"].get("readyReplicas") == 2
    operator_pods = {p["metadata"]["name"] for p in kind.json("pods", "-n", RELEASE_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]}
    wait_until(lambda: operator_pods <= set(kind.json("clusterkopfpeering", "qwen-operator").get("status") or {}), 60,
               f"{sorted(operator_pods)} in the ClusterKopfPeering")

    sample = yaml.safe_load(SAMPLE.read_text())
    sample["spec"]["engine"]["image"] = STANDIN_IMAGE
    name = sample["metadata"]["name"]
    kind.kubectl("apply", "-n", e2e_namespace, "-f", "-", input=yaml.safe_dump(sample))
    wait_until(lambda: ready(kind, e2e_namespace, name), 300, f"Ready=True on {e2e_namespace}/{name}")

    pods = kind.json("pods", "-n", e2e_namespace, "-l", f"app.kubernetes.io/instance={name}")["items"]
    assert [p["spec"]["containers"][0]["image"] for p in pods] == [STANDIN_IMAGE]
    assert pods[0]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    served = kind.json("qwi", name, "-n", e2e_namespace)["status"]["model"]
    process, port = port_forward(kind, e2e_namespace, f"service/{name}", 8000)
    try:
        models = http_json(f"http://127.0.0.1:{port}/v1/models")
        assert [m["id"] for m in models["data"]] == [served]
        answer = http_json(f"http://127.0.0.1:{port}/v1/chat/completions",
                           {"model": served, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert answer["choices"][0]["message"]["content"]
    finally:
        process.terminate()
        process.wait(timeout=10)

    # Exactly one replica did the work: the other one waits in the peering.
    logs = [kind.kubectl("logs", "-n", RELEASE_NAMESPACE, pod).stdout for pod in sorted(operator_pods)]
    assert sum(f"reconciled {e2e_namespace}/{name}" in log for log in logs) == 1
