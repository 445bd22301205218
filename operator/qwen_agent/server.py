"""The agent's process (I/O): the check loop and its HTTP endpoints.

  GET /livez            200 while vLLM is judged alive; 500 with the verdict (EngineHung: ...) once it is
                        judged hung. The vLLM container's liveness probe asks this; its preStop hook writes
                        the body into vLLM's termination message, where the operator reads it.
  GET /health/detailed  JSON: API reachable, model loaded, last completion latency, queue depth, running
                        requests, KV cache usage, the last check and the verdict.
  GET /healthz          the agent's own liveness: 200 while its check loop runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from qwen_agent.engine import Engine
from qwen_agent.judge import Settings, State, detailed, livez, step

log = logging.getLogger("qwen_agent")
# While a verdict stands the agent looks every second, so that a restarted vLLM is seen at once.
VERDICT_RECHECK_SECONDS = 1.0


class Agent:
    def __init__(self, engine: Engine, settings: Settings, clock=time.monotonic):
        self.engine, self.settings, self.clock = engine, settings, clock
        self.state = State()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.last_loop = clock()

    def check_once(self) -> State:
        with self.lock:
            previous = self.state
        sample = self.engine.sample(previous.metrics, self.clock())
        new = step(previous, sample, self.settings)
        with self.lock:
            self.state = new
            self.last_loop = self.clock()
        if new.verdict and not previous.verdict:
            log.error("vLLM judged hung, /livez now answers 500 so the kubelet restarts it: %s", new.verdict)
        elif previous.verdict and not new.verdict:
            log.warning("verdict cleared (%s)", new.last.reason if new.last else "")
        elif new.last and not new.last.ok:
            log.warning("check failed (%d in a row of %d): %s", new.failures, self.settings.failures_before_restart, new.last.reason)
        elif previous.last and not previous.last.ok and new.last and new.last.ok:
            log.info("check passed again: %s", new.last.reason)
        return new

    def run(self) -> None:
        next_at = self.clock()
        while not self.stop.is_set():
            try:
                state = self.check_once()
            except Exception:  # a bug in one check must not end the loop (the kubelet would then restart vLLM)
                log.exception("check failed unexpectedly")
                state = self.state
            if state.verdict:
                next_at = self.clock() + VERDICT_RECHECK_SECONDS
            else:
                next_at += self.settings.interval_seconds
                next_at = max(next_at, self.clock())  # a check longer than the interval: start the next at once
            self.stop.wait(max(0.0, next_at - self.clock()))

    def loop_alive(self) -> bool:
        budget = self.settings.interval_seconds + 4 * self.settings.timeout_seconds + 10
        return self.clock() - self.last_loop < budget


def make_handler(agent: Agent) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "qwen-agent"

        def log_message(self, *_args) -> None:  # the kubelet probes every few seconds
            pass

        def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            path = self.path.split("?")[0]
            with agent.lock:
                state = agent.state
            if path == "/livez":
                status, text = livez(state)
                self._send(status, text.encode())
            elif path == "/health/detailed":
                self._send(200, json.dumps(detailed(state, agent.settings), indent=1).encode(), "application/json")
            elif path == "/healthz":
                alive = agent.loop_alive()
                self._send(200 if alive else 500, b"ok" if alive else b"the check loop is stuck")
            else:
                self._send(404, b"not found")

    return Handler


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="qwen-operator agent")
    parser.add_argument("--port", type=int, default=8081, help="the agent's port (/livez, /health/detailed, /healthz)")
    parser.add_argument("--listen-address", default="0.0.0.0", help="the address to listen on (in a pod: every address, for the kubelet's probes)")
    parser.add_argument("--vllm-host", default="127.0.0.1", help="vLLM's address (the same pod: loopback)")
    parser.add_argument("--vllm-port", type=int, default=8000)
    parser.add_argument("--served-model-name", required=True, help="the model name the 1-token completion asks for")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between checks")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds a completion (and each request) may take")
    parser.add_argument("--failures", type=int, default=3, help="failing checks in a row before /livez answers 500")
    return parser


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(args.interval, args.timeout, args.failures)
    engine = Engine(args.vllm_host, args.vllm_port, args.served_model_name, os.environ.get("VLLM_API_KEY"), args.timeout)
    agent = Agent(engine, settings)
    server = ThreadingHTTPServer((args.listen_address, args.port), make_handler(agent))
    server.daemon_threads = True
    # SIGTERM is blocked in every thread (they inherit the mask) and taken with sigwait below. With a Python handler,
    # a signal the kernel hands to another thread leaves the main thread asleep in its wait, and the agent ignores
    # SIGTERM until the kubelet kills it at the end of the grace period.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("deep health agent on :%d for %s at %s:%d (every %g s, timeout %g s, %d failures)", args.port,
             args.served_model_name, args.vllm_host, args.vllm_port, settings.interval_seconds, settings.timeout_seconds,
             settings.failures_before_restart)
    checker = threading.Thread(target=agent.run, name="checks", daemon=True)
    checker.start()
    signal.sigwait({signal.SIGTERM})
    agent.stop.set()
    server.shutdown()
    return 0
