"""The vLLM stand-in speaks the surface the operator, Prometheus and the autoscaler rely on, and
behaves as vLLM does where the operator's settings matter: flags, loading, writes, drain, faults.
Loopback only; every process is bounded and stopped by its PID."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_loopback_port, wait_until
from vllm_standin import UsageError, VllmFlags

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
        stdout=log, stderr=subprocess.STDOUT,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path), "TMPDIR": str(tmp_path)},
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
    # The stand-in counts a request as running until its handler returns, a moment after the
    # client has the answer: read again until that request has left the gauge.
    deadline = time.monotonic() + 5
    after = metric_values(served)
    while after["vllm:num_requests_running"][labels] != 3 and time.monotonic() < deadline:
        time.sleep(0.05)
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


# ---- vLLM's process behaviour: flags, loading, writes, drain, faults --------------------------------

STANDIN = HERE / "vllm"


@pytest.fixture
def tmp_path(short_tmp_path: Path) -> Path:
    """Short: the stand-in binds a unix socket under TMPDIR, as vLLM does (conftest.short_tmp_path)."""
    return short_tmp_path


def start_standin(tmp_path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """`vllm serve MODEL --port P ARGS` with its writable folders in tmp_path (HOME, caches, HF_HOME)."""
    port = free_loopback_port()
    base_env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path / "home"),
                "VLLM_CACHE_ROOT": str(tmp_path / "vllm-cache"), "HF_HOME": str(tmp_path / "hf"), "TMPDIR": str(tmp_path)}
    process = subprocess.Popen(
        [str(STANDIN), "serve", "Qwen/Qwen3-0.6B-FP8", "--port", str(port), "--stand-in-max-seconds", "120", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**base_env, **(env or {})},
    )
    return process, port


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def stop(process: subprocess.Popen) -> str:
    if process.poll() is None:
        process.kill()
    output, _ = process.communicate(timeout=10)
    return output


def test_flags_come_from_the_operators_vllm_list_and_parse_as_vllm_does():
    flags = VllmFlags.load()
    assert flags.version == "v0.19.1"
    model, options = flags.parse([
        "Qwen/Qwen3-0.6B-FP8", "--served-model-name", "a", "b", "--max_model_len=8192", "-tp", "2", "--no-enable-prefix-caching",
        "--compilation-config.mode", "3", "-O3", "--api-k", "sk", "--enforce-eager", "--seed", "-1",
    ])
    assert model == "Qwen/Qwen3-0.6B-FP8"
    assert options["--served-model-name"] == ["a", "b"]
    assert options["--max-model-len"] == ["8192"]
    assert options["--tensor-parallel-size"] == ["2"]
    assert options["--no-enable-prefix-caching"] == [] and options["--enforce-eager"] == []
    assert options["--compilation-config"] == ["3"] and options["--optimization-level"] == ["3"]
    assert options["--api-key"] == ["sk"] and options["--seed"] == ["-1"]


@pytest.mark.parametrize("argv, message", [
    (["m", "--max-model-length", "8192"], "unrecognized arguments: --max-model-length"),  # a renamed or misspelt flag
    (["m", "--enable-reasoning"], "unrecognized arguments: --enable-reasoning (Deprecated"),  # removed in v0.9+
    (["m", "--disable-log-requests"], "unrecognized arguments: --disable-log-requests"),
    (["m", "--max-num"], "ambiguous option: --max-num"),
    (["m", "-xyz"], "unrecognized arguments: -xyz"),
    (["m", "other-model"], "unrecognized arguments: other-model"),
])
def test_flags_vllm_does_not_know_are_refused(argv, message):
    with pytest.raises(UsageError) as error:
        VllmFlags.load().parse(argv)
    assert str(error.value).startswith(message)


def test_an_unknown_flag_ends_the_process_with_argparses_exit_code(tmp_path):
    process, _ = start_standin(tmp_path, "--max-model-length", "8192")
    assert process.wait(timeout=20) == 2
    assert "unrecognized arguments: --max-model-length" in stop(process)


def test_it_listens_only_once_loaded_and_writes_where_vllm_writes(tmp_path):
    process, port = start_standin(tmp_path, "--served-model-name", "qwen3", env={"VLLM_STANDIN_LOAD_SECONDS": "3"})
    try:
        started = time.monotonic()
        time.sleep(1.5)
        assert not listening(port), "the stand-in listened while loading"
        wait_until(lambda: listening(port), 20, "the stand-in to listen after loading")
        assert time.monotonic() - started >= 2.5
        state = json.loads(call("GET", f"http://127.0.0.1:{port}/stand-in/state")[1])
        written = state["written"]
        assert written[0].startswith(str(tmp_path / "vllm-cache")) and written[1].startswith(str(tmp_path / "hf"))
        assert written[2].startswith(str(tmp_path)) and written[3].startswith("/dev/shm/")
        assert all(os.path.exists(path) for path in written)
    finally:
        stop(process)


def test_a_write_that_fails_ends_it_before_it_listens(tmp_path):
    # What a read-only root filesystem without the cache volume does to vLLM.
    process, _ = start_standin(tmp_path, env={"VLLM_CACHE_ROOT": "/dev/null/vllm"})
    assert process.wait(timeout=20) == 1
    assert "cannot write where vLLM writes" in stop(process)


def test_sigterm_drains_requests_in_flight_up_to_the_shutdown_timeout(tmp_path):
    process, port = start_standin(tmp_path, "--served-model-name", "qwen3", "--shutdown-timeout", "10",
                                  env={"VLLM_STANDIN_FAULT": "slow", "VLLM_STANDIN_SLOW_SECONDS": "3"})
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: listening(port), 20, "the stand-in to listen")
        result = {}
        request = threading.Thread(target=lambda: result.setdefault("r", call("POST", f"{base}/v1/completions", {"model": "qwen3", "prompt": "hi"})))
        request.start()
        wait_until(lambda: json.loads(call("GET", f"{base}/stand-in/state")[1])["in_flight"] == 1, 10, "the request in flight")
        process.send_signal(signal.SIGTERM)
        wait_until(lambda: not listening(port), 10, "the listener to close on SIGTERM")
        request.join(timeout=10)
        assert result["r"][0] == 200, "the request in flight was not drained"
        assert process.wait(timeout=10) == 0
    finally:
        stop(process)


def test_fault_switches_hang_slow_and_exit_with_crashing_starts(tmp_path):
    process, port = start_standin(tmp_path, "--served-model-name", "qwen3")
    base = f"http://127.0.0.1:{port}"
    completion = {"model": "qwen3", "prompt": "hi"}
    try:
        wait_until(lambda: listening(port), 20, "the stand-in to listen")
        assert call("PUT", f"{base}/stand-in/fault?mode=hang")[0] == 204
        with pytest.raises(OSError):  # the request never finishes (a timeout), while /health stays 200
            urllib.request.urlopen(urllib.request.Request(f"{base}/v1/completions", data=json.dumps(completion).encode(), method="POST"), timeout=2)
        assert call("GET", f"{base}/health")[0] == 200
        assert call("PUT", f"{base}/stand-in/fault?mode=slow&seconds=1.5")[0] == 204
        started = time.monotonic()
        assert call("POST", f"{base}/v1/completions", completion)[0] == 200
        assert time.monotonic() - started >= 1.4
        assert call("PUT", f"{base}/stand-in/fault?mode=exit&crash_starts=2")[0] == 204
        assert process.wait(timeout=10) == 1
    finally:
        stop(process)
    # The next two starts crash (the counter lives in the vLLM cache, as an emptyDir outlives a
    # container restart); the third serves again.
    for expected in (1, 1):
        process, _ = start_standin(tmp_path)
        assert process.wait(timeout=20) == expected
        assert "crashing on start" in stop(process)
    process, port = start_standin(tmp_path)
    try:
        wait_until(lambda: listening(port), 20, "the stand-in to serve after the crashing starts")
    finally:
        stop(process)


def test_crash_on_start_from_the_environment(tmp_path):
    process, _ = start_standin(tmp_path, env={"VLLM_STANDIN_CRASH_ON_START": "always"})
    assert process.wait(timeout=20) == 1
