"""A small informer: list, then watch, one kind, narrowed by a server-side label selector, kept in memory.

Why our own: kopf watches every resource cluster-wide and filters labels on the client, and its
indexes are fed by those same watches, so they cannot narrow what the API server sends. This is
the smallest correct version of client-go's reflector + store:

- the initial list is paginated (limit/continue) and gives the resourceVersion the watch starts at;
- the watch asks for bookmarks, so a quiet stream still advances its resourceVersion;
- 410 Gone (the resourceVersion is too old), a broken stream or an error: list again, and report
  the objects that changed or vanished meanwhile, so no event is lost;
- a full relist about every relist_seconds guards against a missed event, at the cost of one paginated
  list of the kind (the operator's own children only). The period is jittered, as client-go jitters its
  resyncs: an operator's informers start together, and lists that coincide stack their pages' garbage
  into one peak of memory, which the heap keeps. Pages are small (100 objects) for the same reason;
- objects are kept slim (slim(obj, previous) keeps only what the reconcile reads), and an update whose slim
  form is unchanged (a resourceVersion bump, managedFields) is not reported. An object at the resourceVersion
  already kept is not even slimmed: at 5,000 resources the relists' objects are nearly all unchanged.

on_change(old, new) is called from the informer's thread for every real change (old None on add,
new None on delete); it must be quick (the controller only queues a key).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Callable

from qwen_operator.k8s.client import Kind, KubeApi, KubeError

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects
# Each kept object carries its content revision: a number that changes when, and only when, the object's slim form
# changes (a resourceVersion bump with the same slim form keeps it). Equal revisions: the reader saw the same thing.
REVISION = "_revision"
OnChange = Callable[[dict[str, Any] | None, dict[str, Any] | None], None]
# slim(obj, previous): what is kept of obj; previous is the kept version before it (None for a new object), which a
# slim may reuse parts of.
Slim = Callable[[dict[str, Any], dict[str, Any] | None], dict[str, Any]]


def keep_whole(obj: dict[str, Any], previous: dict[str, Any] | None = None) -> dict[str, Any]:
    return obj


def object_key(obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return meta.get("namespace") or "", meta["name"]


class Informer:
    def __init__(self, api: KubeApi, kind: Kind, *, label_selector: str | None = None, namespace: str | None = None,
                 slim: Slim = keep_whole, on_change: OnChange | None = None,
                 index: Callable[[dict[str, Any]], Any] | None = None, metadata_only: bool = False,
                 page_size: int = 100, watch_seconds: int = 300, relist_seconds: float = 600.0):
        self.api, self.kind = api, kind
        self.label_selector, self.namespace = label_selector, namespace
        self.slim, self.on_change = slim, on_change or (lambda old, new: None)
        self.index_key = index
        self.metadata_only = metadata_only
        self.page_size, self.watch_seconds, self.relist_seconds = page_size, watch_seconds, relist_seconds
        self._objects: dict[Key, dict[str, Any]] = {}
        self._revisions = 0  # the last content revision given (REVISION)
        self._index: dict[Any, dict[Key, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.synced = threading.Event()
        self._stopped = threading.Event()
        self.lists = 0  # how many full lists were made (the first, relists after 410 or errors, periodic ones)
        self._thread = threading.Thread(target=self._run, name=f"informer-{kind.plural}", daemon=True)

    # Reads (from any thread)

    def get(self, namespace: str | None, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get((namespace or "", name))

    def by_index(self, value: Any) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._index.get(value, {}).values())

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._objects.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)

    def store(self, obj: dict[str, Any]) -> None:
        """Puts an object the operator just wrote (the API's answer) into the cache at once, so the
        next reconcile does not act on the version before its own write. The watch event that
        follows finds it unchanged and reports nothing. A newer version the watch delivered first
        (the Deployment controller's status, a moment after the write) is kept."""
        self._upsert(obj, notify=False, unless_older=True)

    # Lifecycle

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    # Internals

    def _upsert(self, raw: dict[str, Any], notify: bool = True, unless_older: bool = False) -> None:
        if "kind" not in raw:  # a list's items carry no kind; slim may look at it
            raw = {**raw, "apiVersion": self.kind.api_version, "kind": self.kind.kind}
        key = object_key(raw)
        with self._lock:
            previous = self._objects.get(key)
        if previous is not None and _same_version(raw, previous):
            # Kept already (a relist of an unchanged object, or the watch echoing a write store() kept): a
            # resourceVersion names one state of one object, so there is nothing to slim, compare or report.
            return
        obj = self.slim(raw, previous)
        obj.setdefault("apiVersion", self.kind.api_version)
        obj.setdefault("kind", self.kind.kind)
        with self._lock:
            old = self._objects.get(key)
            if unless_older and old is not None and _older(obj, old):
                return
            if old is not None and _without_version(old) == _without_version(obj):
                obj[REVISION] = old[REVISION]
                self._objects[key] = obj  # keep the newest resourceVersion, report nothing
                if self.index_key is not None:
                    self._index.setdefault(self.index_key(obj), {})[key] = obj
                return
            self._revisions += 1
            obj[REVISION] = self._revisions
            self._objects[key] = obj
            if self.index_key is not None:
                if old is not None:
                    self._index.get(self.index_key(old), {}).pop(key, None)
                self._index.setdefault(self.index_key(obj), {})[key] = obj
        if notify:
            self.on_change(old, obj)

    def _remove(self, key: Key) -> None:
        with self._lock:
            old = self._objects.pop(key, None)
            if old is not None and self.index_key is not None:
                bucket = self._index.get(self.index_key(old), {})
                bucket.pop(key, None)
                if not bucket:
                    self._index.pop(self.index_key(old), None)
        if old is not None:
            self.on_change(old, None)

    def _query(self) -> list[tuple[str, str]]:
        return [("labelSelector", self.label_selector)] if self.label_selector else []

    def _list(self) -> str:
        """A full paginated list: replaces the cache, reports what changed; returns the resourceVersion."""
        seen: set[Key] = set()
        version, token = "", None
        while True:
            query = self._query() + [("limit", str(self.page_size))] + ([("continue", token)] if token else [])
            page = self.api.list_page(self.kind, self.namespace, query, metadata_only=self.metadata_only)
            for item in page.get("items") or []:
                self._upsert(item)
                seen.add(object_key(item))
            meta = page.get("metadata") or {}
            version, token = meta.get("resourceVersion", version), meta.get("continue")
            if not token:
                break
        with self._lock:
            gone = [key for key in self._objects if key not in seen]
        for key in gone:
            self._remove(key)
        self.lists += 1
        return version

    def _relist_period(self) -> float:
        return self.relist_seconds * random.uniform(0.8, 1.2)

    def _run(self) -> None:
        version, listed_at, failures = "", 0.0, 0
        period = self.relist_seconds
        while not self._stopped.is_set():
            try:
                if not version or time.monotonic() - listed_at > period:
                    version, listed_at, period = self._list(), time.monotonic(), self._relist_period()
                    self.synced.set()
                for event in self.api.watch(self.kind, self.namespace, self._query(), version, self.watch_seconds, metadata_only=self.metadata_only):
                    if self._stopped.is_set():
                        return
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            version = ""  # too old: list again
                        else:
                            raise KubeError(int(obj.get("code") or 0), obj.get("reason", ""), obj.get("message", ""))
                        break
                    new_version = (obj.get("metadata") or {}).get("resourceVersion")
                    if kind == "BOOKMARK":
                        version = new_version or version
                        continue
                    if kind == "DELETED":
                        self._remove(object_key(obj))
                    else:
                        self._upsert(obj)
                    version = new_version or version
                    if time.monotonic() - listed_at > period:
                        break
                failures = 0
            except KubeError as error:
                failures += 1
                if error.status == 410:
                    version = ""
                else:
                    log.warning("watch of %s failed (%d in a row), listing again: %s", self.kind.plural, failures, error)
                    version = ""
                self._stopped.wait(min(30.0, 0.5 * 2 ** min(failures, 6)))
            except Exception as error:  # noqa: BLE001 - the informer must outlive any one bad stream
                failures += 1
                log.warning("watch of %s broke (%d in a row), listing again: %s: %s", self.kind.plural, failures, type(error).__name__, error)
                version = ""
                self._stopped.wait(min(30.0, 0.5 * 2 ** min(failures, 6)))


def _without_version(obj: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return {**{k: v for k, v in obj.items() if k != REVISION}, "metadata": meta}


def _same_version(raw: dict[str, Any], kept: dict[str, Any]) -> bool:
    version = raw["metadata"].get("resourceVersion")
    return (bool(version) and version == kept["metadata"].get("resourceVersion")
            and raw["metadata"].get("uid") == kept["metadata"].get("uid"))


def _older(obj: dict[str, Any], than: dict[str, Any]) -> bool:
    """Whether obj is an older version of the same object than `than`. resourceVersions are opaque to clients,
    but every API server in use gives etcd's revision, an integer that grows; anything else is never older."""
    mine, theirs = obj["metadata"].get("resourceVersion", ""), than["metadata"].get("resourceVersion", "")
    same_object = obj["metadata"].get("uid") == than["metadata"].get("uid")
    return same_object and mine.isdigit() and theirs.isdigit() and int(mine) < int(theirs)
