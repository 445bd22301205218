#!/usr/bin/env python3
"""Prints, as one YAML stream, every child the operator makes for a QwenInference file (the examples):
the same desired_children() the reconcile applies, with the Prometheus Operator present and operator-wide
monitoring labels set, so that `make lint` (hack/lint.sh) checks what reaches the cluster.

    hack/render-children.py examples/qwen3-0.6b-fp8.yaml > children.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from qwen_operator.api.models import QwenInference
from qwen_operator.builders.common import Owner
from qwen_operator.catalog import resolve_model
from qwen_operator.config import OperatorConfig
from qwen_operator.reconcile import Capabilities, desired_children

NAMESPACE = "team-a"
# As the chart would set them for a kube-prometheus-stack release named "monitoring".
CONFIG = OperatorConfig(monitoring_labels={"release": "monitoring"})


def children(path: Path) -> list[dict]:
    found = []
    for document in yaml.safe_load_all(path.read_text()):
        if not document or document.get("kind") != "QwenInference":
            continue
        resource = QwenInference.model_validate(document)
        name = resource.metadata["name"]
        owner = Owner(name=name, namespace=NAMESPACE, uid=f"00000000-0000-4000-8000-{len(found):012d}")
        model = resolve_model(resource.spec)
        found += desired_children(owner, resource.spec, model, CONFIG, Capabilities(prometheus_operator=True))
    return found


def main() -> int:
    docs = [child for path in sys.argv[1:] for child in children(Path(path))]
    yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
