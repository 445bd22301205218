"""kopf handlers: thin. Every trigger only queues the QwenInference concerned for the controller.

kopf watches the QwenInferences and hands each body to the controller, which keeps them and queues
those whose spec changed. The children, pods and GPU nodes are watched by the controller's own
informers (server-side label selectors; cache.py), which queue the owner of what changed. The
controller's work queue runs each resource at most once at a time, collapses bursts, and retries
failures per resource with backoff (qwen_operator/controller.py).

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

from qwen_operator.api.models import GROUP, PLURAL, VERSION
from qwen_operator.config import from_env
from qwen_operator.controller import Controller
from qwen_operator.k8s.client import KubeApi
from qwen_operator import metrics
from qwen_operator.reconcile import CapabilityCache

RESYNC_SECONDS = float(os.environ.get("QWEN_OPERATOR_RESYNC_SECONDS", "60"))
WORKERS = int(os.environ.get("QWEN_OPERATOR_WORKERS", "2"))

log = logging.getLogger("qwen_operator")


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf builds a diff-base (a deep copy of the body without its status) of every event and compares it
    with the last one stored. Only change handlers and daemons read that diff, and this operator has neither:
    the empty essence saves that copy and comparison on every event, which at 1,000 resources was a large part
    of the operator's CPU. Nothing is stored on the resources."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # No create/update/delete handlers, so kopf keeps no progress, diff-base or finalizer on the
    # resources; the progress setting only names where it would.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="qwenops.io")
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
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


@kopf.on.event(GROUP, VERSION, PLURAL)
async def qwen_inference_event(type: str | None, body: kopf.Body, name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        memo.controller.deleted(namespace, name)
        return
    memo.controller.observed(dict(body))
