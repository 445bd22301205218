"""`qwen-operator run`: the operator's command line."""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import os
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlsplit

log = logging.getLogger("qwen_operator")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen-operator", description="Serve Qwen3 models with vLLM from QwenInference resources.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the operator")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    scope.add_argument("-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    run.add_argument("--namespace-selector", default=os.environ.get("QWEN_OPERATOR_NAMESPACE_SELECTOR") or None,
                     help="with every namespace watched: serve only the namespaces whose labels match this label "
                          "selector, e.g. team=ml or 'env in (prod,staging)' (default: all)")
    run.add_argument("--standalone", action="store_true", help="run without leader election (the default; kept for scripts that pass it)")
    election = run.add_argument_group("leader election (one active replica, the others stand by on a Lease)")
    election.add_argument("--leader-elect", action="store_true", default=os.environ.get("QWEN_OPERATOR_LEADER_ELECT") == "true",
                          help="take part in leader election on a coordination.k8s.io Lease")
    election.add_argument("--lease-name", default=os.environ.get("QWEN_OPERATOR_LEASE_NAME", "qwen-operator"), help="name of the Lease")
    election.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE"), help="namespace of the Lease (default: POD_NAMESPACE)")
    election.add_argument("--lease-duration", type=float, default=float(os.environ.get("QWEN_OPERATOR_LEASE_DURATION", "10")),
                          help="seconds a standby waits after the last renewal before it takes over (default 10)")
    election.add_argument("--renew-deadline", type=float, default=float(os.environ.get("QWEN_OPERATOR_RENEW_DEADLINE", "7")),
                          help="seconds the leader keeps trying to renew before it stops (default 7; below --lease-duration)")
    election.add_argument("--retry-period", type=float, default=float(os.environ.get("QWEN_OPERATOR_RETRY_PERIOD", "2")),
                          help="seconds between renewals and between attempts to take over (default 2)")
    election.add_argument("--identity", default=os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
                          help="this replica's name in the Lease (default: POD_NAME)")
    run.add_argument("--liveness", default=os.environ.get("QWEN_OPERATOR_LIVENESS"), help="health endpoint, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    from qwen_agent.server import build_parser as agent_parser

    agent_parser(commands.add_parser("agent", help="the deep health agent beside vLLM in each engine pod (/livez, /health/detailed)"))
    from qwen_gateway.server import build_parser as gateway_parser

    gateway_parser(commands.add_parser("gateway", help="one OpenAI endpoint for every QwenInference, with API keys, limits and quotas"))
    return parser


class HealthServer:
    """/healthz: 200 while this replica works (the leader's controller runs, or a standby's election
    loop hears from the API server), 500 otherwise. The body says which role it has."""

    def __init__(self, url: str, check: Callable[[], tuple[bool, str]]):
        parts = urlsplit(url)
        path = parts.path or "/healthz"

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if self.path.split("?")[0] != path:
                    self.send_error(404)
                    return
                ok, detail = check()
                body = detail.encode()
                self.send_response(200 if ok else 500)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer((parts.hostname or "0.0.0.0", parts.port or 8080), Handler)
        threading.Thread(target=self.server.serve_forever, name="healthz", daemon=True).start()


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """glibc gives threads that allocate at the same time arenas of their own (up to 8 per core), and an arena keeps
    the memory it once held. The operator's informer and worker threads all parse JSON at once while resources start:
    at 2,000 resources made at once its RSS ended at 416 MiB with glibc's default and at 194 MiB with two arenas
    (bench/scale.py), the same as MALLOC_ARENA_MAX=2, set here so it holds wherever the operator runs. Called before
    any thread starts. A MALLOC_ARENA_MAX in the environment wins; without glibc's mallopt there is nothing to do."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_arena_max = -8  # malloc.h
    return bool(mallopt(m_arena_max, arenas))


YOUNG_GC_THRESHOLD = 10_000


def settle_gc(young_threshold: int = YOUNG_GC_THRESHOLD) -> None:
    """Python's cyclic garbage collector, set for this process: a heap of import-time modules, then caches of plain
    dicts and lists that reference counting frees (the operator makes few reference cycles). Called once the imports
    are done: every object alive then moves to the permanent generation (gc.freeze), so a full collection no longer
    walks kopf, pydantic and the Kubernetes client; and a young collection runs every 10,000 net allocations of
    containers instead of 700, since parsing one watch event allocates hundreds. Measured with gc.callbacks at 300
    resources made at once (bench/scale.py): 0.61 s of the operator's CPU in the collector, 0.45 s frozen, 0.18 s
    frozen with this threshold."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "agent":
        from qwen_agent.server import main as agent_main

        return agent_main(args)
    if args.command == "gateway":
        from qwen_gateway.server import main as gateway_main

        return gateway_main(args)
    if args.namespace_selector and args.namespace:
        print("qwen-operator: --namespace-selector chooses among every namespace; it cannot be combined with --namespace", file=sys.stderr)
        return 2
    limit_malloc_arenas()
    import kopf  # here, not at the top: the agent (`qwen-operator agent`) runs without it

    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.FULL)
    if not args.verbose:
        # kopf logs every handler run at INFO; with event-driven reconciles that is noise.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    from qwen_operator import handlers, metrics  # noqa: F401  (registers the handlers)
    from qwen_operator.config import from_env
    from qwen_operator.k8s.client import KubeApi
    from qwen_operator.k8s.leader import ElectionConfig, LeaderElector

    logging.getLogger("kubernetes.client.rest").setLevel(logging.WARNING)
    metrics.start_server()
    elector: LeaderElector | None = None
    if args.leader_elect:
        if not args.lease_namespace:
            print("qwen-operator: --leader-elect needs --lease-namespace (or POD_NAMESPACE)", file=sys.stderr)
            return 2
        config = ElectionConfig(args.lease_name, args.lease_namespace, args.identity, args.lease_duration, args.renew_deadline, args.retry_period)
        elector = LeaderElector(KubeApi.from_environment(from_env().field_manager, observe=metrics.observe_request), config)
    started = threading.Event()

    def health() -> tuple[bool, str]:
        if elector is None or elector.is_leader.is_set():
            return started.is_set(), "leader: reconciling" if started.is_set() else "starting"
        alive = elector.clock() - elector.last_contact < 3 * elector.config.lease_duration
        return alive, "standby: waiting for the Lease" if alive else "standby: the API server does not answer"

    if args.liveness:
        HealthServer(args.liveness, health)
    if elector is not None:
        metrics.LEADER.set(0)
        log.info("leader election: %s waits for Lease %s/%s", args.identity, args.lease_namespace, args.lease_name)
        if not elector.wait_for_leadership():
            return 0
        metrics.LEADER.set(1)

        def lost() -> None:
            # Stop acting at once: a standby may take the Lease soon after the renew deadline.
            logging.shutdown()
            os._exit(1)

        elector.keep_renewing(lost)
    started.set()
    settle_gc()
    try:
        kopf.run(
            standalone=True,  # one active replica is the Lease's job, not kopf peering's
            memo=kopf.Memo(namespaces=list(args.namespace), namespace_selector=args.namespace_selector),
            clusterwide=not args.namespace,
            namespaces=args.namespace,
        )
    finally:
        if elector is not None:
            elector.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
