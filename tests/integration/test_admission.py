"""The real API server refuses bad QwenInference specs at admission, with words a person understands.

Installs crds/ into the local control plane, then sends each spec with a server-side dry run
(nothing is stored) and checks the status code and the message. Update rules (immutability) are
checked against objects that really exist.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from conftest import install_crds, wait_until
from qwen_operator.api.crd import CRD_NAME
from qwen_operator.api.models import API_VERSION, GROUP, KIND, PLURAL, VERSION, QwenInferenceSpec

pytestmark = pytest.mark.cluster

UNPROCESSABLE = 422  # schema and CEL violations
BAD_REQUEST = 400  # strict field validation (unknown fields) fails while decoding, before validation


@pytest.fixture(scope="module")
def crd_installed(cluster) -> None:
    install_crds(cluster)  # waits by polling: `kubectl wait` fails at once on a CRD that has no conditions yet


@pytest.fixture(scope="module")
def ns(k8s, crd_installed) -> str:
    core = client.CoreV1Api(k8s)
    name = f"admission-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"qwen-tests": "true"})))
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="module")
def custom(k8s) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(k8s)


def qwen(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": spec}


def dry_run_create(custom: client.CustomObjectsApi, ns: str, body: dict[str, Any]) -> dict[str, Any]:
    return custom.create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, body, dry_run="All", field_validation="Strict", field_manager="qwen-tests"
    )


def refusal(call) -> tuple[int, str]:
    with pytest.raises(ApiException) as caught:
        call()
    return caught.value.status, json.loads(caught.value.body)["message"]


INVALID_SPECS = [
    pytest.param(
        {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
        UNPROCESSABLE, "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas",
        id="min-above-max-replicas",
    ),
    pytest.param(
        {"engine": {"tensorParallelSize": 3}, "resources": {"gpu": {"count": 4}}},
        UNPROCESSABLE, "engine.tensorParallelSize must be a power of two", id="tensor-parallel-not-power-of-two",
    ),
    pytest.param(
        {"engine": {"tensorParallelSize": 4}, "resources": {"gpu": {"count": 2}}},
        UNPROCESSABLE, "resources.gpu.count must be at least engine.tensorParallelSize", id="fewer-gpus-than-tensor-parallel",
    ),
    pytest.param(
        {"engine": {"extraArgs": ["--api-key", "sk-123"]}},
        UNPROCESSABLE, "engine.extraArgs may not set --api-key: a spec field or the operator owns it", id="extra-args-api-key",
    ),
    pytest.param(
        {"engine": {"extraArgs": ["--revision=v2"]}},
        UNPROCESSABLE, "engine.extraArgs may not set --revision: a spec field or the operator owns it", id="extra-args-revision",
    ),
    pytest.param(
        {"engine": {"extraArgs": ["--enable-prefix-caching", "--port=9000"]}},
        UNPROCESSABLE, "engine.extraArgs may not set --port: a spec field or the operator owns it", id="extra-args-port-with-equals",
    ),
    pytest.param(
        {"engine": {"extraArgs": ["--enable-reasoning"]}},
        UNPROCESSABLE, "--enable-reasoning is not a flag of vllm serve v0.19.1", id="extra-args-removed-flag",
    ),
    pytest.param(
        {"engine": {"extraArgs": [f"--flag-{i}" for i in range(65)]}},
        UNPROCESSABLE, "must have at most 64 items", id="extra-args-too-many",
    ),
    pytest.param(
        {"engine": {"env": [{"name": "VLLM_API_KEY", "value": "sk-123"}]}},
        UNPROCESSABLE, "engine.env may not set VLLM_API_KEY or HF_TOKEN", id="env-vllm-api-key",
    ),
    pytest.param(
        {"engine": {"env": [{"name": "HF_TOKEN", "value": "hf_abc"}]}},
        UNPROCESSABLE, "engine.env may not set VLLM_API_KEY or HF_TOKEN", id="env-hf-token",
    ),
    pytest.param(
        {"engine": {"env": [{"name": "1BAD", "value": "x"}]}},
        UNPROCESSABLE, "spec.engine.env[0].name in body should match", id="env-name-pattern",
    ),
    pytest.param({"replicaz": 2}, BAD_REQUEST, 'unknown field "spec.replicaz"', id="unknown-field"),
    pytest.param(
        {"model": {"source": {"cache": {"storageClass": "fast"}}}},
        BAD_REQUEST, 'unknown field "spec.model.source.cache.storageClass"', id="unknown-nested-field",
    ),
    pytest.param(
        {"model": {"quantization": "int4"}}, UNPROCESSABLE, 'Unsupported value: "int4"', id="quantization-enum",
    ),
    pytest.param(
        {"engine": {"kvCacheDtype": "bf16"}}, UNPROCESSABLE, 'Unsupported value: "bf16"', id="kv-cache-dtype-enum",
    ),
    pytest.param(
        {"model": {"name": "Qwen3 0.6B"}}, UNPROCESSABLE, "spec.model.name in body should match", id="model-name-pattern",
    ),
    pytest.param(
        {"model": {"servedName": "Qwen3-Chat"}}, UNPROCESSABLE, "spec.model.servedName in body should match",
        id="served-name-pattern",
    ),
    pytest.param(
        {"model": {"source": {"cache": {"size": "20 gigs"}}}}, UNPROCESSABLE,
        "spec.model.source.cache.size in body should match", id="cache-size-quantity",
    ),
    pytest.param(
        {"monitoring": {"interval": "15"}}, UNPROCESSABLE, "spec.monitoring.interval in body should match",
        id="interval-duration",
    ),
    pytest.param(
        {"replicas": -1}, UNPROCESSABLE, "spec.replicas in body should be greater than or equal to 0", id="negative-replicas",
    ),
    pytest.param(
        {"replicas": "two"}, UNPROCESSABLE, "spec.replicas in body must be of type integer", id="replicas-wrong-type",
    ),
    pytest.param(
        {"engine": {"gpuMemoryUtilization": 1.5}}, UNPROCESSABLE,
        "spec.engine.gpuMemoryUtilization must be at least 0.1 and at most 0.99", id="gpu-memory-above-max",
    ),
    pytest.param(
        {"model": {"maxModelLen": 100}}, UNPROCESSABLE, "spec.model.maxModelLen in body should be greater than or equal to 256",
        id="max-model-len-too-small",
    ),
    pytest.param(
        {"monitoring": {"alerts": {"errorRatio": 0}}}, UNPROCESSABLE,
        "spec.monitoring.alerts.errorRatio in body should be greater than 0", id="error-ratio-exclusive-minimum",
    ),
    pytest.param(
        {"model": {"source": {"cache": {"enabled": False, "existingClaim": "shared-cache"}}}}, UNPROCESSABLE,
        "source.cache.existingClaim needs source.cache.enabled: true", id="existing-claim-without-cache",
    ),
    pytest.param(
        {"model": {"source": {"pvc": {"claimName": "models"}, "tokenSecretRef": {"name": "hf", "key": "token"}}}},
        UNPROCESSABLE, "model.source.pvc loads from a volume, so model.source.tokenSecretRef has no use with it",
        id="pvc-with-token",
    ),
    pytest.param(
        {"model": {"source": {"pvc": {"claimName": "models", "path": "qwen/../../etc"}}}}, UNPROCESSABLE,
        "source.pvc.path may not contain '..'", id="pvc-path-dotdot",
    ),
    pytest.param(
        {"auth": {"apiKeySecretRef": {"name": "qwen-keys"}}}, UNPROCESSABLE, "spec.auth.apiKeySecretRef.key: Required value",
        id="secret-ref-without-key",
    ),
    pytest.param(
        {"auth": {"apiKeySecretRef": {"name": "Qwen_Keys", "key": "api-key"}}}, UNPROCESSABLE,
        "spec.auth.apiKeySecretRef.name in body should match", id="secret-name-not-dns",
    ),
    pytest.param(
        {"scheduling": {"tolerations": [{"key": "gpu", "effect": "NoRun"}]}}, UNPROCESSABLE, 'Unsupported value: "NoRun"',
        id="toleration-effect-enum",
    ),
]


@pytest.mark.parametrize(("spec", "status", "message"), INVALID_SPECS)
def test_invalid_spec_is_refused(custom, ns: str, spec: dict[str, Any], status: int, message: str) -> None:
    code, text = refusal(lambda: dry_run_create(custom, ns, qwen("bad", spec)))
    assert code == status, text
    assert message in text


def test_minimal_spec_is_accepted_and_fully_defaulted(custom, ns: str) -> None:
    created = dry_run_create(custom, ns, qwen("minimal", {}))
    spec = created["spec"]
    assert spec["model"]["name"] == "Qwen/Qwen3-0.6B-FP8"
    assert spec["engine"]["gpuMemoryUtilization"] == 0.9
    # No access mode: the operator picks ReadWriteOnce for one replica, ReadWriteMany for more.
    assert spec["model"]["source"]["cache"] == {"enabled": True, "size": "20Gi"}
    # The API server's defaults are exactly the models' defaults: the CRD and the operator agree.
    assert spec == QwenInferenceSpec().model_dump(by_alias=True, exclude_none=True)


def test_missing_spec_is_defaulted_too(custom, ns: str) -> None:
    body = qwen("no-spec", {})
    del body["spec"]
    assert dry_run_create(custom, ns, body)["spec"]["replicas"] == 1


AFFINITY = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
    {"weight": 5, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}}]}}


def test_a_full_valid_spec_is_accepted(custom, ns: str) -> None:
    spec = {
        "model": {
            "name": "Qwen/Qwen3-8B-FP8",
            "servedName": "qwen3-8b",
            "maxModelLen": 32768,
            "thinking": {"reasoningParser": "qwen3", "enabledByDefault": False},
            "toolCalling": {"enabled": True, "parser": "hermes"},
            "source": {"tokenSecretRef": {"name": "hf-token", "key": "token"}, "cache": {"storageClassName": "fast", "size": "50Gi"}},
        },
        "engine": {"tensorParallelSize": 2, "extraArgs": ["--enable-prefix-caching", "--max-loras=1"],
                   "env": [{"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}]},
        "resources": {"gpu": {"count": 2, "products": ["NVIDIA-L4"]}, "cpu": "8", "memory": "32Gi"},
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 2},
        "auth": {"apiKeySecretRef": {"name": "qwen-keys", "key": "api-key"}},
        "networkPolicy": {"enabled": True, "allowFrom": [{"namespaceSelector": {"team": "a"}}]},
        "scheduling": {"affinity": AFFINITY,
                       "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    }
    created = dry_run_create(custom, ns, qwen("full", spec))
    assert created["spec"]["scheduling"]["affinity"] == AFFINITY  # passed through as written
    QwenInferenceSpec.model_validate(created["spec"])  # what the API server stores, the operator can parse


# --- updates: the model cache PVC cannot change class or access mode ----------------------------

BASE_WITH_CLASS = {"model": {"source": {"cache": {"storageClassName": "fast", "accessMode": "ReadWriteOnce"}}}}


@pytest.fixture(scope="module")
def stored(custom, ns: str) -> list[str]:
    """Two real objects: one with a storageClassName, one without."""
    for name, spec in [("with-class", BASE_WITH_CLASS), ("without-class", {})]:
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, qwen(name, spec), field_manager="qwen-tests")
    return ["with-class", "without-class"]


def current(custom, ns: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)


def cache_of(body: dict[str, Any]) -> dict[str, Any]:
    return body["spec"]["model"]["source"]["cache"]


def change_class(body):
    cache_of(body)["storageClassName"] = "slow"


def remove_class(body):
    del cache_of(body)["storageClassName"]


def add_class(body):
    cache_of(body)["storageClassName"] = "fast"


def change_access_mode(body):
    cache_of(body)["accessMode"] = "ReadWriteMany"


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        pytest.param("with-class", change_class, "source.cache.storageClassName is immutable", id="change-storage-class"),
        pytest.param("with-class", remove_class, "source.cache.storageClassName is immutable", id="remove-storage-class"),
        pytest.param("without-class", add_class, "source.cache.storageClassName is immutable", id="add-storage-class"),
        pytest.param("with-class", change_access_mode, "source.cache.accessMode is immutable", id="change-access-mode"),
    ],
)
def test_immutable_cache_fields_are_refused_on_update(custom, ns: str, stored, name: str, edit, message: str) -> None:
    body = current(custom, ns, name)
    edit(body)
    code, text = refusal(
        lambda: custom.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, body, dry_run="All", field_validation="Strict")
    )
    assert code == UNPROCESSABLE, text
    assert message in text
    assert f"spec.model.source.cache.{'accessMode' if 'access' in message else 'storageClassName'}" in text


@pytest.mark.parametrize("name", ["with-class", "without-class"])
def test_other_updates_pass_the_immutability_rules(custom, ns: str, stored, name: str) -> None:
    body = current(custom, ns, name)
    body["spec"]["replicas"] = 3
    cache_of(body)["size"] = "40Gi"
    updated = custom.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, body, dry_run="All", field_validation="Strict")
    assert updated["spec"]["replicas"] == 3


# --- the API surface the CRD promises ------------------------------------------------------------


def test_kubectl_get_prints_the_columns_and_scale_works(cluster, ns: str, stored) -> None:
    header = cluster.kubectl("get", "qwi", "-n", ns).stdout.splitlines()[0].split()
    assert header == ["NAME", "MODEL", "READY", "STATUS", "ENDPOINT", "AGE"]
    assert "with-class" in cluster.kubectl("get", "qwen", "-n", ns, "-o", "name").stdout
    cluster.kubectl("scale", "qwi", "without-class", "-n", ns, "--replicas=4")
    wait_until(
        lambda: cluster.kubectl("get", "qwi", "without-class", "-n", ns, "-o", "jsonpath={.spec.replicas}").stdout == "4",
        30, "the scale subresource to set spec.replicas",
    )
