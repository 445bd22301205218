"""The controller: a work queue of QwenInference keys, the workers that reconcile them, and the resync.

Every trigger (a watch event of a QwenInference or of one of its children or pods; the periodic
resync) only queues the resource's key, so a burst of triggers costs one reconcile and one slow or
broken resource never delays another. A worker reads the resource and its children from the
watch-fed caches (cache.py) and runs the one reconcile; a steady state reads nothing from the API.

- The QwenInferences come from the controller's own informer (one per watched namespace, or one
  cluster-wide), kept here by key. An event that changes only the status (the operator's own
  write) queues nothing. kopf runs the process (startup, cleanup, signals) but no longer watches
  them: its processing of each event cost about 1 ms of CPU, twice the informer's.
- A child's or pod's event queues its owner by how much it can change the verdict
  (child_event_urgency): a completed rollout at once; a change of a child's spec, or a problem
  appearing or clearing, once that burst of events has been quiet for CHILD_EVENT_QUIET (at most
  CHILD_EVENT_MAX_WAIT after it began). The counts on the way (a Deployment's replicas, a pod
  made, scheduled, started) run nothing: the next run shows them. A pod in a step a user waits on
  (its volume binding, the model downloading or loading) runs nothing either, but stays unjudged:
  the resync shows the step once it has lasted a resync period, unless a run came first. A child
  that appears while its owner's run applies is that run's own create when its resourceVersion is
  what the run wrote (the watch may deliver it before the API's answer): nothing more to judge. A
  resource's start then costs two runs: the one that applies, and the one that finds it Ready.
- The status a reconcile compares with is the one the operator last wrote, so a watch that has
  not yet delivered that write never causes a second one.

Failures are kept per resource:
- the API server unreachable, throttling (429) or failing (5xx): retried with exponential backoff
  (honouring Retry-After), without flapping the status; only a failure that persists for
  PERSISTENT_FAILURES runs in a row is reported, as Degraded with the reason APIUnavailable;
- any other error, including a bug the spec tickles: Ready=False with the reason ReconcileError
  and the error's words in the status, then retried with backoff. Never a crash, never a stall.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, NamedTuple

import orjson

from qwen_operator import metrics
from qwen_operator import status as status_lib
from qwen_operator.builders.common import MANAGED_BY
from qwen_operator.config import OperatorConfig
from qwen_operator.k8s import client as kinds
from qwen_operator.k8s.client import KubeApi, KubeError
from qwen_operator.k8s.informer import REVISION, Informer
from qwen_operator.cache import SPEC_DIGEST, ChildCaches, pack, spec_digest, unpack
from qwen_operator.reconcile import CHILD_KINDS, MONITORING_KINDS, CapabilityCache, Snapshot, now_rfc3339, owner_of, reconcile
from qwen_operator.workqueue import Retry, WorkQueue

log = logging.getLogger("qwen_operator")

Key = tuple[str, str]  # (namespace, name)
PERSISTENT_FAILURES = 5  # transient failures in a row (about 15 s of backoff) before the status says so
# A child's or pod's event queues its owner once the burst it belongs to has been quiet this long,
# and at most CHILD_EVENT_MAX_WAIT after the burst began.
CHILD_EVENT_QUIET = 1.0
CHILD_EVENT_MAX_WAIT = 10.0
CACHE_SYNC_RETRY_SECONDS = 0.5
# How a child's or pod's event queues its owner (child_event_urgency): at once, after its burst (SOON), folded into
# the next run within PROGRESS_WAIT (PROGRESS), left for the resync to judge (STEP), or not at all (IGNORE).
NOW, SOON, PROGRESS, STEP, IGNORE = "now", "soon", "progress", "step", "ignore"
PROGRESS_WAIT = 30.0
# Children whose status the reconcile never reads: a change of their status alone (a PodDisruptionBudget's
# healthy count, a Service's load balancer) cannot move the verdict.
STATUS_UNREAD_KINDS = frozenset({"Service", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy", "ServiceAccount", "Role", "RoleBinding",
                                 "ServiceMonitor", "PrometheusRule"})


class ReconcileInputs(NamedTuple):
    """What a run read (Controller.reconcile_inputs): the same inputs give the same verdict."""
    resource: tuple[Any, ...]  # _what_matters
    annotations: tuple[tuple[str, str], ...]
    capabilities: Any
    children: frozenset[tuple[str, str, int]]  # (kind, name, content revision)
    pods: frozenset[tuple[str, int]]  # (name, content revision)
    node_labels: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # the nodes its pods run on


class Controller:
    def __init__(self, api: KubeApi, config: OperatorConfig, capabilities: CapabilityCache, *, workers: int,
                 resync_seconds: float, namespaces: list[str] | None = None, namespace_selector: str | None = None,
                 base_delay: float = 0.5, max_delay: float = 120.0, relist_seconds: float = 600.0):
        self.api, self.config, self.capabilities = api, config, capabilities
        self.namespaces = namespaces or []
        # With a namespace selector, only the QwenInferences of the namespaces whose labels match it
        # are served; the others are kept (a namespace may be labelled later) but never reconciled.
        self.selected_namespaces: Informer | None = None
        if namespace_selector:
            self.selected_namespaces = Informer(api, kinds.NAMESPACE, label_selector=namespace_selector, metadata_only=True,
                                                slim=_namespace_name, on_change=self._namespace_changed, relist_seconds=relist_seconds)
        self.bodies: dict[Key, dict[str, Any]] = {}  # the watched QwenInferences, from the resource informers (_slim_resource: spec and status packed)
        self.statuses: dict[Key, dict[str, Any]] = {}  # the status this operator last wrote, per resource
        # Per resource: (generation, capabilities, {child: spec digest}) when a reconcile last found every
        # child as desired. While the children stay so (their status may move), the next runs skip building
        # and comparing them, and only judge the status.
        self.in_sync: dict[Key, tuple[Any, Any, dict[tuple[str, str], str]]] = {}
        self.last_run: dict[Key, float] = {}  # monotonic time each resource's last run ended
        # The resources whose run is between its start and the judgement of its writes (a narrower window than the
        # queue's running(): it ends before the run's status bookkeeping), and the children that appeared in it
        # (mostly that run's own creates, which the watch can deliver before the API's answer): (kind, name,
        # resourceVersion), checked against the run's writes at its end.
        self.applying: set[Key] = set()
        self.appeared_during_run: dict[Key, set[tuple[str, str, str]]] = {}
        self.triggers: dict[Key, str] = {}  # what first queued each queued resource (the trigger metric)
        # Per resource: everything its last successful run read (reconcile_inputs). The resync runs a resource
        # again only when this differs, as a missed event would make it.
        self.last_inputs: dict[Key, ReconcileInputs] = {}
        self._lock = threading.Lock()
        self.caches = ChildCaches(api, CHILD_KINDS, MONITORING_KINDS, self._child_changed, relist_seconds, namespaces=self.namespaces)
        self.resources = [Informer(api, kinds.QWEN_INFERENCE, namespace=scope, slim=_slim_resource, on_change=self._resource_changed,
                                   relist_seconds=relist_seconds) for scope in (self.namespaces or [None])]
        self.resync_seconds = resync_seconds
        self.queue: WorkQueue[Key] = WorkQueue(self.process, workers, base_delay, max_delay, name="reconcile")
        self._stopped = threading.Event()
        self._resync = threading.Thread(target=self._resync_loop, name="qwen-resync", daemon=True)

    def start(self) -> None:
        if self.selected_namespaces is not None:
            self.selected_namespaces.start()
        self.caches.start()
        if self.capabilities.get().prometheus_operator:
            self.caches.enable_optional()
        self.queue.start()
        for informer in self.resources:
            informer.start()
        self._resync.start()

    def stop(self) -> None:
        self._stopped.set()
        for informer in self.resources:
            informer.stop()
        self.queue.stop()
        self.caches.stop()
        if self.selected_namespaces is not None:
            self.selected_namespaces.stop()

    def serves(self, namespace: str) -> bool:
        """Whether this operator serves the namespace: always without a namespace selector."""
        return self.selected_namespaces is None or self.selected_namespaces.get(None, namespace) is not None

    def _namespace_changed(self, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if new is not None and old is None:  # a namespace now matches the selector: serve what it holds
            namespace = new["metadata"]["name"]
            with self._lock:
                keys = [key for key in self.bodies if key[0] == namespace]
            for key in keys:
                self.enqueue(*key, trigger="namespace")

    # Triggers

    def _resource_changed(self, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if new is None:
            if old is not None:
                self.deleted(old["metadata"].get("namespace") or "", old["metadata"]["name"])
            return
        self.observed(new)

    def observed(self, body: dict[str, Any]) -> None:
        """A QwenInference was seen (added, changed, listed; slim, spec and status packed): keep it, and queue it
        unless only its status changed. Kept as the informer gave it, one copy per resource: a run reconciles a copy
        of its own (unpacked_resource)."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            before = self.bodies.get(key)
            self.bodies[key] = body
        if (before is None or _what_matters(before) != _what_matters(body)) and self.serves(key[0]):
            self.enqueue(*key, trigger="resource")

    def deleted(self, namespace: str, name: str) -> None:
        with self._lock:
            self.bodies.pop((namespace, name), None)
            self.statuses.pop((namespace, name), None)
            self.in_sync.pop((namespace, name), None)
            self.last_run.pop((namespace, name), None)
            self.last_inputs.pop((namespace, name), None)
        self.forget(namespace, name)

    def _child_changed(self, owner: Key, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if not owner[1] or not self.serves(owner[0]):
            return
        kind = (new or old or {}).get("kind") or ""
        if old is None and new is not None and kind != "Pod":  # a child the run may have created (pods it never does)
            with self._lock:
                if owner in self.applying:
                    self.appeared_during_run.setdefault(owner, set()).add((kind, new["metadata"]["name"], new["metadata"].get("resourceVersion", "")))
                    metrics.CHILD_EVENTS.labels(kind, "during_run").inc()
                    return
        urgency = child_event_urgency(old, new, owner_running=self.queue.running(owner))
        metrics.CHILD_EVENTS.labels(kind, urgency).inc()
        if urgency == IGNORE:
            self._still_judged(owner, old, new)
            return
        if urgency == STEP:
            return  # left unjudged: the resync runs the owner if the pod is still in it a resync period after the last run
        self._note_trigger(owner, kind)
        if urgency == NOW:
            self.queue.add(owner)  # the event that makes the resource Ready: judged now, not after the burst
        elif urgency == PROGRESS:
            self.queue.add_lazily(owner, PROGRESS_WAIT)
        else:
            self.queue.add_after_quiet(owner, CHILD_EVENT_QUIET, CHILD_EVENT_MAX_WAIT)

    def _still_judged(self, owner: Key, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        """A change the verdict need not show now: the owner's last run's inputs take the new revision, so the
        resync does not run it for this change either. A pod's new revision replaces whichever of it was judged
        (a step it passed through unjudged is over), and the labels of a node it was scheduled to join them."""
        obj = new or old
        assert obj is not None
        kind, name = obj["kind"], obj["metadata"]["name"]
        with self._lock:
            inputs = self.last_inputs.get(owner)
            if inputs is None:
                return
            if kind == "Pod":
                pods = {pod: revision for pod, revision in inputs.pods if pod != name}
                if new is not None:
                    pods[name] = new[REVISION]
                judged_labels = dict(inputs.node_labels)
                node_labels = tuple((node, judged_labels[node] if node in judged_labels else self._node_labels(node))
                                    for node in _nodes_of(self.caches.pods_of(owner)))
                self.last_inputs[owner] = inputs._replace(pods=frozenset(pods.items()), node_labels=node_labels)
                return
            if old is None or new is None or (kind, name, old[REVISION]) not in inputs.children:
                return
            children = (inputs.children - {(kind, name, old[REVISION])}) | {(kind, name, new[REVISION])}
            self.last_inputs[owner] = inputs._replace(children=children)

    def enqueue(self, namespace: str, name: str, delay: float = 0.0, trigger: str = "resource") -> None:
        self._note_trigger((namespace, name), trigger)
        self.queue.add((namespace, name), delay)

    def _note_trigger(self, key: Key, trigger: str) -> None:
        with self._lock:
            self.triggers.setdefault(key, trigger)

    def forget(self, namespace: str, name: str) -> None:
        self.queue.forget((namespace, name))
        metrics.set_resource_ready(namespace, name, None)

    # The resync: every resource, queued; each runs (and fails) on its own.

    def _resync_loop(self) -> None:
        """Every known QwenInference is judged again from the caches (no API reads) once it has not
        run for resync_seconds; one an event ran meanwhile is not judged again for nothing. The loop
        wakes four times per period, so a large fleet's resyncs spread out instead of coming in one
        burst. The informers' periodic relist guards the caches against a missed event."""
        while not self._stopped.wait(self.resync_seconds / 4):
            self.resync_due()

    def resync_due(self) -> None:
        """Judges again each resource whose last run is older than the resync period. The reconcile is a
        function of what it reads (reconcile_inputs), so a resource whose inputs are still those of its
        last successful run would get the same verdict: it is marked judged, and nothing runs. A resource
        whose inputs moved without an event reaching it (a missed event, found by a relist) runs."""
        if self.caches.optional and self.capabilities.get().prometheus_operator:
            self.caches.enable_optional()
        due = time.monotonic() - self.resync_seconds
        with self._lock:
            keys = [key for key in self.bodies if self.last_run.get(key, 0.0) <= due]
        caps = self.capabilities.get()
        for key in keys:
            if not self.serves(key[0]):
                continue
            if self._inputs_unchanged(key, caps):
                metrics.RESYNCS_UNCHANGED.inc()
                with self._lock:
                    self.last_run[key] = time.monotonic()
                continue
            self.enqueue(*key, trigger="resync")

    def _inputs_unchanged(self, key: Key, caps: Any = None) -> bool:
        """The resource's inputs are those of its last successful run: running it again would give the same verdict."""
        with self._lock:
            body, last_inputs = self.bodies.get(key), self.last_inputs.get(key)
        if body is None or last_inputs is None:
            return False
        return last_inputs == self.reconcile_inputs(key, body, caps if caps is not None else self.capabilities.get())

    def reconcile_inputs(self, key: Key, body: dict[str, Any], caps: Any) -> ReconcileInputs:
        """Everything a reconcile of this resource reads: its spec and annotations, the cluster's
        capabilities, the content revision of each child and pod, and the labels of the nodes its pods run on."""
        children = frozenset((c["kind"], c["metadata"]["name"], c[REVISION]) for c in self.caches.children_of(key, packed=True))
        pods = self.caches.pods_of(key)
        pod_versions = frozenset((p["metadata"]["name"], p[REVISION]) for p in pods)
        node_labels = tuple((node, self._node_labels(node)) for node in _nodes_of(pods))
        annotations = tuple(sorted((body["metadata"].get("annotations") or {}).items()))
        return ReconcileInputs(_what_matters(body), annotations, caps, children, pod_versions, node_labels)

    def _node_labels(self, node_name: str) -> tuple[tuple[str, str], ...]:
        node = self.caches.node(node_name)
        return tuple(sorted(((node or {}).get("metadata", {}).get("labels") or {}).items()))

    # One run

    def process(self, key: Key) -> None:
        namespace, name = key
        with self._lock:
            trigger = self.triggers.pop(key, "retry")  # a run the queue made again on its own is a retry
        if not self.serves(namespace) and (self.selected_namespaces is None or self.selected_namespaces.synced.is_set()):
            return  # its namespace does not (or no longer) match the namespace selector: hands off, not a reconcile
        started = time.monotonic()
        metrics.RECONCILE_TRIGGERS.labels(trigger).inc()
        outcome = "error"
        body: dict[str, Any] | None = None
        try:
            if not self.caches.synced() or (self.selected_namespaces is not None and not self.selected_namespaces.synced.is_set()):
                raise Retry("the caches have not listed yet", CACHE_SYNC_RETRY_SECONDS)  # never hold a worker
            with self._lock:
                kept = self.bodies.get(key)
                previous_status = self.statuses.get(key)
            body = unpacked_resource(kept) if kept is not None else None
            if body is None or body["metadata"].get("deletionTimestamp"):
                outcome = "gone"
                self.forget(namespace, name)
                return
            packed = self.caches.children_of(key, packed=True)
            versions = {(c["kind"], c["metadata"]["name"]): c[SPEC_DIGEST] for c in packed}
            caps = self.capabilities.get()
            reads_before = self.api.reads_by_this_thread()
            with self._lock:
                self.applying.add(key)
                self.last_inputs.pop(key, None)
                children_in_sync = self.in_sync.get(key) == (body["metadata"].get("generation"), caps, versions)
            snapshot = Snapshot(
                children=packed if children_in_sync else self.caches.children_of(key), pods=self.caches.pods_of(key), node=self.caches.node,
                children_in_sync=children_in_sync,
                previous_status=previous_status if previous_status is not None else (body.get("status") or {}),
                remember=self.caches.remember,
            )
            if children_in_sync:
                metrics.STATUS_ONLY_RECONCILES.inc()
            result = reconcile(body, self.api, self.config, self.capabilities, lambda *event: post_event(self.api, body, *event), snapshot)
            self._judge_what_appeared_during_run(key, result.written)
            with self._lock:
                if result.status is not None:
                    self.statuses[key] = result.status
                if result.in_sync and not result.applied and not result.recreated and not result.pruned:
                    self.in_sync[key] = (body["metadata"].get("generation"), caps, versions)
                elif result.in_sync_once_applied:
                    # The children as the API answered the applies (the cache holds those answers): the next run,
                    # which an applied child's first event queues, judges the status alone.
                    applied = {child_key: spec_digest(written) for child_key, written in result.written.items()}
                    self.in_sync[key] = (body["metadata"].get("generation"), caps, {**versions, **applied})
                else:
                    self.in_sync.pop(key, None)
            outcome = result.outcome
            metrics.set_resource_ready(namespace, name, *result.ready)
            if result.applied or result.pruned or result.status_written:
                log.info("reconciled %s/%s: applied %s, pruned %s, status %s", namespace, name,
                         result.applied or "nothing", result.pruned or "nothing", "written" if result.status_written else "unchanged")
            if result.retry_after is None and self.api.reads_by_this_thread() == reads_before:
                # Taken after the run, its own writes included. A change that came during the run, which the run
                # may not have seen, also queued the resource, so it runs again whatever these say. A run that
                # read the API (a Secret or claim the spec names, a child of its name made by someone else)
                # depended on more than the caches: the resync keeps running it.
                inputs = self.reconcile_inputs(key, kept, caps)  # the kept body the run's copy was made of: no second spec kept
                with self._lock:
                    self.last_inputs[key] = inputs
            if result.requeue_after is not None and result.retry_after is None:
                self._note_trigger(key, "deadline")
                self.queue.add(key, result.requeue_after)  # a scale-to-zero deadline: judged again then
            if result.retry_after is not None:
                raise Retry("a child could not be brought to the desired state yet", result.retry_after)
        except KubeError as error:
            outcome = "api_error"
            if error.status == 404:
                return  # the resource (or its namespace) went away mid-run; its DELETED event forgets it
            failures = self.queue.failures(key) + 1
            log.warning("reconcile of %s/%s stopped on an API error (%d in a row), retrying with backoff: %s", namespace, name, failures, error)
            if not error.transient:
                self._report(body, "APIError", f"the API server refused a request: {error}")
            elif failures >= PERSISTENT_FAILURES:
                self._report(body, "APIUnavailable", f"the API server failed {failures} times in a row: {error}")
            raise Retry(str(error), error.retry_after) from None
        except Retry:
            raise
        except Exception as error:  # noqa: BLE001 - one resource's problem must never stop the operator
            log.error("reconcile of %s/%s failed: %s: %s", namespace, name, type(error).__name__, error)
            log.debug("reconcile failure details", exc_info=True)
            self._report(body, "ReconcileError", f"the operator could not reconcile this resource ({type(error).__name__}: {error}); it retries with backoff")
            raise Retry(str(error)) from None
        finally:
            with self._lock:
                # A run that stopped before judging what appeared meanwhile is run again (retry) and sees it then.
                self.applying.discard(key)
                self.appeared_during_run.pop(key, None)
                if key in self.bodies:
                    self.last_run[key] = time.monotonic()
            metrics.RECONCILES.labels(outcome).inc()
            metrics.RECONCILE_DURATION.observe(time.monotonic() - started)

    def _judge_what_appeared_during_run(self, key: Key, written: dict[tuple[str, str], dict[str, Any]]) -> None:
        """A child that appeared while the run applied is judged like a progress step, unless it is exactly what the
        run wrote (same resourceVersion): the run's own create, which it has recorded already. From here on, a child
        that appears is judged as any event is."""
        with self._lock:
            self.applying.discard(key)
            appeared = self.appeared_during_run.pop(key, set())
        others = not_written_by_the_run(appeared, written)
        if others:
            self._note_trigger(key, others[0][0])
            self.queue.add_lazily(key, PROGRESS_WAIT)

    def _report(self, body: dict[str, Any] | None, reason: str, message: str) -> None:
        """Best effort: put a failure the reconcile itself could not record into the status."""
        if body is None:
            return
        meta = body["metadata"]
        with self._lock:
            previous = self.statuses.get((meta["namespace"], meta["name"])) or body.get("status") or {}
        new = status_lib.failure_status(owner_of(body), previous, status_lib.Problem(reason, message[:1000]), now_rfc3339())
        if not status_lib.status_changed(previous, new):
            return
        try:
            self.api.patch_status(kinds.QWEN_INFERENCE, meta["namespace"], meta["name"], new)
            with self._lock:
                self.statuses[(meta["namespace"], meta["name"])] = new
            metrics.set_resource_ready(meta["namespace"], meta["name"], "False", reason)
            post_event(self.api, body, "Warning", reason, message)
        except KubeError as error:
            log.debug("could not report %s on %s/%s: %s", reason, meta["namespace"], meta["name"], error)


def post_event(api: KubeApi, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    meta = body["metadata"]
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}."[:200], "namespace": meta["namespace"]},
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
    except KubeError as error:
        log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], error)


