"""The gateway's pure decisions: key Secrets, the token bucket, quota windows, routes, SSE splitting, errors."""

from __future__ import annotations

import base64
import json

import pytest

from qwen_gateway import errors, keys, limits, routes, sse


def secret(key: bytes = b"sk-0123456789abcdef", name: str = "team-a", **annotations: str) -> dict:
    return {"metadata": {"name": name, "annotations": {f"gateway.qwenops.io/{k.replace('_', '-')}": v for k, v in annotations.items()}},
            "data": {"key": base64.b64encode(key).decode()}}


def test_a_key_secret_with_defaults_and_with_every_annotation():
    policy, raw = keys.parse_secret(secret())
    assert raw == b"sk-0123456789abcdef"
    assert (policy.name, policy.models, policy.rate, policy.burst, policy.tokens_per_minute, policy.tokens_per_day) == (
        "team-a", frozenset(), 10.0, 20, None, None)
    assert not policy.allows("qwen3-8b")  # no models annotation: no model
    policy, _ = keys.parse_secret(secret(models="qwen3-8b, qwen3-0.6b-fp8", requests_per_second="2.5", burst="7",
                                         tokens_per_minute="1000", tokens_per_day="20000"))
    assert policy.models == {"qwen3-8b", "qwen3-0.6b-fp8"} and (policy.rate, policy.burst) == (2.5, 7)
    assert (policy.tokens_per_minute, policy.tokens_per_day) == (1000, 20000)
    assert keys.parse_secret(secret(models="*"))[0].allows("anything")
    assert keys.parse_secret(secret(requests_per_second="3"))[0].burst == 6  # burst defaults to 2 s of the rate


@pytest.mark.parametrize("bad, message", [
    (secret(key=b"short"), "16 to 512 bytes"),
    (secret(key=b"sk-0123456789 abcdef"), "printable ASCII without spaces"),
    ({"metadata": {"name": "x"}, "data": {}}, "no data key 'key'"),
    ({"metadata": {"name": "x"}, "data": {"key": "%%%"}}, "not valid base64"),
    (secret(requests_per_second="fast"), "requests-per-second must be a number, not 'fast'"),
    (secret(burst="2.5"), "burst must be an integer"),
    (secret(tokens_per_minute="0"), "tokens-per-minute must be between 1"),
    (secret(models="Qwen/Qwen3-8B"), "is not a served model name"),
])
def test_a_badly_declared_key_says_what_to_fix_and_never_holds_the_key(bad, message):
    with pytest.raises(keys.InvalidKey) as refused:
        keys.parse_secret(bad)
    assert message in str(refused.value)
    assert "0123456789" not in str(refused.value)


def test_the_keyring_keeps_digests_only_and_follows_secret_changes():
    ring = keys.KeyRing(keys.Hasher(b"pepper"))
    policy, raw = keys.parse_secret(secret())
    ring.put("team-a", policy, raw)
    assert ring.find("sk-0123456789abcdef") == policy
    assert ring.find("sk-0123456789abcdeF") is None
    assert raw not in repr(vars(ring)).encode() and b"0123456789" not in repr(vars(ring)).encode()
    rotated, new_raw = keys.parse_secret(secret(key=b"sk-rotated-0123456789"))
    ring.put("team-a", rotated, new_raw)
    assert ring.find("sk-0123456789abcdef") is None and ring.find("sk-rotated-0123456789") == rotated
    ring.remove("team-a")
    assert ring.find("sk-rotated-0123456789") is None and len(ring) == 0
    # Another process (another pepper) makes other digests.
    assert keys.Hasher(b"a").digest("k") != keys.Hasher(b"b").digest("k")


@pytest.mark.parametrize("values, outcome", [
    ([], LookupError), (["Bearer a", "Bearer a"], "more than one"), (["Basic abc"], "Bearer"),
    (["Bearer"], "exactly one"), (["Bearer a b"], "exactly one"), (["Bearer a,b"], "exactly one"),
    (["Bearer " + "k" * 513], "too long"), (["bearer  sk-x "], "sk-x"),
])
def test_bearer_refuses_header_tricks(values, outcome):
    if outcome is LookupError:
        with pytest.raises(LookupError):
            keys.bearer(values)
    elif outcome == "sk-x":
        assert keys.bearer(values) == "sk-x"
    else:
        with pytest.raises(ValueError, match=outcome):
            keys.bearer(values)


