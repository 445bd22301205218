"""The controller's work queue: one run per burst, one worker per key, retries with backoff per key."""

from __future__ import annotations

import threading
import time

from qwen_operator.workqueue import Retry, WorkQueue, backoff_seconds


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_backoff_doubles_up_to_the_cap():
    assert [backoff_seconds(n, 0.5, 4) for n in range(1, 6)] == [0.5, 1, 2, 4, 4]


def test_a_burst_for_one_key_costs_one_run():
    runs = []
    gate = threading.Event()
    queue = WorkQueue(lambda key: (gate.wait(2), runs.append(key)), workers=4)
    for _ in range(200):
        queue.add("a")
    queue.start()
    gate.set()
    assert wait_for(lambda: runs == ["a"])
    time.sleep(0.1)
    queue.stop()
    assert runs == ["a"]


def test_a_key_added_while_it_runs_runs_once_more_and_never_twice_at_once():
    active, most, runs = [0], [0], []
    lock = threading.Lock()
    started = threading.Event()

    def process(key):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        started.set()
        time.sleep(0.1)
        with lock:
            active[0] -= 1
        runs.append(key)

    queue = WorkQueue(process, workers=4)
    queue.start()
    queue.add("a")
    assert started.wait(2)
    for _ in range(50):
        queue.add("a")
    assert wait_for(lambda: len(runs) == 2)
    time.sleep(0.2)
    queue.stop()
    assert runs == ["a", "a"] and most[0] == 1


def test_one_failing_key_never_delays_the_others_and_backs_off():
    attempts: list[float] = []
    done = []

    def process(key):
        if key == "bad":
            attempts.append(time.monotonic())
            raise ValueError("boom")  # any exception: logged and retried, the worker survives
        done.append(key)

    queue = WorkQueue(process, workers=1, base_delay=0.1, max_delay=1.0)
    queue.start()
    queue.add("bad")
    for i in range(20):
        queue.add(f"good-{i}")
    assert wait_for(lambda: len(done) == 20)
    assert wait_for(lambda: len(attempts) >= 4)
    queue.stop()
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert gaps[0] >= 0.1 and gaps[2] >= 0.4 and gaps[2] > gaps[0] * 2  # 0.1, 0.2, 0.4: exponential
    assert queue.failures("bad") >= 4


def test_retry_after_is_honoured_and_success_resets_the_backoff():
    attempts: list[float] = []

    def process(key):
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise Retry("throttled", after_seconds=0.3)

    queue = WorkQueue(process, workers=1, base_delay=0.01)
    queue.start()
    queue.add("a")
    assert wait_for(lambda: len(attempts) == 2)
    queue.stop()
    assert attempts[1] - attempts[0] >= 0.3
    assert queue.failures("a") == 0


def test_a_long_burst_runs_once_at_its_end_or_at_the_maximum_wait():
    runs: list[float] = []
    queue = WorkQueue(lambda key: runs.append(time.monotonic()), workers=2)
    queue.start()
    started = time.monotonic()
    while time.monotonic() - started < 1.0:  # a 1 s storm of adds, each pushing the quiet time out
        queue.add_after_quiet("a", quiet=0.3, max_wait=5.0)
        time.sleep(0.01)
    assert wait_for(lambda: len(runs) == 1)
    assert runs[0] - started >= 1.0  # not before the storm ended
    time.sleep(0.5)
    assert len(runs) == 1

    runs.clear()
    started = time.monotonic()
    while time.monotonic() - started < 1.2:  # a storm longer than max_wait: still bounded
        queue.add_after_quiet("b", quiet=0.3, max_wait=0.5)
        time.sleep(0.01)
    assert wait_for(lambda: len(runs) >= 2)
    queue.stop()
    assert runs[0] - started < 0.8


def test_a_plain_add_is_not_delayed_by_a_burst():
    runs: list[float] = []
    queue = WorkQueue(lambda key: runs.append(time.monotonic()), workers=1)
    queue.start()
    queue.add_after_quiet("a", quiet=5.0, max_wait=10.0)
    started = time.monotonic()
    queue.add("a")
    assert wait_for(lambda: runs, 2)
    queue.stop()
    assert runs[0] - started < 0.5


def test_a_lazy_add_runs_within_its_delay_folds_into_a_queued_run_and_never_postpones_one():
    runs: list[tuple[str, float]] = []
    queue = WorkQueue(lambda key: runs.append((key, time.monotonic())), workers=1)
    queue.start()
    started = time.monotonic()
    queue.add_lazily("a", 0.3)
    queue.add_lazily("a", 5.0)  # already queued sooner: nothing changes
    assert wait_for(lambda: runs, 2)
    assert 0.25 <= runs[0][1] - started < 1.0

    runs.clear()
    started = time.monotonic()
    queue.add_after_quiet("b", quiet=0.2, max_wait=1.0)
    queue.add_lazily("b", 5.0)  # a run is queued already: it sees this change too
    assert wait_for(lambda: runs, 2)
    assert runs[0][1] - started < 1.0
    time.sleep(0.3)
    assert len(runs) == 1

    runs.clear()
    started = time.monotonic()
    queue.add_lazily("c", 5.0)
    queue.add_after_quiet("c", quiet=0.2, max_wait=1.0)  # a change that needs judging soon brings the lazy run forward
    assert wait_for(lambda: runs, 2)
    queue.stop()
    assert runs[0][1] - started < 1.0 and len(runs) == 1
