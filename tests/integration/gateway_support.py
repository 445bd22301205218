"""Helpers for the gateway's tests and its benchmark: stand-in engines, Redis and gateways as processes on
127.0.0.1, and QwenInferences and key Secrets in the local API server (a QwenInference's status is written by the
test, as the operator would, with an endpoint on loopback: no operator runs, and no packet leaves the machine)."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests

from conftest import free_loopback_port, wait_until

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "tests" / "standin" / "vllm_standin.py"
QWEN_OPERATOR = REPO / ".venv" / "bin" / "qwen-operator"
LOOPBACK = "127.0.0.1"


free_port = free_loopback_port


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """conftest.wait_until, polling every 0.1 s: these waits are on loopback servers."""
    return wait_until(predicate, timeout, what, interval)


@dataclass
class Process:
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_standins(model: str, count: int, workdir: Path, max_seconds: float = 1800, keep_alive: bool = False) -> tuple[Process, list[int]]:
    """`vllm_standin.py pods`: COUNT stand-in engines (not vLLM) serving MODEL on free loopback ports."""
    ports_file = workdir / f"standin-{model}.ports"
    log = workdir / f"standin-{model}.log"
    ports_file.unlink(missing_ok=True)  # a stand-in started again for the same model must not read the last one's ports
    args = [sys.executable, str(STANDIN), "pods", "--count", str(count), "--served-model-name", model,
            "--ports-file", str(ports_file), "--stand-in-max-seconds", str(max_seconds)]
    if keep_alive:
        args.append("--keep-alive")
    with open(log, "w") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    ports = wait_for(lambda: ports_file.exists() and json.loads(ports_file.read_text())["ports"], 30, f"stand-ins for {model}")
    return Process(process, log), ports


def start_redis(workdir: Path) -> tuple[Process, int]:
    """Debian's redis-server on a free loopback port, no persistence."""
    port = free_port()
    log = workdir / f"redis-{port}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
                                    "--protected-mode", "yes", "--dir", str(workdir)],
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    def answers() -> bool:
        with socket.create_connection((LOOPBACK, port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    wait_for(answers, 20, "redis-server")
    return Process(process, log), port


@dataclass
class Gateway:
    process: Process
    port: int
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://{LOOPBACK}:{self.port}"

    def metrics(self) -> str:
        return requests.get(self.url + "/metrics", timeout=5).text


def start_gateway(kubeconfig: str, namespace: str, workdir: Path, *args: str, env: dict | None = None) -> Gateway:
    port = free_port()
    log = workdir / f"gateway-{port}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(QWEN_OPERATOR), "gateway", "--host", LOOPBACK, "--port", str(port), "--keys-namespace", namespace, "-n", namespace, *args],
            env={**os.environ, "KUBECONFIG": kubeconfig, **(env or {})}, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    gateway = Gateway(Process(process, log), port)
    wait_for(lambda: requests.get(gateway.url + "/health/readiness", timeout=2).status_code == 200, 30, f"the gateway to be ready ({log})")
    return gateway


def key_secret(name: str, key: str, *, models: str = "*", rate: float | None = None, burst: int | None = None,
               tokens_per_minute: int | None = None, tokens_per_day: int | None = None) -> dict:
    annotations = {"gateway.qwenops.io/models": models}
    for field_, value in (("requests-per-second", rate), ("burst", burst), ("tokens-per-minute", tokens_per_minute),
                          ("tokens-per-day", tokens_per_day)):
        if value is not None:
            annotations[f"gateway.qwenops.io/{field_}"] = str(value)
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "labels": {"gateway.qwenops.io/key": "true"},
            "annotations": annotations}, "type": "Opaque", "data": {"key": base64.b64encode(key.encode()).decode()}}


def new_key() -> str:
    return "sk-test-" + uuid.uuid4().hex


def qwen_inference(name: str, served_name: str) -> dict:
    return {"apiVersion": "inference.qwenops.io/v1alpha1", "kind": "QwenInference", "metadata": {"name": name},
            "spec": {"model": {"name": "Qwen/Qwen3-0.6B-FP8", "servedName": served_name}}}


def ready_status(served_name: str, port: int, ready: int = 1, reason: str = "Ready") -> dict:
    """The status the operator would write, with the endpoint on a loopback stand-in."""
    return {"status": {"replicas": max(ready, 1), "readyReplicas": ready, "ready": f"{ready}/{max(ready, 1)}",
                       "endpoint": f"http://{LOOPBACK}:{port}/v1", "model": served_name,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False", "reason": reason, "message": "set by the test",
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}


def chat(model: str, content: str = "hello", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def sse_events(response: requests.Response) -> list[tuple[float, dict | str]]:
    """(arrival time, event) for each SSE event of a streamed response, as it arrives."""
    events = []
    buffer = b""
    for chunk in response.iter_content(chunk_size=None):
        buffer += chunk
        while b"\n\n" in buffer:
            raw, buffer = buffer.split(b"\n\n", 1)
            payload = raw.decode().removeprefix("data: ").strip()
            events.append((time.monotonic(), payload if payload == "[DONE]" else json.loads(payload)))
    return events
