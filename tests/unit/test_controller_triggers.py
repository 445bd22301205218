"""The controller's pure trigger rules (qwen_operator.controller): which child event is judged at once."""

from __future__ import annotations

import pytest

from qwen_operator.controller import rollout_just_completed


def deployment(ready: int, replicas: int = 1, generation: int = 1, observed: int = 1, kind: str = "Deployment") -> dict:
    return {"kind": kind, "metadata": {"name": "q", "generation": generation}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": ready, "availableReplicas": ready}}


@pytest.mark.parametrize(("old", "new", "expected"), [
    (deployment(0), deployment(1), True),  # the last replica became ready: the resource turns Ready now
    (None, deployment(1), True),  # first seen complete (a relist, or an adopted resource)
    (deployment(1), deployment(1), False),  # still complete: nothing new
    (deployment(1, replicas=2), deployment(2, replicas=2), True),
    (deployment(1, replicas=2), deployment(1, replicas=2), False),
    (deployment(0), deployment(1, generation=2, observed=1), False),  # the controller has not seen the new spec yet
    (deployment(0, kind="StatefulSet"), deployment(1, kind="StatefulSet"), False),
    (deployment(1), None, False),  # deleted
    (deployment(0, replicas=0), deployment(0, replicas=0), False),  # scaled to zero is not a completed rollout
])
def test_rollout_just_completed(old, new, expected) -> None:
    assert rollout_just_completed(old, new) is expected
