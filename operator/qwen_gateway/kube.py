"""The gateway's Kubernetes side (I/O): list-then-watch QwenInferences and key Secrets in threads (the official
client is synchronous), hand every change to the event loop, and post Events on Secrets that declare a key badly.
The Secret watch is narrowed server-side to the key label, in the gateway's own namespace only."""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import threading
import time
from typing import Callable

from qwen_gateway.keys import LABEL

log = logging.getLogger("qwen_gateway.kube")
GROUP, VERSION, PLURAL = "inference.qwenops.io", "v1alpha1", "qweninferences"
# The scale-from-zero contract with the operator: the gateway stamps the time of the latest request for a model on
# its QwenInference (at most every --activity-interval seconds while requests arrive, and before it wakes one); the
# operator scales a QwenInference with autoscaling.minReplicas 0 to zero (spec.replicas 0, through the scale
# subresource) once that stamp is autoscaling.scaleToZeroAfterSeconds old, and the gateway wakes it by setting
# spec.replicas to 1 there.
ACTIVITY_ANNOTATION = "gateway.qwenops.io/last-request"
WATCH_SECONDS = 240
RETRY_SECONDS = 2.0

# (kind, event type, object): type is SYNC with a list of every object after each (re)list, else ADDED/MODIFIED/DELETED.
Sink = Callable[[str, str, object], None]


def api_client():
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class Watches:
    def __init__(self, api, loop: asyncio.AbstractEventLoop, sink: Sink, keys_namespace: str, namespaces: list[str]):
        from kubernetes import client

        self.api, self.loop, self.sink = api, loop, sink
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.keys_namespace, self.namespaces = keys_namespace, namespaces
        self.stop = threading.Event()
        self.posted: dict[tuple[str, str], str] = {}

    def start(self) -> None:
        threading.Thread(target=self._run, args=("secrets", self._list_secrets), name="watch-keys", daemon=True).start()
        if self.namespaces:
            for namespace in self.namespaces:
                threading.Thread(target=self._run, args=("qweninferences", self._list_qwis(namespace)), name=f"watch-qwi-{namespace}", daemon=True).start()
        else:
            threading.Thread(target=self._run, args=("qweninferences", self._list_qwis(None)), name="watch-qwi", daemon=True).start()

    def _list_secrets(self, **kwargs):
        return self.core.list_namespaced_secret(self.keys_namespace, label_selector=f"{LABEL}=true", _preload_content=False, **kwargs)

    def _list_qwis(self, namespace: str | None):
        def list_(**kwargs):
            if namespace is None:
                return self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, _preload_content=False, **kwargs)
            return self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _preload_content=False, **kwargs)
        return list_

    def _emit(self, kind: str, type_: str, obj: object) -> None:
        self.loop.call_soon_threadsafe(self.sink, kind, type_, obj)

    def _run(self, kind: str, list_) -> None:
        import json

        while not self.stop.is_set():
            try:
                response = list_(limit=500)
                body = json.loads(response.data)
                items = body.get("items") or []
                while (body.get("metadata") or {}).get("continue"):
                    body = json.loads(list_(limit=500, _continue=body["metadata"]["continue"]).data)
                    items += body.get("items") or []
                version = body["metadata"]["resourceVersion"]
                self._emit(kind, "SYNC", items)
                while not self.stop.is_set():
                    version = self._watch(kind, list_, version)
                    if version is None:
                        break  # 410 Gone: list again
            except Exception as error:  # noqa: BLE001 - the API server may be away a while; list again
                if self.stop.is_set():
                    return
                log.warning("%s: list/watch failed (%s); retrying in %g s", kind, error, RETRY_SECONDS)
                time.sleep(RETRY_SECONDS)

    def _watch(self, kind: str, list_, version: str) -> str | None:
        import json

        response = list_(watch=True, resource_version=version, allow_watch_bookmarks=True, timeout_seconds=WATCH_SECONDS)
        try:
            for line in _lines(response):
                if self.stop.is_set():
                    return version
                event = json.loads(line)
                type_, obj = event.get("type"), event.get("object") or {}
                if type_ == "ERROR":
                    if obj.get("code") == 410:
                        return None
                    raise RuntimeError(obj.get("message") or "watch error")
                version = (obj.get("metadata") or {}).get("resourceVersion", version)
                if type_ in ("ADDED", "MODIFIED", "DELETED"):
                    self._emit(kind, type_, obj)
        finally:
            response.release_conn()
        return version

    def wake(self, namespace: str, name: str) -> None:
        """Asks for one replica through the QwenInference's scale subresource (blocking: run it in a thread)."""
        self.custom.patch_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, name, {"spec": {"replicas": 1}})

    def report_activity(self, namespace: str, name: str, when: datetime.datetime) -> None:
        """Stamps ACTIVITY_ANNOTATION (blocking: run it in a thread). The operator scales an idle model to zero from it."""
        stamp = when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                   {"metadata": {"annotations": {ACTIVITY_ANNOTATION: stamp}}})

    def engine_key(self, namespace: str, name: str, key: str) -> str:
        """The engine's API key a QwenInference names (spec.auth.apiKeySecretRef), read by name (blocking)."""
        secret = self.core.read_namespaced_secret(name, namespace)
        encoded = (secret.data or {}).get(key)
        if not encoded:
            raise LookupError(f"Secret {namespace}/{name} has no key {key!r}")
        return base64.b64decode(encoded).decode().strip()

    def post_invalid_key_event(self, secret: dict, message: str) -> None:
        """A Warning Event on the Secret (once per version and message). The message never holds the key."""
        metadata = secret.get("metadata") or {}
        slot = (metadata.get("uid", ""), metadata.get("resourceVersion", ""))
        if self.posted.get(slot) == message:
            return
        self.posted[slot] = message
        threading.Thread(target=self._post, args=(metadata, message), daemon=True).start()

    def _post(self, metadata: dict, message: str) -> None:
        from kubernetes import client

        now = datetime.datetime.now(datetime.timezone.utc)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{metadata.get('name', 'key')}.", namespace=self.keys_namespace),
            involved_object=client.V1ObjectReference(kind="Secret", api_version="v1", name=metadata.get("name"),
                                                     namespace=self.keys_namespace, uid=metadata.get("uid"),
                                                     resource_version=metadata.get("resourceVersion")),
            reason="InvalidGatewayKey", message=f"The gateway ignores this key: {message}", type="Warning",
            first_timestamp=now, last_timestamp=now, count=1, source=client.V1EventSource(component="qwen-gateway"),
            reporting_component="qwen-gateway", reporting_instance="qwen-gateway",
        )
        try:
            self.core.create_namespaced_event(self.keys_namespace, event)
        except Exception as error:  # noqa: BLE001 - an Event is best effort
            log.warning("could not post an Event on Secret %s: %s", metadata.get("name"), error)


def _lines(response):
    """The watch's newline-delimited JSON, line by line as it arrives."""
    pending = b""
    for chunk in response.stream(amt=65536, decode_content=True):
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                yield line
