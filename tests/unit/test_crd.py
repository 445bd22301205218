"""The QwenInference CRD: generated from the pydantic models, checked in, structural."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from qwen_operator.api.crd import CRD_FILE_NAME, build_crd, chart_crd_yaml, crd_yaml, model_schema, to_structural
from qwen_operator.api.models import QwenInferenceSpec

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / CRD_FILE_NAME
CHART_CRD_PATH = REPO / "charts" / "qwen-operator" / "templates" / "crds" / CRD_FILE_NAME


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return build_crd()


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    (only,) = crd["spec"]["versions"]
    return only


@pytest.fixture(scope="module")
def spec_schema(version: dict[str, Any]) -> dict[str, Any]:
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]


def schema_nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node under node (itself included), with a readable path."""
    yield path or ".", node
    for name, child in node.get("properties", {}).items():
        yield from schema_nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from schema_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from schema_nodes(node["additionalProperties"], f"{path}{{}}")


def node_at(schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    for name in dotted.split("."):
        schema = schema["properties"][name]
    return schema


def spec_models(model: type[BaseModel] = QwenInferenceSpec, seen: set | None = None) -> Iterator[type[BaseModel]]:
    """QwenInferenceSpec and every model reachable from its fields."""
    seen = set() if seen is None else seen
    if model in seen:
        return
    seen.add(model)
    yield model
    for field in model.model_fields.values():
        for candidate in _types_in(field.annotation):
            yield from spec_models(candidate, seen)


def _types_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in getattr(annotation, "__args__", ()):
        yield from _types_in(arg)


# --- generated files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "render"),
    [(CRD_PATH, crd_yaml), (CHART_CRD_PATH, chart_crd_yaml)],
    ids=["crds", "chart"],
)
def test_checked_in_file_matches_the_models(path: Path, render, crd: dict[str, Any]) -> None:
    assert path.exists(), f"{path.relative_to(REPO)} is missing: run make crds"
    assert path.read_text() == render(crd), f"{path.relative_to(REPO)} drifted from api/models.py: run make crds"


def test_checked_in_crd_parses_back_to_the_built_crd(crd: dict[str, Any]) -> None:
    assert yaml.safe_load(CRD_PATH.read_text()) == crd


def test_gen_crd_check_passes_on_the_checked_in_files() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "hack" / "gen-crd.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"hack/gen-crd.py --check failed (run make crds):\n{result.stdout}{result.stderr}"


def test_chart_template_is_gated_and_keeps_the_crd_when_asked(crd: dict[str, Any]) -> None:
    text = chart_crd_yaml(crd)
    lines = text.splitlines()
    assert lines[0] == "{{- if .Values.crds.enabled }}"
    assert lines[-1] == "{{- end }}"
    assert "  {{- if .Values.crds.keep }}\n  annotations:\n    helm.sh/resource-policy: keep\n  {{- end }}\n" in text
    # Outside the template actions the body is the same CRD as crds/.
    plain = "\n".join(line for line in lines if "{{" not in line and "helm.sh/resource-policy" not in line and "annotations:" not in line)
    rendered = yaml.safe_load(plain)
    assert rendered["spec"] == crd["spec"]
    assert rendered["metadata"]["name"] == crd["metadata"]["name"]


# --- schema shape ----------------------------------------------------------------------------


def test_schema_is_structural(version: dict[str, Any]) -> None:
    root = version["schema"]["openAPIV3Schema"]
    untyped = [path for path, node in schema_nodes(root) if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields")]
    assert untyped == [], f"schema nodes without a type: {untyped}"
    forbidden = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "nullable"}
    leftovers = [(path, sorted(forbidden & node.keys())) for path, node in schema_nodes(root) if forbidden & node.keys()]
    assert leftovers == [], f"JSON Schema leftovers the API server would refuse or misread: {leftovers}"
    bool_additional = [path for path, node in schema_nodes(root) if isinstance(node.get("additionalProperties"), bool)]
    assert bool_additional == [], f"boolean additionalProperties (not structural): {bool_additional}"
    assert [p for p, n in schema_nodes(root) if "properties" in n and "additionalProperties" in n] == []


