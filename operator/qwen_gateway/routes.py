"""Which QwenInference serves which model (pure): a route per served model name, from the watched objects.

A model's upstream is the endpoint the operator writes into the QwenInference's status (its Service, or its
router's); its state is read from the status too:
  ready             at least one ready replica
  scaled-to-zero    spec or status replicas 0 (autoscaling down to zero, or scaled by hand)
  starting          replicas asked for, none ready yet
  degraded          some replica is ready, but Ready says something is wrong (EngineHung, CrashLoop...)
  down              no ready replica, and Ready's reason is a failure
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    model: str
    namespace: str
    name: str
    uid: str
    created: str
    upstream: str  # base URL ending in /v1
    replicas: int
    ready_replicas: int
    spec_replicas: int | None  # spec.replicas, the scale subresource: 0 while a scale-to-zero model sleeps
    ready_reason: str
    deep_health: str  # the EngineHung verdict, when the operator reported one; else "ok" or "off"
    wakeable: bool = False  # autoscaling with minReplicas 0: the gateway may ask for a replica (scale from zero)
    cache: bool = False  # the annotation gateway.qwenops.io/response-cache is "true": cache deterministic answers
    auth_secret: tuple[str, str] | None = None  # spec.auth.apiKeySecretRef (name, key): the engine's own API key

    @property
    def state(self) -> str:
        if self.ready_reason == "ScaledToZero" or (self.spec_replicas == 0 and (self.wakeable or self.ready_replicas == 0)):
            return "scaled-to-zero"  # also while its last pods drain
        if self.ready_replicas > 0:
            return "degraded" if self.ready_reason not in ("Ready", "ReplicasNotReady", "RollingOut", "") else "ready"
        if self.ready_reason in PROGRESS_REASONS:
            return "starting"
        return "down"


# Ready=False reasons of a normal start (the operator's own list, status.PROGRESS_REASONS); any other means down.
PROGRESS_REASONS = frozenset({"", "ModelLoading", "ModelDownloading", "ReplicasNotReady", "VolumePending", "RollingOut"})


def default_served_name(hf_id: str) -> str:
    return hf_id.rsplit("/", 1)[-1].lower()


def route_of(obj: dict) -> Route | None:
    """The route a QwenInference offers, or None while it has no endpoint yet."""
    metadata = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    model_spec = spec.get("model") or {}
    model = status.get("model") or model_spec.get("servedName") or default_served_name(model_spec.get("name") or "Qwen/Qwen3-0.6B-FP8")
    endpoint = (status.get("endpoint") or "").rstrip("/")
    if not endpoint:
        return None
    if not endpoint.endswith("/v1"):
        endpoint += "/v1"
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    deep = "off" if ((spec.get("engine") or {}).get("deepHealth") or {}).get("enabled") is False else "ok"
    if ready.get("reason") == "EngineHung":
        deep = ready.get("message") or "EngineHung"
    spec_replicas = spec.get("replicas")
    autoscaling = spec.get("autoscaling") or {}
    return Route(
        model=model,
        namespace=metadata.get("namespace", ""),
        name=metadata.get("name", ""),
        uid=metadata.get("uid", ""),
        created=metadata.get("creationTimestamp") or "",
        upstream=endpoint,
        replicas=int(status.get("replicas") or 0),
        ready_replicas=int(status.get("readyReplicas") or 0),
        spec_replicas=spec_replicas if isinstance(spec_replicas, int) else None,
        ready_reason=ready.get("reason") or "",
        deep_health=deep,
        wakeable=bool(autoscaling.get("enabled")) and autoscaling.get("minReplicas") == 0,
        cache=((metadata.get("annotations") or {}).get("gateway.qwenops.io/response-cache") or "").lower() == "true",
        auth_secret=_secret_ref((spec.get("auth") or {}).get("apiKeySecretRef")),
    )


def _secret_ref(ref) -> tuple[str, str] | None:
    if isinstance(ref, dict) and ref.get("name"):
        return ref["name"], ref.get("key") or "api-key"
    return None


def table(routes: list[Route]) -> tuple[dict[str, Route], list[Route]]:
    """(model -> route, the routes left out). Two QwenInferences serving one model name: the older one serves it
    (then namespace/name order), so a newcomer cannot take over another team's model name."""
    chosen: dict[str, Route] = {}
    shadowed: list[Route] = []
    for route in sorted(routes, key=lambda r: (r.created, r.namespace, r.name)):
        if route.model in chosen:
            shadowed.append(route)
        else:
            chosen[route.model] = route
    return chosen, shadowed
