"""What can be checked of the stand-in image without a container: its Dockerfile is hadolint-clean
and copies files that exist, and the stand-in it packs answers the exact command the operator
gives the vLLM container of the e2e sample (run here on 127.0.0.1 instead of in a pod). The
stand-in refuses flags the pinned vLLM does not know, so a flag the operator passes that vLLM
renamed or removed fails here. tests/realnode runs the image itself."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from qwen_operator.api.models import QwenInference
from qwen_operator.builders.common import Owner
from qwen_operator.builders.deployment import build_deployment
from qwen_operator.catalog import resolve_model
from qwen_operator.config import OperatorConfig

REPO = Path(__file__).resolve().parents[2]
STANDIN_DIR = REPO / "tests" / "standin"
DOCKERFILE = STANDIN_DIR / "Dockerfile"
SAMPLE = Path(__file__).parent / "standin-sample.yaml"
HADOLINT = REPO / ".venv" / "bin" / "hadolint"
FLAGS_FILE = REPO / "operator" / "qwen_operator" / "api" / "vllm_flags.yaml"


def sample_pod_containers() -> dict[str, dict]:
    body = yaml.safe_load(SAMPLE.read_text())
    spec = QwenInference.model_validate(body).spec
    owner = Owner(name=body["metadata"]["name"], namespace="e2e", uid="e2e-uid", generation=1)
    pod = build_deployment(owner, spec, resolve_model(spec), OperatorConfig(), manage_replicas=True)["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod.get("initContainers", []) + pod["containers"]}


def test_standin_dockerfile_is_hadolint_clean_and_copies_existing_files():
    result = subprocess.run([str(HADOLINT), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    copies = [line.split()[1:-1] for line in DOCKERFILE.read_text().splitlines() if line.startswith("COPY ")]
    assert copies == [["vllm_standin.py", "vllm", "vllm_flags.yaml"]]
    # The context is this folder plus the operator's vLLM flag list (hack/images.sh, hack/kind-up.sh).
    assert all((STANDIN_DIR / name).is_file() for name in copies[0][:2]) and FLAGS_FILE.is_file()


def test_the_sample_runs_the_commands_the_image_provides():
    # The engine's containers (the health agent beside them runs the operator's image).
    engine = [c for c in sample_pod_containers().values() if c["image"] == "qwen-vllm-standin:e2e"]
    commands = {c["command"][0] for c in engine}
    assert commands == {"vllm", "hf"}  # the executables tests/standin/Dockerfile installs
    dockerfile = DOCKERFILE.read_text()
    assert "/usr/local/bin/vllm" in dockerfile and "/usr/local/bin/hf" in dockerfile


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tmp_path(short_tmp_path: Path) -> Path:
    """Short: the stand-in binds a unix socket under TMPDIR, as vLLM does (conftest.short_tmp_path)."""
    return short_tmp_path


def operator_command_here(tmp_path: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """The operator's vLLM command and environment, with the pod's address made loopback, its port a
    free one and its volume paths (/scratch, /model-cache) folders under tmp_path."""
    server = next(c for c in sample_pod_containers().values() if (c.get("command") or [""])[0] == "vllm")
    args = list(server["args"])
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    pod_env = {e["name"]: e["value"] for e in server["env"] if "value" in e}
    for name, value in pod_env.items():
        if value.startswith("/"):
            pod_env[name] = str(tmp_path) + value
    return [str(STANDIN_DIR / "vllm"), *server["command"][1:], *args], {**os.environ, **pod_env, "TMPDIR": str(tmp_path)}


def test_a_flag_the_pinned_vllm_does_not_know_fails_the_command(tmp_path):
    command, env = operator_command_here(tmp_path, free_port())
    result = subprocess.run([*command, "--max-model-length", "8192"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "unrecognized arguments: --max-model-length" in result.stderr


def test_the_standin_answers_the_operators_vllm_command(tmp_path):
    port = free_port()
    command, env = operator_command_here(tmp_path, port)
    args = command[2:]
    process = subprocess.Popen([*command, "--stand-in-max-seconds", "60"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                health = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, process.stdout.read() if process.poll() is not None else "no /health in 20s"
                time.sleep(0.2)
        assert health.status == 200
        models = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5).read())
        served = args[args.index("--served-model-name") + 1]
        assert [m["id"] for m in models["data"]] == [served]
    finally:
        process.terminate()
        process.wait(timeout=10)
