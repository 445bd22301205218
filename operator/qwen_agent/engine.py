"""The agent's client of vLLM (I/O): one sample of /health, /metrics, /v1/models and, when the judge needs
it, a 1-token completion. Every call is bounded by the check timeout."""

from __future__ import annotations

import http.client
import json
import socket
import time

from qwen_agent.judge import Sample, needs_completion, parse_metrics


class Engine:
    def __init__(self, host: str, port: int, served_name: str, api_key: str | None, timeout_seconds: float):
        self.host, self.port, self.served_name = host, port, served_name
        self.api_key = api_key or None
        self.timeout = timeout_seconds

    def listening(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=min(self.timeout, 2.0)):
                return True
        except OSError:
            return False

    def request(self, method: str, path: str, body: dict | None = None, auth: bool = False) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        headers = {"Connection": "close"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if auth and self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def _get(self, path: str, auth: bool = False) -> tuple[int | None, bytes]:
        try:
            return self.request("GET", path, auth=auth)
        except (OSError, http.client.HTTPException):
            return None, b""

    def completion(self) -> tuple[float | None, str | None]:
        """(seconds, None) when a 1-token completion on the served model answered, else (None, why)."""
        body = {"model": self.served_name, "prompt": "ping", "max_tokens": 1, "temperature": 0}
        started = time.monotonic()
        try:
            status, text = self.request("POST", "/v1/completions", body, auth=True)
        except TimeoutError:
            return None, f"timed out after {self.timeout:g} s"
        except (OSError, http.client.HTTPException) as error:
            return None, f"failed ({type(error).__name__}: {error})"
        if status != 200:
            return None, f"answered HTTP {status}: {text[:120].decode(errors='replace')}"
        return time.monotonic() - started, None

    def sample(self, previous_metrics: dict[str, float] | None, at: float) -> Sample:
        if not self.listening():
            return Sample(at=at, listening=False)
        health, _ = self._get("/health")
        status, text = self._get("/metrics")
        metrics = parse_metrics(text.decode(errors="replace")) if status == 200 else None
        model_loaded = None
        if health == 200:
            status, text = self._get("/v1/models", auth=True)
            if status == 200:
                try:
                    model_loaded = any(m.get("id") == self.served_name for m in json.loads(text).get("data", []))
                except (ValueError, AttributeError):
                    model_loaded = None
        sample = Sample(at=at, listening=True, health_status=health, metrics=metrics, model_loaded=model_loaded)
        if not needs_completion(previous_metrics, sample):
            return sample
        seconds, error = self.completion()
        after = None
        if seconds is not None:
            status, text = self._get("/metrics")
            after = parse_metrics(text.decode(errors="replace")) if status == 200 else None
        return Sample(at=at, listening=True, health_status=health, metrics=metrics, model_loaded=model_loaded,
                      completion_seconds=seconds, completion_error=error, metrics_after=after)