def test_every_spec_field_has_a_description(spec_schema: dict[str, Any]) -> None:
    missing = [
        f"{model.__name__}.{name}" for model in spec_models() for name, field in model.model_fields.items() if not field.description
    ]
    assert missing == [], f"spec fields without a description (kubectl explain shows nothing): {missing}"
    undocumented = [path for path, node in schema_nodes(spec_schema) if not node.get("description") and path.split(".")[-1] and not path.endswith(("[]", "}"))]
    assert undocumented == [], f"spec schema properties without a description: {undocumented}"


def test_optional_fields_are_plain_and_unset(spec_schema: dict[str, Any]) -> None:
    image = node_at(spec_schema, "engine.image")
    assert image == {"type": "string", "minLength": 1, "maxLength": 512, "pattern": r"^[^\s]+$", "description": image["description"]}
    assert "default" not in node_at(spec_schema, "model.maxModelLen")
    # Pass-through pod fields carry Kubernetes' own schema (hack/gen-k8s-schemas.py), not "anything".
    affinity = node_at(spec_schema, "scheduling.affinity")
    assert "x-kubernetes-preserve-unknown-fields" not in affinity
    assert set(affinity["properties"]) == {"nodeAffinity", "podAffinity", "podAntiAffinity"}
    spread = node_at(spec_schema, "scheduling.topologySpreadConstraints")["items"]
    assert set(spread["required"]) == {"maxSkew", "topologyKey", "whenUnsatisfiable"}
    assert node_at(spec_schema, "networkPolicy")["properties"]["allowFrom"]["items"]["properties"]["podSelector"]["additionalProperties"] == {
        "type": "string"
    }


@pytest.mark.parametrize(
    ("dotted", "default"),
    [
        ("model", {}),
        ("model.source", {}),
        ("model.source.cache", {}),
        ("engine", {}),
        ("resources.gpu", {}),
        ("monitoring.alerts", {}),
        ("engine.extraArgs", []),
        ("scheduling.nodeSelector", {}),
        ("model.name", "Qwen/Qwen3-0.6B-FP8"),
        ("engine.gpuMemoryUtilization", 0.9),
        ("replicas", 1),
    ],
)
def test_defaults(spec_schema: dict[str, Any], dotted: str, default: Any) -> None:
    assert node_at(spec_schema, dotted)["default"] == default


@pytest.mark.parametrize("dotted", ["model.source.pvc", "model.source.tokenSecretRef", "auth.apiKeySecretRef"])
def test_optional_objects_have_no_default(spec_schema: dict[str, Any], dotted: str) -> None:
    # default: {} here would create an object whose required fields are missing.
    assert "default" not in node_at(spec_schema, dotted)


def test_exclusive_minimum_becomes_openapi_v3_boolean(spec_schema: dict[str, Any]) -> None:
    error_ratio = node_at(spec_schema, "monitoring.alerts.errorRatio")
    assert (error_ratio["minimum"], error_ratio["exclusiveMinimum"], error_ratio["maximum"]) == (0, True, 1)


def test_cel_rules_come_through(spec_schema: dict[str, Any]) -> None:
    messages = [rule["message"] for _, node in schema_nodes(spec_schema) for rule in node.get("x-kubernetes-validations", [])]
    assert any("minReplicas must be less than or equal" in m for m in messages)
    assert any("tensorParallelSize must be a power of two" in m for m in messages)
    assert any("--api-key" in m for m in messages)


@pytest.mark.parametrize("field", ["storageClassName", "accessMode"])
def test_cache_immutability_is_checked_on_the_parent(spec_schema: dict[str, Any], field: str) -> None:
    cache = node_at(spec_schema, "model.source.cache")
    assert "x-kubernetes-validations" not in cache["properties"][field]
    (rule,) = [r for r in cache["x-kubernetes-validations"] if r.get("fieldPath") == f".{field}"]
    assert f"has(self.{field}) == has(oldSelf.{field})" in rule["rule"]
    assert f"source.cache.{field} is immutable" in rule["message"]


def test_status_conditions_are_a_map_keyed_by_type(version: dict[str, Any]) -> None:
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]
    assert conditions["items"]["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert {"replicas", "readyReplicas", "selector", "endpoint", "ready", "observedGeneration"} <= status["properties"].keys()


# --- API surface -----------------------------------------------------------------------------


def test_names_and_version(crd: dict[str, Any], version: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == "qweninferences.inference.qwenops.io"
    names = crd["spec"]["names"]
    assert names["shortNames"] == ["qwi", "qwen"]
    assert names["categories"] == ["all", "qwen"]
    assert crd["spec"]["scope"] == "Namespaced"
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)


def test_subresources(version: dict[str, Any]) -> None:
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }


