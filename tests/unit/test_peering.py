"""The resync loop's "am I the active replica?" judgement, the same one kopf's peering makes."""

from datetime import datetime, timezone

import pytest

from qwen_operator.k8s.peering import outranked

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "peers, own, expected",
    [
        ({}, 5, False),
        ({"me": {"priority": 5, "lifetime": 60, "lastseen": "2026-01-01T11:59:30+00:00"}}, 5, False),
        ({"other": {"priority": 9, "lifetime": 60, "lastseen": "2026-01-01T11:59:30+00:00"}}, 5, True),
        ({"other": {"priority": 9, "lifetime": 60, "lastseen": "2026-01-01T11:58:00+00:00"}}, 5, False),  # dead peer
        ({"other": {"priority": 3, "lifetime": 60, "lastseen": "2026-01-01T11:59:30Z"}}, 5, False),  # lower priority
        ({"other": {"priority": 9, "lifetime": 60, "lastseen": "2026-01-01T11:59:30"}}, 5, True),  # naive time means UTC
        ({"broken": {"priority": "x", "lastseen": "never"}}, 5, False),
    ],
)
def test_outranked(peers, own, expected):
    assert outranked(peers, own, NOW) is expected
