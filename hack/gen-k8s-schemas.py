#!/usr/bin/env python3
"""Writes operator/qwen_operator/api/k8s_schemas.json: the OpenAPI schemas of the Kubernetes types a
QwenInference passes through to its pods (Affinity, Toleration, TopologySpreadConstraint), taken
from the pinned k8s.io/kubernetes module's own OpenAPI spec (api/openapi-spec/v3), with every $ref
inlined, so the CRD validates them at admission exactly as the Pod API types them.

    hack/gen-k8s-schemas.py            (re)write the file (downloads the module through the Go proxy)
    hack/gen-k8s-schemas.py --check    exit 1 when the checked-in file differs from the module's spec
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "operator" / "qwen_operator" / "api" / "k8s_schemas.json"
TYPES = {
    "Affinity": "io.k8s.api.core.v1.Affinity",
    "Toleration": "io.k8s.api.core.v1.Toleration",
    "TopologySpreadConstraint": "io.k8s.api.core.v1.TopologySpreadConstraint",
}
# Kept from the upstream schema; defaults are dropped (the API server would fill them into the
# QwenInference, and the Pod API defaults them anyway), and descriptions shortened to their first sentence.
KEPT_KEYS = {"type", "format", "properties", "items", "required", "additionalProperties", "enum", "description", "x-kubernetes-list-type"}


def kubernetes_version() -> str:
    for line in (REPO / "hack" / "versions.env").read_text().splitlines():
        if line.startswith("KUBERNETES_VERSION="):
            return line.split("=", 1)[1].strip()
    raise SystemExit("KUBERNETES_VERSION not found in hack/versions.env")


def module_dir(version: str, download: bool) -> Path | None:
    env_cache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True).stdout.strip()
    path = Path(env_cache) / "k8s.io" / f"kubernetes@{version}"
    if not path.exists() and download:
        subprocess.run(["go", "mod", "download", f"k8s.io/kubernetes@{version}"], check=True, env={**__import__("os").environ, "GOFLAGS": "-mod=mod"})
    return path if path.exists() else None


def first_sentence(text: str) -> str:
    text = " ".join(text.split())
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def inline(node: object, schemas: dict, seen: tuple[str, ...] = ()) -> object:
    if isinstance(node, list):
        return [inline(item, schemas, seen) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**node.pop("allOf")[0], **node}
    if "$ref" in node:
        name = node.pop("$ref").rsplit("/", 1)[-1]
        if name in seen:
            raise ValueError(f"recursive schema {name}")
        return inline({**schemas[name], **{k: v for k, v in node.items() if k == "description"}}, schemas, seen + (name,))
    out = {}
    for key, value in node.items():
        if key not in KEPT_KEYS:
            continue
        if key == "properties":
            out[key] = {prop: inline(schema, schemas, seen) for prop, schema in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = inline(value, schemas, seen)
        elif key == "description":
            out[key] = first_sentence(value)
        else:
            out[key] = value
    return out


def build(module: Path) -> dict:
    spec = json.loads((module / "api" / "openapi-spec" / "v3" / "api__v1_openapi.json").read_text())
    schemas = spec["components"]["schemas"]
    return {
        "source": f"k8s.io/kubernetes@{module.name.split('@')[1]} api/openapi-spec/v3/api__v1_openapi.json",
        "schemas": {short: inline({"$ref": f"#/components/schemas/{full}"}, schemas) for short, full in TYPES.items()},
    }


def render(data: dict) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def main() -> int:
    check = "--check" in sys.argv
    module = module_dir(kubernetes_version(), download=not check)
    if module is None:
        print("k8s.io/kubernetes module not in the Go module cache; run hack/build-tools.sh kubernetes", file=sys.stderr)
        return 2
    text = render(build(module))
    if check:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT} differs from {module}'s OpenAPI spec: run hack/gen-k8s-schemas.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
