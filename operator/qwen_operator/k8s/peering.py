"""Is this operator replica the active one? The same judgement kopf's peering makes.

kopf records every replica in its peering object's status as {identity: {priority, lifetime,
lastseen}} and pauses a replica while a live peer has a higher priority. The operator's own resync
loop (handlers/qweninference.py) asks here first, so a standby replica does not resync.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from qwen_operator.k8s.client import Kind, KubeApi

CLUSTER_PEERING = Kind("kopf.dev/v1", "ClusterKopfPeering", "clusterkopfpeerings", namespaced=False)
NAMESPACED_PEERING = Kind("kopf.dev/v1", "KopfPeering", "kopfpeerings")


def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def outranked(peers: dict[str, Any], own_priority: int, now: datetime) -> bool:
    """True when a live peer (lastseen + lifetime still ahead) has a higher priority than ours."""
    for info in peers.values():
        try:
            deadline = _parse_time(info["lastseen"]) + timedelta(seconds=int(info.get("lifetime", 60)))
            priority = int(info.get("priority", 0))
        except (KeyError, TypeError, ValueError):
            continue
        if deadline > now and priority > own_priority:
            return True
    return False


def is_active(api: KubeApi, peering_name: str, own_priority: int, namespace: str | None = None) -> bool:
    """Cluster-wide operators use the ClusterKopfPeering; namespaced ones the KopfPeering of a namespace."""
    kind = NAMESPACED_PEERING if namespace else CLUSTER_PEERING
    body = api.get(kind, namespace, peering_name)
    if body is None:
        return True  # no peering object: kopf runs unpeered, and so do we
    return not outranked(body.get("status") or {}, own_priority, datetime.now(timezone.utc))