def test_token_bucket_allows_the_burst_then_the_rate():
    bucket, now, accepted = None, 1000.0, 0
    for _ in range(25):  # 25 requests at once: the burst of 20
        allowed, bucket, wait = limits.take(bucket, now, rate=10, burst=20)
        accepted += allowed
    assert accepted == 20 and wait == pytest.approx(0.1)
    # Then 10 a second: over 5 s of one request every 10 ms, 50 are accepted.
    accepted = 0
    for step in range(1, 501):
        allowed, bucket, _ = limits.take(bucket, now + step * 0.01, rate=10, burst=20)
        accepted += allowed
    assert accepted == 50
    # After a long pause the bucket is full again, never fuller.
    allowed, bucket, _ = limits.take(bucket, now + 3600, rate=10, burst=20)
    assert allowed and bucket.tokens == 19


def test_quota_windows_and_retry_after():
    now = 86400 * 100 + 3600 + 45.5  # 45.5 s into a minute, 3645.5 s into a UTC day
    assert limits.window(now, "minute")[1] == pytest.approx(14.5)
    assert limits.window(now, "day")[1] == pytest.approx(86400 - 3645.5)
    assert limits.quota_verdict({"minute": 99, "day": 5000}, {"minute": 100, "day": 10000}, now) is None
    assert limits.quota_verdict({"minute": 100, "day": 5000}, {"minute": 100, "day": 10000}, now) == ("minute", 100, pytest.approx(14.5))
    assert limits.quota_verdict({"minute": 0, "day": 10000}, {"minute": None, "day": 10000}, now)[0] == "day"
    assert limits.share(100, 3, True) == 33 and limits.share(1, 4, True) == 1 and limits.share(10.0, 4) == 2.5 and limits.share(None, 2) is None
    assert errors.retry_after_header(14.5) == 15 and errors.retry_after_header(0.01) == 1 and errors.retry_after_header(2.0) == 2


def qwi(name="chat", namespace="team-a", created="2026-01-01T00:00:00Z", status=None, spec=None) -> dict:
    return {"metadata": {"name": name, "namespace": namespace, "uid": name, "creationTimestamp": created},
            "spec": spec or {"model": {"name": "Qwen/Qwen3-8B"}}, "status": status}


