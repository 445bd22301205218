"""OpenAI-shaped error bodies (pure). The shape is OpenAI's: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ApiError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    retry_after: float | None = None  # seconds; sent as Retry-After (whole seconds, rounded up, at least 1)

    def body(self) -> bytes:
        return json.dumps({"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}).encode()

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.retry_after is not None:
            headers["Retry-After"] = str(retry_after_header(self.retry_after))
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="qwen-gateway"'
        return headers


def retry_after_header(seconds: float) -> int:
    """Retry-After takes whole seconds: round up (never tell a client to come back too early), at least 1."""
    return max(1, math.ceil(seconds - 1e-9))


def missing_key() -> ApiError:
    return ApiError(401, "No API key given: send 'Authorization: Bearer <key>'.", "authentication_error", "missing_api_key")


def unknown_key() -> ApiError:
    return ApiError(401, "Incorrect API key provided.", "authentication_error", "invalid_api_key")


def bad_authorization(reason: str) -> ApiError:
    return ApiError(401, f"Malformed Authorization header: {reason}.", "authentication_error", "invalid_api_key")


def model_not_allowed(model: str) -> ApiError:
    return ApiError(403, f"This API key may not use the model '{model}'.", "permission_error", "model_not_allowed", "model")


def unknown_model(model: str) -> ApiError:
    return ApiError(404, f"The model '{model}' does not exist.", "invalid_request_error", "model_not_found", "model")


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", "invalid_request", param)


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"The request body is larger than {limit} bytes.", "invalid_request_error", "request_too_large")


def rate_limited(key_name: str, rate: float, burst: int, retry_after: float) -> ApiError:
    return ApiError(429, f"Rate limit reached for key '{key_name}': {rate:g} requests per second, burst {burst}.",
                    "requests", "rate_limit_exceeded", retry_after=retry_after)


def quota_exceeded(key_name: str, window: str, limit: int, retry_after: float) -> ApiError:
    return ApiError(429, f"Token quota reached for key '{key_name}': {limit} tokens per {window}.",
                    "tokens", "quota_exceeded", retry_after=retry_after)


def unavailable(message: str, retry_after: float | None = None) -> ApiError:
    return ApiError(503, message, "service_unavailable", "model_unavailable", retry_after=retry_after)


def bad_gateway(message: str) -> ApiError:
    return ApiError(502, message, "upstream_error", "upstream_error")


def timed_out(message: str) -> ApiError:
    return ApiError(504, message, "timeout", "upstream_timeout")
