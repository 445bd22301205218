"""cli.settle_gc in a fresh interpreter: what is alive once the operator's modules are imported leaves the collector's
generations (frozen), and a young collection waits for 10,000 net allocations."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import gc
import kopf, kubernetes, pydantic  # what the operator imports before it settles the collector
from qwen_operator import handlers
from qwen_operator.cli import YOUNG_GC_THRESHOLD, settle_gc
before = gc.get_freeze_count()
settle_gc()
print(before, gc.get_freeze_count(), gc.get_threshold()[0], YOUNG_GC_THRESHOLD)
"""


def test_the_imported_modules_are_frozen_and_young_collections_wait_for_ten_thousand_allocations():
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120, check=True)
    before, frozen, young, expected = (int(word) for word in result.stdout.split())
    assert before == 0
    assert frozen > 50_000, frozen  # kopf, pydantic, the Kubernetes client and the operator: about 70,000 objects
    assert young == expected == 10_000