def not_written_by_the_run(appeared: set[tuple[str, str, str]], written: dict[tuple[str, str], dict[str, Any]]) -> list[tuple[str, str]]:
    """Of the children that appeared during a run ((kind, name, resourceVersion)), those that are not exactly what
    the run wrote, sorted."""
    return sorted((kind, name) for kind, name, version in appeared
                  if ((written.get((kind, name)) or {}).get("metadata") or {}).get("resourceVersion") != version)


def child_event_urgency(old: dict[str, Any] | None, new: dict[str, Any] | None, owner_running: bool = False) -> str:
    """How soon a child's or pod's event needs its owner judged again.

    NOW: a Deployment's rollout just completed (the resource becomes Ready).
    SOON: a child changed or deleted (drift is repaired at once); a Deployment no longer complete, or failing, or
    its failure cleared; a pod that was ready and is not, or that crash-loops or cannot be scheduled, or no longer
    does; a claim neither pending nor bound.
    PROGRESS: a child that appears while its owner's run is in progress (most likely that run's own apply, which the
    watch delivered before the API's answer): judged within PROGRESS_WAIT, or by any earlier run.
    STEP: a pod in a step of its start a user waits on (its volume binding, the model downloading or loading): no run
    of its own; the resync shows the step once it has lasted a resync period (a shorter one is not worth a run).
    IGNORE: a change of a child's status the verdict does not read (a claim bound, a Service's or PDB's status, an
    HPA's current metrics), or reads only as counts on the way (a Deployment's replicas; a pod made, scheduled,
    started, ready or gone): the next run shows them, and a start ends in a completed rollout (NOW) or a problem
    (SOON) anyway."""
    if rollout_just_completed(old, new):
        return NOW
    obj = new or old or {}
    kind = obj.get("kind")
    if kind == "Pod":
        problems = [status_lib.pod_problems([p])[:2] for p in (old, new) if p is not None]
        lost_readiness = old is not None and new is not None and status_lib.is_ready(old) and not status_lib.is_ready(new)
        if lost_readiness or any(p != (None, None) for p in problems):
            return SOON
        return STEP if new is not None and pod_step(new) is not None else IGNORE
    if old is None and new is not None and owner_running:
        return PROGRESS
    if old is None or new is None or old.get(SPEC_DIGEST) != new.get(SPEC_DIGEST):
        return SOON
    if kind == "Deployment":
        no_longer_complete = deployment_complete(old) and not deployment_complete(new)
        failing = status_lib.deployment_failure(old) is not None or status_lib.deployment_failure(new) is not None
        return SOON if no_longer_complete or failing else IGNORE
    if kind == "HorizontalPodAutoscaler":
        # Its current metrics move at every sync (15 s) under load; the status reads only what it decided.
        return IGNORE if hpa_verdict(old) == hpa_verdict(new) else SOON
    if kind == "PersistentVolumeClaim":
        # The status reads a claim only for why it stays Pending (cache_claim_problem); its binding steps are otherwise
        # invisible (pods waiting for it say so themselves).
        if status_lib.cache_claim_problem(old, None, []) == status_lib.cache_claim_problem(new, None, []):
            return IGNORE
        return SOON
    if kind in STATUS_UNREAD_KINDS:
        return IGNORE
    return SOON