def test_printer_columns(version: dict[str, Any]) -> None:
    columns = [(c["name"].upper(), c["jsonPath"]) for c in version["additionalPrinterColumns"]]
    assert columns == [
        ("MODEL", ".spec.model.name"),
        ("READY", ".status.ready"),
        ("STATUS", '.status.conditions[?(@.type=="Ready")].reason'),
        ("ENDPOINT", ".status.endpoint"),
        ("AGE", ".metadata.creationTimestamp"),
    ]


# --- the converter on its own ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("json_schema", "structural"),
    [
        ({"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}], "default": None, "title": "X"}, {"type": "integer", "minimum": 1}),
        ({"$ref": "#/$defs/A", "description": "field text"}, {"type": "object", "description": "field text", "properties": {"a": {"type": "string"}}}),
        ({"type": "object", "additionalProperties": True}, {"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
        ({"type": "object", "additionalProperties": False, "properties": {}}, {"type": "object", "properties": {}}),
        ({"type": "number", "exclusiveMinimum": 0}, {"type": "number", "minimum": 0, "exclusiveMinimum": True}),
        ({"type": "array", "items": {"$ref": "#/$defs/A"}}, {"type": "array", "items": {"type": "object", "description": "model text", "properties": {"a": {"type": "string"}}}}),
    ],
)
def test_to_structural(json_schema: dict[str, Any], structural: dict[str, Any]) -> None:
    defs = {"A": {"type": "object", "title": "A", "description": "model text", "properties": {"a": {"type": "string", "title": "A"}}}}
    assert to_structural(json_schema, defs) == structural


def test_to_structural_refuses_real_unions() -> None:
    with pytest.raises(ValueError, match="Optional"):
        to_structural({"anyOf": [{"type": "string"}, {"type": "integer"}]}, {})


def test_model_schema_has_no_shared_nodes() -> None:
    # Shared dicts would come out of yaml.safe_dump as &anchors / *aliases.
    schema = model_schema(QwenInferenceSpec)
    ids: dict[int, str] = {}
    shared = []
    for path, node in schema_nodes(schema):
        for key, value in node.items():
            if isinstance(value, dict | list) and key not in ("properties",):
                if id(value) in ids:
                    shared.append((ids[id(value)], f"{path}:{key}"))
                ids[id(value)] = f"{path}:{key}"
    assert shared == []


@pytest.fixture(scope="module")
def helm() -> str:
    """The pinned helm binary (hack/build-tools.sh builds it once, then finds it in the cache)."""
    subprocess.run([str(REPO / "hack" / "build-tools.sh"), "helm"], check=True, timeout=900)
    return subprocess.run(
        [str(REPO / "hack" / "build-tools.sh"), "path", "helm"], check=True, capture_output=True, text=True, timeout=60
    ).stdout.strip()


@pytest.mark.parametrize(
    ("enabled", "keep"),
    [(True, True), (True, False), (False, True)],
)
def test_helm_renders_the_chart_template(helm: str, tmp_path: Path, crd: dict[str, Any], enabled: bool, keep: bool) -> None:
    # A throwaway chart holding only the CRD template, so this checks our template and nothing else.
    chart = tmp_path / "chart"
    (chart / "templates" / "crds").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: crd-only\nversion: 0.0.0\n")
    (chart / "values.yaml").write_text(yaml.safe_dump({"crds": {"enabled": enabled, "keep": keep}}))
    (chart / "templates" / "crds" / CRD_FILE_NAME).write_text(CHART_CRD_PATH.read_text())
    result = subprocess.run(
        [helm, "template", "rel", str(chart)], capture_output=True, text=True, timeout=120, env={"HOME": str(tmp_path)}
    )
    assert result.returncode == 0, result.stderr
    documents = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    if not enabled:
        assert documents == []
        return
    (rendered,) = documents
    assert rendered["spec"] == crd["spec"]
    assert rendered["metadata"]["labels"]["app.kubernetes.io/instance"] == "rel"
    assert rendered["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == ("keep" if keep else None)
