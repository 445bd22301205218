"""A work queue of resource keys, the shape of controller-runtime's rate-limited queue.

- A key is queued at most once: a burst of events for one resource costs one run.
- At most one worker runs a key at a time; a key added while it runs is run once more afterwards.
- A fixed number of worker threads, so one slow resource never holds up the others.
- A run that fails is retried for that key alone, with exponential backoff (or the server's
  Retry-After when it is longer); a success resets the backoff.
- add_after_quiet debounces a burst: the key runs once the burst has been quiet for `quiet`
  seconds, or `max_wait` after the burst began, whichever comes first. A storm of watch events
  for one resource then costs one or two runs, however long it lasts, and never waits unbounded.
- add_lazily asks for a run within a delay unless one is queued already: for changes that only
  need to be seen eventually, folded into whatever run comes first.

process(key) returns normally on success and raises Retry (or any exception) to be run again.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)

log = logging.getLogger(__name__)


class Retry(Exception):
    """Run this key again later: after_seconds at least (None: the queue's backoff alone)."""

    def __init__(self, message: str, after_seconds: float | None = None):
        super().__init__(message)
        self.after_seconds = after_seconds


def backoff_seconds(failures: int, base: float, cap: float) -> float:
    """base, 2*base, 4*base ... up to cap, for the 1st, 2nd, 3rd ... consecutive failure."""
    return min(cap, base * (2 ** max(0, failures - 1)))


class WorkQueue(Generic[K]):
    def __init__(self, process: Callable[[K], None], workers: int, base_delay: float = 0.5, max_delay: float = 120.0,
                 clock: Callable[[], float] = time.monotonic, name: str = "work"):
        self._process = process
        self._workers = workers
        self._base, self._cap = base_delay, max_delay
        self._clock = clock
        self._name = name
        self._cond = threading.Condition()
        self._due: dict[K, float] = {}  # queued keys and when they may run
        self._heap: list[tuple[float, int, K]] = []  # (due, sequence, key); stale entries are skipped
        self._sequence = 0
        self._running: set[K] = set()
        self._again: dict[K, float] = {}  # keys added while running: run again, no earlier than this
        self._failures: dict[K, int] = {}
        self._burst_start: dict[K, float] = {}  # debounced keys: when their current burst began
        self._debounced: set[K] = set()  # queued keys whose due time a burst set (it may move later)
        self._threads: list[threading.Thread] = []
        self._stopped = False

    # Producers

    def add(self, key: K, delay: float = 0.0) -> None:
        """Queue key to run after delay seconds (sooner if it is already queued sooner)."""
        due = self._clock() + delay
        with self._cond:
            if self._stopped:
                return
            if key in self._running:
                self._again[key] = min(due, self._again.get(key, due))
                return
            self._push(key, due)

    def add_after_quiet(self, key: K, quiet: float, max_wait: float) -> None:
        """Queue key to run when its burst of adds has been quiet for `quiet` s (at most `max_wait` s after it began)."""
        now = self._clock()
        with self._cond:
            if self._stopped:
                return
            first = self._burst_start.setdefault(key, now)
            due = min(first + max_wait, now + quiet)
            if key in self._running:
                self._again[key] = due
                return
            if key in self._due and key not in self._debounced and self._due[key] <= due:
                return  # an earlier plain add wins
            self._debounced.add(key)
            self._due[key] = due
            self._sequence += 1
            heapq.heappush(self._heap, (due, self._sequence, key))
            self._cond.notify()

    def add_lazily(self, key: K, delay: float) -> None:
        """Queue key to run within delay seconds, unless a run of it is queued or due again already: that run
        sees this change too. Never postpones a run; a later add or add_after_quiet may bring it sooner."""
        due = self._clock() + delay
        with self._cond:
            if self._stopped:
                return
            if key in self._running:
                self._again.setdefault(key, due)
                return
            if key in self._due:
                return
            self._debounced.add(key)  # like a burst's due time: a sooner add_after_quiet may replace it
            self._due[key] = due
            self._sequence += 1
            heapq.heappush(self._heap, (due, self._sequence, key))
            self._cond.notify()

    def running(self, key: K) -> bool:
        """Whether a worker runs key right now."""
        with self._cond:
            return key in self._running

    def forget(self, key: K) -> None:
        """The resource is gone: drop its backoff (a queued run still happens and finds it gone)."""
        with self._cond:
            self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        with self._cond:
            return self._failures.get(key, 0)

    def __len__(self) -> int:
        with self._cond:
            return len(self._due)

    def _push(self, key: K, due: float) -> None:
        if key in self._due and self._due[key] <= due:
            return
        self._debounced.discard(key)
        self._due[key] = due
        self._sequence += 1
        heapq.heappush(self._heap, (due, self._sequence, key))
        self._cond.notify()

    # Workers

    def start(self) -> None:
        for i in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"{self._name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def _next(self) -> K | None:
        """The next due key that no worker runs, waiting for it; None once stopped."""
        with self._cond:
            while not self._stopped:
                now = self._clock()
                while self._heap:
                    due, _, key = self._heap[0]
                    if self._due.get(key) != due:
                        heapq.heappop(self._heap)  # superseded by an earlier add
                        continue
                    if due > now:
                        break
                    heapq.heappop(self._heap)
                    del self._due[key]
                    self._debounced.discard(key)
                    self._burst_start.pop(key, None)  # adds from now on start a new burst
                    self._running.add(key)
                    return key
                wait = (self._heap[0][0] - now) if self._heap else None
                self._cond.wait(timeout=wait)
            return None

    def _work(self) -> None:
        while (key := self._next()) is not None:
            retry_after: float | None = None
            failed = False
            try:
                self._process(key)
            except Retry as error:
                failed, retry_after = True, error.after_seconds
            except Exception:  # noqa: BLE001 - a worker must outlive any one run
                log.exception("%s queue: run of %s failed unexpectedly; retrying with backoff", self._name, key)
                failed = True
            with self._cond:
                self._running.discard(key)
                if failed:
                    count = self._failures[key] = self._failures.get(key, 0) + 1
                    delay = max(backoff_seconds(count, self._base, self._cap), retry_after or 0.0)
                    self._push(key, self._clock() + delay)
                else:
                    self._failures.pop(key, None)
                again = self._again.pop(key, None)
                if again is not None:
                    self._push(key, again)