def pod_step(pod: dict[str, Any]) -> str | None:
    """The step of its start a pod is in, as the status would name it: VolumePending, ModelDownloading, ModelLoading."""
    step = status_lib.pod_problems([pod])[2]
    return step.reason if step is not None else None


def hpa_verdict(hpa: dict[str, Any]) -> tuple[Any, ...]:
    """What the status reads of an HPA's status: the replicas it wants and its conditions' words."""
    status = hpa.get("status") or {}
    conditions = tuple((c.get("type"), c.get("status"), c.get("reason"), c.get("message")) for c in status.get("conditions") or [])
    return status.get("desiredReplicas"), conditions


def deployment_complete(deployment: dict[str, Any] | None) -> bool:
    """A Deployment whose status says that its current spec runs on every replica it asks for."""
    if deployment is None or deployment.get("kind") != "Deployment":
        return False
    return status_lib.rollout_complete(deployment, (deployment.get("spec") or {}).get("replicas", 1))


def rollout_just_completed(old: dict[str, Any] | None, new: dict[str, Any] | None) -> bool:
    """A Deployment whose status now says, and before did not, that its current spec runs on every replica."""
    return deployment_complete(new) and not deployment_complete(old)


def _what_matters(kept: dict[str, Any]) -> tuple[Any, ...]:
    """What of a kept QwenInference can change its reconcile (not the status the operator writes)."""
    meta = kept["metadata"]
    return meta.get("generation"), meta.get("uid"), meta.get("deletionTimestamp"), kept.get(PACKED_SPEC)


