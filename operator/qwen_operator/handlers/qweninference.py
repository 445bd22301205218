"""kopf handlers: thin. Every trigger runs the one reconcile for the QwenInference concerned.

Triggers: any event of a QwenInference, events of the pods and Deployments it owns (so status
follows rollouts and crashes at once), and a periodic resync (drift repair, missed events).
Runs for one resource are serialised, and a burst of triggers while one waits collapses into it.

The resync is one operator-level loop (a thread), not a kopf timer: kopf timers and daemons put a
finalizer on every resource, and a QwenInference (and its namespace) could then not be deleted
while the operator is down or uninstalled. Every RESYNC_SECONDS the loop lists the watched
QwenInferences and reconciles each; a standby replica (outranked in kopf's peering) skips it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import kopf
from prometheus_client import start_http_server

from qwen_operator import metrics
from qwen_operator.api.models import GROUP, PLURAL, VERSION
from qwen_operator.builders.common import MANAGED_BY
from qwen_operator.config import from_env
from qwen_operator.k8s import client as kinds
from qwen_operator.k8s import peering
from qwen_operator.k8s.client import KubeApi
from qwen_operator.reconcile import CapabilityCache, reconcile

RESYNC_SECONDS = float(os.environ.get("QWEN_OPERATOR_RESYNC_SECONDS", "60"))
METRICS_PORT = int(os.environ.get("QWEN_OPERATOR_METRICS_PORT", "9090"))
METRICS_ADDRESS = os.environ.get("QWEN_OPERATOR_METRICS_ADDRESS", "0.0.0.0")
MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY}

log = logging.getLogger("qwen_operator")


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # No create/update/delete handlers, so kopf keeps no progress, diff-base or finalizer on the
    # resources; these settings only name where it would.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="qwenops.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="qwenops.io", key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = int(os.environ.get("QWEN_OPERATOR_WORKERS", "8"))
    config = from_env()
    memo.config = config
    memo.api = KubeApi.from_environment(config.field_manager, observe=metrics.observe_request)
    memo.capabilities = CapabilityCache(memo.api)
    memo.locks = {}
    memo.waiting = set()
    memo.guard = threading.Lock()
    if METRICS_PORT:
        start_http_server(METRICS_PORT, addr=METRICS_ADDRESS)
    memo.resync = Resync(memo, RESYNC_SECONDS)
    memo.resync.start()
    log.info("qwen-operator started: resync every %ss, metrics on %s:%s, vLLM image %s", RESYNC_SECONDS, METRICS_ADDRESS, METRICS_PORT, config.default_vllm_image)


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if getattr(memo, "resync", None) is not None:
        memo.resync.stop()


class Resync(threading.Thread):
    """Every interval: list the watched QwenInferences and reconcile each (drift repair, missed events)."""

    def __init__(self, memo: kopf.Memo, interval: float):
        super().__init__(name="qwen-resync", daemon=True)
        self._memo, self._interval = memo, interval
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def active(self) -> bool:
        memo = self._memo
        if memo.get("standalone", True):
            return True
        scopes = memo.get("namespaces") or [None]
        return all(peering.is_active(memo.api, memo.peering, memo.priority, namespace) for namespace in scopes)

    def run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                if not self.active():
                    continue
                for namespace in self._memo.get("namespaces") or [None]:
                    for body in self._memo.api.list(kinds.QWEN_INFERENCE, namespace):
                        if self._stopped.is_set():
                            return
                        meta = body["metadata"]
                        run_reconcile(meta["namespace"], meta["name"], self._memo, "resync")
            except Exception as error:  # noqa: BLE001 - the loop must outlive any one bad round
                log.warning("resync round stopped early, the next one runs in %ss: %s", self._interval, error)


def run_reconcile(namespace: str, name: str, memo: kopf.Memo, trigger: str) -> None:
    resource = (namespace, name)
    with memo.guard:
        if resource in memo.waiting:
            return  # a run is already queued; it will see everything this trigger would
        memo.waiting.add(resource)
        lock = memo.locks.setdefault(resource, threading.Lock())
    with lock:
        with memo.guard:
            memo.waiting.discard(resource)
        body = memo.api.get(kinds.QWEN_INFERENCE, namespace, name)  # fresh, never a stale event body
        if body is None or body["metadata"].get("deletionTimestamp"):
            metrics.set_resource_ready(namespace, name, None)
            return
        started = time.monotonic()
        outcome = "error"
        try:
            result = reconcile(body, memo.api, memo.config, memo.capabilities, lambda *event: post_event(memo.api, body, *event))
            outcome = result.outcome
            if result.applied or result.pruned or result.status_written:
                log.info("reconciled %s/%s (%s): applied %s, pruned %s, status %s", namespace, name, trigger,
                         result.applied or "nothing", result.pruned or "nothing", "written" if result.status_written else "unchanged")
        except kinds.KubeError as error:
            # The API said no (the resource vanished mid-run, a namespace is terminating, the server
            # is briefly away): nothing to crash over. The next event or resync runs it again.
            outcome = "api_error"
            if error.status != 404:
                log.warning("reconcile of %s/%s (%s) stopped on an API error, will retry at the next resync: %s", namespace, name, trigger, error)
            return
        finally:
            metrics.RECONCILES.labels(outcome).inc()
            metrics.RECONCILE_DURATION.observe(time.monotonic() - started)
        metrics.set_resource_ready(namespace, name, *result.ready)


def post_event(api: KubeApi, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    meta = body["metadata"]
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": body["apiVersion"], "kind": body["kind"], "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
        "type": type_,
        "reason": reason,
        "message": message[:1000],
        "source": {"component": MANAGED_BY},
        "reportingComponent": MANAGED_BY,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        api.create(kinds.EVENT, meta["namespace"], event)
    except kinds.KubeError as error:
        log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], error)


@kopf.on.event(GROUP, VERSION, PLURAL)
def qwen_inference_event(type: str | None, name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        metrics.set_resource_ready(namespace, name, None)
        with memo.guard:
            memo.locks.pop((namespace, name), None)
        return
    run_reconcile(namespace, name, memo, f"event {type or 'listed'}")


def _owner_name(labels: dict[str, str]) -> str | None:
    return labels.get("app.kubernetes.io/instance")


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
def deployment_event(type: str | None, labels: dict[str, str], namespace: str, memo: kopf.Memo, **_: Any) -> None:
    # type None is a re-list: the QwenInference's own re-list already resyncs its owner.
    if type is not None and (owner := _owner_name(labels)):
        run_reconcile(namespace, owner, memo, "deployment event")


@kopf.on.event("", "v1", "pods", labels=MANAGED)
def pod_event(type: str | None, labels: dict[str, str], namespace: str, memo: kopf.Memo, **_: Any) -> None:
    if type is not None and (owner := _owner_name(labels)):
        run_reconcile(namespace, owner, memo, "pod event")
