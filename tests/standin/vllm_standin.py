"""A stand-in for vLLM's OpenAI server, for tests: no model, no GPU, only the HTTP surface and the
process behaviour the operator, its probes, Prometheus and the autoscaler look at. It is NOT vLLM.

Routes (as vLLM v0.19 serves them):
  GET  /health                  200 (or the status set through the control endpoint)
  GET  /v1/models               the OpenAI model list with the served name
  POST /v1/chat/completions     a canned answer ("stand-in"), counted in the metrics
  POST /v1/completions          the same for plain completions
  POST /v1/chat/completions/render, /v1/completions/render
                                the prompt's token ids ({"token_ids": [...]}), as vLLM's render
                                endpoints (vllm-router's cache_aware policy asks for them); POST /tokenize
                                the same in /tokenize's shape. Ids are emulated: one per 4 characters
  GET  /metrics                 Prometheus text: vllm:num_requests_waiting, vllm:num_requests_running,
                                vllm:kv_cache_usage_perc (gauges, labels model_name and engine),
                                vllm:request_success_total, vllm:prompt_tokens_total,
                                vllm:generation_tokens_total, vllm:prefix_cache_queries_total,
                                vllm:prefix_cache_hits_total (counters, in tokens, as vLLM's),
                                vllm:e2e_request_latency_seconds, vllm:time_to_first_token_seconds
                                (histograms) and http_requests_total{handler,method,status}
The API key (--api-key or VLLM_API_KEY) protects /v1/* only, as in vLLM; /health and /metrics stay open.
Every completion answers with the header X-Stand-In-Pod (the pod's name: the host name under `serve`,
pod-<port> under `pods`), so a test can tell which engine answered behind a Service or a router.

An emulated prefix cache (vLLM's automatic prefix caching, without a model), on every pod:
  - the prompt is the chat rendered with Qwen's ChatML template (or the completion's prompt); with no
    tokenizer, a token is counted as 4 characters (the usual rule of thumb for English BPE text);
  - it is cut into full blocks of 16 tokens (vLLM's default block size), each block's hash chained to
    the previous one's; an LRU of block hashes holds VLLM_STANDIN_PREFIX_CACHE_TOKENS (16384) tokens;
  - the cached part of a prompt is its leading run of blocks found in the LRU; the counters above,
    usage.prompt_tokens and usage.prompt_tokens_details.cached_tokens report it;
  - with VLLM_STANDIN_PREFILL_TOKENS_PER_SECOND=R (0, off: nothing waits, as before) the uncached part
    costs (uncached tokens)/R seconds of emulated prefill on the pod's one emulated GPU, first come
    first served, and the completion waits for it. Its emulated time to first token (queue + prefill)
    goes into vllm:time_to_first_token_seconds and the header X-Stand-In-Emulated-TTFT-Ms. These are
    EMULATED figures, not measurements of vLLM.

Like vLLM (`serve` only):
  - it refuses command-line flags that vLLM (the version in vllm_flags.yaml, the operator's list)
    does not know, with argparse's message and exit code 2; it accepts what vLLM's parser accepts
    (--flag=value, underscores, unambiguous prefixes, short aliases, --no-<flag>, dotted JSON keys);
  - it writes where vLLM writes before loading: the vLLM cache (VLLM_CACHE_ROOT, else
    $XDG_CACHE_HOME/vllm, else ~/.cache/vllm), the Hugging Face home (HF_HOME, else
    ~/.cache/huggingface), an IPC socket in the temp folder and a shared-memory segment in /dev/shm.
    Any of those failing (a read-only root filesystem without the volumes) ends it with exit code 1;
  - it "loads" for VLLM_STANDIN_LOAD_SECONDS (0) and only then listens, as vLLM binds its port after
    loading the model;
  - on SIGTERM it stops accepting connections and waits up to --shutdown-timeout for the requests
    in flight, then exits.

Fault switches, for tests (environment at start, or the control endpoint):
  VLLM_STANDIN_CRASH_ON_START=N|always   exit 1 before listening on the first N starts (counted in the
                                          vLLM cache folder, which survives container restarts), or always
  VLLM_STANDIN_FAULT=hang|slow           hang: /health stays 200, completions never finish;
                                          slow: completions take VLLM_STANDIN_SLOW_SECONDS (2)

Control endpoint, for tests (not part of vLLM, no API key):
  PUT  /stand-in/queue?waiting=N[&running=M][&kv=F]   sets the gauges
  PUT  /stand-in/health?status=503                    makes /health answer that status
  PUT  /stand-in/stream?token_seconds=S&break_after=N   streamed answers (stream: true): S seconds between
                                                      events; the connection dropped after N events (an
                                                      engine dying mid-stream; 0: never)
  PUT  /stand-in/prefix-cache?[tokens_per_second=R][&capacity_tokens=C]
                                                      empties the emulated prefix cache, sets its rate/size
  PUT  /stand-in/fault?mode=none|hang|slow|exit[&seconds=S][&crash_starts=N]
                                                      sets the fault; exit ends the process now (exit
                                                      code 1), after arranging N crashing starts
  GET  /stand-in/state                                gauges, fault, requests in flight, uid, what it
                                                      wrote, whether its root filesystem is read-only

Two ways to run it:
  vllm_standin.py serve MODEL [--port 8000] [--host H] [--served-model-name N] [--api-key K] [vLLM flags...]
      one fake pod, as `vllm serve` is called; tests/standin/vllm is a `vllm` executable that runs
      this. The host defaults to 127.0.0.1 (VLLM_STANDIN_HOST overrides it: images set 0.0.0.0).
  vllm_standin.py pods --count N --served-model-name NAME [--ports-file PATH] [--keep-alive]
                       [--prefill-tokens-per-second R] [--prefix-cache-tokens C]
      N fake pods in one process, each on its own free port on 127.0.0.1; prints the ports as one
      JSON line ({"ports": [...]}) on stdout (and into --ports-file) once all listen. --keep-alive
      answers HTTP/1.1 and keeps connections open, as vLLM's uvicorn does (HTTP/1.0 otherwise).
Both stop by themselves after --stand-in-max-seconds (default 7200), the stand-in's only own flag.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

HERE = Path(__file__).resolve().parent
# Next to this file in the image; in the repository, where the operator keeps it.
FLAGS_FILE_CANDIDATES = (HERE / "vllm_flags.yaml", HERE.parent.parent / "operator" / "qwen_operator" / "api" / "vllm_flags.yaml")
# Flags that take several values (nargs="+") in vLLM; every other valued flag takes one.
MULTI_VALUE_FLAGS = {"--served-model-name", "--api-key", "--middleware", "--allowed-origins", "--allowed-methods", "--allowed-headers"}
STAND_IN_FLAGS = {"--stand-in-max-seconds"}
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
CANNED_ANSWER = "stand-in"
# What one canned request "took": the histograms need observations with a plausible shape.
CANNED_LATENCY_SECONDS = 0.42
CANNED_TTFT_SECONDS = 0.03
# The emulated prefix cache (see the module docstring).
CHARS_PER_TOKEN = 4
BLOCK_TOKENS = 16
DEFAULT_PREFIX_CACHE_TOKENS = 16384


def render_prompt(request: dict) -> str:
    """The prompt text vLLM would tokenize: chat messages through Qwen's ChatML template, or `prompt`."""
    if "messages" in request:
        parts = []
        for message in request.get("messages") or []:
            content = message.get("content") if isinstance(message, dict) else ""
            if isinstance(content, list):  # OpenAI content parts
                content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
            parts.append(f"<|im_start|>{message.get('role', 'user') if isinstance(message, dict) else 'user'}\n{content or ''}<|im_end|>\n")
        return "".join(parts) + "<|im_start|>assistant\n"
    prompt = request.get("prompt", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


RENDER_PATHS = ("/v1/chat/completions/render", "/v1/completions/render", "/tokenize")
QWEN3_VOCABULARY = 151_936


def emulated_token_ids(text: str) -> list[int]:
    """One id per CHARS_PER_TOKEN bytes of the UTF-8 text (those bytes read as a number): the same text gives
    the same ids in every process, a shared prefix a shared run of ids. Not Qwen's tokenizer."""
    data = text.encode()
    return [int.from_bytes(data[i:i + CHARS_PER_TOKEN], "little") % QWEN3_VOCABULARY for i in range(0, len(data), CHARS_PER_TOKEN)]


class PrefixCache:
    """vLLM's automatic prefix caching, emulated: an LRU of full-block hashes, each chained to the one
    before, so a block is found only with the whole prefix before it. Sizes are in tokens of
    CHARS_PER_TOKEN characters. Thread-safe."""

    def __init__(self, capacity_tokens: int = DEFAULT_PREFIX_CACHE_TOKENS, tokens_per_second: float = 0.0):
        self.capacity_blocks = max(0, capacity_tokens) // BLOCK_TOKENS
        self.tokens_per_second = tokens_per_second
        self.blocks: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.lock = threading.Lock()
        self.gpu_free_at = 0.0  # the emulated GPU prefills one request after another

    def lookup(self, text: str) -> tuple[int, int]:
        """(prompt tokens, cached tokens) of this prompt; its blocks then become the most recently used."""
        tokens = max(1, -(-len(text) // CHARS_PER_TOKEN))
        block_chars = BLOCK_TOKENS * CHARS_PER_TOKEN
        hashes, previous = [], b""
        for start in range(0, len(text) - block_chars + 1, block_chars):
            previous = hashlib.blake2b(previous + text[start:start + block_chars].encode(), digest_size=16).digest()
            hashes.append(previous)
        with self.lock:
            cached_blocks = 0
            for block in hashes:
                if block not in self.blocks:
                    break
                cached_blocks += 1
            for block in hashes:
                self.blocks[block] = None
                self.blocks.move_to_end(block)
            while len(self.blocks) > self.capacity_blocks:
                self.blocks.popitem(last=False)
        # As vLLM, the last token is always computed, even when the whole prompt is cached.
        return tokens, min(cached_blocks * BLOCK_TOKENS, tokens - 1)

    def schedule_prefill(self, uncached_tokens: int) -> float:
        """Seconds from now until this request's emulated prefill ends (0 when the emulation is off)."""
        if self.tokens_per_second <= 0:
            return 0.0
        with self.lock:
            now = time.monotonic()
            start = max(now, self.gpu_free_at)
            self.gpu_free_at = start + uncached_tokens / self.tokens_per_second
            return self.gpu_free_at - now


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

    def __init__(self, served_name: str, api_key: str | None = None, max_model_len: int = 32768,
                 prefix_cache: PrefixCache | None = None, name: str = "pod"):
        self.served_name = served_name
        self.name = name
        self.prefix_cache = prefix_cache or PrefixCache()
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
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
        # Fault switches and process facts (see the module docstring).
        self.fault = "none"
        self.slow_seconds = 2.0
        self.fault_changed = threading.Condition(self.lock)
        self.in_flight = 0
        # Streams ("stream": true): seconds between events, and events before the connection drops (0: never).
        self.token_seconds = float(os.environ.get("VLLM_STANDIN_TOKEN_SECONDS", "0"))
        self.break_after = 0
        self.facts: dict[str, object] = {}

    def count_http(self, handler: str, method: str, status: int) -> None:
        with self.lock:
            key = (handler, method, f"{status // 100}xx")
            self.http_requests[key] = self.http_requests.get(key, 0) + 1

    def record_completion(self, prompt_tokens: int, generation_tokens: int, cached_tokens: int = 0, ttft: float | None = None) -> None:
        with self.lock:
            self.successes["stop"] += 1
            self.prompt_tokens += prompt_tokens
            self.generation_tokens += generation_tokens
            self.prefix_cache_queries += prompt_tokens
            self.prefix_cache_hits += cached_tokens
            self.e2e_latency.observe(CANNED_LATENCY_SECONDS)
            self.ttft.observe(CANNED_TTFT_SECONDS if ttft is None else ttft)

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
            lines.append(f"vllm:num_requests_running{{{labels}}} {self.running + self.in_flight}")
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
            family("vllm:prefix_cache_queries_total", "counter", "Prefix cache queries, in terms of number of queried tokens.")
            lines.append(f"vllm:prefix_cache_queries_total{{{labels}}} {self.prefix_cache_queries}")
            family("vllm:prefix_cache_hits_total", "counter", "Prefix cache hits, in terms of number of cached tokens.")
            lines.append(f"vllm:prefix_cache_hits_total{{{labels}}} {self.prefix_cache_hits}")
            histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", self.e2e_latency)
            histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", self.ttft)
            family("http_requests_total", "counter", "Total number of requests by method, status and handler.")
            for (handler, method, status), count in sorted(self.http_requests.items()):
                lines.append(f'http_requests_total{{handler="{handler}",method="{method}",status="{status}"}} {count}')
        return "\n".join(lines) + "\n"


def make_handler(pod: FakePod, on_exit_fault=None, keep_alive: bool = False) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "vllm-stand-in"
        protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"
        # Headers and body are two writes: on a kept-alive connection Nagle's algorithm would hold the
        # body until the client's delayed ACK (40 ms).
        disable_nagle_algorithm = keep_alive

        def log_message(self, *_args) -> None:  # quiet: Prometheus scrapes every second
            pass

        def _send(self, status: int, body: bytes = b"", content_type: str = "application/json", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, value: object, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(value).encode(), headers=headers)

        def _authorized(self) -> bool:
            # As vLLM's middleware: only /v1/* asks for the key.
            if not urlsplit(self.path).path.startswith("/v1"):
                return True
            return pod.api_key is None or self.headers.get("Authorization") == f"Bearer {pod.api_key}"

        def _refuse_unauthorized(self, path: str, method: str) -> bool:
            if self._authorized():
                return False
            pod.count_http(path, method, 401)
            self._json(401, {"error": "Unauthorized"})
            return True

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if self._refuse_unauthorized(path, "GET"):
                return
            if path == "/health":
                self._send(pod.health_status)
            elif path == "/metrics":
                self._send(200, pod.metrics_text().encode(), "text/plain; version=0.0.4; charset=utf-8")
            elif path == "/v1/models":
                self._json(200, {"object": "list", "data": [{
                    "id": pod.served_name, "object": "model", "created": pod.created, "owned_by": "vllm",
                    "root": pod.served_name, "parent": None, "max_model_len": pod.max_model_len,
                }]})
                pod.count_http("/v1/models", "GET", 200)
            elif path == "/stand-in/state":
                with pod.lock:
                    self._json(200, {
                        "waiting": pod.waiting, "running": pod.running, "kv": pod.kv_cache_usage, "health": pod.health_status,
                        "fault": pod.fault, "in_flight": pod.in_flight, "name": pod.name,
                        "prefix_cache": {"capacity_tokens": pod.prefix_cache.capacity_blocks * BLOCK_TOKENS,
                                         "tokens_per_second": pod.prefix_cache.tokens_per_second,
                                         "queries": pod.prefix_cache_queries, "hits": pod.prefix_cache_hits},
                        **pod.facts,
                    })
            else:
                self._json(404, {"detail": "Not Found"})

        def _wait_out_fault(self) -> None:
            """hang: wait until the fault is cleared (a hung engine never answers); slow: take longer."""
            with pod.lock:
                while pod.fault == "hang":
                    pod.fault_changed.wait()
                delay = pod.slow_seconds if pod.fault == "slow" else 0.0
            if delay:
                time.sleep(delay)

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            length = int(self.headers.get("Content-Length") or 0)
            try:
                request = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError:
                request = None
            if self._refuse_unauthorized(path, "POST"):
                return
            if path in RENDER_PATHS and isinstance(request, dict) and request.get("model", pod.served_name) == pod.served_name:
                # vLLM's render endpoints (and /tokenize): the prompt's token ids, no generation.
                # vllm-router's cache_aware policy asks a worker for them and keys its prefix tree on them.
                token_ids = emulated_token_ids(render_prompt(request))
                pod.count_http(path, "POST", 200)
                if path == "/tokenize":
                    self._json(200, {"count": len(token_ids), "max_model_len": pod.max_model_len, "tokens": token_ids, "token_strs": None})
                else:
                    self._json(200, {"request_id": f"render-{os.urandom(8).hex()}", "token_ids": token_ids, "features": None, "model": pod.served_name})
                return
            if path not in ("/v1/chat/completions", "/v1/completions"):
                self._json(404, {"detail": "Not Found"})
                return
            if not isinstance(request, dict) or request.get("model") != pod.served_name:
                pod.count_http(path, "POST", 404)
                self._json(404, {"object": "error", "message": f"The model `{(request or {}).get('model')}` does not exist.", "code": 404})
                return
            with pod.lock:
                pod.in_flight += 1
            try:
                self._wait_out_fault()
                if request.get("stream") is True:
                    self._stream(path, request)
                    return
                prompt_tokens, cached_tokens = pod.prefix_cache.lookup(render_prompt(request))
                completion_tokens = 1
                ttft = pod.prefix_cache.schedule_prefill(prompt_tokens - cached_tokens)
                if ttft > 0:
                    time.sleep(ttft)
                headers = {"X-Stand-In-Pod": pod.name}
                if pod.prefix_cache.tokens_per_second > 0:
                    headers["X-Stand-In-Emulated-TTFT-Ms"] = f"{ttft * 1000:.3f}"
                pod.record_completion(prompt_tokens, completion_tokens, cached_tokens, ttft if pod.prefix_cache.tokens_per_second > 0 else None)
                pod.count_http(path, "POST", 200)
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens,
                         "prompt_tokens_details": {"cached_tokens": cached_tokens}}
                if path == "/v1/chat/completions":
                    choice = {"index": 0, "message": {"role": "assistant", "content": CANNED_ANSWER}, "finish_reason": "stop"}
                    self._json(200, {"id": "chatcmpl-stand-in", "object": "chat.completion", "created": int(time.time()), "model": pod.served_name, "choices": [choice], "usage": usage}, headers)
                else:
                    choice = {"index": 0, "text": CANNED_ANSWER, "finish_reason": "stop"}
                    self._json(200, {"id": "cmpl-stand-in", "object": "text_completion", "created": int(time.time()), "model": pod.served_name, "choices": [choice], "usage": usage}, headers)
            finally:
                with pod.lock:
                    pod.in_flight -= 1
                    pod.fault_changed.notify_all()

        def _stream(self, path: str, request: dict) -> None:
            """SSE as vLLM sends it: for chat a role delta, reasoning deltas (the qwen3 parser's `reasoning`), content
            deltas, a finish; the usage event (choices []) when stream_options.include_usage; then [DONE].
            max_tokens content tokens (default 2: \"stand\", \"-in\")."""
            chat = path == "/v1/chat/completions"
            count = request.get("max_tokens") if isinstance(request.get("max_tokens"), int) else 2
            words = ["stand", "-in"] + [" token"] * max(0, count - 2)
            words = words[:max(1, count)]
            thinking = ["Thinking", " it over."] if chat else []
            base = {"id": "chatcmpl-stand-in" if chat else "cmpl-stand-in", "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": int(time.time()), "model": pod.served_name}

            def chunk(delta: dict | None = None, finish: str | None = None, text: str = "") -> dict:
                choice = {"index": 0, "delta": delta or {}} if chat else {"index": 0, "text": text}
                return {**base, "choices": [{**choice, "finish_reason": finish}]}

            events = ([chunk({"role": "assistant", "content": ""})] if chat else [])
            events += [chunk({"reasoning": t}) for t in thinking]
            events += [chunk({"content": w}) if chat else chunk(text=w) for w in words]
            events.append(chunk(finish="stop"))
            prompt_tokens, completion_tokens = 8, len(thinking) + len(words)
            if (request.get("stream_options") or {}).get("include_usage"):
                events.append({**base, "choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                                                "total_tokens": prompt_tokens + completion_tokens}})
            # HTTP/1.1 (--keep-alive, as uvicorn): chunked, the connection kept; HTTP/1.0: the end of the body is the close.
            chunked = self.protocol_version == "HTTP/1.1"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Transfer-Encoding" if chunked else "Connection", "chunked" if chunked else "close")
            self.end_headers()
            self.close_connection = not chunked

            def send(data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                self.wfile.flush()

            try:
                for number, event in enumerate(events, 1):
                    if pod.break_after and number > pod.break_after:
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)  # the engine died mid-stream
                        return
                    send(b"data: " + json.dumps(event).encode() + b"\n\n")
                    if pod.token_seconds:
                        time.sleep(pod.token_seconds)
                send(b"data: [DONE]\n\n")
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
                pod.count_http(path, "POST", 499)  # the client went away: vLLM aborts the request
                return
            pod.record_completion(prompt_tokens, completion_tokens)
            pod.count_http(path, "POST", 200)

        def do_PUT(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            try:
                if url.path == "/stand-in/queue":
                    with pod.lock:
                        pod.waiting = float(query.get("waiting", pod.waiting))
                        pod.running = float(query.get("running", pod.running))
                        pod.kv_cache_usage = float(query.get("kv", pod.kv_cache_usage))
                elif url.path == "/stand-in/stream":
                    pod.token_seconds = float(query.get("token_seconds", pod.token_seconds))
                    pod.break_after = int(query.get("break_after", pod.break_after))
                elif url.path == "/stand-in/health":
                    pod.health_status = int(query["status"])
                elif url.path == "/stand-in/prefix-cache":
                    old = pod.prefix_cache
                    capacity = int(query.get("capacity_tokens", old.capacity_blocks * BLOCK_TOKENS))
                    rate = float(query.get("tokens_per_second", old.tokens_per_second))
                    if capacity < 0 or rate < 0:
                        raise ValueError("capacity_tokens and tokens_per_second must not be negative")
                    pod.prefix_cache = PrefixCache(capacity, rate)
                elif url.path == "/stand-in/fault":
                    mode = query["mode"]
                    if mode not in ("none", "hang", "slow", "exit"):
                        raise ValueError(f"unknown fault mode {mode!r}")
                    if mode == "exit":
                        if on_exit_fault is None:
                            raise ValueError("exit is a fault of `serve` only")
                        self._send(204)
                        self.wfile.flush()
                        on_exit_fault(int(query.get("crash_starts", 0)))
                        return
                    with pod.lock:
                        pod.fault = mode
                        pod.slow_seconds = float(query.get("seconds", pod.slow_seconds))
                        pod.fault_changed.notify_all()
                else:
                    self._json(404, {"detail": "Not Found"})
                    return
            except (KeyError, ValueError) as error:
                self._json(400, {"detail": f"bad query: {error}"})
                return
            self._send(204)

    return Handler


class StandInServer(ThreadingHTTPServer):
    daemon_threads = True
    # uvicorn's listen backlog (http.server's is 5: a burst of new connections waits out a SYN retransmit, 1 s).
    request_queue_size = 2048


def start_pod(pod: FakePod, host: str, port: int, on_exit_fault=None, keep_alive: bool = False) -> ThreadingHTTPServer:
    server = StandInServer((host, port), make_handler(pod, on_exit_fault, keep_alive))
    threading.Thread(target=server.serve_forever, name=f"stand-in-{server.server_address[1]}", daemon=True).start()
    return server


def stop_after(seconds: float) -> None:
    """Ends the process after `seconds`, whatever the caller does (every helper stops by itself)."""
    if seconds > 0:
        timer = threading.Timer(seconds, lambda: os._exit(0))
        timer.daemon = True
        timer.start()


# ---- vLLM's command line --------------------------------------------------------------------------


class UsageError(Exception):
    """What vLLM's argparse would print before exiting with code 2."""


@dataclass
class VllmFlags:
    """The flags of `vllm serve` at the pinned vLLM version (operator/qwen_operator/api/vllm_flags.yaml)."""

    version: str
    flags: set[str]
    negatable: set[str]
    aliases: dict[str, str]
    removed: dict[str, str]

    @classmethod
    def load(cls, path: str | None = None) -> "VllmFlags":
        import yaml  # the stand-in image has it (Debian's python3-yaml, or pip in the Dockerfile)

        candidates = [Path(path)] if path else list(FLAGS_FILE_CANDIDATES)
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise SystemExit(f"vLLM stand-in: no vLLM flag list at {', '.join(map(str, candidates))}")
        data = yaml.safe_load(found.read_text())
        return cls(
            version=str(data["vllm_version"]),
            flags=set(data["flags"]),
            negatable=set(data.get("negatable") or []),
            aliases=dict(data.get("aliases") or {}),
            removed=dict(data.get("removed") or {}),
        )

    def long_options(self) -> set[str]:
        return self.flags | {"--no-" + flag[2:] for flag in self.negatable} | STAND_IN_FLAGS

    def canonical(self, option: str) -> str:
        """The long option an argv token names, as vLLM's parser resolves it (see vllm_flags.yaml)."""
        known = self.long_options()
        if option in known:
            return option
        if option in self.removed:
            raise UsageError(f"unrecognized arguments: {option} ({self.removed[option]})")
        # argparse's allow_abbrev: any unambiguous prefix of a long option.
        matches = sorted(flag for flag in known if flag.startswith(option))
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UsageError(f"ambiguous option: {option} could match {', '.join(matches)}")
        raise UsageError(f"unrecognized arguments: {option}")

    def takes_no_value(self, option: str) -> bool:
        return option in self.negatable or option.startswith("--no-") or option == "--help"

    def parse(self, argv: list[str]) -> tuple[str | None, dict[str, list[str]]]:
        """(the positional model, {canonical flag: values}) of `vllm serve ARGV`; UsageError as argparse."""
        model: str | None = None
        options: dict[str, list[str]] = {}
        i = 0
        while i < len(argv):
            token = argv[i]
            i += 1
            if token.startswith("--") and len(token) > 2:
                name, has_inline, inline = token.partition("=")
                head, dot, _key = name.partition(".")
                option = self.canonical(head.replace("_", "-"))
            elif token.startswith("-") and len(token) > 1 and not _is_number(token):
                name, has_inline, inline = token.partition("=")
                head, dot, _key = name.partition(".")
                if head.startswith("-O") and head != "-O":  # -O3 is --optimization-level 3
                    head, has_inline, inline = "-O", "=", head[2:]
                if head not in self.aliases:
                    raise UsageError(f"unrecognized arguments: {token}")
                option = self.aliases[head]
            else:
                if model is not None:
                    raise UsageError(f"unrecognized arguments: {token}")
                model = token
                continue
            if dot and option not in self.flags:
                raise UsageError(f"unrecognized arguments: {token}")
            if has_inline:
                values = [inline]
            elif self.takes_no_value(option):
                values = []
            else:
                # The list has no types: a valued flag takes what follows up to the next option (a
                # store_true flag such as --disable-log-stats is followed by one, or by nothing).
                values = []
                while i < len(argv) and (not argv[i].startswith("-") or _is_number(argv[i])):
                    values.append(argv[i])
                    i += 1
                    if option not in MULTI_VALUE_FLAGS:
                        break
            options.setdefault(option, []).extend(values)
        return model, options


def _is_number(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


# ---- the process, as vLLM behaves -----------------------------------------------------------------


def vllm_cache_root() -> Path:
    if os.environ.get("VLLM_CACHE_ROOT"):
        return Path(os.environ["VLLM_CACHE_ROOT"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "vllm"


def hf_home() -> Path:
    return Path(os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))


@dataclass
class StartupWrites:
    """What vLLM writes while starting, kept open (the IPC socket, the shared memory) until exit."""

    paths: list[str] = field(default_factory=list)
    ipc_socket: socket.socket | None = None
    shared_memory: object | None = None

    def close(self) -> None:
        if self.ipc_socket is not None:
            self.ipc_socket.close()
            try:
                os.unlink(self.paths[2])
            except OSError:
                pass
        if self.shared_memory is not None:
            self.shared_memory.close()
            self.shared_memory.unlink()


def write_where_vllm_writes() -> StartupWrites:
    """The vLLM cache, the Hugging Face home, an IPC socket in the temp folder (vLLM's ZMQ sockets)
    and a segment in /dev/shm. An OSError here is what a read-only root filesystem does to vLLM."""
    from multiprocessing import shared_memory

    writes = StartupWrites()
    cache_file = vllm_cache_root() / "stand-in" / "compile-cache.json"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text("{}\n")
    writes.paths.append(str(cache_file))
    hub_lock = hf_home() / "hub" / ".locks" / "stand-in.lock"
    hub_lock.parent.mkdir(parents=True, exist_ok=True)
    hub_lock.write_text("")
    writes.paths.append(str(hub_lock))
    # Unique names, as vLLM's (uuid4 ZMQ paths, random shared-memory names): /tmp and /dev/shm are emptyDirs that
    # outlive a container restart, and a killed process leaves its socket and segment behind.
    unique = f"{os.getpid()}-{os.urandom(4).hex()}"
    socket_path = os.path.join(tempfile.gettempdir(), f"vllm-stand-in-ipc-{unique}.sock")
    writes.ipc_socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    writes.ipc_socket.bind(socket_path)
    writes.paths.append(socket_path)
    writes.shared_memory = shared_memory.SharedMemory(name=f"vllm_stand_in_{unique.replace('-', '_')}", create=True, size=1 << 20)
    writes.paths.append(f"/dev/shm/{writes.shared_memory.name}")
    return writes


def count_start() -> int:
    """This start's number (1, 2, ...), kept in the vLLM cache folder, which outlives a container restart."""
    counter = vllm_cache_root() / "stand-in" / "starts"
    starts = int(counter.read_text() or 0) + 1 if counter.exists() else 1
    counter.write_text(str(starts))
    return starts


def arrange_crashing_starts(current_start: int, count: int) -> None:
    """The `count` starts after the current one crash (a marker in the vLLM cache folder)."""
    (vllm_cache_root() / "stand-in" / "crash-until-start").write_text(str(current_start + count))


def should_crash(starts: int) -> bool:
    setting = os.environ.get("VLLM_STANDIN_CRASH_ON_START", "")
    if setting == "always":
        return True
    if setting.isdigit() and starts <= int(setting):
        return True
    marker = vllm_cache_root() / "stand-in" / "crash-until-start"
    return marker.exists() and starts <= int(marker.read_text() or 0)


def serve(argv: list[str]) -> int:
    flags = VllmFlags.load(os.environ.get("VLLM_STANDIN_FLAGS_FILE"))
    try:
        model, options = flags.parse(argv)
        if model is None and "--model" in options:
            model = options["--model"][-1]
        if model is None:
            raise UsageError("the following arguments are required: model_tag")
    except UsageError as error:
        print(f"usage: vllm serve [model_tag] [options]\nvllm serve: error: {error}", file=sys.stderr, flush=True)
        return 2

    def last(option: str, default: str | None = None) -> str | None:
        return options[option][-1] if options.get(option) else default

    host = last("--host", os.environ.get("VLLM_STANDIN_HOST", "127.0.0.1"))
    port = int(last("--port", "8000"))
    served_name = (options.get("--served-model-name") or [model])[0]
    api_key = last("--api-key", os.environ.get("VLLM_API_KEY"))
    shutdown_timeout = float(last("--shutdown-timeout", "0"))
    print(f"vLLM stand-in (not vLLM; flags checked against vLLM {flags.version}) starting {model} as uid {os.getuid()}", flush=True)

    try:
        writes = write_where_vllm_writes()
        starts = count_start()
    except OSError as error:
        print(f"vLLM stand-in: cannot write where vLLM writes: {error}", file=sys.stderr, flush=True)
        return 1
    if should_crash(starts):
        print(f"vLLM stand-in: crashing on start {starts} (fault switch)", file=sys.stderr, flush=True)
        writes.close()
        return 1

    # SIGTERM is blocked in every thread and taken with sigwait by this one. A Python handler runs only in the
    # main thread, and a signal the kernel hands to another thread (a request's) left the main thread asleep in
    # its wait: the stand-in then ignored SIGTERM, about one time in 25 under load. Threads inherit the mask, so
    # it is set before the first one starts, and after the shared memory above: multiprocessing's resource
    # tracker unblocks SIGTERM when it starts.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    stop_after(float(last("--stand-in-max-seconds", "7200")))

    load_seconds = float(os.environ.get("VLLM_STANDIN_LOAD_SECONDS", "0"))
    if load_seconds > 0:
        print(f"vLLM stand-in: loading for {load_seconds:g}s (not listening yet)", flush=True)
        if signal.sigtimedwait({signal.SIGTERM}, load_seconds) is not None:
            # vLLM turns SIGTERM into KeyboardInterrupt: a load cut short is a failure, not a clean exit.
            print("vLLM stand-in: terminated while loading", file=sys.stderr, flush=True)
            writes.close()
            return 1

    pod = FakePod(served_name, api_key, int(last("--max-model-len", "32768")), prefix_cache_from_env(), socket.gethostname())
    pod.fault = os.environ.get("VLLM_STANDIN_FAULT", "none")
    pod.slow_seconds = float(os.environ.get("VLLM_STANDIN_SLOW_SECONDS", "2"))
    pod.facts = {
        "uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid(), "start": starts, "written": writes.paths,
        "root_read_only": bool(os.statvfs("/").f_flag & os.ST_RDONLY),
    }

    def exit_now(crash_starts: int) -> None:
        if crash_starts:
            arrange_crashing_starts(starts, crash_starts)
        print(f"vLLM stand-in: exiting now (fault switch; the next {crash_starts} starts crash)", file=sys.stderr, flush=True)
        writes.close()
        os._exit(1)

    server = start_pod(pod, host, port, exit_now)
    print(f"vLLM stand-in serving {served_name} on {host}:{server.server_address[1]}", flush=True)
    signal.sigwait({signal.SIGTERM})

    # SIGTERM, as vLLM: no new connections, the requests in flight get up to --shutdown-timeout.
    server.shutdown()
    server.server_close()
    deadline = time.monotonic() + shutdown_timeout
    with pod.lock:
        while pod.in_flight and time.monotonic() < deadline:
            pod.fault_changed.wait(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
        left = pod.in_flight
    print(f"vLLM stand-in: stopped on SIGTERM ({left} requests still in flight after the drain)", flush=True)
    writes.close()
    return 0


def prefix_cache_from_env() -> PrefixCache:
    return PrefixCache(int(os.environ.get("VLLM_STANDIN_PREFIX_CACHE_TOKENS", DEFAULT_PREFIX_CACHE_TOKENS)),
                       float(os.environ.get("VLLM_STANDIN_PREFILL_TOKENS_PER_SECOND", "0")))


def serve_pods(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vllm_standin.py pods", description="several fake vLLM pods on 127.0.0.1 (not vLLM)")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--ports-file")
    parser.add_argument("--stand-in-max-seconds", type=float, default=7200)
    parser.add_argument("--keep-alive", action="store_true", help="HTTP/1.1 with persistent connections, as vLLM's uvicorn")
    parser.add_argument("--prefill-tokens-per-second", type=float, help="emulated prefill rate (default: VLLM_STANDIN_PREFILL_TOKENS_PER_SECOND, else 0: off)")
    parser.add_argument("--prefix-cache-tokens", type=int, help="emulated prefix cache size (default: VLLM_STANDIN_PREFIX_CACHE_TOKENS, else 16384)")
    args = parser.parse_args(argv)
    stop_after(args.stand_in_max_seconds)
    servers = []
    for _ in range(args.count):
        cache = prefix_cache_from_env()
        cache = PrefixCache(cache.capacity_blocks * BLOCK_TOKENS if args.prefix_cache_tokens is None else args.prefix_cache_tokens,
                            cache.tokens_per_second if args.prefill_tokens_per_second is None else args.prefill_tokens_per_second)
        pod = FakePod(args.served_model_name, prefix_cache=cache)
        server = start_pod(pod, "127.0.0.1", 0, keep_alive=args.keep_alive)
        pod.name = f"pod-{server.server_address[1]}"
        servers.append(server)
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    if argv[:1] == ["pods"]:
        return serve_pods(argv[1:])
    print("usage: vllm serve MODEL [vLLM flags] | vllm_standin.py pods --count N --served-model-name NAME (a stand-in, not vLLM)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
