"""Rate and quota decisions (pure: every function takes the time it judges at).

Request rate: a token bucket per key (`rate` tokens a second, at most `burst`); a request takes one token.
Token quotas: fixed windows, a UTC minute and a UTC day. A request is refused while its key has used its
quota in the current window; a request's usage is counted when vLLM reports it (at the end), so requests
already in flight when a quota is crossed may overshoot it by their own usage.
Without Redis each of N gateway replicas enforces 1/N of every limit (`share`): exact when clients spread
evenly over the replicas, approximate otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

WINDOWS = {"minute": 60, "day": 86400}


@dataclass(frozen=True)
class Bucket:
    tokens: float
    at: float


def take(bucket: Bucket | None, now: float, rate: float, burst: float, cost: float = 1.0) -> tuple[bool, Bucket, float]:
    """(allowed, the bucket after, seconds until `cost` tokens are there when refused, else 0)."""
    if bucket is None:
        tokens = burst
    else:
        tokens = min(burst, bucket.tokens + max(0.0, now - bucket.at) * rate)
    if tokens >= cost:
        return True, Bucket(tokens - cost, now), 0.0
    return False, Bucket(tokens, now), (cost - tokens) / rate


def window(now: float, name: str) -> tuple[int, float]:
    """(the window's number since the epoch, seconds until it ends) for 'minute' or 'day' (UTC)."""
    length = WINDOWS[name]
    number = int(now // length)
    return number, (number + 1) * length - now


def quota_verdict(used: dict[str, int], limits: dict[str, int | None], now: float) -> tuple[str, int, float] | None:
    """None when every window has room, else (window, its limit, seconds until it resets) of the first full one."""
    for name in ("minute", "day"):
        limit = limits.get(name)
        if limit is not None and used.get(name, 0) >= limit:
            return name, limit, window(now, name)[1]
    return None


def share(value: float | int | None, replicas: int, integer: bool = False):
    """This replica's share of a limit when replicas do not share state (at least 1 of anything)."""
    if value is None:
        return None
    part = value / max(1, replicas)
    return max(1, math.floor(part)) if integer else part
