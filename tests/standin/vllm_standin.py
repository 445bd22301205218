"""A stand-in for vLLM's OpenAI server, for tests: no model, no GPU, only the HTTP surface the
operator, Prometheus and the autoscaler look at. It is NOT vLLM.

Routes (as vLLM v0.19 serves them):
  GET  /health                  200 (or the status set through the control endpoint)
  GET  /v1/models               the OpenAI model list with the served name
  POST /v1/chat/completions     a canned answer ("stand-in"), counted in the metrics
  POST /v1/completions          the same for plain completions
  GET  /metrics                 Prometheus text: vllm:num_requests_waiting, vllm:num_requests_running,
                                vllm:kv_cache_usage_perc (gauges, labels model_name and engine),
                                vllm:request_success_total, vllm:prompt_tokens_total,
                                vllm:generation_tokens_total (counters),
                                vllm:e2e_request_latency_seconds, vllm:time_to_first_token_seconds
                                (histograms) and http_requests_total{handler,method,status}
The API key (--api-key or VLLM_API_KEY) protects /v1/* only, as in vLLM.

Control endpoint, for tests (not part of vLLM):
  PUT  /stand-in/queue?waiting=N[&running=M][&kv=F]   sets the gauges
  PUT  /stand-in/health?status=503                    makes /health answer that status
  GET  /stand-in/state                                the current gauges as JSON

Two ways to run it:
  vllm_standin.py serve MODEL [--port 8000] [--host H] [--served-model-name N] [--api-key K] [vLLM flags...]
      one fake pod, as `vllm serve` is called (every flag it does not know, GPU ones included, is ignored);
      tests/standin/vllm is a `vllm` executable that runs this. The host defaults to 127.0.0.1
      (VLLM_STANDIN_HOST overrides it: an image for a kind cluster sets 0.0.0.0).
  vllm_standin.py pods --count N --served-model-name NAME [--ports-file PATH]
      N fake pods in one process, each on its own free port on 127.0.0.1; prints the ports as one
      JSON line ({"ports": [...]}) on stdout (and into --ports-file) once all listen.
Both stop by themselves after --stand-in-max-seconds (default 7200).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
CANNED_ANSWER = "stand-in"
# What one canned request "took": the histograms need observations with a plausible shape.
CANNED_LATENCY_SECONDS = 0.42
CANNED_TTFT_SECONDS = 0.03


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += 1
        self.sum += value


class FakePod:
    """The state of one fake vLLM server: what its /metrics and /health report."""

    def __init__(self, served_name: str, api_key: str | None = None, max_model_len: int = 32768):
        self.served_name = served_name
        self.api_key = api_key
        self.max_model_len = max_model_len
        self.lock = threading.Lock()
        self.waiting = 0.0
        self.running = 0.0
        self.kv_cache_usage = 0.0
        self.health_status = 200
        self.successes: dict[str, int] = {"stop": 0, "length": 0, "abort": 0}
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.http_requests: dict[tuple[str, str, str], int] = {}
        self.e2e_latency = Histogram(LATENCY_BUCKETS)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.created = int(time.time())

    def count_http(self, handler: str, method: str, status: int) -> None:
        with self.lock:
            key = (handler, method, f"{status // 100}xx")
            self.http_requests[key] = self.http_requests.get(key, 0) + 1

    def record_completion(self, prompt_tokens: int, generation_tokens: int) -> None:
        with self.lock:
            self.successes["stop"] += 1
            self.prompt_tokens += prompt_tokens
            self.generation_tokens += generation_tokens
            self.e2e_latency.observe(CANNED_LATENCY_SECONDS)
            self.ttft.observe(CANNED_TTFT_SECONDS)

    def metrics_text(self) -> str:
        labels = f'engine="0",model_name="{self.served_name}"'
        lines: list[str] = []

        def family(name: str, kind: str, help_: str) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")

        def histogram(name: str, help_: str, h: Histogram) -> None:
            family(name, "histogram", help_)
            for bound, count in zip(h.buckets, h.counts):
                lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {count}')
            lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {h.total}')
            lines.append(f"{name}_count{{{labels}}} {h.total}")
            lines.append(f"{name}_sum{{{labels}}} {h.sum}")

        with self.lock:
            family("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.")
            lines.append(f"vllm:num_requests_running{{{labels}}} {self.running}")
            family("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.")
            lines.append(f"vllm:num_requests_waiting{{{labels}}} {self.waiting}")
            family("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.")
            lines.append(f"vllm:kv_cache_usage_perc{{{labels}}} {self.kv_cache_usage}")
            family("vllm:request_success_total", "counter", "Count of successfully processed requests.")
            for reason, count in self.successes.items():
                lines.append(f'vllm:request_success_total{{{labels},finished_reason="{reason}"}} {count}')
            family("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.")
            lines.append(f"vllm:prompt_tokens_total{{{labels}}} {self.prompt_tokens}")
            family("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.")
            lines.append(f"vllm:generation_tokens_total{{{labels}}} {self.generation_tokens}")
            histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", self.e2e_latency)
            histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", self.ttft)
            family("http_requests_total", "counter", "Total number of requests by method, status and handler.")
            for (handler, method, status), count in sorted(self.http_requests.items()):
                lines.append(f'http_requests_total{{handler="{handler}",method="{method}",status="{status}"}} {count}')
        return "\n".join(lines) + "\n"


def make_handler(pod: FakePod) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "vllm-stand-in"

        def log_message(self, *_args) -> None:  # quiet: Prometheus scrapes every second
            pass

        def _send(self, status: int, body: bytes = b"", content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, value: object) -> None:
            self._send(status, json.dumps(value).encode())

        def _authorized(self) -> bool:
            return pod.api_key is None or self.headers.get("Authorization") == f"Bearer {pod.api_key}"

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/health":
                self._send(pod.health_status)
            elif path == "/metrics":
                self._send(200, pod.metrics_text().encode(), "text/plain; version=0.0.4; charset=utf-8")
            elif path == "/v1/models":
                if not self._authorized():
                    self._json(401, {"error": "Unauthorized"})
                else:
                    self._json(200, {"object": "list", "data": [{
                        "id": pod.served_name, "object": "model", "created": pod.created, "owned_by": "vllm",
                        "root": pod.served_name, "parent": None, "max_model_len": pod.max_model_len,
                    }]})
                pod.count_http("/v1/models", "GET", 200 if self._authorized() else 401)
            elif path == "/stand-in/state":
                with pod.lock:
                    self._json(200, {"waiting": pod.waiting, "running": pod.running, "kv": pod.kv_cache_usage, "health": pod.health_status})
            else:
                self._json(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            if path not in ("/v1/chat/completions", "/v1/completions"):
                self._json(404, {"detail": "Not Found"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                request = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError:
                request = None
            if not self._authorized():
                pod.count_http(path, "POST", 401)
                self._json(401, {"error": "Unauthorized"})
                return
            if not isinstance(request, dict) or request.get("model") != pod.served_name:
                pod.count_http(path, "POST", 404)
                self._json(404, {"object": "error", "message": f"The model `{(request or {}).get('model')}` does not exist.", "code": 404})
                return
            prompt_tokens, completion_tokens = 8, 1
            pod.record_completion(prompt_tokens, completion_tokens)
            pod.count_http(path, "POST", 200)
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
            if path == "/v1/chat/completions":
                choice = {"index": 0, "message": {"role": "assistant", "content": CANNED_ANSWER}, "finish_reason": "stop"}
                self._json(200, {"id": "chatcmpl-stand-in", "object": "chat.completion", "created": int(time.time()), "model": pod.served_name, "choices": [choice], "usage": usage})
            else:
                choice = {"index": 0, "text": CANNED_ANSWER, "finish_reason": "stop"}
                self._json(200, {"id": "cmpl-stand-in", "object": "text_completion", "created": int(time.time()), "model": pod.served_name, "choices": [choice], "usage": usage})

        def do_PUT(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            try:
                if url.path == "/stand-in/queue":
                    with pod.lock:
                        pod.waiting = float(query.get("waiting", pod.waiting))
                        pod.running = float(query.get("running", pod.running))
                        pod.kv_cache_usage = float(query.get("kv", pod.kv_cache_usage))
                elif url.path == "/stand-in/health":
                    pod.health_status = int(query["status"])
                else:
                    self._json(404, {"detail": "Not Found"})
                    return
            except (KeyError, ValueError) as error:
                self._json(400, {"detail": f"bad query: {error}"})
                return
            self._send(204)

    return Handler


def start_pod(pod: FakePod, host: str, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(pod))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"stand-in-{server.server_address[1]}", daemon=True).start()
    return server


def stop_after(seconds: float) -> None:
    """Ends the process after `seconds`, whatever the caller does (every helper stops by itself)."""
    if seconds > 0:
        timer = threading.Timer(seconds, lambda: os._exit(0))
        timer.daemon = True
        timer.start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vllm", description="vLLM stand-in for tests (not vLLM)")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="one fake vLLM server, as `vllm serve MODEL` is called")
    serve.add_argument("model")
    # Loopback unless told otherwise: an image for a real cluster sets VLLM_STANDIN_HOST=0.0.0.0.
    serve.add_argument("--host", default=os.environ.get("VLLM_STANDIN_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", nargs="+")
    serve.add_argument("--api-key", default=os.environ.get("VLLM_API_KEY"))
    serve.add_argument("--max-model-len", type=int, default=32768)
    serve.add_argument("--stand-in-max-seconds", type=float, default=7200)
    pods = commands.add_parser("pods", help="several fake pods, one port each, on 127.0.0.1")
    pods.add_argument("--count", type=int, required=True)
    pods.add_argument("--served-model-name", required=True)
    pods.add_argument("--ports-file")
    pods.add_argument("--stand-in-max-seconds", type=float, default=7200)
    args, ignored = parser.parse_known_args(argv)
    stop_after(args.stand_in_max_seconds)

    if args.command == "serve":
        served_name = args.served_model_name[0] if args.served_model_name else args.model
        server = start_pod(FakePod(served_name, args.api_key, args.max_model_len), args.host, args.port)
        note = f" (ignored flags: {' '.join(ignored)})" if ignored else ""
        print(f"vLLM stand-in serving {served_name} on {args.host}:{server.server_address[1]}{note}", flush=True)
    else:
        servers = [start_pod(FakePod(args.served_model_name), "127.0.0.1", 0) for _ in range(args.count)]
        line = json.dumps({"ports": [s.server_address[1] for s in servers]})
        if args.ports_file:
            with open(args.ports_file + ".tmp", "w") as f:
                f.write(line + "\n")
            os.replace(args.ports_file + ".tmp", args.ports_file)
        print(line, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
