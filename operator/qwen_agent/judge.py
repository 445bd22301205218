"""Pure decisions of the deep health agent: vLLM's metrics and probe results in, alive or hung out.

No I/O, no clocks: the caller samples vLLM (engine.py) and passes what it saw, with the time.

One check:
  - vLLM not listening yet (loading the model, or restarting): alive. The startup probe guards the load.
  - a token counter rose since the last check: alive (generating).
  - otherwise the agent tried a 1-token completion: alive when it answered in time.
  - otherwise: failing. With /health 200 that is a hang ("EngineHung"); with /health failing, an
    unhealthy engine ("EngineUnhealthy"), as vLLM's own /health liveness would have judged.
failures_before_restart failing checks in a row give the verdict; /livez then answers 500 with it, the
kubelet restarts vLLM, and the preStop hook writes the verdict into vLLM's termination message.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# Counters whose rise means the engine made progress: tokens generated, prompt tokens prefilled, engine
# steps taken (the histogram's count rises with every step, prefill chunks included).
PROGRESS_COUNTERS = ("vllm:generation_tokens_total", "vllm:prompt_tokens_total", "vllm:iteration_tokens_total_count")
GENERATION_TOKENS = "vllm:generation_tokens_total"
WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
WANTED = frozenset((*PROGRESS_COUNTERS, WAITING, RUNNING, KV_CACHE_USAGE))
HUNG, UNHEALTHY = "EngineHung", "EngineUnhealthy"


def parse_metrics(text: str, wanted: frozenset[str] = WANTED) -> dict[str, float]:
    """Prometheus text exposition -> {family or sample name: value summed over its series} for wanted names.

    vLLM labels every series with model_name (and engine with data parallelism): the sum is the pod's figure.
    """
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
        if name_end <= 0:
            continue
        name = line[:name_end]
        if name not in wanted:
            continue
        rest = line[line.rindex("}") + 1:] if "{" in line[:name_end + 1] else line[name_end:]
        parts = rest.split()
        if not parts:
            continue
        try:
            value = float(parts[0])
        except ValueError:
            continue
        values[name] = values.get(name, 0.0) + value
    return values


@dataclass(frozen=True)
class Sample:
    """What one check saw of vLLM."""

    at: float  # seconds, the caller's monotonic clock
    listening: bool  # vLLM accepted a connection on its port
    health_status: int | None = None  # /health's status; None when it did not answer in time
    metrics: dict[str, float] | None = None  # parse_metrics of /metrics; None when it did not answer
    model_loaded: bool | None = None  # the served name is in /v1/models; None when not asked or no answer
    completion_seconds: float | None = None  # the 1-token completion answered in this time; None: not tried or failed
    completion_error: str | None = None  # why the completion failed ("timed out after 2 s", "HTTP 500")
    # /metrics read again after a completion that answered: the next check compares with this, so the
    # agent's own token does not count as the engine's progress.
    metrics_after: dict[str, float] | None = None


def progressed(previous: dict[str, float] | None, current: dict[str, float] | None) -> bool:
    """A progress counter rose between two /metrics readings."""
    if not previous or not current:
        return False
    return any(current.get(name, 0.0) > previous.get(name, 0.0) for name in PROGRESS_COUNTERS if name in current)


def restarted(previous: dict[str, float] | None, current: dict[str, float] | None) -> bool:
    """A counter went down: another vLLM process answers (counters start from 0 in a new process)."""
    if not previous or not current:
        return False
    return any(current[name] < previous[name] for name in PROGRESS_COUNTERS if name in current and name in previous)


def needs_completion(previous: dict[str, float] | None, sample: Sample) -> bool:
    """Whether the check must try a completion: vLLM listens and no counter shows progress."""
    return sample.listening and not progressed(previous, sample.metrics)


@dataclass(frozen=True)
class Check:
    ok: bool
    reason: str
    kind: str | None = None  # HUNG or UNHEALTHY for a failing check


def judge(previous: dict[str, float] | None, sample: Sample, timeout_seconds: float) -> Check:
    """One check's result, from the previous /metrics reading and this sample."""
    if not sample.listening:
        return Check(True, "vLLM is not listening yet (loading the model or restarting); the startup probe guards the load")
    if progressed(previous, sample.metrics):
        before, now = (previous or {}).get(GENERATION_TOKENS, 0.0), (sample.metrics or {}).get(GENERATION_TOKENS, 0.0)
        return Check(True, f"progressing: {now - before:g} tokens generated since the last check")
    if sample.completion_seconds is not None:
        return Check(True, f"a 1-token completion answered in {sample.completion_seconds * 1000:.0f} ms")
    metrics = sample.metrics or {}
    load = f"{metrics.get(RUNNING, 0):g} running, {metrics.get(WAITING, 0):g} waiting" if sample.metrics is not None else "/metrics did not answer"
    completion = sample.completion_error or f"did not answer within {timeout_seconds:g} s"
    if sample.health_status == 200:
        return Check(False, f"/health is 200 but no tokens were generated since the last check ({load}) and a 1-token completion {completion}", HUNG)
    health = f"/health answered {sample.health_status}" if sample.health_status is not None else f"/health did not answer within {timeout_seconds:g} s"
    return Check(False, f"{health}, no tokens were generated since the last check ({load}) and a 1-token completion {completion}", UNHEALTHY)


