"""The API client turns every failure into a KubeError the controller can judge: no answer and
throttling are transient (retried with backoff, Retry-After honoured), refusals are not.
Real HTTP on loopback: a closed port, and a tiny server that answers 429 and 422."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client as k8s_client

from qwen_operator.k8s.client import DEPLOYMENT, KubeApi, KubeError


def api_for(port: int) -> KubeApi:
    configuration = k8s_client.Configuration(host=f"http://127.0.0.1:{port}")
    configuration.retries = False
    return KubeApi(k8s_client.ApiClient(configuration), "qwen-operator", timeout=3)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_is_a_transient_kube_error():
    with pytest.raises(KubeError) as caught:
        api_for(closed_port()).get(DEPLOYMENT, "ns", "x")
    assert caught.value.status == 0 and caught.value.transient


@pytest.fixture
def answering():
    answers: dict[str, tuple[int, dict, dict]] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            code, headers, body = answers[self.path.rsplit("/", 1)[-1]]
            data = json.dumps(body).encode()
            self.send_response(code)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield answers, server.server_address[1]
    server.shutdown()


def test_throttling_is_transient_and_carries_retry_after(answering):
    answers, port = answering
    answers["busy"] = (429, {"Retry-After": "7"}, {"kind": "Status", "reason": "TooManyRequests", "message": "slow down"})
    answers["bad"] = (422, {}, {"kind": "Status", "reason": "Invalid", "message": "spec.x: Invalid value"})
    with pytest.raises(KubeError) as busy:
        api_for(port).get(DEPLOYMENT, "ns", "busy")
    assert busy.value.transient and busy.value.retry_after == 7.0 and busy.value.message == "slow down"
    with pytest.raises(KubeError) as bad:
        api_for(port).get(DEPLOYMENT, "ns", "bad")
    assert not bad.value.transient and bad.value.status == 422 and bad.value.reason == "Invalid"
