"""cli.limit_malloc_arenas in a fresh interpreter: threads that allocate at once share two glibc arenas
(glibc's malloc_stats counts them), and a MALLOC_ARENA_MAX the user set is left alone."""

from __future__ import annotations

import os
import subprocess
import sys

PROGRAM = """
import ctypes, sys, threading
from qwen_operator.cli import limit_malloc_arenas
print(limit_malloc_arenas(), flush=True)

def allocate():
    for _ in range(300):
        chunks = [bytes(4096) for _ in range(200)]  # above pymalloc's 512 bytes: glibc's malloc serves these
        del chunks

threads = [threading.Thread(target=allocate) for _ in range(12)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
ctypes.CDLL(None).malloc_stats()  # to stderr, one "Arena N:" line per arena
"""


def arenas_after_twelve_threads(env: dict[str, str]) -> tuple[str, int]:
    result = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=120, check=True)
    return result.stdout.strip(), sum(line.startswith("Arena ") for line in result.stderr.splitlines())


def test_the_operator_limits_glibc_to_two_arenas() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    limited, arenas = arenas_after_twelve_threads(env)
    assert limited == "True"
    assert 1 <= arenas <= 2, arenas


def test_without_the_limit_the_same_threads_take_more_arenas() -> None:
    # What the limit is for: glibc gives each new thread an arena of its own while under its limit. A user's
    # MALLOC_ARENA_MAX=8 keeps limit_malloc_arenas from acting, and the same twelve threads take more than two.
    limited, arenas = arenas_after_twelve_threads({**os.environ, "MALLOC_ARENA_MAX": "8"})
    assert limited == "False"  # the user's setting wins
    assert arenas > 2, arenas
