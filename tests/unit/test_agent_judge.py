"""The deep health agent's pure judge (qwen_agent.judge): tables over samples, checks and verdicts."""

from __future__ import annotations

import pytest

from qwen_agent.judge import HUNG, UNHEALTHY, Sample, Settings, State, detailed, judge, livez, parse_metrics, step

METRICS_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="0",model_name="m"} 7.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:generation_tokens_total{engine="0",model_name="m"} 120.0
vllm:generation_tokens_total{engine="1",model_name="m"} 5.0
vllm:iteration_tokens_total_count{engine="0",model_name="m"} 9
vllm:iteration_tokens_total_bucket{engine="0",le="1.0",model_name="m"} 4
vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 4.0
process_start_time_seconds 1.7e9
"""


def test_parse_metrics_sums_series_and_keeps_only_what_the_judge_reads() -> None:
    assert parse_metrics(METRICS_TEXT) == {
        "vllm:num_requests_running": 3.0,
        "vllm:num_requests_waiting": 7.0,
        "vllm:kv_cache_usage_perc": 0.25,
        "vllm:generation_tokens_total": 125.0,
        "vllm:iteration_tokens_total_count": 9.0,
    }


def test_parse_metrics_survives_garbage() -> None:
    assert parse_metrics("garbage\n{}\nvllm:generation_tokens_total{a=\"b\"} NaNx\n\n") == {}


IDLE = {"vllm:generation_tokens_total": 10.0, "vllm:num_requests_running": 0.0, "vllm:num_requests_waiting": 0.0}
BUSY_STUCK = {"vllm:generation_tokens_total": 10.0, "vllm:num_requests_running": 4.0, "vllm:num_requests_waiting": 2.0}
BUSY_MOVING = {"vllm:generation_tokens_total": 50.0, "vllm:num_requests_running": 4.0, "vllm:num_requests_waiting": 2.0}
RESTARTED = {"vllm:generation_tokens_total": 0.0, "vllm:num_requests_running": 0.0, "vllm:num_requests_waiting": 0.0}


@pytest.mark.parametrize(
    ("case", "previous", "sample", "ok", "kind"),
    [
        ("loading: not listening is alive (the startup probe guards the load)", IDLE, Sample(0, listening=False), True, None),
        ("tokens rising is alive, whatever else", BUSY_STUCK, Sample(0, True, health_status=None, metrics=BUSY_MOVING), True, None),
        ("prompt tokens rising is progress too", {"vllm:prompt_tokens_total": 1.0},
         Sample(0, True, 200, {"vllm:prompt_tokens_total": 900.0}, completion_error="timed out after 5 s"), True, None),
        ("idle and the completion answers", IDLE, Sample(0, True, 200, IDLE, completion_seconds=0.02), True, None),
        ("busy, no tokens, but the completion answers", BUSY_STUCK, Sample(0, True, 200, BUSY_STUCK, completion_seconds=3.0), True, None),
        ("idle, /health 200, completion times out: hung", IDLE, Sample(0, True, 200, IDLE, completion_error="timed out after 5 s"), False, HUNG),
        ("busy, no tokens, completion times out: hung", BUSY_STUCK, Sample(0, True, 200, BUSY_STUCK, completion_error="timed out after 5 s"), False, HUNG),
        ("/metrics silent and the completion fails: hung", IDLE, Sample(0, True, 200, None, completion_error="timed out after 5 s"), False, HUNG),
        ("/health 503 and no completion: unhealthy", IDLE, Sample(0, True, 503, IDLE, completion_error="answered HTTP 500"), False, UNHEALTHY),
        ("/health silent and no completion: unhealthy", IDLE, Sample(0, True, None, None, completion_error="timed out after 5 s"), False, UNHEALTHY),
        ("first check, no previous reading: the completion decides", None, Sample(0, True, 200, IDLE, completion_seconds=0.1), True, None),
    ],
)
def test_judge(case: str, previous, sample: Sample, ok: bool, kind: str | None) -> None:
    check = judge(previous, sample, 5)
    assert (check.ok, check.kind) == (ok, kind), case
    assert check.reason


SETTINGS = Settings(interval_seconds=10, timeout_seconds=5, failures_before_restart=3)
HANG = Sample(0, True, 200, IDLE, completion_error="timed out after 5 s")


def run(samples: list[Sample], state: State | None = None) -> list[State]:
    states, state = [], state or State()
    for sample in samples:
        state = step(state, sample, SETTINGS)
        states.append(state)
    return states


def test_verdict_after_n_failing_checks_in_a_row() -> None:
    states = run([Sample(0, True, 200, IDLE, completion_seconds=0.1)] + [HANG] * 3)
    assert [s.failures for s in states] == [0, 1, 2, 3]
    assert [s.verdict is not None for s in states] == [False, False, False, True]
    assert states[-1].verdict.startswith("EngineHung: 3 checks failed in a row")
    assert livez(states[-1])[0] == 500
    assert livez(states[-1])[1] == states[-1].verdict
    assert livez(states[-2])[0] == 200


def test_a_passing_check_resets_the_count() -> None:
    states = run([HANG, HANG, Sample(0, True, 200, IDLE, completion_seconds=0.1), HANG, HANG])
    assert [s.failures for s in states] == [1, 2, 0, 1, 2]
    assert all(s.verdict is None for s in states)


def test_slow_but_producing_is_never_hung() -> None:
    """Completions slower than the timeout, but tokens still rise: alive every time."""
    counter = [{"vllm:generation_tokens_total": float(10 * i), "vllm:num_requests_running": 8.0} for i in range(20)]
    states = run([Sample(i, True, 200, m, completion_error="timed out after 5 s") for i, m in enumerate(counter)])
    assert all(s.failures == 0 and s.verdict is None for s in states[1:])


@pytest.mark.parametrize(
    ("case", "after"),
    [
        ("vLLM restarting: not listening", Sample(0, listening=False)),
        ("a new vLLM process: the counters went down", Sample(0, True, 200, RESTARTED, completion_error="timed out after 5 s")),
        ("a check passes", Sample(0, True, 200, IDLE, completion_seconds=0.1)),
    ],
)
def test_the_verdict_stands_until_vllm_restarts_or_a_check_passes(case: str, after: Sample) -> None:
    hung = run([HANG] * 4)
    assert hung[-1].verdict is not None and hung[-1].hangs == 1
    assert step(hung[-1], after, SETTINGS).verdict is None, case
    assert livez(step(hung[-1], after, SETTINGS))[0] == 200


def test_the_agents_own_completion_is_not_progress() -> None:
    """The counter after the agent's own completion becomes the baseline: the next check sees no rise."""
    after = {**IDLE, "vllm:generation_tokens_total": 11.0}
    state = step(State(), Sample(0, True, 200, IDLE, completion_seconds=0.1, metrics_after=after), SETTINGS)
    assert state.metrics == after
    assert not judge(state.metrics, Sample(10, True, 200, after, completion_error="timed out after 5 s"), 5).ok


def test_unhealthy_verdict() -> None:
    states = run([Sample(0, True, 503, IDLE, completion_error="answered HTTP 500")] * 3)
    assert states[-1].verdict.startswith("EngineUnhealthy: ")


def test_detailed_view() -> None:
    metrics = {**BUSY_MOVING, "vllm:kv_cache_usage_perc": 0.5}
    state = run([Sample(0, True, 200, BUSY_STUCK, model_loaded=True, completion_seconds=0.25),
                 Sample(10, True, 200, metrics, model_loaded=True)])[-1]
    view = detailed(state, SETTINGS)
    assert view["alive"] is True and view["verdict"] is None
    assert view["apiReachable"] is True and view["modelLoaded"] is True
    assert view["lastCompletionSeconds"] == 0.25
    assert (view["queueDepth"], view["runningRequests"], view["kvCacheUsage"]) == (2.0, 4.0, 0.5)
    assert view["lastCheck"]["ok"] is True
    loading = detailed(run([Sample(0, listening=False)])[-1], SETTINGS)
    assert loading["apiReachable"] is False and loading["queueDepth"] is None and loading["alive"] is True