def test_routes_from_status_and_their_states():
    assert routes.route_of(qwi(status={})) is None  # no endpoint yet
    route = routes.route_of(qwi(status={"endpoint": "http://chat.team-a.svc:8000/v1", "readyReplicas": 1, "replicas": 1,
                                        "conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}]}))
    assert (route.model, route.upstream, route.state) == ("qwen3-8b", "http://chat.team-a.svc:8000/v1", "ready")
    served = routes.route_of(qwi(spec={"model": {"name": "Qwen/Qwen3-8B", "servedName": "big"}}, status={"endpoint": "http://x:8000"}))
    assert served.model == "big" and served.upstream == "http://x:8000/v1"

    def state(reason, ready=0, **spec):
        return routes.route_of(qwi(spec={"model": {"name": "Qwen/Qwen3-8B"}, **spec}, status={
            "endpoint": "http://x/v1", "readyReplicas": ready, "conditions": [{"type": "Ready", "reason": reason}]})).state

    assert state("ScaledToZero") == "scaled-to-zero" and state("ModelLoading") == "starting"
    assert state("CrashLoop") == "down" and state("EngineHung", ready=1) == "degraded" and state("", replicas=0) == "scaled-to-zero"
    assert state("ScaledToZero", ready=1) == "scaled-to-zero"  # its last pod still draining
    hung = routes.route_of(qwi(status={"endpoint": "http://x/v1", "conditions": [{"type": "Ready", "reason": "EngineHung", "message": "EngineHung: no tokens"}]}))
    assert hung.deep_health == "EngineHung: no tokens"


def test_the_older_quininference_keeps_a_model_name():
    older = routes.route_of(qwi("a", "team-a", "2026-01-01T00:00:00Z", {"endpoint": "http://a/v1"}))
    newer = routes.route_of(qwi("b", "team-b", "2026-02-01T00:00:00Z", {"endpoint": "http://b/v1"}))
    chosen, shadowed = routes.table([newer, older])
    assert chosen["qwen3-8b"] == older and shadowed == [newer]


def test_sse_events_are_split_as_they_arrive_and_usage_found():
    splitter = sse.EventSplitter(max_event=100)
    assert splitter.feed(b'data: {"a": 1}\n\ndata: {"b"') == [b'data: {"a": 1}\n\n']
    assert splitter.feed(b': 2}\n\n') == [b'data: {"b": 2}\n\n']
    with pytest.raises(ValueError):
        splitter.feed(b"data: " + b"x" * 200)
    usage_event = b"data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}).encode() + b"\n\n"
    assert sse.usage_of(usage_event) == ({"prompt_tokens": 3, "completion_tokens": 4}, True)
    assert sse.usage_of(b'data: {"choices": [{}], "usage": null}\n\n') == (None, False)
    assert sse.tokens({"prompt_tokens": 3, "completion_tokens": "x"}) == (3, 0) and sse.tokens(None) == (0, 0)


def test_errors_are_openai_shaped_with_retry_after():
    error = errors.rate_limited("team-a", 10, 20, 0.3)
    assert json.loads(error.body()) == {"error": {"message": "Rate limit reached for key 'team-a': 10 requests per second, burst 20.",
                                                  "type": "requests", "param": None, "code": "rate_limit_exceeded"}}
    assert error.status == 429 and error.headers()["Retry-After"] == "1"
    assert errors.unknown_key().headers()["WWW-Authenticate"].startswith("Bearer")


def test_response_cache_takes_deterministic_requests_only_and_is_bounded():
    import asyncio

    from qwen_gateway import cache

    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0}
    assert cache.cacheable(body) and cache.cacheable({**body, "temperature": 0.0})
    assert not cache.cacheable({**body, "temperature": 0.1}) and not cache.cacheable({k: v for k, v in body.items() if k != "temperature"})
    assert not cache.cacheable({**body, "stream": True}) and not cache.cacheable({**body, "n": 2}) and not cache.cacheable({**body, "temperature": False})
    assert cache.cache_key("m", body) == cache.cache_key("m", dict(reversed(list(body.items()))))  # key order does not matter
    assert cache.cache_key("m", body) != cache.cache_key("n", body)
    now = [0.0]
    local = cache.LocalCache(ttl=10, max_entries=2, max_bytes=5, clock=lambda: now[0])

    async def run():
        await local.put("a", b"1")
        await local.put("b", b"2")
        assert await local.get("a") == b"1"  # a is now the most recent
        await local.put("c", b"3")  # b goes: least recently used
        assert await local.get("b") is None and await local.get("c") == b"3"
        await local.put("big", b"123456")  # over max_bytes: not kept
        assert await local.get("big") is None
        now[0] = 11.0
        assert await local.get("a") is None  # expired

    asyncio.run(run())


def test_local_limits_enforce_this_replicas_share():
    import asyncio

    from qwen_gateway.keys import KeyPolicy
    from qwen_gateway.store import LocalStore

    clock = [100.0]
    store = LocalStore(replicas=2, clock=lambda: clock[0], wall=lambda: 86400 * 10 + 30.0)
    policy = KeyPolicy("k", None, rate=10.0, burst=8, tokens_per_minute=100, tokens_per_day=None)

    async def run():
        allowed = [(await store.take(policy))[0] for _ in range(6)]
        assert allowed == [True] * 4 + [False] * 2  # half the burst
        clock[0] += 0.2  # half the rate: 5 a second -> one more
        assert (await store.take(policy))[0] and not (await store.take(policy))[0]
        assert await store.quota_verdict(policy) is None
        await store.add_tokens(policy, 50)  # this replica's share of 100 a minute is 50
        assert await store.quota_verdict(policy) == ("minute", 50, 30.0)
        assert await store.used(policy) == {"minute": 50, "day": 50}

    asyncio.run(run())
