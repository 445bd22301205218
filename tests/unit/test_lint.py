"""`make lint` (hack/lint.sh): kube-score findings judged against the allowlist, and kubeconform -strict against
schemas generated offline from the pinned Kubernetes module and the CRDs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ALLOWLIST = REPO / "hack" / "lint-allowlist.yaml"
SCHEMA_LOCATION = "{{ .ResourceKind }}-{{ .Group }}-{{ .ResourceAPIVersion }}.json"


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


lint_findings = load("lint_findings", REPO / "hack" / "lint-findings.py")

REPORT = """\
children-qwen3-0.6b-fp8.yaml [OK] chat/team-a apps/v1/Deployment
children-qwen3-0.6b-fp8.yaml [CRITICAL] chat/team-a apps/v1/Deployment: (vllm) ImagePullPolicy is not set to Always
children-qwen3-0.6b-fp8.yaml [WARNING] chat/team-a apps/v1/Deployment: Deployment few replicas
chart-default.yaml [SKIPPED] qwen-operator/qwen-system apps/v1/Deployment: Skipped because container-ports-check is ignored
"""


def test_findings_are_parsed_from_kube_score_ci_output() -> None:
    found = lint_findings.findings(REPORT)
    assert [(f.file, f.level, f.object, f.message) for f in found] == [
        ("children-qwen3-0.6b-fp8.yaml", "CRITICAL", "chat/team-a apps/v1/Deployment", "(vllm) ImagePullPolicy is not set to Always"),
        ("children-qwen3-0.6b-fp8.yaml", "WARNING", "chat/team-a apps/v1/Deployment", "Deployment few replicas"),
    ]


def test_a_new_finding_fails_and_a_stale_entry_fails() -> None:
    found = lint_findings.findings(REPORT)
    pull = {"message": "(*) ImagePullPolicy is not set to Always", "reason": "pinned tags"}
    replicas = {"file": "children-qwen3-0.6b-fp8.yaml", "message": "Deployment few replicas", "reason": "a demo"}
    assert lint_findings.judge(found, [pull, replicas]) == ([], [])
    new, _ = lint_findings.judge(found, [pull])
    assert [f.message for f in new] == ["Deployment few replicas"]
    # Scoped to another file, the entry allows nothing here, and is itself reported as stale.
    elsewhere = {**replicas, "file": "children-other.yaml"}
    new, stale = lint_findings.judge(found, [pull, elsewhere])
    assert len(new) == 1 and stale == [elsewhere]
    with pytest.raises(SystemExit):
        lint_findings.judge(found, [{"message": "*"}])  # no reason


def test_every_allowlist_entry_has_a_reason() -> None:
    for entry in yaml.safe_load(ALLOWLIST.read_text())["kube-score"]:
        assert len(entry["reason"].split()) >= 5, entry


def test_the_cli_exits_non_zero_on_a_new_finding(tmp_path: Path) -> None:
    (tmp_path / "report.txt").write_text(REPORT)
    (tmp_path / "allow.yaml").write_text(yaml.safe_dump({"kube-score": [{"message": "(*) ImagePullPolicy is not set to Always", "reason": "pinned tags only"}]}))
    result = subprocess.run([str(REPO / ".venv" / "bin" / "python"), str(REPO / "hack" / "lint-findings.py"), "report.txt", "allow.yaml"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "NEW children-qwen3-0.6b-fp8.yaml: [WARNING]" in result.stdout


# ---- kubeconform -strict against the generated schemas ------------------------------------------


@pytest.fixture(scope="module")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("schemas")
    subprocess.run([str(REPO / ".venv" / "bin" / "python"), str(REPO / "hack" / "gen-lint-schemas.py"), str(out)], check=True, timeout=300)
    return out


@pytest.fixture(scope="module")
def kubeconform() -> str:
    build_tools = REPO / "hack" / "build-tools.sh"
    path = subprocess.run([str(build_tools), "path", "kubeconform"], capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    if not os.access(path, os.X_OK):
        subprocess.run([str(build_tools), "kubeconform"], check=True, timeout=1800)
    return path


def conform(kubeconform: str, schemas: Path, tmp_path: Path, documents: list[dict]) -> subprocess.CompletedProcess[str]:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump_all(documents))
    return subprocess.run([kubeconform, "-strict", "-output", "json", "-schema-location", f"{schemas}/{SCHEMA_LOCATION}", str(manifest)],
                          capture_output=True, text=True, timeout=120)


def children_of(example: str) -> list[dict]:
    result = subprocess.run([str(REPO / ".venv" / "bin" / "python"), str(REPO / "hack" / "render-children.py"), str(REPO / "examples" / example)],
                            capture_output=True, text=True, check=True, timeout=60)
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_the_operators_children_conform(kubeconform: str, schemas: Path, tmp_path: Path) -> None:
    children = children_of("qwen3-8b-fp8-production.yaml")
    assert {c["kind"] for c in children} >= {"Deployment", "Service", "PersistentVolumeClaim", "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule", "NetworkPolicy"}
    result = conform(kubeconform, schemas, tmp_path, children)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("kind", "where"),
    [("Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0]), ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0])],
)
def test_strict_schemas_refuse_an_unknown_field(kubeconform: str, schemas: Path, tmp_path: Path, kind: str, where) -> None:
    children = children_of("qwen3-8b-fp8-production.yaml")
    (child,) = [c for c in children if c["kind"] == kind and not c["metadata"]["name"].endswith("-router")]  # the engine's
    where(child)["livenesProbe"] = {}  # a typo the API server would drop silently
    result = conform(kubeconform, schemas, tmp_path, [child])
    assert result.returncode != 0
    assert "livenesProbe" in json.dumps(json.loads(result.stdout))


def test_an_example_with_a_misspelt_field_is_refused(kubeconform: str, schemas: Path, tmp_path: Path) -> None:
    example = yaml.safe_load((REPO / "examples" / "qwen3-0.6b-fp8.yaml").read_text())
    assert conform(kubeconform, schemas, tmp_path, [example]).returncode == 0
    example["spec"]["scheduling"] = {"runtimeClass": "nvidia"}
    assert conform(kubeconform, schemas, tmp_path, [example]).returncode != 0


# ---- the whole of hack/lint.sh ------------------------------------------------------------------


def run_lint(tmp_path: Path, allowlist: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LINT_OUT": str(tmp_path / "out"), "LINT_ALLOWLIST": str(allowlist)}
    return subprocess.run([str(REPO / "hack" / "lint.sh")], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)


def test_make_lint_passes_and_fails_on_a_finding_the_allowlist_does_not_name(tmp_path: Path) -> None:
    result = run_lint(tmp_path, ALLOWLIST)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Invalid: 0, Errors: 0" in result.stdout and ", 0 new" in result.stdout
    # Every rendered file was checked: the chart's three renderings and one per example.
    rendered = sorted(p.name for p in (tmp_path / "out" / "rendered").iterdir())
    examples = sorted(f"children-{p.name}" for p in (REPO / "examples").glob("*.yaml"))
    assert rendered == sorted(["chart-all.yaml", "chart-default.yaml", "chart-namespaced.yaml", *examples])
    # Without one entry, its findings are new and make lint fails.
    entries = yaml.safe_load(ALLOWLIST.read_text())["kube-score"]
    reduced = tmp_path / "reduced.yaml"
    reduced.write_text(yaml.safe_dump({"kube-score": [e for e in entries if "ImagePullPolicy" not in e["message"]]}))
    result = run_lint(tmp_path, reduced)
    assert result.returncode == 1
    assert "NEW chart-default.yaml: [CRITICAL] qwen-operator/qwen-system apps/v1/Deployment: (operator) ImagePullPolicy is not set to Always" in result.stdout
