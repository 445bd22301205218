"""A small Kubernetes API client for the kinds the operator manages.

It speaks plain dicts (the manifests the builders make), writes only with server-side apply under
one field manager, and counts every request it sends by verb and kind (the operator's
`qwen_operator_api_requests_total` metric), which is how the tests prove a steady state makes no
writes. Built on the official client's connection handling (kubeconfig or in-cluster config).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator
from urllib.parse import quote

import orjson
import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException, RESTResponse

# The verbs of KubeApi that change the cluster, as counted in qwen_operator_api_requests_total.
WRITE_VERBS = frozenset({"apply", "create", "delete", "patch", "patch_scale", "patch_status", "replace"})


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.api_version}" if "/" in self.api_version else f"/api/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace)}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name)}"
        if subresource:
            base += f"/{subresource}"
        return base


QWEN_INFERENCE = Kind("inference.qwenops.io/v1alpha1", "QwenInference", "qweninferences")
DEPLOYMENT = Kind("apps/v1", "Deployment", "deployments")
SERVICE = Kind("v1", "Service", "services")
POD = Kind("v1", "Pod", "pods")
SECRET = Kind("v1", "Secret", "secrets")
CONFIG_MAP = Kind("v1", "ConfigMap", "configmaps")
PVC = Kind("v1", "PersistentVolumeClaim", "persistentvolumeclaims")
NODE = Kind("v1", "Node", "nodes", namespaced=False)
NAMESPACE = Kind("v1", "Namespace", "namespaces", namespaced=False)
EVENT = Kind("v1", "Event", "events")
PDB = Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets")
NETWORK_POLICY = Kind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies")
HPA = Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
SERVICE_MONITOR = Kind("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors")
PROMETHEUS_RULE = Kind("monitoring.coreos.com/v1", "PrometheusRule", "prometheusrules")
LEASE = Kind("coordination.k8s.io/v1", "Lease", "leases")
SERVICE_ACCOUNT = Kind("v1", "ServiceAccount", "serviceaccounts")
ROLE = Kind("rbac.authorization.k8s.io/v1", "Role", "roles")
ROLE_BINDING = Kind("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings")

KINDS_BY_KEY: dict[tuple[str, str], Kind] = {
    (k.api_version, k.kind): k
    for k in (QWEN_INFERENCE, DEPLOYMENT, SERVICE, POD, SECRET, CONFIG_MAP, PVC, NODE, EVENT, PDB, NETWORK_POLICY, HPA, SERVICE_MONITOR, PROMETHEUS_RULE,
              SERVICE_ACCOUNT, ROLE, ROLE_BINDING)
}


def kind_of(manifest: dict[str, Any]) -> Kind:
    return KINDS_BY_KEY[(manifest["apiVersion"], manifest["kind"])]


class KubeError(Exception):
    """An API call failed; status is the HTTP status (0 when the server was not reached)."""

    def __init__(self, status: int, reason: str, message: str, retry_after: float | None = None):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after  # seconds, from a Retry-After header (429, 503)

    @property
    def transient(self) -> bool:
        """No answer, throttled, or a server-side failure: the same call may work later."""
        return self.status == 0 or self.status == 429 or self.status >= 500


RequestObserver = Callable[[str, str, int], None]  # (verb, kind, http status)


NO_STORED_OBJECT_HAS_THIS_VERSION = "1"


class KubeApi:
    def __init__(self, api_client: k8s_client.ApiClient, field_manager: str, observe: RequestObserver | None = None, timeout: float = 30.0):
        self._api = api_client
        self._field_manager = field_manager
        self._observe = observe or (lambda verb, kind, status: None)
        self._timeout = timeout
        self._per_thread = threading.local()  # reads made by each thread (reads_by_this_thread)

    @classmethod
    def from_environment(cls, field_manager: str, observe: RequestObserver | None = None) -> "KubeApi":
        """In-cluster config when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
        try:
            k8s_config.load_incluster_config()
            configuration = k8s_client.Configuration.get_default_copy()
        except k8s_config.ConfigException:
            configuration = k8s_client.Configuration()
            k8s_config.load_kube_config(client_configuration=configuration)
        return cls(k8s_client.ApiClient(configuration), field_manager, observe)

    def _request(self, verb: str, kind: Kind, method: str, path: str, query: list[tuple[str, str]] | None = None,
                 body: Any = None, content_type: str = "application/json", accept: str | None = None) -> Any:
        headers = {"Accept": accept or "application/json", "Content-Type": content_type}
        status = 0
        try:
            # The official client builds the URL and the authentication headers (a refreshed token in a pod); the
            # body goes out, and the answer comes back, through orjson: the client's own walk and json of every
            # manifest was a tenth of the operator's CPU at 1,000 resources.
            method_, url, headers_, _, _ = self._api.param_serialize(method, path, query_params=query or [], header_params=headers, auth_settings=["BearerToken"])
            response = RESTResponse(self._api.rest_client.pool_manager.request(
                method_, url, body=orjson.dumps(body) if body is not None else None, headers=headers_,
                timeout=urllib3.Timeout(total=self._timeout), preload_content=False))
            response.read()
            status = response.status
            if status >= 400:
                raise ApiException(http_resp=response)
            return orjson.loads(response.data) if response.data else None
        except ApiException as error:
            status = error.status or 0
            raise _as_kube_error(error) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            # Connection refused, reset, timed out: not an answer from the API server.
            raise KubeError(0, "ConnectionError", f"{type(error).__name__}: {error}"[:500]) from None
        finally:
            self._observe(verb, kind.kind, status)
            if method == "GET":
                self._per_thread.reads = getattr(self._per_thread, "reads", 0) + 1

    def reads_by_this_thread(self) -> int:
        """How many GETs (reads, lists, watches) the calling thread has sent through this client."""
        return getattr(self._per_thread, "reads", 0)

    # Reads

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self._request("get", kind, "GET", kind.path(namespace, name))
        except KubeError as error:
            if error.status == 404:
                return None
            raise

    def list(self, kind: Kind, namespace: str | None = None, label_selector: str | None = None) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        result = self._request("list", kind, "GET", kind.path(namespace), query)
        return result.get("items", [])

    def list_page(self, kind: Kind, namespace: str | None, query: list[tuple[str, str]], metadata_only: bool = False) -> dict[str, Any]:
        """One page of a list (the caller passes limit/continue), as the API sent it."""
        accept = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json" if metadata_only else None
        return self._request("list", kind, "GET", kind.path(namespace), query, accept=accept)

    def watch(self, kind: Kind, namespace: str | None, query: list[tuple[str, str]], resource_version: str, timeout_seconds: int,
              metadata_only: bool = False) -> Iterator[dict[str, Any]]:
        """Watch events from resource_version on, until the server ends the stream (timeout_seconds)."""
        query = query + [("watch", "true"), ("allowWatchBookmarks", "true"), ("timeoutSeconds", str(timeout_seconds))]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        accept = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json" if metadata_only else "application/json"
        headers = {"Accept": accept}
        try:
            method, url, headers_, body, _ = self._api.param_serialize("GET", kind.path(namespace), query_params=query, header_params=headers,
                                                                         auth_settings=["BearerToken"])
            try:
                response = self._api.call_api(method, url, headers_, body, _request_timeout=(10, timeout_seconds + 30))
            except (urllib3.exceptions.HTTPError, OSError):
                self._observe("watch", kind.kind, 0)
                raise
            self._observe("watch", kind.kind, response.status)  # counted when it opens: a stream lasts minutes
            if response.status >= 400:
                response.read()
                raise ApiException(http_resp=response)
            yield from iter_json_lines(response.response.stream(amt=None, decode_content=False))
        except ApiException as error:
            raise _as_kube_error(error) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise KubeError(0, "ConnectionError", f"{type(error).__name__}: {error}"[:500]) from None

    def served_resources(self, group_version: str) -> set[str] | None:
        """Plural names the API serves in group_version, or None when the group/version is not served."""
        path = f"/apis/{group_version}" if "/" in group_version else f"/api/{group_version}"
        try:
            result = self._request("discover", Kind(group_version, "APIResourceList", ""), "GET", path)
        except KubeError as error:
            if error.status in (404, 503):
                return None
            raise
        return {r["name"] for r in result.get("resources", [])}

    # Writes

    @property
    def field_manager(self) -> str:
        return self._field_manager

    def apply(self, manifest: dict[str, Any], field_manager: str | None = None, force: bool = True, create_only: bool = False) -> dict[str, Any]:
        """Server-side apply, by default with forced ownership under the operator's field manager.

        create_only: the apply may make the object but never change one that exists, whoever made it: it
        carries a resourceVersion no stored object has (etcd's first write is revision 2), so the API server
        refuses it with 409 Conflict when the name is taken, and ignores it when it creates the object."""
        kind = kind_of(manifest)
        meta = manifest["metadata"]
        if create_only:
            manifest = {**manifest, "metadata": {**meta, "resourceVersion": NO_STORED_OBJECT_HAS_THIS_VERSION}}
        query = [("fieldManager", field_manager or self._field_manager), ("force", "true" if force else "false")]
        return self._request("apply", kind, "PATCH", kind.path(meta.get("namespace"), meta["name"]), query,
                             body=manifest, content_type="application/apply-patch+yaml")

    def delete(self, kind: Kind, namespace: str | None, name: str, uid: str | None = None) -> None:
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self._request("delete", kind, "DELETE", kind.path(namespace, name), body=body)
        except KubeError as error:
            if error.status not in (404, 409):  # already gone, or replaced by a new object of that name
                raise

    def patch_status(self, kind: Kind, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        return self._request("patch_status", kind, "PATCH", kind.path(namespace, name, "status"),
                             body={"status": status}, content_type="application/merge-patch+json")

    def patch_scale(self, kind: Kind, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        """spec.replicas through the scale subresource (a QwenInference scaled to zero when idle)."""
        return self._request("patch_scale", kind, "PATCH", kind.path(namespace, name, "scale"),
                             body={"spec": {"replicas": replicas}}, content_type="application/merge-patch+json")

    def create(self, kind: Kind, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        return self._request("create", kind, "POST", kind.path(namespace), body=manifest)

    def replace(self, kind: Kind, namespace: str | None, name: str, manifest: dict[str, Any]) -> dict[str, Any]:
        """PUT: fails with 409 when manifest's resourceVersion is no longer the stored one."""
        return self._request("replace", kind, "PUT", kind.path(namespace, name), body=manifest)

    def create_dry_run(self, kind: Kind, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        """Validates manifest as a new object (server-side dry run under a generated name: nothing is
        stored, and an existing object of the same name does not matter). Raises KubeError if invalid."""
        meta = {k: v for k, v in manifest["metadata"].items() if k not in ("name", "resourceVersion", "uid")}
        body = {**manifest, "metadata": {**meta, "generateName": "qwen-dry-run-"}}
        return self._request("dry_run", kind, "POST", kind.path(namespace), [("dryRun", "All")], body=body)


def _retry_after(error: ApiException) -> float | None:
    try:
        value = (error.headers or {}).get("Retry-After")
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _as_kube_error(error: ApiException) -> KubeError:
    message = error.reason or ""
    reason = ""
    if error.body:
        try:
            parsed = json.loads(error.body)
            message = parsed.get("message", message)
            reason = parsed.get("reason", "")
        except (ValueError, AttributeError):
            message = str(error.body)[:500]
    return KubeError(error.status or 0, reason, message, _retry_after(error))


def iter_json_lines(chunks: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    """Watch events from a chunked HTTP body: one JSON object per line."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield orjson.loads(line)
    if buffer.strip():
        yield orjson.loads(buffer)
