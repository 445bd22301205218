"""`qwen-operator run`: the operator's command line."""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys

import kopf


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen-operator", description="Serve Qwen3 models with vLLM from QwenInference resources.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the operator")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    scope.add_argument("-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    run.add_argument("--standalone", action="store_true", help="no peering: run even if other operators are active")
    run.add_argument("--peering", default=os.environ.get("QWEN_OPERATOR_PEERING", "qwen-operator"), help="kopf peering name (only one operator with a name is active)")
    run.add_argument("--priority", type=int, default=None, help="peering priority (default: random, so replicas never tie)")
    run.add_argument("--liveness", default=os.environ.get("QWEN_OPERATOR_LIVENESS"), help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.FULL)
    if not args.verbose:
        # kopf logs every handler run at INFO; with event-driven reconciles that is noise.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    from qwen_operator import handlers  # noqa: F401  (registers the handlers)

    logging.getLogger("kubernetes.client.rest").setLevel(logging.WARNING)
    # kopf pauses every operator of a peering when the top priority is shared, so each replica
    # draws its own; the highest one is active and the others stand by.
    priority = args.priority if args.priority is not None else random.randint(1, 1_000_000)
    kopf.run(
        standalone=args.standalone,
        peering_name=None if args.standalone else args.peering,
        priority=priority,
        # What the operator's own resync loop needs to know of the scope and the peering.
        memo=kopf.Memo(standalone=args.standalone, peering=args.peering, priority=priority, namespaces=list(args.namespace)),
        liveness_endpoint=args.liveness,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
