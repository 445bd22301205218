"""The response cache (off by default; a model's owner turns it on with the annotation
gateway.qwenops.io/response-cache: "true" on its QwenInference): answers to non-streamed requests with temperature 0,
by a hash of the model and the whole request body, bounded by a TTL and a size. In this process (an LRU of at most
--cache-max-entries), or in Redis when the gateway has one (SET with EX: Redis's maxmemory policy bounds it there)."""

from __future__ import annotations

import collections
import hashlib
import json
import time

ANNOTATION = "gateway.qwenops.io/response-cache"


def cacheable(body: dict) -> bool:
    """Deterministic requests only: temperature exactly 0, not streamed, one choice."""
    temperature = body.get("temperature")
    return (isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature == 0
            and not body.get("stream") and body.get("n", 1) == 1)


def cache_key(model: str, body: dict) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{model}\0{canonical}".encode("utf-8", "surrogatepass")).hexdigest()


class LocalCache:
    def __init__(self, ttl: float, max_entries: int, max_bytes: int, clock=time.monotonic):
        self.ttl, self.max_entries, self.max_bytes, self.clock = ttl, max_entries, max_bytes, clock
        self.entries: collections.OrderedDict[str, tuple[float, bytes]] = collections.OrderedDict()

    async def get(self, key: str) -> bytes | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry[0] < self.clock():
            del self.entries[key]
            return None
        self.entries.move_to_end(key)
        return entry[1]

    async def put(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        self.entries[key] = (self.clock() + self.ttl, value)
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)


class RedisCache:
    def __init__(self, redis, prefix: str, ttl: float, max_bytes: int):
        self.redis, self.prefix, self.ttl, self.max_bytes = redis, prefix, ttl, max_bytes

    async def get(self, key: str) -> bytes | None:
        return await self.redis.get(f"{self.prefix}:cache:{key}")

    async def put(self, key: str, value: bytes) -> None:
        if len(value) <= self.max_bytes:
            await self.redis.set(f"{self.prefix}:cache:{key}", value, ex=max(1, int(self.ttl)))
