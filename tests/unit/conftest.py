"""Fixtures shared by the unit tests."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool from PATH, installed by the project's script (hack/install-prometheus.sh) when missing."""
    found = shutil.which("promtool")
    if found is None:
        subprocess.run([str(REPO / "hack" / "install-prometheus.sh")], check=True, timeout=900)
        found = shutil.which("promtool")
    assert found, "hack/install-prometheus.sh ran but promtool is still not on PATH"
    return found
