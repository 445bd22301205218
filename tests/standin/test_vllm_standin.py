"""The vLLM stand-in speaks the surface the operator, Prometheus and the autoscaler rely on.
Loopback only; every process is bounded and stopped by its PID."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_loopback_port, wait_until

HERE = Path(__file__).resolve().parent


def call(method: str, url: str, body: dict | None = None, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, method=method, headers=headers, data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture
def served(tmp_path):
    """`vllm serve` as the operator's pods call it (GPU flags included), answered by the stand-in."""
    port = free_loopback_port()
    log = open(tmp_path / "standin.log", "w")
    process = subprocess.Popen(
        [str(HERE / "vllm"), "serve", "Qwen/Qwen3-0.6B-FP8", "--served-model-name", "qwen3-0.6b-fp8", "--port", str(port),
         "--gpu-memory-utilization", "0.9", "--max-model-len", "8192", "--reasoning-parser", "qwen3", "--api-key", "sk-test",
         "--stand-in-max-seconds", "120"],
        stdout=log, stderr=subprocess.STDOUT, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: call("GET", f"{base}/health")[0] == 200, 20, "the stand-in's /health")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def metric_values(base: str) -> dict[str, dict[tuple, float]]:
    status, text = call("GET", f"{base}/metrics")
    assert status == 200
    values: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            values.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return values


def test_models_and_completions_need_the_api_key_and_health_does_not(served):
    assert call("GET", f"{served}/v1/models")[0] == 401
    status, body = call("GET", f"{served}/v1/models", token="sk-test")
    (model,) = json.loads(body)["data"]
    assert status == 200 and model["id"] == "qwen3-0.6b-fp8" and model["max_model_len"] == 8192
    request = {"model": "qwen3-0.6b-fp8", "messages": [{"role": "user", "content": "hi"}]}
    assert call("POST", f"{served}/v1/chat/completions", request)[0] == 401
    status, body = call("POST", f"{served}/v1/chat/completions", request, token="sk-test")
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "stand-in"
    assert call("POST", f"{served}/v1/chat/completions", {**request, "model": "other"}, token="sk-test")[0] == 404
    assert call("PUT", f"{served}/stand-in/health?status=503")[0] == 204
    assert call("GET", f"{served}/health")[0] == 503


def test_metrics_are_vllm_shaped_and_follow_the_control_endpoint(served):
    labels = (("engine", "0"), ("model_name", "qwen3-0.6b-fp8"))
    before = metric_values(served)
    assert before["vllm:num_requests_waiting"][labels] == 0
    assert call("PUT", f"{served}/stand-in/queue?waiting=20&running=3&kv=0.5")[0] == 204
    call("POST", f"{served}/v1/completions", {"model": "qwen3-0.6b-fp8", "prompt": "hi"}, token="sk-test")
    after = metric_values(served)
    assert after["vllm:num_requests_waiting"][labels] == 20
    assert after["vllm:num_requests_running"][labels] == 3
    assert after["vllm:kv_cache_usage_perc"][labels] == 0.5
    assert after["vllm:request_success_total"][tuple(sorted(labels + (("finished_reason", "stop"),)))] == 1
    assert after["vllm:e2e_request_latency_seconds_count"][labels] == 1
    assert after["vllm:time_to_first_token_seconds_count"][labels] == 1
    assert after["vllm:generation_tokens_total"][labels] > before["vllm:generation_tokens_total"][labels]
    assert after["http_requests_total"][(("handler", "/v1/completions"), ("method", "POST"), ("status", "2xx"))] == 1
    assert call("PUT", f"{served}/stand-in/queue?waiting=many")[0] == 400
