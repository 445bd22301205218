"""The import layers hold: handlers on top; reconcile, k8s and status below; pure builders, the
catalog and the API at the bottom (pyproject.toml [tool.importlinter])."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_import_layers_are_kept():
    result = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
