"""Leader election on a coordination.k8s.io/v1 Lease, with client-go's semantics.

Only the holder of the Lease runs the controller; the other replicas stand by and take over when
the holder stops renewing it. The rules that keep two replicas from ever being active at once:

- A candidate judges the Lease by its own clock: it may take the Lease only when the record has not
  changed for lease_duration since it last saw it change (so clock skew between nodes is harmless).
- Every write carries the resourceVersion it read, so two candidates racing for the Lease cannot
  both win (the loser gets 409 Conflict).
- The holder renews every retry_period; if it has not renewed for renew_deadline (< lease_duration)
  it stops at once (the process exits; the kubelet restarts it as a standby), before any standby
  could take the Lease.
- On a clean shutdown the holder releases the Lease, so a rolling upgrade hands over in seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from qwen_operator.k8s.client import LEASE, KubeApi, KubeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ElectionConfig:
    name: str
    namespace: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not (0 < self.retry_period < self.renew_deadline < self.lease_duration):
            raise ValueError("leader election needs retry_period < renew_deadline < lease_duration")


def _micro_time(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(config: ElectionConfig, existing: dict[str, Any] | None, now: datetime, acquiring: bool) -> dict[str, Any]:
    """The Lease as this candidate writes it when it takes (acquiring) or renews it."""
    spec = dict((existing or {}).get("spec") or {})
    if acquiring:
        spec["acquireTime"] = _micro_time(now)
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if existing and spec.get("holderIdentity") else 0)
    spec.update({"holderIdentity": config.identity, "leaseDurationSeconds": int(config.lease_duration), "renewTime": _micro_time(now)})
    metadata: dict[str, Any] = {"name": config.name, "namespace": config.namespace}
    if existing is not None:
        metadata["resourceVersion"] = existing["metadata"]["resourceVersion"]
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}


class LeaderElector:
    def __init__(self, api: KubeApi, config: ElectionConfig, clock: Callable[[], float] = time.monotonic):
        self.api, self.config, self.clock = api, config, clock
        self.is_leader = threading.Event()
        self.lost = threading.Event()
        self._observed_version: str | None = None
        self._observed_at = 0.0
        self._last_renew = 0.0
        self.last_contact = clock()  # when the API last answered this elector (for /healthz)
        self._stop = threading.Event()

    # One attempt

    def try_acquire_or_renew(self) -> bool:
        """Takes or renews the Lease if this candidate may; True when it holds it afterwards."""
        now_wall = datetime.now(timezone.utc)
        try:
            existing = self.api.get(LEASE, self.config.namespace, self.config.name)
            self.last_contact = self.clock()
            if existing is None:
                self.api.create(LEASE, self.config.namespace, lease_body(self.config, None, now_wall, acquiring=True))
                return self._won()
            spec = existing.get("spec") or {}
            version = existing["metadata"]["resourceVersion"]
            if version != self._observed_version:
                self._observed_version, self._observed_at = version, self.clock()
            holder = spec.get("holderIdentity") or ""
            ours = holder == self.config.identity
            duration = float(spec.get("leaseDurationSeconds") or self.config.lease_duration)
            if not ours and holder and self.clock() < self._observed_at + duration:
                return False  # someone else holds a live lease
            self.api.replace(LEASE, self.config.namespace, self.config.name, lease_body(self.config, existing, now_wall, acquiring=not ours))
            return self._won()
        except KubeError as error:
            if error.status != 409:
                log.debug("leader election: %s", error)
            else:
                self.last_contact = self.clock()
            return False

    def _won(self) -> bool:
        self._last_renew = self.clock()
        self.last_contact = self._last_renew
        return True

    # Loops

    def wait_for_leadership(self) -> bool:
        """Blocks until this candidate holds the Lease (True), or stop() was called (False)."""
        while not self._stop.is_set():
            if self.try_acquire_or_renew():
                log.info("leader election: %s holds Lease %s/%s", self.config.identity, self.config.namespace, self.config.name)
                self.is_leader.set()
                return True
            self._stop.wait(self.config.retry_period)
        return False

    def keep_renewing(self, on_lost: Callable[[], None]) -> threading.Thread:
        """Renews in the background; calls on_lost once when renewals fail for renew_deadline."""

        def renew() -> None:
            while not self._stop.wait(self.config.retry_period):
                if self.try_acquire_or_renew():
                    continue
                if self.clock() - self._last_renew >= self.config.renew_deadline:
                    log.error("leader election: Lease %s/%s not renewed for %ss: stopping", self.config.namespace, self.config.name, self.config.renew_deadline)
                    self.is_leader.clear()
                    self.lost.set()
                    on_lost()
                    return

        thread = threading.Thread(target=renew, name="lease-renew", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """Gives the Lease up (clean shutdown), so a standby takes over at once."""
        self._stop.set()
        if not self.is_leader.is_set():
            return
        self.is_leader.clear()
        try:
            existing = self.api.get(LEASE, self.config.namespace, self.config.name)
            if existing is None or (existing.get("spec") or {}).get("holderIdentity") != self.config.identity:
                return
            body = lease_body(self.config, existing, datetime.now(timezone.utc), acquiring=False)
            body["spec"].update({"holderIdentity": "", "leaseDurationSeconds": 1})
            self.api.replace(LEASE, self.config.namespace, self.config.name, body)
            log.info("leader election: released Lease %s/%s", self.config.namespace, self.config.name)
        except KubeError as error:
            log.warning("leader election: could not release the Lease: %s", error)

    def stop(self) -> None:
        self._stop.set()