def _nodes_of(pods: list[dict[str, Any]]) -> list[str]:
    """The nodes these pods are scheduled to, sorted."""
    return sorted({p["spec"].get("nodeName") or "" for p in pods} - {""})


# A kept QwenInference's spec and status, packed (cache.pack): as dicts they took about 10 KB per resource
# (most of a resource's memory at rest), packed under 1 KB. Equal specs pack to equal bytes, which _what_matters compares.
PACKED_SPEC, PACKED_STATUS = "_packedSpec", "_packedStatus"
PACKED_FIELDS = (("spec", PACKED_SPEC), ("status", PACKED_STATUS))


def _slim_resource(resource: dict[str, Any], previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """A QwenInference as kept between runs: without its managedFields, which the reconcile never reads (most of its
    size), and with its spec and status packed."""
    kept = {k: v for k, v in resource.items() if k not in ("spec", "status")}
    kept["metadata"] = {k: v for k, v in resource["metadata"].items() if k != "managedFields"}
    for field, packed in PACKED_FIELDS:
        if field in resource:
            kept[packed] = pack(resource[field])
    return kept


def unpacked_resource(kept: dict[str, Any]) -> dict[str, Any]:
    """The QwenInference a run reconciles: a fresh copy of a kept one (the run may change it freely), spec and status
    unpacked, without the informer's revision mark."""
    body = orjson.loads(orjson.dumps({k: v for k, v in kept.items() if k not in (REVISION, PACKED_SPEC, PACKED_STATUS)}))
    for field, packed in PACKED_FIELDS:
        if packed in kept:
            body[field] = unpack(kept[packed])
    return body


def _namespace_name(namespace: dict[str, Any], previous: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": namespace["metadata"]["name"], "resourceVersion": namespace["metadata"].get("resourceVersion", "")}}
