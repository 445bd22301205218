"""Property test (issue 9): hundreds of random specs, valid and invalid, drawn from the CRD's own schema.

Each is sent to the real API server. Each must either be refused with a message, or end with a
status whose Ready condition names a reason; the operator logs no traceback, and no resource is left
without a status. The seed is printed, so a failure can be replayed (QWEN_RANDOM_SPECS_SEED).
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from conftest import REPO, wait_until
from qwen_resources import GROUP, PLURAL, VERSION, qwi

pytestmark = pytest.mark.cluster

COUNT = int(os.environ.get("QWEN_RANDOM_SPECS", "200"))
GOOD_STRINGS = ["Qwen/Qwen3-0.6B-FP8", "Qwen/Qwen3-1.7B", "main", "qwen3", "16Gi", "4", "500m", "15s", "team-a", "nvidia.com/gpu",
                "NVIDIA-L4", "--max-loras", "kubernetes.io/hostname", "In", "Exists", "zone", "a"]
BAD_STRINGS = ["", " ", "UPPER case", "../etc", "x" * 600, "--api_key=sk-random", "-tp", "1e9", "ü", "a.b.c/d/e"]


def spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "crds" / "inference.qwenops.io_qweninferences.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def draw(schema: dict[str, Any], rng: random.Random, depth: int = 0) -> Any:
    """A random value for schema: mostly plausible, sometimes out of range, mistyped or unknown."""
    if rng.random() < 0.008:
        return rng.choice([None, "oops", -1, 3.5, True, [], {}])  # a wrong type
    kind = schema.get("type")
    if "enum" in schema and rng.random() < 0.9:
        return rng.choice(schema["enum"])
    if kind == "object":
        properties = schema.get("properties")
        if properties is None:
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict):
                return {rng.choice(["a", "team", "node-role.qwenops.io/gpu"]): draw(extra, rng, depth + 1) for _ in range(rng.randint(0, 2))}
            return {}
        value = {}
        for name, child in properties.items():
            if depth < 6 and rng.random() < (0.2 if depth else 0.4):
                value[name] = draw(child, rng, depth + 1)
        if rng.random() < 0.01:
            value["unknownField"] = 1
        return value
    if kind == "array":
        return [draw(schema.get("items", {}), rng, depth + 1) for _ in range(rng.choice([0, 1, 1, 2, 3]))]
    if kind == "string":
        return rng.choice(GOOD_STRINGS) if rng.random() < 0.93 else rng.choice(BAD_STRINGS)
    if kind == "integer":
        low, high = schema.get("minimum", 0), schema.get("maximum", 64)
        return rng.randint(int(low), int(min(high, low + 64))) if rng.random() < 0.95 else rng.choice([int(low) - 1, int(high) + 1, 10**12])
    if kind == "number":
        return round(rng.uniform(0.0, 1.2), 2) if rng.random() < 0.9 else rng.choice([0, 1, -0.5, 99])
    if kind == "boolean":
        return rng.random() < 0.5
    return None


def test_random_specs_are_refused_with_a_message_or_get_a_ready_reason(operator, k8s, namespace):
    seed = int(os.environ.get("QWEN_RANDOM_SPECS_SEED", str(int(time.time()))))
    print(f"\nrandom specs: seed {seed}, count {COUNT}")
    rng = random.Random(seed)
    schema = spec_schema()
    custom = client.CustomObjectsApi(k8s)
    # No pod of this namespace may ask for a GPU: the random resources are judged all the same (their
    # Deployments report the quota's refusal), and the fake GPU pools stay free for the tests running
    # beside this one in other pytest-xdist workers.
    client.CoreV1Api(k8s).create_namespaced_resource_quota(namespace, client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="no-gpus"), spec=client.V1ResourceQuotaSpec(hard={"requests.nvidia.com/gpu": "0"})))
    admitted, refusals = [], []
    for i in range(COUNT):
        name = f"random-{i}"
        spec = draw(schema, rng)
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, qwi(name, spec), field_validation="Strict")
            admitted.append(name)
        except ApiException as error:
            assert error.status in (400, 422), (error.status, error.body, json.dumps(spec))
            message = json.loads(error.body).get("message", "")
            assert len(message) > 20, (message, json.dumps(spec))
            refusals.append(message)
    print(f"random specs: {len(admitted)} admitted, {len(refusals)} refused")
    assert admitted and refusals, "the generator should produce both kinds"

    def without_ready_reason() -> list[str]:
        missing = []
        for item in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]:
            ready = next((c for c in (item.get("status") or {}).get("conditions", []) if c["type"] == "Ready"), None)
            if ready is None or not ready.get("reason") or (ready["status"] != "True" and not ready.get("message")):
                missing.append(item["metadata"]["name"])
        return missing

    # Two resyncs and the time to reconcile every admitted resource once.
    wait_until(lambda: not without_ready_reason(), 2 * operator.resync_seconds + 0.5 * len(admitted) + 30,
               "every admitted resource to have a Ready condition with a reason")
    reasons: dict[str, int] = {}
    for item in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]:
        ready = next(c for c in item["status"]["conditions"] if c["type"] == "Ready")
        reasons[ready["reason"]] = reasons.get(ready["reason"], 0) + 1
    print(f"random specs: Ready reasons {dict(sorted(reasons.items()))}")
    assert "ReconcileError" not in reasons, "an admitted spec hit an operator error"
    assert "Traceback" not in operator.log_text()