@dataclass(frozen=True)
class State:
    """The agent's memory between checks."""

    failures: int = 0  # failing checks in a row
    verdict: str | None = None  # "EngineHung: ..." once failures reached failures_before_restart; /livez answers 500
    metrics: dict[str, float] | None = None  # the last /metrics reading
    last: Check | None = None
    last_sample: Sample | None = None
    last_completion_seconds: float | None = None
    hangs: int = 0  # verdicts given since the agent started
    first_failure_at: float | None = None


@dataclass(frozen=True)
class Settings:
    interval_seconds: float = 10.0
    timeout_seconds: float = 5.0
    failures_before_restart: int = 3


def step(state: State, sample: Sample, settings: Settings) -> State:
    """The state after one check. A verdict stands until vLLM is seen restarting (not listening, counters
    reset) or a check passes: the kubelet restarts vLLM within its probe's failureThreshold x period."""
    check = judge(state.metrics, sample, settings.timeout_seconds)
    new_engine = not sample.listening or restarted(state.metrics, sample.metrics)
    latency = sample.completion_seconds if sample.completion_seconds is not None else state.last_completion_seconds
    seen = sample.metrics_after if sample.metrics_after is not None else sample.metrics
    base = replace(state, metrics=seen if seen is not None else state.metrics, last=check,
                   last_sample=sample, last_completion_seconds=latency)
    if new_engine and not sample.listening:
        base = replace(base, metrics=None)
    if check.ok or new_engine:
        return replace(base, failures=0, verdict=None, first_failure_at=None)
    failures = state.failures + 1
    first = state.first_failure_at if state.first_failure_at is not None else sample.at
    verdict = state.verdict
    hangs = state.hangs
    if verdict is None and failures >= settings.failures_before_restart:
        verdict = f"{check.kind}: {failures} checks failed in a row over {sample.at - first + settings.interval_seconds:.0f} s; last: {check.reason}"
        hangs += 1
    return replace(base, failures=failures, verdict=verdict, hangs=hangs, first_failure_at=first)


def livez(state: State) -> tuple[int, str]:
    """/livez: 500 with the verdict once given, else 200."""
    if state.verdict is not None:
        return 500, state.verdict
    if state.last is None:
        return 200, "ok: no check yet"
    return 200, f"ok: {state.last.reason}" if state.last.ok else f"ok ({state.failures} failing checks in a row): {state.last.reason}"


def detailed(state: State, settings: Settings) -> dict[str, object]:
    """/health/detailed: the multi-level view, from the last check."""
    sample = state.last_sample
    metrics = state.metrics or {}
    have_metrics = sample is not None and sample.metrics is not None
    return {
        "alive": state.verdict is None,
        "verdict": state.verdict,
        "apiReachable": bool(sample and sample.listening and sample.health_status is not None),
        "healthStatus": sample.health_status if sample else None,
        "modelLoaded": sample.model_loaded if sample else None,
        "lastCompletionSeconds": state.last_completion_seconds,
        "queueDepth": metrics.get(WAITING) if have_metrics else None,
        "runningRequests": metrics.get(RUNNING) if have_metrics else None,
        "kvCacheUsage": metrics.get(KV_CACHE_USAGE) if have_metrics else None,
        "generationTokensTotal": metrics.get(GENERATION_TOKENS) if have_metrics else None,
        "lastCheck": {"ok": state.last.ok, "reason": state.last.reason} if state.last else None,
        "consecutiveFailures": state.failures,
        "hangsDetected": state.hangs,
        "settings": {"intervalSeconds": settings.interval_seconds, "timeoutSeconds": settings.timeout_seconds,
                     "failuresBeforeRestart": settings.failures_before_restart},
    }
