"""The gateway on loopback: `qwen-operator gateway` as a process, stand-in engines (not vLLM) on 127.0.0.1, key
Secrets and QwenInferences in the local API server (their status written by the test, as the operator would).

One module-scoped gateway serves most tests; each test uses its own key, so limits never leak between tests."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid

import pytest
import requests

from conftest import install_crds
from gateway_support import (LOOPBACK, chat, free_port, key_secret, new_key, qwen_inference, ready_status, sse_events,
                             start_gateway, start_redis, start_standins, wait_for)

pytestmark = pytest.mark.cluster


class Env:
    def __init__(self, cluster, namespace, workdir):
        self.cluster, self.namespace, self.workdir = cluster, namespace, workdir
        self.suffix = uuid.uuid4().hex[:6]
        self.processes = []

    def apply(self, obj: dict) -> None:
        self.cluster.apply(json.dumps(obj), self.namespace)

    def add_key(self, name: str | None = None, **policy) -> tuple[str, str]:
        name = name or f"key-{uuid.uuid4().hex[:8]}"
        key = new_key()
        self.apply(key_secret(name, key, **policy))
        return name, key

    def add_model(self, qwi: str, model: str, port: int, ready: int = 1, reason: str = "Ready") -> None:
        self.apply(qwen_inference(qwi, model))
        self.cluster.kubectl("patch", "qweninference", qwi, "-n", self.namespace, "--subresource=status", "--type=merge",
                             "-p", json.dumps(ready_status(model, port, ready, reason)))


@pytest.fixture(scope="module")
def env(cluster, k8s, tmp_path_factory):
    from kubernetes import client

    install_crds(cluster)
    namespace = f"gateway-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(k8s).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace, labels={"qwen-tests": "true"})))
    environment = Env(cluster, namespace, tmp_path_factory.mktemp("gateway"))
    try:
        yield environment
    finally:
        for process in environment.processes:
            process.stop()
        client.CoreV1Api(k8s).delete_namespace(namespace)


@pytest.fixture(scope="module")
def models(env):
    """Two models, each on its own stand-in; a third QwenInference whose endpoint refuses connections."""
    names = {}
    for letter in "ab":
        process, ports = start_standins(f"gw-{letter}-{env.suffix}", 1, env.workdir)
        env.processes.append(process)
        names[letter] = (f"gw-{letter}-{env.suffix}", ports[0])
        env.add_model(f"model-{letter}", names[letter][0], ports[0])
    names["dead"] = (f"gw-dead-{env.suffix}", free_port())  # nothing listens there
    env.add_model("model-dead", *names["dead"])
    return names


@pytest.fixture(scope="module")
def gateway(env, models, cluster):
    gw = start_gateway(cluster.kubeconfig, env.namespace, env.workdir, "--header-timeout", "2", "--body-timeout", "2",
                       "--max-body-bytes", str(1 << 20), "--hold-timeout", "6", "--max-held", "25", "--activity-interval", "2")
    env.processes.append(gw.process)
    wait_for(lambda: len(requests.get(gw.url + "/health/detailed", timeout=2).json()["models"]) == 3, 20, "three models routed")
    yield gw
    assert "Traceback" not in gw.process.log_text(), gw.process.log_text()[-4000:]


def wait_key(gw, key: str) -> None:
    wait_for(lambda: requests.get(gw.url + "/v1/models", headers=auth(key), timeout=2).status_code == 200, 20, "the key to be loaded")


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def post(gw, key: str | None, body, path: str = "/v1/chat/completions", **kwargs) -> requests.Response:
    headers = {**(auth(key) if key else {}), **kwargs.pop("headers", {})}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    kwargs.setdefault("timeout", 30)
    return requests.post(gw.url + path, data=data, headers={"Content-Type": "application/json", **headers}, **kwargs)


def error_of(response: requests.Response) -> dict:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_routes_by_model_and_lists_only_the_keys_models(env, models, gateway):
    (a, _), (b, _) = models["a"], models["b"]
    _, only_a = env.add_key(models=a)
    _, every = env.add_key(models="*")
    wait_key(gateway, only_a)
    wait_key(gateway, every)
    for model in (a, b):
        answer = post(gateway, every, chat(model))
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == model
        assert answer.json()["choices"][0]["message"]["content"] == "stand-in"
    completion = post(gateway, every, {"model": b, "prompt": "hi"}, "/v1/completions")
    assert completion.status_code == 200 and completion.json()["model"] == b
    listed = requests.get(gateway.url + "/v1/models", headers=auth(only_a), timeout=5).json()
    assert [m["id"] for m in listed["data"]] == [a]
    assert {m["id"] for m in requests.get(gateway.url + "/v1/models", headers=auth(every), timeout=5).json()["data"]} == {
        a, b, models["dead"][0]}


def test_401_403_404_are_openai_shaped(env, models, gateway):
    (a, _), (b, _) = models["a"], models["b"]
    name, key = env.add_key(models=a)
    wait_key(gateway, key)
    missing = post(gateway, None, chat(a))
    assert missing.status_code == 401 and error_of(missing)["code"] == "missing_api_key"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    unknown = post(gateway, "sk-unknown-" + uuid.uuid4().hex, chat(a))
    assert unknown.status_code == 401 and error_of(unknown)["code"] == "invalid_api_key"
    assert key not in unknown.text
    forbidden = post(gateway, key, chat(b))
    assert forbidden.status_code == 403 and error_of(forbidden) == {
        "message": f"This API key may not use the model '{b}'.", "type": "permission_error", "param": "model", "code": "model_not_allowed"}
    nowhere = post(gateway, key, chat("no-such-model"))
    assert nowhere.status_code == 404 and error_of(nowhere)["code"] == "model_not_found"
    # The key is never in the metrics; its name is.
    text = gateway.metrics()
    assert key not in text
    assert f'key="{name}"' in text


def test_429_rate_with_burst_and_retry_after(env, models, gateway):
    a, _ = models["a"]
    name, key = env.add_key(models=a, rate=0.5, burst=3)
    wait_key(gateway, key)
    codes = [post(gateway, key, chat(a)) for _ in range(5)]
    assert [r.status_code for r in codes[:3]] == [200, 200, 200], [r.text for r in codes]
    refused = codes[3]
    assert refused.status_code == 429
    assert error_of(refused)["type"] == "requests" and error_of(refused)["code"] == "rate_limit_exceeded"
    # One token every 2 s: the next is at most 2 s away, and Retry-After is whole seconds, rounded up.
    assert refused.headers["Retry-After"] in ("1", "2"), refused.headers
    time.sleep(int(refused.headers["Retry-After"]))
    assert post(gateway, key, chat(a)).status_code == 200
    assert re.search(rf'qwen_gateway_rate_limited_total{{key="{name}"}} [1-9]', gateway.metrics())


def _avoid_minute_end(margin: float = 6.0) -> None:
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.2)


def test_token_quota_counted_from_usage_streamed_and_not(env, models, gateway):
    a, _ = models["a"]
    _, measuring = env.add_key(models=a)
    wait_key(gateway, measuring)
    plain = post(gateway, measuring, chat(a)).json()["usage"]  # what one non-streamed request costs
    streamed_cost = 8 + 2 + 4  # the stand-in's streams: 8 prompt, 2 reasoning and max_tokens content tokens
    quota = plain["total_tokens"] * 2 + streamed_cost * 2 - 1  # the fourth request still fits, the fifth not
    name, key = env.add_key(models=a, tokens_per_minute=quota)
    wait_key(gateway, key)
    _avoid_minute_end()
    assert post(gateway, key, chat(a)).status_code == 200
    # Streamed without asking for usage: the gateway asks for it, counts it, and leaves the usage event out.
    with post(gateway, key, chat(a, stream=True, max_tokens=4), stream=True) as streamed:
        events = [e for _, e in sse_events(streamed)]
    assert events[-1] == "[DONE]" and not any(isinstance(e, dict) and e.get("usage") for e in events)
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if isinstance(e, dict) and e["choices"]) == "stand-in token token"
    # Streamed asking for usage: the client gets the usage event.
    with post(gateway, key, chat(a, stream=True, max_tokens=4, stream_options={"include_usage": True}), stream=True) as streamed:
        usage = [e["usage"] for _, e in sse_events(streamed) if isinstance(e, dict) and e.get("usage")]
    assert usage == [{"prompt_tokens": 8, "completion_tokens": 6, "total_tokens": streamed_cost}]
    assert post(gateway, key, chat(a)).status_code == 200  # used: quota - plain + 1 - ... < quota
    refused = post(gateway, key, chat(a))
    assert refused.status_code == 429, refused.text
    error = error_of(refused)
    assert error["type"] == "tokens" and error["code"] == "quota_exceeded" and f"{quota} tokens per minute" in error["message"]
    assert abs(int(refused.headers["Retry-After"]) - (60 - time.time() % 60)) <= 2
    text = gateway.metrics()
    assert f'qwen_gateway_tokens_total{{key="{name}",kind="prompt",model="{a}"}} {2 * plain["prompt_tokens"] + 16}.0' in text
    assert f'qwen_gateway_tokens_total{{key="{name}",kind="completion",model="{a}"}} {2 * plain["completion_tokens"] + 12}.0' in text
    assert f'qwen_gateway_quota_refused_total{{key="{name}",window="minute"}} 1.0' in text


def test_streams_pass_through_as_they_arrive(env, models, gateway):
    a, port = models["a"]
    _, key = env.add_key(models=a)
    wait_key(gateway, key)
    requests.put(f"http://{LOOPBACK}:{port}/stand-in/stream?token_seconds=0.25", timeout=5)
    try:
        started = time.monotonic()
        with post(gateway, key, chat(a, stream=True, max_tokens=6), stream=True) as streamed:
            assert streamed.headers["Content-Type"].startswith("text/event-stream")
            events = sse_events(streamed)
    finally:
        requests.put(f"http://{LOOPBACK}:{port}/stand-in/stream?token_seconds=0", timeout=5)
    total = time.monotonic() - started
    # 10 events 0.25 s apart: without buffering the first arrives ~2 s before the last.
    assert total > 2.0
    assert events[-1][0] - events[0][0] > 1.8, [round(t - started, 2) for t, _ in events]
    reasoning = "".join(e["choices"][0]["delta"].get("reasoning") or "" for _, e in events if isinstance(e, dict) and e["choices"])
    assert reasoning == "Thinking it over."


def test_client_disconnect_cancels_the_upstream_request(env, models, gateway):
    a, port = models["a"]
    _, key = env.add_key(models=a)
    wait_key(gateway, key)
    requests.put(f"http://{LOOPBACK}:{port}/stand-in/stream?token_seconds=0.3", timeout=5)
    try:
        body = json.dumps(chat(a, stream=True, max_tokens=100)).encode()  # 30 s if it ran to the end
        with socket.create_connection((LOOPBACK, gateway.port), timeout=10) as raw:
            raw.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                        + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            assert b"200 OK" in raw.recv(4096)
            in_flight = lambda: requests.get(f"http://{LOOPBACK}:{port}/stand-in/state", timeout=2).json()["in_flight"]  # noqa: E731
            assert in_flight() == 1
        closed = time.monotonic()
        wait_for(lambda: in_flight() == 0, 5, "the stand-in to see its request cancelled")
        assert time.monotonic() - closed < 3
    finally:
        requests.put(f"http://{LOOPBACK}:{port}/stand-in/stream?token_seconds=0", timeout=5)
    wait_for(lambda: 'code="499"' in gateway.metrics(), 5, "the disconnect in the metrics")


def test_upstream_dying_mid_stream_or_unreachable(env, models, gateway):
    a, port = models["a"]
    dead, _ = models["dead"]
    _, key = env.add_key()
    wait_key(gateway, key)
    requests.put(f"http://{LOOPBACK}:{port}/stand-in/stream?break_after=3", timeout=5)
    try:
        with post(gateway, key, chat(a, stream=True, max_tokens=10), stream=True) as streamed:
            assert streamed.status_code == 200
            events = [e for _, e in sse_events(streamed)]
    finally:
        requests.put(f"http://{LOOPBACK}:{port}/stand-in/stream?break_after=0", timeout=5)
    assert len(events) == 5 and events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "upstream_error" and "broke off" in events[-2]["error"]["message"]
    unreachable = post(gateway, key, chat(dead))
    assert unreachable.status_code == 502 and error_of(unreachable)["message"] == f"The model '{dead}' cannot be reached."
    assert post(gateway, key, chat(a)).status_code == 200  # and the gateway goes on
    assert requests.get(gateway.url + "/health/liveness", timeout=2).status_code == 200


@pytest.mark.parametrize("body, param, message", [
    (b"{not json", None, "not valid JSON"),
    (b"", None, "empty"),
    (b"[1, 2]", None, "must be a JSON object, not list"),
    (b"\xff\xfe{}", None, "not UTF-8"),
    (json.dumps({"model": 5, "messages": []}), "model", "'model' must be a non-empty string"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}]}), "model", "'model' is required"),
    (json.dumps({"model": "MODEL", "messages": "hello"}), "messages", "'messages' must be a non-empty array"),
    (json.dumps({"model": "MODEL", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}), "stream", "'stream' must be true or false"),
    (json.dumps({"model": "MODEL", "messages": [{"role": "user", "content": "x"}], "max_tokens": -3}), "max_tokens", "positive integer"),
])
def test_bad_bodies_get_a_400_that_says_why(env, models, gateway, body, param, message):
    a, _ = models["a"]
    _, key = env.add_key(models=a)
    wait_key(gateway, key)
    answer = post(gateway, key, body.replace("MODEL", a) if isinstance(body, str) else body)
    assert answer.status_code == 400, answer.text
    error = error_of(answer)
    assert message in error["message"] and error["param"] == param and error["type"] == "invalid_request_error"


def status_of(raw_answer: bytes) -> int:
    return int(raw_answer.split(b"\r\n", 1)[0].split()[1])


def test_huge_bodies_and_header_tricks(env, models, gateway):
    a, _ = models["a"]
    _, key = env.add_key(models=a)
    wait_key(gateway, key)
    huge = post(gateway, key, json.dumps(chat(a, content="x" * (2 << 20))))
    assert huge.status_code == 413 and "larger than 1048576 bytes" in error_of(huge)["message"]
    for value in (f"Basic {key}", f"Bearer {key} {key}", f"Bearer {key},x", "Bearer"):
        tricked = post(gateway, None, chat(a), headers={"Authorization": value})
        assert tricked.status_code == 401, value
    assert post(gateway, None, chat(a), headers={"Authorization": f"bearer   {key}"}).status_code == 200  # the scheme is case-blind

    def raw(request: bytes) -> bytes:
        with socket.create_connection((LOOPBACK, gateway.port), timeout=10) as s:
            s.sendall(request)
            return s.recv(65536)

    body = json.dumps(chat(a)).encode()
    twice = raw(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n" + f"Authorization: Bearer {key}\r\n".encode() * 2
                + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert status_of(twice) == 401 and b"more than one Authorization header" in twice
    smuggled = raw(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n" + f"Authorization: Bearer {key}\r\n".encode()
                   + f"Content-Length: {len(body)}\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + body)
    assert status_of(smuggled) == 400, smuggled[:100]
    oversized = raw(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n")
    assert status_of(oversized) == 400 and b"Got more than 16384 bytes" in oversized, oversized[:100]
    crlf = raw(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + key.encode() + b"\rX-Injected: 1\r\n\r\n")
    assert status_of(crlf) == 400, crlf[:100]
    wrong_method = requests.get(gateway.url + "/v1/chat/completions", timeout=5)
    assert wrong_method.status_code == 405 and error_of(wrong_method)
    assert requests.get(gateway.url + "/health/liveness", timeout=2).status_code == 200


def test_slow_loris_clients_are_cut_off_and_others_served(env, models, gateway):
    a, _ = models["a"]
    _, key = env.add_key(models=a)
    wait_key(gateway, key)
    slow_headers = socket.create_connection((LOOPBACK, gateway.port), timeout=10)
    slow_body = socket.create_connection((LOOPBACK, gateway.port), timeout=10)
    try:
        slow_headers.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n")
        slow_body.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n" + f"Authorization: Bearer {key}\r\n".encode()
                          + b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"model\":")
        started = time.monotonic()
        # Others are served meanwhile.
        assert post(gateway, key, chat(a)).status_code == 200
        for _ in range(6):  # one header byte a second: never a complete request
            try:
                slow_headers.sendall(b"X")
            except OSError:
                break
            time.sleep(0.5)
        slow_headers.settimeout(5)
        assert slow_headers.recv(100) == b""  # closed by the gateway (--header-timeout 2)
        answer = slow_body.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert b"did not arrive within 2 s" in answer
        assert time.monotonic() - started < 6
    finally:
        slow_headers.close()
        slow_body.close()
    assert post(gateway, key, chat(a)).status_code == 200


def test_health_endpoints_and_model_states(env, models, gateway):
    a, _ = models["a"]
    _, key = env.add_key()
    wait_key(gateway, key)
    assert post(gateway, key, chat(a)).status_code == 200
    assert post(gateway, key, chat(models["dead"][0])).status_code == 502
    assert requests.get(gateway.url + "/health/liveness", timeout=2).text == "ok"
    assert requests.get(gateway.url + "/health/readiness", timeout=2).status_code == 200
    detailed = requests.get(gateway.url + "/health/detailed", timeout=2).json()
    assert detailed["status"] == "ok" and detailed["limits"]["store"].startswith("in memory")
    model = detailed["models"][a]
    assert model["state"] == "ready" and model["readyReplicas"] == 1 and not model["scaledToZero"]
    assert model["requests"] >= 1 and 0 <= model["errorRate"] <= 1 and model["latencyP50Seconds"] is not None
    assert detailed["models"][models["dead"][0]]["errorRate"] == 1.0
    # A model scaled to zero by hand (autoscaling off): 503 with Retry-After at once, and the state says why.
    zero_model = f"gw-zero-{env.suffix}"
    env.add_model("model-zero", zero_model, free_port(), ready=0, reason="ScaledToZero")
    env.cluster.kubectl("scale", "qweninference/model-zero", "-n", env.namespace, "--replicas=0")
    wait_for(lambda: requests.get(gateway.url + "/health/detailed", timeout=2).json()["models"].get(zero_model, {}).get("state") == "scaled-to-zero",
             10, "the scaled-to-zero model")
    answer = post(gateway, key, chat(zero_model))
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "10"
    assert "scaled to zero by its owner" in error_of(answer)["message"]


def _scale_to_zero_model(env, name: str, model: str, port: int) -> None:
    """A QwenInference with autoscaling.minReplicas 0, asleep (spec.replicas 0, status ScaledToZero)."""
    qwi = qwen_inference(name, model)
    qwi["spec"].update({"replicas": 0, "autoscaling": {"enabled": True, "minReplicas": 0, "maxReplicas": 2, "scaleToZeroAfterSeconds": 60}})
    env.apply(qwi)
    env.cluster.kubectl("patch", "qweninference", name, "-n", env.namespace, "--subresource=status", "--type=merge",
                        "-p", json.dumps(ready_status(model, port, 0, "ScaledToZero")))


def _replicas(env, name: str) -> int:
    return json.loads(env.cluster.kubectl("get", "qweninference", name, "-n", env.namespace, "-o", "json").stdout)["spec"]["replicas"]


def test_scale_from_zero_holds_20_requests_and_answers_them_all(env, models, gateway):
    """The gateway holds the requests, stamps the activity and asks for a replica through the scale subresource; the
    test plays the operator (sees spec.replicas 1, writes a ready status 1 s later, as a loading replica would)."""
    import concurrent.futures

    process, ports = start_standins(f"gw-wake-{env.suffix}", 1, env.workdir)
    env.processes.append(process)
    model = f"gw-wake-{env.suffix}"
    _scale_to_zero_model(env, "model-wake", model, ports[0])
    _, key = env.add_key(models=model, rate=100, burst=100)
    wait_key(gateway, key)
    wait_for(lambda: requests.get(gateway.url + "/health/detailed", timeout=2).json()["models"].get(model, {}).get("scaleFromZero"),
             10, "the sleeping model")

    def streamed() -> tuple[int, float | None]:
        sent = time.monotonic()
        with post(gateway, key, chat(model, stream=True), stream=True, timeout=30) as answer:
            if answer.status_code != 200:
                return answer.status_code, answer.text
            events = sse_events(answer)
            return 200, events[0][0] - sent

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(streamed) for _ in range(20)]
        wait_for(lambda: _replicas(env, "model-wake") == 1 or any(f.done() for f in futures), 5, "the gateway to ask for a replica")
        assert not any(f.done() for f in futures), [f.result() for f in futures if f.done()]
        asked = time.monotonic() - started
        annotations = json.loads(env.cluster.kubectl("get", "qweninference", "model-wake", "-n", env.namespace, "-o", "json").stdout)["metadata"]["annotations"]
        assert "gateway.qwenops.io/last-request" in annotations
        assert requests.get(gateway.url + "/health/detailed", timeout=2).json()["models"][model]["held"] == 20
        time.sleep(1.0)  # "loading"
        env.cluster.kubectl("patch", "qweninference", "model-wake", "-n", env.namespace, "--subresource=status", "--type=merge",
                            "-p", json.dumps(ready_status(model, ports[0], 1)))
        results = [f.result(timeout=30) for f in futures]
    assert [code for code, _ in results] == [200] * 20
    first_token = min(t for _, t in results)
    print(f"scale from zero on loopback: replica asked for after {asked:.2f} s, first token after {first_token:.2f} s "
          f"(1 s of emulated load), all 20 answered")
    assert first_token < 5
    assert 'qwen_gateway_scale_from_zero_waits_total{model="' + model + '",outcome="served"} 20.0' in gateway.metrics()


def test_held_requests_time_out_with_503_and_a_full_queue_refuses(env, gateway):
    model = f"gw-never-{env.suffix}"
    _scale_to_zero_model(env, "model-never", model, free_port())
    _, key = env.add_key(models=model, rate=100, burst=100)
    wait_key(gateway, key)
    wait_for(lambda: requests.get(gateway.url + "/health/detailed", timeout=2).json()["models"].get(model, {}).get("scaleFromZero"),
             10, "the sleeping model")
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(27) as pool:
        futures = [pool.submit(post, gateway, key, chat(model)) for _ in range(27)]
        answers = [f.result(timeout=30) for f in futures]
    codes = sorted(a.status_code for a in answers)
    assert codes == [503] * 27
    full = [a for a in answers if "already wait" in error_of(a)["message"]]
    timed_out = [a for a in answers if "it was waited for 6 s" in error_of(a)["message"]]
    assert len(full) == 2 and len(timed_out) == 25  # --max-held 25, --hold-timeout 6
    assert all(a.headers["Retry-After"] == "10" for a in answers)
    assert _replicas(env, "model-never") == 1  # it was asked for
    assert requests.get(gateway.url + "/health/liveness", timeout=2).status_code == 200


def test_a_badly_declared_key_is_refused_with_an_event(env, gateway, k8s):
    from kubernetes import client

    name = f"bad-{uuid.uuid4().hex[:6]}"
    env.apply(key_secret(name, new_key(), rate="fast"))
    events = wait_for(lambda: [e for e in client.CoreV1Api(k8s).list_namespaced_event(env.namespace).items
                               if e.involved_object.name == name and e.reason == "InvalidGatewayKey"], 15, "an InvalidGatewayKey Event")
    assert "requests-per-second must be a number, not 'fast'" in events[0].message
    assert name in requests.get(gateway.url + "/health/detailed", timeout=2).json()["keys"]["invalid"]


def test_limits_across_two_replicas(env, models, cluster):
    """With Redis, two gateways enforce one bucket; without, each enforces its half (--replicas 2)."""
    a, _ = models["a"]
    redis, port = start_redis(env.workdir)
    env.processes.append(redis)
    shared = [start_gateway(cluster.kubeconfig, env.namespace, env.workdir, "--redis-url", f"redis://{LOOPBACK}:{port}/0",
                            "--redis-prefix", env.suffix) for _ in range(2)]
    env.processes += [g.process for g in shared]
    _, key = env.add_key(models=a, rate=0.2, burst=6)  # refills one every 5 s: the burst is what counts here
    for g in shared:
        wait_key(g, key)
    assert requests.get(shared[0].url + "/health/detailed", timeout=2).json()["limits"]["store"] == "Redis, exact across replicas"
    codes = [post(shared[i % 2], key, chat(a)).status_code for i in range(12)]
    assert codes.count(200) == 6 and codes[:6] == [200] * 6, codes
    assert set(codes[6:]) == {429}
    # Without Redis: --replicas 2 gives each gateway half the burst.
    alone = start_gateway(cluster.kubeconfig, env.namespace, env.workdir, "--replicas", "2")
    env.processes.append(alone.process)
    _, key2 = env.add_key(models=a, rate=0.2, burst=6)
    wait_key(alone, key2)
    codes = [post(alone, key2, chat(a)).status_code for _ in range(6)]
    assert codes == [200] * 3 + [429] * 3, codes
    redis.stop()
    wait_for(lambda: requests.get(shared[0].url + "/health/readiness", timeout=5).status_code == 503, 15, "readiness to report Redis gone")
    assert "Redis does not answer" in requests.get(shared[0].url + "/health/readiness", timeout=5).text
    refused = post(shared[0], key, chat(a))
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5" and "limit store does not answer" in error_of(refused)["message"]


def test_the_convenience_api_maps_onto_chat_completions(env, models, gateway):
    a, _ = models["a"]
    _, only_a = env.add_key(models=a, tokens_per_day=100000)
    _, every = env.add_key(models="*")
    wait_key(gateway, only_a)
    wait_key(gateway, every)
    generated = post(gateway, only_a, {"prompt": "hello", "max_tokens": 8}, "/generate")  # the key's only model
    assert generated.status_code == 200, generated.text
    assert generated.json()["text"] == "stand-in" and generated.json()["model"] == a and generated.json()["usage"]["completion_tokens"] == 1
    thought = post(gateway, only_a, {"prompt": "why?"}, "/thinking").json()
    assert set(thought) == {"model", "text", "thinking", "usage"}
    batch = post(gateway, only_a, {"prompts": ["one", "two", "three"]}, "/batch_generate").json()["results"]
    assert [r["text"] for r in batch] == ["stand-in"] * 3
    partly = post(gateway, every, {"model": models["dead"][0], "prompts": ["x"]}, "/batch_generate").json()["results"]
    assert partly[0]["status"] == 502 and "cannot be reached" in partly[0]["error"]["message"]
    ambiguous = post(gateway, every, {"prompt": "hello"}, "/generate")
    assert ambiguous.status_code == 400 and "'model' is required" in error_of(ambiguous)["message"]
    assert post(gateway, only_a, {"prompt": ""}, "/generate").status_code == 400
    assert post(gateway, only_a, {"prompts": ["x"] * 33}, "/batch_generate").status_code == 400
    stats = requests.get(gateway.url + "/stats", headers=auth(only_a), timeout=5).json()
    assert stats["limits"]["tokensPerDay"] == 100000 and list(stats["models"]) == [a]
    assert stats["tokensUsed"]["day"] == sum(r["usage"]["total_tokens"] for r in batch) + generated.json()["usage"]["total_tokens"] + thought["usage"]["total_tokens"]


def test_response_cache_for_deterministic_requests_of_models_that_opt_in(env, models, gateway):
    b, port = models["b"]
    _, key = env.add_key(models=b)
    wait_key(gateway, key)
    env.cluster.kubectl("annotate", "qweninference", "model-b", "-n", env.namespace, "gateway.qwenops.io/response-cache=true", "--overwrite")
    wait_for(lambda: requests.get(gateway.url + "/health/detailed", timeout=2).json()["models"][b]["responseCache"], 10, "the annotation to be seen")
    served = lambda: sum(float(line.rsplit(" ", 1)[1]) for line in requests.get(f"http://{LOOPBACK}:{port}/metrics", timeout=5).text.splitlines()  # noqa: E731
                         if line.startswith("vllm:request_success_total"))
    before = served()
    first = post(gateway, key, chat(b, content=f"cache me {uuid.uuid4()}", temperature=0))
    second = post(gateway, key, chat(b, content=json.loads(first.request.body)["messages"][0]["content"], temperature=0))
    assert first.status_code == second.status_code == 200
    assert "X-Cache" not in first.headers and second.headers["X-Cache"] == "hit" and second.content == first.content
    assert served() == before + 1  # the second never reached the model
    # Not cached: a sampled request, a stream.
    sampled = [post(gateway, key, chat(b, content="same", temperature=0.7)) for _ in range(2)]
    assert all("X-Cache" not in r.headers for r in sampled)
    with post(gateway, key, chat(b, content="same", temperature=0, stream=True), stream=True) as streamed:
        assert "X-Cache" not in streamed.headers and sse_events(streamed)[-1][1] == "[DONE]"
    text = gateway.metrics()
    assert re.search(r'qwen_gateway_response_cache_total\{model="' + b + r'",result="hit"\} [1-9]', text)


def test_the_engines_own_api_key_is_sent_and_never_the_clients(env, gateway, cluster):
    """A QwenInference with spec.auth.apiKeySecretRef: vLLM (here the stand-in's `serve`, which checks the key as vLLM
    does) gets its own key from that Secret; the client's gateway key never goes upstream."""
    import subprocess
    import sys

    from gateway_support import STANDIN, Process

    model, port, engine_key = f"gw-auth-{env.suffix}", free_port(), "engine-" + uuid.uuid4().hex
    log = env.workdir / "standin-auth.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, str(STANDIN), "serve", "Qwen/Qwen3-0.6B-FP8", "--host", LOOPBACK, "--port", str(port),
                                    "--served-model-name", model, "--api-key", engine_key, "--stand-in-max-seconds", "600"],
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    env.processes.append(Process(process, log))
    wait_for(lambda: requests.get(f"http://{LOOPBACK}:{port}/health", timeout=1).status_code == 200, 30, "the stand-in with a key")
    env.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "engine-key"}, "stringData": {"api-key": engine_key}})
    qwi = qwen_inference("model-auth", model)
    qwi["spec"]["auth"] = {"apiKeySecretRef": {"name": "engine-key", "key": "api-key"}}
    env.apply(qwi)
    env.cluster.kubectl("patch", "qweninference", "model-auth", "-n", env.namespace, "--subresource=status", "--type=merge",
                        "-p", json.dumps(ready_status(model, port)))
    _, key = env.add_key(models=model)
    wait_key(gateway, key)
    wait_for(lambda: model in requests.get(gateway.url + "/health/detailed", timeout=2).json()["models"], 10, "the model with a key")
    answer = post(gateway, key, chat(model))
    assert answer.status_code == 200, answer.text
    # Without the gateway, the client's own key does not open the engine.
    assert requests.post(f"http://{LOOPBACK}:{port}/v1/chat/completions", json=chat(model), headers=auth(key), timeout=5).status_code == 401
    assert engine_key not in gateway.process.log_text() and key not in gateway.process.log_text()
