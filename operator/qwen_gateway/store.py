"""Where limits keep their state: this process (`LocalStore`, each of N replicas enforcing 1/N of every limit),
or Redis (`RedisStore`, exact across replicas: one token bucket per key, updated atomically by a script that
reads Redis's own clock, and one counter per key and quota window)."""

from __future__ import annotations

import time
from typing import Protocol

from qwen_gateway import limits
from qwen_gateway.keys import KeyPolicy


class Store(Protocol):
    description: str

    async def take(self, policy: KeyPolicy) -> tuple[bool, float]: ...
    async def quota_verdict(self, policy: KeyPolicy) -> tuple[str, int, float] | None: ...
    async def add_tokens(self, policy: KeyPolicy, count: int) -> None: ...
    async def used(self, policy: KeyPolicy) -> dict[str, int]: ...
    async def healthy(self) -> tuple[bool, str]: ...
    async def close(self) -> None: ...


class LocalStore:
    def __init__(self, replicas: int = 1, clock=time.monotonic, wall=time.time):
        self.replicas = max(1, replicas)
        self.clock, self.wall = clock, wall
        self.buckets: dict[str, limits.Bucket] = {}
        self.counts: dict[tuple[str, str, int], int] = {}
        self.description = f"in memory, this replica's share (1/{self.replicas})"

    def _limits(self, policy: KeyPolicy) -> dict[str, int | None]:
        return {"minute": limits.share(policy.tokens_per_minute, self.replicas, True),
                "day": limits.share(policy.tokens_per_day, self.replicas, True)}

    async def take(self, policy: KeyPolicy) -> tuple[bool, float]:
        rate = limits.share(policy.rate, self.replicas)
        burst = limits.share(policy.burst, self.replicas, True)
        allowed, bucket, wait = limits.take(self.buckets.get(policy.name), self.clock(), rate, burst)
        self.buckets[policy.name] = bucket
        return allowed, wait

    async def quota_verdict(self, policy: KeyPolicy) -> tuple[str, int, float] | None:
        if policy.tokens_per_minute is None and policy.tokens_per_day is None:
            return None
        now = self.wall()
        used = {name: self.counts.get((policy.name, name, limits.window(now, name)[0]), 0) for name in limits.WINDOWS}
        return limits.quota_verdict(used, self._limits(policy), now)

    async def used(self, policy: KeyPolicy) -> dict[str, int]:
        now = self.wall()
        return {name: self.counts.get((policy.name, name, limits.window(now, name)[0]), 0) for name in limits.WINDOWS}

    async def add_tokens(self, policy: KeyPolicy, count: int) -> None:
        if count <= 0 or (policy.tokens_per_minute is None and policy.tokens_per_day is None):
            return
        now = self.wall()
        for name in limits.WINDOWS:
            slot = (policy.name, name, limits.window(now, name)[0])
            self.counts[slot] = self.counts.get(slot, 0) + count
        if len(self.counts) > 4 * max(1, len(self.buckets)) + 64:  # forget ended windows
            current = {name: limits.window(now, name)[0] for name in limits.WINDOWS}
            self.counts = {slot: n for slot, n in self.counts.items() if slot[2] == current[slot[1]]}

    async def healthy(self) -> tuple[bool, str]:
        return True, self.description

    async def close(self) -> None:
        pass


# KEYS[1] the bucket; ARGV rate (per second), burst. Returns {allowed (0/1), seconds to wait as a string}. Times are whole
# microseconds of Redis's clock, numbers written with 17 digits: tostring's 14 digits round the time to 0.1 ms, and
# rounding up lost refill time whenever two requests came closer than that (the limiter then granted 6% too little).
TOKEN_BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate = tonumber(ARGV[1]) / 1000000
local burst = tonumber(ARGV[2])
local v = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(v[1])
local at = tonumber(v[2])
if tokens == nil or at == nil then tokens = burst; at = now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 else wait = (1 - tokens) / rate / 1000000 end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'at', string.format('%d', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate / 1000) + 1000)
return {allowed, string.format('%.17g', wait)}
"""


class RedisStore:
    def __init__(self, url: str, prefix: str = "qwen-gateway", wall=time.time):
        import redis.asyncio as aioredis  # here: a gateway without Redis never loads it

        self.redis = aioredis.from_url(url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=10)
        self.prefix = prefix
        self.wall = wall
        self.bucket_script = self.redis.register_script(TOKEN_BUCKET)
        self.description = "Redis, exact across replicas"

    def _key(self, *parts: str | int) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    async def take(self, policy: KeyPolicy) -> tuple[bool, float]:
        allowed, wait = await self.bucket_script(keys=[self._key("rate", policy.name)], args=[policy.rate, policy.burst])
        return int(allowed) == 1, float(wait)

    def _window_keys(self, policy: KeyPolicy, now: float) -> dict[str, str]:
        return {name: self._key("tokens", policy.name, name, limits.window(now, name)[0]) for name in limits.WINDOWS}

    async def quota_verdict(self, policy: KeyPolicy) -> tuple[str, int, float] | None:
        if policy.tokens_per_minute is None and policy.tokens_per_day is None:
            return None
        now = self.wall()
        keys = self._window_keys(policy, now)
        values = await self.redis.mget(list(keys.values()))
        used = {name: int(value or 0) for name, value in zip(keys, values)}
        return limits.quota_verdict(used, {"minute": policy.tokens_per_minute, "day": policy.tokens_per_day}, now)

    async def used(self, policy: KeyPolicy) -> dict[str, int]:
        keys = self._window_keys(policy, self.wall())
        values = await self.redis.mget(list(keys.values()))
        return {name: int(value or 0) for name, value in zip(keys, values)}

    async def add_tokens(self, policy: KeyPolicy, count: int) -> None:
        if count <= 0 or (policy.tokens_per_minute is None and policy.tokens_per_day is None):
            return
        now = self.wall()
        async with self.redis.pipeline(transaction=True) as pipe:
            for name, key in self._window_keys(policy, now).items():
                pipe.incrby(key, count)
                pipe.expire(key, limits.WINDOWS[name] + 120)
            await pipe.execute()

    async def healthy(self) -> tuple[bool, str]:
        try:
            await self.redis.ping()
            return True, self.description
        except Exception as error:  # noqa: BLE001 - reported in readiness
            return False, f"Redis does not answer: {type(error).__name__}"

    async def close(self) -> None:
        await self.redis.aclose()
