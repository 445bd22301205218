"""kopf handlers: thin. kopf runs the process; these start and stop the controller.

The controller's informers watch the QwenInferences (and queue those whose spec changed) and their
children, pods and GPU nodes (server-side label selectors; cache.py), which queue the owner of what
changed. The controller's work queue runs each resource at most once at a time, collapses bursts,
and retries failures per resource with backoff (qwen_operator/controller.py).

The QwenInferences were once watched by kopf (an on.event handler). kopf's processing of each event
(its causes, handler states, contexts and loggers, and stdlib JSON decoding) cost about 1 ms of CPU
(per-thread CPU at 300 resources, three events each); the controller's informer, the same
list-and-watch as for the children, costs about 0.45 ms per event.

The resync is an operator-level loop (a thread), not a kopf timer: kopf timers and daemons put a
finalizer on every resource, and a QwenInference (and its namespace) could then not be deleted
while the operator is down or uninstalled. With leader election (cli.py), a standby replica does
not get this far: kopf and its handlers start only once it holds the Lease.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from qwen_operator.config import from_env
from qwen_operator.controller import Controller
from qwen_operator.k8s.client import KubeApi
from qwen_operator import metrics
from qwen_operator.reconcile import CapabilityCache

RESYNC_SECONDS = float(os.environ.get("QWEN_OPERATOR_RESYNC_SECONDS", "60"))
WORKERS = int(os.environ.get("QWEN_OPERATOR_WORKERS", "2"))

log = logging.getLogger("qwen_operator")


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # No resource handlers: kopf watches nothing (not even CRDs or namespaces, to find resources to serve), and keeps no
    # progress, diff-base or finalizer on any resource.
    settings.scanning.disabled = True
    config = from_env()
    api = KubeApi.from_environment(config.field_manager, observe=metrics.observe_request)
    memo.api = api
    memo.controller = Controller(api, config, CapabilityCache(api), workers=WORKERS, resync_seconds=RESYNC_SECONDS,
                                 namespaces=list(memo.get("namespaces") or []), namespace_selector=memo.get("namespace_selector"))
    memo.controller.start()
    log.info("qwen-operator started: %d workers, resync every %ss, metrics on %s:%s, vLLM image %s",
             WORKERS, RESYNC_SECONDS, metrics.METRICS_ADDRESS, metrics.METRICS_PORT, config.default_vllm_image)


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if getattr(memo, "controller", None) is not None:
        memo.controller.stop()

