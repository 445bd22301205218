#!/usr/bin/env python3
"""Writes the JSON schemas kubeconform validates against, offline, into a folder:

- every kind in the pinned k8s.io/kubernetes module's own OpenAPI spec (api/openapi-spec/v3, in the Go module
  cache after `make tools`; hack/gen-k8s-schemas.py reads the same files);
- the QwenInference CRD (crds/) and the Prometheus Operator CRDs of the pinned prometheus-operator module
  (ServiceMonitor, PrometheusRule: the operator's children).

Strict, as kubeconform's -strict expects of its schemas: every object schema that lists its properties refuses
others (additionalProperties: false), unless it says x-kubernetes-preserve-unknown-fields. One file per kind and
version, named for the -schema-location template
    DIR/{{ .ResourceKind }}-{{ .Group }}-{{ .ResourceAPIVersion }}.json
(the core group's "Group" is its version: pod-v1-v1.json; apps: deployment-apps-v1.json).

    hack/gen-lint-schemas.py DIR
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
REF_PREFIX = "#/components/schemas/"


class CrdLoader(yaml.SafeLoader):
    """PyYAML reads a bare `=` (an enum value in the Prometheus Operator CRDs) as the YAML 1.1 value tag."""


CrdLoader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def pinned(name: str) -> str:
    for line in (REPO / "hack" / "versions.env").read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].strip()
    raise SystemExit(f"{name} not found in hack/versions.env")


def module_dir(module: str, version: str) -> Path:
    """The module's source in the Go module cache, downloaded from the module proxy if it is not there yet."""
    download = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"], capture_output=True, text=True, timeout=1800)
    if download.returncode != 0:
        raise SystemExit(f"could not download {module}@{version} from the Go module proxy: {download.stdout.strip() or download.stderr.strip()}")
    return Path(json.loads(download.stdout)["Dir"])


def strict(node: Any) -> Any:
    """A copy of a schema with every object that lists its properties closed to others."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict(value) for key, value in node.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def file_name(group: str, version: str, kind: str) -> str:
    return f"{kind.lower()}-{group or version}-{version}.json"


def closure(name: str, schemas: dict[str, Any]) -> dict[str, Any]:
    """name and every schema it refers to, transitively (recursive types stay references)."""
    found: dict[str, Any] = {}
    pending = [name]
    while pending:
        current = pending.pop()
        if current in found:
            continue
        found[current] = schemas[current]
        text = json.dumps(schemas[current])
        for part in text.split(f'"$ref": "{REF_PREFIX}')[1:]:
            pending.append(part.split('"', 1)[0])
    return found


def kubernetes_schemas(module: Path) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for spec_file in sorted((module / "api" / "openapi-spec" / "v3").glob("*_openapi.json")):
        schemas.update(json.loads(spec_file.read_text()).get("components", {}).get("schemas", {}))
    files = {}
    for name, schema in schemas.items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            if name.endswith("List") and gvk["kind"].endswith("List"):
                continue
            definitions = closure(name, schemas)
            document = json.loads(json.dumps({**schemas[name], "definitions": definitions}).replace(REF_PREFIX, "#/definitions/"))
            files[file_name(gvk["group"], gvk["version"], gvk["kind"])] = strict(document)
    return files


def crd_schemas(paths: list[Path]) -> dict[str, Any]:
    files = {}
    for path in paths:
        for crd in yaml.load_all(path.read_text(), Loader=CrdLoader):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = dict(version["schema"]["openAPIV3Schema"])
                properties = dict(schema.get("properties", {}))
                # The API server adds these to every custom resource's schema.
                properties.setdefault("apiVersion", {"type": "string"})
                properties.setdefault("kind", {"type": "string"})
                properties["metadata"] = {"type": "object"}
                schema["properties"] = properties
                files[file_name(group, version["name"], kind)] = strict(schema)
    return files


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    kubernetes = module_dir("k8s.io/kubernetes", pinned("KUBERNETES_VERSION"))
    prometheus_operator = module_dir("github.com/prometheus-operator/prometheus-operator", pinned("PROMETHEUS_OPERATOR_VERSION"))
    files = kubernetes_schemas(kubernetes)
    crds = sorted((REPO / "crds").glob("*.yaml")) + sorted((prometheus_operator / "example" / "prometheus-operator-crd").glob("monitoring.coreos.com_*.yaml"))
    files.update(crd_schemas(crds))
    for name, schema in files.items():
        (out / name).write_text(json.dumps(schema))
    print(f"wrote {len(files)} schemas to {out} (k8s.io/kubernetes {kubernetes.name.split('@')[1]}, {len(crds)} CRD files)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
