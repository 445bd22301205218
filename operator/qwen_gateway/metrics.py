"""The gateway's Prometheus metrics, labelled by model and by key NAME (the Secret's name), never by the key."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

REQUESTS = Counter("qwen_gateway_requests_total", "Requests answered, by model, key name, route and status code.",
                   ["model", "key", "route", "code"], registry=REGISTRY)
LATENCY = Histogram("qwen_gateway_request_duration_seconds", "Time from the request to the end of the answer.",
                    ["model", "key"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
FIRST_BYTE = Histogram("qwen_gateway_time_to_first_byte_seconds", "Time from the request to the first byte of the upstream's answer.",
                       ["model"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
TOKENS = Counter("qwen_gateway_tokens_total", "Tokens vLLM reported, by kind (prompt, completion).",
                 ["model", "key", "kind"], registry=REGISTRY)
RATE_LIMITED = Counter("qwen_gateway_rate_limited_total", "Requests refused by the key's request rate.", ["key"], registry=REGISTRY)
QUOTA_REFUSED = Counter("qwen_gateway_quota_refused_total", "Requests refused by a token quota, by window.", ["key", "window"], registry=REGISTRY)
AUTH_REFUSED = Counter("qwen_gateway_auth_refused_total", "Requests refused before a key was known (401), by reason.", ["reason"], registry=REGISTRY)
QUEUE_SECONDS = Histogram("qwen_gateway_queue_seconds", "Time a request waited in the gateway before going upstream.",
                          ["model"], buckets=(0.001, 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300), registry=REGISTRY)
SCALE_FROM_ZERO_WAITS = Counter("qwen_gateway_scale_from_zero_waits_total", "Requests held while their model scaled from zero, by outcome.",
                                ["model", "outcome"], registry=REGISTRY)
IN_FLIGHT = Gauge("qwen_gateway_requests_in_flight", "Requests being answered.", ["model"], registry=REGISTRY)
UPSTREAM_ERRORS = Counter("qwen_gateway_upstream_errors_total", "Upstream failures (connect, reset, mid-stream end, timeout).",
                          ["model", "kind"], registry=REGISTRY)
KEYS = Gauge("qwen_gateway_keys", "API keys loaded.", registry=REGISTRY)
INVALID_KEYS = Gauge("qwen_gateway_invalid_keys", "Key Secrets refused (see their Events).", registry=REGISTRY)
MODELS = Gauge("qwen_gateway_models", "Models routed.", registry=REGISTRY)
HELD = Gauge("qwen_gateway_held_requests", "Requests held while their model starts or scales from zero.", ["model"], registry=REGISTRY)
HOLD_SECONDS = Histogram("qwen_gateway_hold_seconds", "Time a request was held for its model to have a ready replica.",
                         ["model"], buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600), registry=REGISTRY)
CACHE = Counter("qwen_gateway_response_cache_total", "Response cache lookups, by result (hit, miss): the hit ratio is hit / (hit + miss).",
                ["model", "result"], registry=REGISTRY)
