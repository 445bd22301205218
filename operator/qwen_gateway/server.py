"""The gateway's process (I/O): an aiohttp server in front of every QwenInference.

  POST /v1/chat/completions, /v1/completions   routed by the body's `model`; SSE passed through as it arrives
  GET  /v1/models                              the models the caller's key may use
  GET  /health/liveness | /health/readiness | /health/detailed
  GET  /metrics                                Prometheus text
  POST /generate, /thinking, /batch_generate   the convenience API: {"prompt"} in, {"text"[, "thinking"]} out
  GET  /stats                                  the caller's key: limits, tokens used, its models' state
  GET  /                                       the chat page (page.html)

Why aiohttp: one well-kept library is both the server and the upstream client (connection pools, streaming in
both directions), its handlers are cancelled when the client goes away (`handler_cancellation`), which is how a
disconnect reaches vLLM, and with uvloop it answers a streamed request in well under a millisecond of overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import json
import logging
import os
import re
import secrets
import signal
import time
from pathlib import Path

from aiohttp import ClientConnectorError, ClientError, ClientPayloadError, ClientSession, ClientTimeout, TCPConnector, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from qwen_gateway import cache, errors, keys, metrics, routes, sse
from qwen_gateway.errors import ApiError
from qwen_gateway.store import LocalStore, RedisStore, Store

log = logging.getLogger("qwen_gateway")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
RECENT_SECONDS = 300.0
ENGINE_KEY_SECONDS = 60.0  # an engine's API key is read again this often (a rotated Secret is followed)
COMPLETION_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
# The chat page at / (no external assets; the key stays in the page's memory).
PAGE = (Path(__file__).parent / "page.html").read_bytes()


class Recent:
    """Answers of the last RECENT_SECONDS per model: error rate and latency for /health/detailed."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.samples: dict[str, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=20000))

    def add(self, model: str, failed: bool, seconds: float) -> None:
        self.samples[model].append((self.clock(), failed, seconds))

    def summary(self, model: str) -> dict:
        samples = self.samples.get(model)
        now = self.clock()
        while samples and samples[0][0] < now - RECENT_SECONDS:
            samples.popleft()
        if not samples:
            return {"requests": 0, "errorRate": 0.0, "latencyP50Seconds": None, "latencyP99Seconds": None}
        latencies = sorted(s[2] for s in samples)
        return {
            "requests": len(samples),
            "errorRate": round(sum(1 for s in samples if s[1]) / len(samples), 4),
            "latencyP50Seconds": round(latencies[len(latencies) // 2], 4),
            "latencyP99Seconds": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 4),
        }


class Gateway:
    def __init__(self, args: argparse.Namespace, store: Store):
        self.args = args
        self.store = store
        self.keyring = keys.KeyRing(keys.Hasher(secrets.token_bytes(32)))
        self.secret_objects: dict[str, dict] = {}
        self.invalid_keys: dict[str, str] = {}
        self.qwis: dict[str, dict] = {}
        self.routes: dict[str, routes.Route] = {}
        self.shadowed: list[routes.Route] = []
        self.synced = {"secrets": False, "qweninferences": False}
        self.recent = Recent()
        self.session: ClientSession | None = None
        self.watches = None
        self.cache = None  # cache.LocalCache or cache.RedisCache
        self.engine_keys: dict[tuple[str, str, str], tuple[float, str]] = {}  # (namespace, secret, key) -> (read at, value)
        # Scale from zero: requests held per model, the wake asked for per model, the routes' changes.
        self.held: dict[str, int] = collections.defaultdict(int)
        self.waking: dict[str, asyncio.Task] = {}
        self.routes_changed = asyncio.Event()
        # Activity the operator reads (kube.ACTIVITY_ANNOTATION): model -> last request (wall clock), last stamp sent.
        self.last_request: dict[str, float] = {}
        self.last_reported: dict[str, float] = {}

    # --- what the watches deliver -------------------------------------------------------------------
    def on_change(self, kind: str, type_: str, obj) -> None:
        try:
            if kind == "secrets":
                self._on_secret(type_, obj)
            else:
                self._on_qwi(type_, obj)
        except Exception:  # one odd object must not stop the others
            log.exception("could not take %s %s", kind, type_)

    def _on_secret(self, type_: str, obj) -> None:
        if type_ == "SYNC":
            for name in list(self.secret_objects):
                self.keyring.remove(name)
            self.secret_objects, self.invalid_keys = {}, {}
            for item in obj:
                self._take_secret(item)
            self.synced["secrets"] = True
        elif type_ == "DELETED":
            name = obj["metadata"]["name"]
            self.secret_objects.pop(name, None)
            self.invalid_keys.pop(name, None)
            self.keyring.remove(name)
        else:
            self._take_secret(obj)
        metrics.KEYS.set(len(self.keyring))
        metrics.INVALID_KEYS.set(len(self.invalid_keys))

    def _take_secret(self, secret: dict) -> None:
        name = secret["metadata"]["name"]
        self.secret_objects[name] = secret
        try:
            policy, raw = keys.parse_secret(secret)
        except keys.InvalidKey as invalid:
            self.keyring.remove(name)
            self.invalid_keys[name] = str(invalid)
            log.warning("key Secret %s ignored: %s", name, invalid)
            if self.watches is not None:
                self.watches.post_invalid_key_event(secret, str(invalid))
            return
        self.invalid_keys.pop(name, None)
        self.keyring.put(name, policy, raw)

    def _on_qwi(self, type_: str, obj) -> None:
        if type_ == "SYNC":
            self.qwis = {f"{o['metadata']['namespace']}/{o['metadata']['name']}": o for o in obj}
            self.synced["qweninferences"] = True
        elif type_ == "DELETED":
            self.qwis.pop(f"{obj['metadata']['namespace']}/{obj['metadata']['name']}", None)
        else:
            self.qwis[f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"] = obj
        before = set(self.routes)
        found = [r for r in (routes.route_of(o) for o in self.qwis.values()) if r is not None]
        self.routes, shadowed = routes.table(found)
        for route in shadowed:
            if route not in self.shadowed:
                log.warning("QwenInference %s/%s serves model %s, which %s/%s already serves: not routed",
                            route.namespace, route.name, route.model, self.routes[route.model].namespace, self.routes[route.model].name)
        self.shadowed = shadowed
        self.routes_changed.set()  # held requests look again
        self.routes_changed = asyncio.Event()
        if set(self.routes) != before:
            log.info("models routed: %s", ", ".join(sorted(self.routes)) or "none")
        metrics.MODELS.set(len(self.routes))

    # --- request checks -----------------------------------------------------------------------------
    def authenticate(self, request: web.Request) -> keys.KeyPolicy:
        try:
            presented = keys.bearer(request.headers.getall("Authorization", []))
        except LookupError:
            metrics.AUTH_REFUSED.labels("missing").inc()
            raise errors.missing_key() from None
        except ValueError as trick:
            metrics.AUTH_REFUSED.labels("malformed").inc()
            raise errors.bad_authorization(str(trick)) from None
        policy = self.keyring.find(presented)
        if policy is None:
            metrics.AUTH_REFUSED.labels("unknown").inc()
            raise errors.unknown_key()
        return policy

    async def read_json(self, request: web.Request) -> tuple[dict, bytes]:
        limit = self.args.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise errors.too_large(limit)
        try:
            async with asyncio.timeout(self.args.body_timeout):
                body = await request.content.read(limit + 1)
                while len(body) <= limit and not request.content.at_eof():
                    more = await request.content.read(limit + 1 - len(body))
                    if not more:
                        break
                    body += more
        except TimeoutError:
            raise ApiError(408, f"The request body did not arrive within {self.args.body_timeout:g} s.", "invalid_request_error", "request_timeout") from None
        if len(body) > limit:
            raise errors.too_large(limit)
        if not body:
            raise errors.bad_request("The request body is empty: send a JSON object.")
        try:
            value = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise errors.bad_request("The request body is not UTF-8 text.") from None
        except ValueError as error:
            raise errors.bad_request(f"The request body is not valid JSON: {error}.") from None
        if not isinstance(value, dict):
            raise errors.bad_request(f"The request body must be a JSON object, not {type(value).__name__}.")
        return value, body

    @staticmethod
    def validate(kind: str, body: dict) -> None:
        model = body.get("model")
        if model is None:
            raise errors.bad_request("'model' is required.", "model")
        if not isinstance(model, str) or not model:
            raise errors.bad_request("'model' must be a non-empty string.", "model")
        if "stream" in body and not isinstance(body["stream"], bool):
            raise errors.bad_request("'stream' must be true or false.", "stream")
        if "stream_options" in body and body["stream_options"] is not None and not isinstance(body["stream_options"], dict):
            raise errors.bad_request("'stream_options' must be an object.", "stream_options")
        if kind == "chat":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise errors.bad_request("'messages' must be a non-empty array.", "messages")
            if not all(isinstance(m, dict) for m in messages):
                raise errors.bad_request("each of 'messages' must be an object.", "messages")
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, (str, list)) or (isinstance(prompt, list) and not prompt):
                raise errors.bad_request("'prompt' must be a string or a non-empty array.", "prompt")
        for field in ("max_tokens", "max_completion_tokens", "n"):
            value = body.get(field)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise errors.bad_request(f"'{field}' must be a positive integer.", field)

    def route_for(self, policy: keys.KeyPolicy, model: str) -> routes.Route:
        route = self.routes.get(model)
        if route is None:
            raise errors.unknown_model(model)
        if not policy.allows(model):
            raise errors.model_not_allowed(model)
        return route

    async def limit(self, policy: keys.KeyPolicy) -> None:
        try:
            allowed, wait = await self.store.take(policy)
            verdict = await self.store.quota_verdict(policy) if allowed else None
        except Exception as error:  # noqa: BLE001 - Redis away: refuse rather than serve without limits
            log.warning("limits store failed (%s): refusing with 503", type(error).__name__)
            raise errors.unavailable("The gateway cannot check this key's limits right now (its limit store does not answer).", 5) from None
        if not allowed:
            metrics.RATE_LIMITED.labels(policy.name).inc()
            raise errors.rate_limited(policy.name, policy.rate, policy.burst, wait)
        if verdict is not None:
            window, limit, wait = verdict
            metrics.QUOTA_REFUSED.labels(policy.name, window).inc()
            raise errors.quota_exceeded(policy.name, window, limit, wait)

    # --- handlers -----------------------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        kind = COMPLETION_PATHS[request.path]
        started = time.monotonic()
        model_label, key_label = "unknown", "none"
        try:
            policy = self.authenticate(request)
            key_label = policy.name
            body, raw = await self.read_json(request)
            self.validate(kind, body)
            route = self.route_for(policy, body["model"])
            model_label = route.model
            await self.limit(policy)
            self.last_request[route.model] = time.time()
            if route.ready_replicas < 1:
                route = await self.hold(route)
            response = await self.forward(request, route, policy, kind, body, raw, started)
        except ApiError as error:
            response = web.Response(status=error.status, body=error.body(), headers=error.headers())
        except asyncio.CancelledError:
            metrics.REQUESTS.labels(model_label, key_label, kind, "499").inc()
            raise
        metrics.REQUESTS.labels(model_label, key_label, kind, str(response.status)).inc()
        elapsed = time.monotonic() - started
        if model_label != "unknown":
            metrics.LATENCY.labels(model_label, key_label).observe(elapsed)
            self.recent.add(model_label, response.status >= 500, elapsed)
        return response

    async def hold(self, route: routes.Route) -> routes.Route:
        """Holds a request for a model without a ready replica (bounded, per model) until one is ready, asking for a
        replica first when the model sleeps at zero; 503 with Retry-After when it is down, the queue is full, or
        no replica is ready within --hold-timeout."""
        model = route.model
        if route.state == "down":
            raise errors.unavailable(f"The model '{model}' is down ({route.ready_reason}).", self.args.retry_after_unavailable)
        if route.state == "scaled-to-zero" and not route.wakeable:
            raise errors.unavailable(f"The model '{model}' is scaled to zero by its owner (autoscaling.minReplicas is not 0).",
                                     self.args.retry_after_unavailable)
        if self.held[model] >= self.args.max_held:
            metrics.SCALE_FROM_ZERO_WAITS.labels(model, "queue_full").inc()
            raise errors.unavailable(f"The model '{model}' is starting and {self.args.max_held} requests already wait for it.",
                                     self.args.retry_after_unavailable)
        self.held[model] += 1
        metrics.HELD.labels(model).inc()
        started = time.monotonic()
        try:
            deadline = started + self.args.hold_timeout
            while True:
                current = self.routes.get(model)
                if current is None:
                    raise errors.unknown_model(model)
                if current.ready_replicas >= 1:
                    metrics.SCALE_FROM_ZERO_WAITS.labels(model, "served").inc()
                    return current
                self.last_request[model] = time.time()
                if current.wakeable and current.spec_replicas == 0 and model not in self.waking:
                    self.waking[model] = asyncio.create_task(self.wake(current))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    metrics.SCALE_FROM_ZERO_WAITS.labels(model, "timeout").inc()
                    raise errors.unavailable(f"The model '{model}' has no ready replica yet ({current.state}); it was waited for "
                                             f"{self.args.hold_timeout:g} s.", self.args.retry_after_unavailable)
                changed = self.routes_changed
                try:
                    await asyncio.wait_for(changed.wait(), timeout=min(remaining, 1.0))
                except TimeoutError:
                    pass
        finally:
            self.held[model] -= 1
            metrics.HELD.labels(model).dec()
            metrics.HOLD_SECONDS.labels(model).observe(time.monotonic() - started)

    async def wake(self, route: routes.Route) -> None:
        """Stamps the activity first (so the operator does not put it back to sleep at once), then asks for one replica."""
        loop = asyncio.get_running_loop()
        try:
            now = time.time()
            await loop.run_in_executor(None, self.watches.report_activity, route.namespace, route.name,
                                       datetime.datetime.fromtimestamp(now, datetime.timezone.utc))
            self.last_reported[route.model] = now
            await loop.run_in_executor(None, self.watches.wake, route.namespace, route.name)
            log.info("asked for a replica of %s/%s (model %s), scaled to zero", route.namespace, route.name, route.model)
        except Exception as error:  # noqa: BLE001 - held requests time out with a 503; the next one asks again
            log.warning("could not wake %s/%s: %s", route.namespace, route.name, error)
        finally:
            await asyncio.sleep(self.args.activity_interval / 3)  # ask at most this often
            self.waking.pop(route.model, None)

    async def report_activity(self) -> None:
        """Every few seconds: stamp the models that had requests since their last stamp, at most every --activity-interval."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(5.0, self.args.activity_interval))
            for model, last in list(self.last_request.items()):
                route = self.routes.get(model)
                reported = self.last_reported.get(model, 0.0)
                if route is None or last <= reported or time.time() - reported < self.args.activity_interval:
                    continue
                self.last_reported[model] = last
                try:
                    await loop.run_in_executor(None, self.watches.report_activity, route.namespace, route.name,
                                               datetime.datetime.fromtimestamp(last, datetime.timezone.utc))
                except Exception as error:  # noqa: BLE001 - the next round tries again
                    self.last_reported[model] = reported
                    log.warning("could not report activity on %s/%s: %s", route.namespace, route.name, error)

    async def upstream_headers(self, route: routes.Route, stream: bool) -> dict[str, str]:
        """What goes upstream besides the body: never the client's key; the engine's own key when the QwenInference
        has one (spec.auth.apiKeySecretRef), read from its Secret and kept a minute."""
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream" if stream else "application/json"}
        if route.auth_secret is None:
            return headers
        slot = (route.namespace, *route.auth_secret)
        cached = self.engine_keys.get(slot)
        if cached is None or time.monotonic() - cached[0] > ENGINE_KEY_SECONDS:
            try:
                value = await asyncio.get_running_loop().run_in_executor(None, self.watches.engine_key, *slot)
            except Exception as error:  # noqa: BLE001 - reported to the client without the Secret's content
                log.warning("cannot read the API key of %s/%s from Secret %s: %s", route.namespace, route.name, route.auth_secret[0], type(error).__name__)
                raise errors.bad_gateway(f"The gateway cannot read the model's API key (Secret {route.namespace}/{route.auth_secret[0]}).") from None
            cached = (time.monotonic(), value)
            self.engine_keys[slot] = cached
        headers["Authorization"] = f"Bearer {cached[1]}"
        return headers

    async def forward(self, request: web.Request, route: routes.Route, policy: keys.KeyPolicy, kind: str,
                      body: dict, raw: bytes, started: float) -> web.StreamResponse:
        stream = bool(body.get("stream"))
        client_wants_usage = False
        if stream:
            options = dict(body.get("stream_options") or {})
            client_wants_usage = bool(options.get("include_usage"))
            options["include_usage"] = True  # the quota counts what vLLM reports
            raw = json.dumps({**body, "stream_options": options}).encode()
        headers = await self.upstream_headers(route, stream)
        request_id = request.headers.get("X-Request-Id")
        if request_id and REQUEST_ID.match(request_id):
            headers["X-Request-Id"] = request_id
        url = f"{route.upstream}/{'chat/completions' if kind == 'chat' else 'completions'}"
        metrics.QUEUE_SECONDS.labels(route.model).observe(time.monotonic() - started)
        cached_under = None
        if route.cache and self.cache is not None and cache.cacheable(body):
            cached_under = cache.cache_key(route.model, body)
            hit = await self.cache.get(cached_under)
            metrics.CACHE.labels(route.model, "hit" if hit is not None else "miss").inc()
            if hit is not None:  # no model time, no tokens counted
                return web.Response(status=200, body=hit, headers={"Content-Type": "application/json", "X-Cache": "hit"})
        metrics.IN_FLIGHT.labels(route.model).inc()
        assert self.session is not None
        try:
            async with self.session.post(url, data=raw, headers=headers) as upstream:
                metrics.FIRST_BYTE.labels(route.model).observe(time.monotonic() - started)
                content_type = upstream.headers.get("Content-Type", "")
                if stream and upstream.status == 200 and content_type.startswith("text/event-stream"):
                    return await self.pass_stream(request, upstream, route, policy, client_wants_usage)
                data = await upstream.content.read(self.args.max_response_bytes + 1)
                if len(data) > self.args.max_response_bytes:
                    raise errors.bad_gateway(f"The model '{route.model}' answered more than {self.args.max_response_bytes} bytes.")
                if upstream.status == 200:
                    try:
                        usage = json.loads(data).get("usage")
                    except (ValueError, AttributeError):
                        usage = None
                    await self.count(route, policy, usage)
                    if cached_under is not None:
                        try:
                            await self.cache.put(cached_under, data)
                        except Exception as error:  # noqa: BLE001 - a cache that fails is only a miss next time
                            log.warning("could not cache an answer of %s: %s", route.model, type(error).__name__)
                if upstream.status >= 500:
                    metrics.UPSTREAM_ERRORS.labels(route.model, f"status_{upstream.status}").inc()
                return web.Response(status=upstream.status, body=data,
                                    headers={"Content-Type": content_type or "application/json"})
        except ClientConnectorError:
            metrics.UPSTREAM_ERRORS.labels(route.model, "connect").inc()
            raise errors.bad_gateway(f"The model '{route.model}' cannot be reached.") from None
        except TimeoutError:
            metrics.UPSTREAM_ERRORS.labels(route.model, "timeout").inc()
            raise errors.timed_out(f"The model '{route.model}' did not answer in time.") from None
        except (ClientPayloadError, ClientError) as error:
            metrics.UPSTREAM_ERRORS.labels(route.model, "broken").inc()
            raise errors.bad_gateway(f"The model '{route.model}' broke off its answer ({type(error).__name__}).") from None
        finally:
            metrics.IN_FLIGHT.labels(route.model).dec()

    async def pass_stream(self, request: web.Request, upstream, route: routes.Route, policy: keys.KeyPolicy,
                          client_wants_usage: bool) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        await response.prepare(request)
        splitter = sse.EventSplitter()
        usage = None
        content_events = 0
        done = False
        try:
            async for chunk in upstream.content.iter_any():
                out = []
                for event in splitter.feed(chunk):
                    found, usage_only = sse.usage_of(event)
                    if found is not None:
                        usage = found
                        if usage_only and not client_wants_usage:
                            continue
                    elif event.startswith(b"data: {"):
                        content_events += 1
                    elif event.startswith(b"data: [DONE]"):
                        done = True
                    out.append(event)
                if out:
                    await response.write(out[0] if len(out) == 1 else b"".join(out))
            if not done:  # vLLM always ends with [DONE]: a stream that ends without it was broken off
                raise ClientPayloadError("the stream ended without [DONE]")
        except (ClientPayloadError, ClientError, ValueError) as error:
            metrics.UPSTREAM_ERRORS.labels(route.model, "mid_stream").inc()
            log.warning("model %s broke off a stream (%s)", route.model, error)
            await response.write(sse.error_event(f"The model '{route.model}' broke off its answer.") + b"data: [DONE]\n\n")
        except TimeoutError:
            metrics.UPSTREAM_ERRORS.labels(route.model, "timeout").inc()
            await response.write(sse.error_event(f"The model '{route.model}' stopped sending.", "upstream_timeout") + b"data: [DONE]\n\n")
        finally:
            # Counted even when the client or the upstream went away: with no usage, each content event is a token.
            await asyncio.shield(self.count(route, policy, usage if usage is not None else {"completion_tokens": content_events}))
        await response.write_eof()
        return response

    async def count(self, route: routes.Route, policy: keys.KeyPolicy, usage) -> None:
        prompt, completion = sse.tokens(usage)
        if prompt:
            metrics.TOKENS.labels(route.model, policy.name, "prompt").inc(prompt)
        if completion:
            metrics.TOKENS.labels(route.model, policy.name, "completion").inc(completion)
        try:
            await self.store.add_tokens(policy, prompt + completion)
        except Exception as error:  # noqa: BLE001 - the answer is given; a lost count is logged
            log.warning("could not count %d tokens for key %s: %s", prompt + completion, policy.name, type(error).__name__)

    # --- the convenience API: simple JSON in and out, mapped onto /v1/chat/completions ----------------
    async def complete(self, policy: keys.KeyPolicy, body: dict) -> dict:
        """One non-streamed chat completion through the same checks as /v1 (model, rate, quota, hold)."""
        route = self.route_for(policy, body["model"])
        await self.limit(policy)
        self.last_request[route.model] = time.time()
        if route.ready_replicas < 1:
            route = await self.hold(route)
        assert self.session is not None
        started = time.monotonic()
        try:
            async with self.session.post(f"{route.upstream}/chat/completions", data=json.dumps(body).encode(),
                                         headers=await self.upstream_headers(route, False)) as upstream:
                data = await upstream.content.read(self.args.max_response_bytes + 1)
        except ClientConnectorError:
            raise errors.bad_gateway(f"The model '{route.model}' cannot be reached.") from None
        except TimeoutError:
            raise errors.timed_out(f"The model '{route.model}' did not answer in time.") from None
        except ClientError as error:
            raise errors.bad_gateway(f"The model '{route.model}' broke off its answer ({type(error).__name__}).") from None
        self.recent.add(route.model, upstream.status >= 500, time.monotonic() - started)
        try:
            answer = json.loads(data)
        except ValueError:
            raise errors.bad_gateway(f"The model '{route.model}' answered something that is not JSON.") from None
        if upstream.status != 200:
            message = ((answer.get("error") or {}).get("message") if isinstance(answer.get("error"), dict) else None) or answer.get("message") or str(answer)[:300]
            raise ApiError(upstream.status, f"The model refused: {message}", "upstream_error", "upstream_refused")
        await self.count(route, policy, answer.get("usage"))
        return answer

    def simple_request(self, policy: keys.KeyPolicy, value: dict, thinking: bool, prompt: object = None) -> dict:
        """The chat body for a /generate-style request: prompt, model (default: the key's only model), max_tokens,
        temperature; thinking on or off (Qwen3's chat_template_kwargs.enable_thinking)."""
        prompt = value.get("prompt") if prompt is None else prompt
        if not isinstance(prompt, str) or not prompt:
            raise errors.bad_request("'prompt' must be a non-empty string.", "prompt")
        model = value.get("model")
        if model is None:
            usable = [m for m in self.routes if policy.allows(m)]
            if len(usable) != 1:
                raise errors.bad_request(f"'model' is required: this key may use {len(usable)} models (GET /v1/models).", "model")
            model = usable[0]
        if not isinstance(model, str):
            raise errors.bad_request("'model' must be a string.", "model")
        body = {"model": model, "messages": [{"role": "user", "content": prompt}],
                "chat_template_kwargs": {"enable_thinking": thinking}}
        for field, kind in (("max_tokens", int), ("temperature", (int, float))):
            if field in value:
                if not isinstance(value[field], kind) or isinstance(value[field], bool):
                    raise errors.bad_request(f"'{field}' must be a number.", field)
                body[field] = value[field]
        return body

    @staticmethod
    def simple_answer(answer: dict, thinking: bool) -> dict:
        message = ((answer.get("choices") or [{}])[0].get("message")) or {}
        result = {"model": answer.get("model"), "text": message.get("content") or "", "usage": answer.get("usage")}
        if thinking:
            result["thinking"] = message.get("reasoning") or message.get("reasoning_content") or ""
        return result

    async def convenience(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        route_name = request.path.strip("/")
        key_label = "none"
        try:
            policy = self.authenticate(request)
            key_label = policy.name
            value, _ = await self.read_json(request)
            thinking = route_name == "thinking"
            if route_name == "batch_generate":
                prompts = value.get("prompts")
                if not isinstance(prompts, list) or not prompts or len(prompts) > self.args.max_batch:
                    raise errors.bad_request(f"'prompts' must be an array of 1 to {self.args.max_batch} strings.", "prompts")
                bodies = [self.simple_request(policy, value, bool(value.get("thinking")), p) for p in prompts]
                outcomes = await asyncio.gather(*(self.complete(policy, b) for b in bodies), return_exceptions=True)
                results = []
                for outcome in outcomes:
                    if isinstance(outcome, ApiError):
                        results.append({"error": json.loads(outcome.body())["error"], "status": outcome.status})
                    elif isinstance(outcome, BaseException):
                        raise outcome
                    else:
                        results.append(self.simple_answer(outcome, bool(value.get("thinking"))))
                response = web.json_response({"results": results})
            else:
                answer = await self.complete(policy, self.simple_request(policy, value, thinking))
                response = web.json_response(self.simple_answer(answer, thinking))
        except ApiError as error:
            response = web.Response(status=error.status, body=error.body(), headers=error.headers())
        metrics.REQUESTS.labels("convenience", key_label, route_name, str(response.status)).inc()
        metrics.LATENCY.labels("convenience", key_label).observe(time.monotonic() - started)
        return response

    async def stats(self, request: web.Request) -> web.Response:
        """The caller's key: its limits, what it used in this minute and day, and the state of its models."""
        try:
            policy = self.authenticate(request)
        except ApiError as error:
            return web.Response(status=error.status, body=error.body(), headers=error.headers())
        try:
            used = await self.store.used(policy)
        except Exception:  # noqa: BLE001 - the rest of the answer stands
            used = None
        return web.json_response({
            "key": policy.name,
            "limits": {"requestsPerSecond": policy.rate, "burst": policy.burst, "tokensPerMinute": policy.tokens_per_minute,
                       "tokensPerDay": policy.tokens_per_day, "store": self.store.description},
            "tokensUsed": used,
            "models": {r.model: {"state": r.state, "readyReplicas": r.ready_replicas, "readyReason": r.ready_reason,
                                 "scaleFromZero": r.wakeable, **self.recent.summary(r.model)}
                       for r in self.routes.values() if policy.allows(r.model)},
        })

    async def models(self, request: web.Request) -> web.Response:
        try:
            policy = self.authenticate(request)
        except ApiError as error:
            metrics.REQUESTS.labels("none", "none", "models", str(error.status)).inc()
            return web.Response(status=error.status, body=error.body(), headers=error.headers())
        data = [{"id": r.model, "object": "model", "created": 0, "owned_by": f"{r.namespace}/{r.name}"}
                for r in sorted(self.routes.values(), key=lambda r: r.model) if policy.allows(r.model)]
        metrics.REQUESTS.labels("none", policy.name, "models", "200").inc()
        return web.json_response({"object": "list", "data": data})

    async def page(self, _request: web.Request) -> web.Response:
        return web.Response(body=PAGE, headers={"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store",
                                                "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
                                                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})

    async def liveness(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readiness(self, _request: web.Request) -> web.Response:
        problems = [f"{kind} not listed yet" for kind, done in self.synced.items() if not done]
        healthy, detail = await self.store.healthy()
        if not healthy:
            problems.append(detail)
        return web.Response(status=503 if problems else 200, text="; ".join(problems) if problems else "ready")

    async def detailed(self, _request: web.Request) -> web.Response:
        healthy, detail = await self.store.healthy()
        models = {}
        for route in sorted(self.routes.values(), key=lambda r: r.model):
            models[route.model] = {
                "qwenInference": f"{route.namespace}/{route.name}",
                "state": route.state,
                "readyReplicas": route.ready_replicas,
                "replicas": route.replicas,
                "scaledToZero": route.state == "scaled-to-zero",
                "scaleFromZero": route.wakeable,
                "responseCache": route.cache,
                "held": self.held.get(route.model, 0),
                "readyReason": route.ready_reason,
                "deepHealth": route.deep_health,
                **self.recent.summary(route.model),
            }
        return web.json_response({
            "status": "ok" if healthy and all(self.synced.values()) else "degraded",
            "watches": self.synced,
            "limits": {"store": detail, "healthy": healthy},
            "keys": {"loaded": len(self.keyring), "invalid": sorted(self.invalid_keys)},
            "models": models,
            "shadowed": [f"{r.namespace}/{r.name} ({r.model})" for r in self.shadowed],
        }, dumps=lambda v: json.dumps(v, indent=1))

    async def prometheus(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def never_a_traceback(request: web.Request, handler):
    """aiohttp's own errors (404, 405, 413, 400 from the parser) as OpenAI-shaped JSON; a bug as a 500, logged."""
    try:
        return await handler(request)
    except web.HTTPException as http:
        if http.status < 400:
            raise
        error = ApiError(http.status, http.reason or "error", "invalid_request_error", None)
        return web.Response(status=http.status, body=error.body(), headers=error.headers())
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        error = ApiError(500, "The gateway failed on this request; it is logged.", "server_error", "internal_error")
        return web.Response(status=500, body=error.body(), headers=error.headers())


def build_app(gateway: Gateway) -> web.Application:
    app = web.Application(middlewares=[never_a_traceback], client_max_size=gateway.args.max_body_bytes)
    app.router.add_post("/v1/chat/completions", gateway.completions)
    app.router.add_post("/v1/completions", gateway.completions)
    app.router.add_get("/v1/models", gateway.models)
    for path in ("/generate", "/thinking", "/batch_generate"):
        app.router.add_post(path, gateway.convenience)
    app.router.add_get("/stats", gateway.stats)
    app.router.add_get("/", gateway.page)
    app.router.add_get("/health/liveness", gateway.liveness)
    app.router.add_get("/health/readiness", gateway.readiness)
    app.router.add_get("/health/detailed", gateway.detailed)
    app.router.add_get("/metrics", gateway.prometheus)
    return app


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    env = os.environ.get
    parser = parser or argparse.ArgumentParser(prog="qwen-operator gateway")
    parser.add_argument("--host", default=env("QWEN_GATEWAY_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(env("QWEN_GATEWAY_PORT", "8080")))
    parser.add_argument("--keys-namespace", default=env("QWEN_GATEWAY_KEYS_NAMESPACE") or env("POD_NAMESPACE") or "default",
                        help="the namespace of the key Secrets (label gateway.qwenops.io/key=true)")
    parser.add_argument("-n", "--namespace", action="append", default=[], help="route QwenInferences of this namespace only (repeatable; default: all)")
    parser.add_argument("--redis-url", default=env("QWEN_GATEWAY_REDIS_URL"), help="redis://host:port/db: exact limits across replicas")
    parser.add_argument("--redis-prefix", default=env("QWEN_GATEWAY_REDIS_PREFIX", "qwen-gateway"))
    parser.add_argument("--replicas", type=int, default=int(env("QWEN_GATEWAY_REPLICAS", "1")),
                        help="gateway replicas: without Redis each enforces 1/replicas of every limit")
    parser.add_argument("--max-body-bytes", type=int, default=int(env("QWEN_GATEWAY_MAX_BODY_BYTES", str(8 << 20))),
                        help="largest request body (default 8 MiB: far above a 128k-token prompt)")
    parser.add_argument("--max-response-bytes", type=int, default=64 << 20, help="largest non-streamed answer")
    parser.add_argument("--body-timeout", type=float, default=float(env("QWEN_GATEWAY_BODY_TIMEOUT", "30")),
                        help="seconds a client may take to send its body (slow clients get 408)")
    parser.add_argument("--header-timeout", type=float, default=float(env("QWEN_GATEWAY_HEADER_TIMEOUT", "30")),
                        help="seconds a connection may stay without a complete request (slow-loris), and idle between requests")
    parser.add_argument("--connect-timeout", type=float, default=5.0, help="seconds to connect to a model's Service")
    parser.add_argument("--upstream-idle-timeout", type=float, default=float(env("QWEN_GATEWAY_UPSTREAM_IDLE_TIMEOUT", "900")),
                        help="seconds without a byte from the model before giving up (a thinking model may think long)")
    parser.add_argument("--upstream-timeout", type=float, default=float(env("QWEN_GATEWAY_UPSTREAM_TIMEOUT", "3600")),
                        help="seconds a whole answer may take (long thinking answers stream for minutes)")
    parser.add_argument("--retry-after-unavailable", type=float, default=10.0, help="Retry-After for a model without a ready replica")
    parser.add_argument("--hold-timeout", type=float, default=float(env("QWEN_GATEWAY_HOLD_TIMEOUT", "600")),
                        help="seconds a request waits for a model starting (or scaling from zero) before a 503")
    parser.add_argument("--max-held", type=int, default=int(env("QWEN_GATEWAY_MAX_HELD", "256")),
                        help="requests held per model while it starts; more get a 503 with Retry-After")
    parser.add_argument("--activity-interval", type=float, default=float(env("QWEN_GATEWAY_ACTIVITY_INTERVAL", "30")),
                        help="at most this often per model, stamp the latest request on its QwenInference (scale to zero reads it)")
    parser.add_argument("--max-batch", type=int, default=32, help="most prompts in one /batch_generate")
    parser.add_argument("--cache-ttl", type=float, default=float(env("QWEN_GATEWAY_CACHE_TTL", "300")),
                        help="seconds a cached answer is kept (models with gateway.qwenops.io/response-cache: \"true\")")
    parser.add_argument("--cache-max-entries", type=int, default=int(env("QWEN_GATEWAY_CACHE_MAX_ENTRIES", "10000")),
                        help="cached answers kept in memory, least recently used dropped first (with Redis: its maxmemory)")
    parser.add_argument("--cache-max-bytes", type=int, default=256 << 10, help="larger answers are not cached")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


async def serve(args: argparse.Namespace, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    from qwen_gateway.kube import Watches, api_client

    store: Store = RedisStore(args.redis_url, args.redis_prefix) if args.redis_url else LocalStore(args.replicas)
    gateway = Gateway(args, store)
    gateway.cache = (cache.RedisCache(store.redis, args.redis_prefix, args.cache_ttl, args.cache_max_bytes) if isinstance(store, RedisStore)
                     else cache.LocalCache(args.cache_ttl, args.cache_max_entries, args.cache_max_bytes))
    gateway.session = ClientSession(
        connector=TCPConnector(limit=0, ttl_dns_cache=30, keepalive_timeout=30),
        timeout=ClientTimeout(total=args.upstream_timeout, sock_connect=args.connect_timeout, sock_read=args.upstream_idle_timeout),
        auto_decompress=False, skip_auto_headers=("User-Agent",))
    loop = asyncio.get_running_loop()
    gateway.watches = Watches(api_client(), loop, gateway.on_change, args.keys_namespace, list(args.namespace))
    gateway.watches.start()
    reporter = asyncio.create_task(gateway.report_activity())
    runner = web.AppRunner(build_app(gateway), handler_cancellation=True, access_log=None,
                           keepalive_timeout=args.header_timeout, max_field_size=16384, max_headers=100)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=1024, reuse_address=True)
    await site.start()
    log.info("gateway on %s:%d; keys from Secrets labelled %s=true in %s; limits %s", args.host, args.port, keys.LABEL,
             args.keys_namespace, store.description)
    stop = stop or asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (RuntimeError, ValueError):
            pass
    if ready is not None:
        ready.set()
    await stop.wait()
    reporter.cancel()
    gateway.watches.stop.set()
    await runner.cleanup()
    await gateway.session.close()
    await store.close()


class MalformedRequests(logging.Filter):
    """aiohttp logs each request its parser refuses (and answers 400) with a traceback: one line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg, record.args, record.exc_info, record.exc_text = "refused a malformed request: %s", (error.message.splitlines()[0],), None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(MalformedRequests())
    try:
        import uvloop

        uvloop.run(serve(args))
    except ImportError:
        asyncio.run(serve(args))
    return 0
