"""Tables over build_deployment(): what each spec puts in (and keeps out of) the vLLM pods."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qwen_operator.api.models import API_VERSION, KIND, QwenInferenceSpec
from qwen_operator.builders.common import Owner, cache_claim_name, common_labels, selector_labels
from qwen_operator.builders.deployment import build_deployment, merge_node_affinity
from qwen_operator.catalog import resolve_model
from qwen_operator.config import DEFAULT_VLLM_IMAGE, OperatorConfig

OWNER = Owner(name="chat", namespace="team-a", uid="0b6d1f4e-uid", generation=3)
CONFIG = OperatorConfig()


def make_spec(**fields: Any) -> QwenInferenceSpec:
    return QwenInferenceSpec.model_validate(fields)


def build(spec: QwenInferenceSpec | None = None, *, manage_replicas: bool = True, config: OperatorConfig = CONFIG) -> dict[str, Any]:
    spec = spec or QwenInferenceSpec()
    return build_deployment(OWNER, spec, resolve_model(spec), config, manage_replicas=manage_replicas)


def pod(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def server(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod(deployment)["containers"] if c["name"] == "vllm"]
    return container


def init_containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    """The init containers that run to completion before vLLM (the deep health agent is a sidecar: restartPolicy Always)."""
    return [c for c in pod(deployment).get("initContainers", []) if c.get("restartPolicy") != "Always"]


def sidecars(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in pod(deployment).get("initContainers", []) if c.get("restartPolicy") == "Always"]


def args(deployment: dict[str, Any]) -> list[str]:
    return server(deployment)["args"]


def flag_value(arg_list: list[str], flag: str) -> str | None:
    """The value after flag, or None when the flag is absent."""
    return arg_list[arg_list.index(flag) + 1] if flag in arg_list else None


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# --- shape -----------------------------------------------------------------------------------


def test_identity_labels_and_owner() -> None:
    d = build()
    assert d["apiVersion"] == "apps/v1" and d["kind"] == "Deployment"
    assert d["metadata"]["name"] == "chat" and d["metadata"]["namespace"] == "team-a"
    assert d["metadata"]["labels"] == common_labels(OWNER)
    (ref,) = d["metadata"]["ownerReferences"]
    assert ref == {"apiVersion": API_VERSION, "kind": KIND, "name": "chat", "uid": OWNER.uid, "controller": True, "blockOwnerDeletion": True}
    assert d["spec"]["selector"] == {"matchLabels": selector_labels(OWNER)}
    template_labels = d["spec"]["template"]["metadata"]["labels"]
    assert template_labels.items() >= selector_labels(OWNER).items()
    assert template_labels == common_labels(OWNER)


def test_command_and_model_is_positional_first() -> None:
    c = server(build())
    assert c["command"] == ["vllm", "serve"]
    assert c["args"][0] == "Qwen/Qwen3-0.6B-FP8"
    assert c["image"] == DEFAULT_VLLM_IMAGE


@pytest.mark.parametrize(
    ("engine", "config_image", "expected"),
    [
        ({}, None, DEFAULT_VLLM_IMAGE),
        ({}, "registry.local/vllm:pinned", "registry.local/vllm:pinned"),
        ({"image": "mine/vllm:1"}, "registry.local/vllm:pinned", "mine/vllm:1"),
    ],
)
def test_image(engine: dict[str, Any], config_image: str | None, expected: str) -> None:
    config = OperatorConfig(default_vllm_image=config_image) if config_image else CONFIG
    d = build(make_spec(engine=engine), config=config)
    assert server(d)["image"] == expected
    assert all(c["image"] == expected for c in init_containers(d))


@pytest.mark.parametrize(
    ("spec_fields", "manage", "expected"),
    [
        ({"replicas": 3}, True, 3),
        ({"replicas": 0}, True, 0),
        ({"replicas": 3, "autoscaling": {"enabled": True}}, False, None),
        ({}, False, None),
    ],
)
def test_replicas_only_when_managed(spec_fields: dict[str, Any], manage: bool, expected: int | None) -> None:
    d = build(make_spec(**spec_fields), manage_replicas=manage)
    if expected is None:
        assert "replicas" not in d["spec"]
    else:
        assert d["spec"]["replicas"] == expected


def test_rolling_update_never_drops_below_desired() -> None:
    assert build()["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


# --- args ------------------------------------------------------------------------------------


def test_default_args_exactly() -> None:
    assert args(build()) == [
        "Qwen/Qwen3-0.6B-FP8",
        "--served-model-name", "qwen3-0.6b-fp8",
        "--host", "0.0.0.0",
        "--port", "8000",
        "--max-model-len", "32768",
        "--gpu-memory-utilization", "0.9",
        "--max-num-seqs", "256",
        "--tensor-parallel-size", "1",
        "--kv-cache-dtype", "auto",
        "--reasoning-parser", "qwen3",
        "--revision", "main",
        "--shutdown-timeout", "30",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("spec_fields", "flag", "value"),
    [
        ({"model": {"servedName": "chat"}}, "--served-model-name", "chat"),
        ({"model": {"name": "Qwen/Qwen3-8B", "maxModelLen": 16384}}, "--max-model-len", "16384"),
        ({"model": {"name": "Qwen/Qwen3-4B-Thinking-2507"}}, "--max-model-len", "262144"),
        ({"model": {"revision": "v1.0"}}, "--revision", "v1.0"),
        ({"engine": {"gpuMemoryUtilization": 0.85}}, "--gpu-memory-utilization", "0.85"),
        ({"engine": {"maxNumSeqs": 64}}, "--max-num-seqs", "64"),
        ({"engine": {"maxNumBatchedTokens": 8192}}, "--max-num-batched-tokens", "8192"),
        ({}, "--max-num-batched-tokens", None),
        ({"engine": {"tensorParallelSize": 2}, "resources": {"gpu": {"count": 2}}}, "--tensor-parallel-size", "2"),
        ({"engine": {"kvCacheDtype": "fp8"}}, "--kv-cache-dtype", "fp8"),
        ({"engine": {"shutdownTimeoutSeconds": 120}}, "--shutdown-timeout", "120"),
        ({"model": {"name": "Qwen/Qwen3-4B-Thinking-2507-FP8"}}, "--reasoning-parser", "deepseek_r1"),
        ({"model": {"thinking": {"reasoningParser": "deepseek_r1"}}}, "--reasoning-parser", "deepseek_r1"),
        ({"model": {"name": "Org/Other", "maxModelLen": 4096}}, "--reasoning-parser", None),
        ({"model": {"toolCalling": {"enabled": True}}}, "--tool-call-parser", "hermes"),
        ({"model": {"toolCalling": {"enabled": True, "parser": "qwen3_xml"}}}, "--tool-call-parser", "qwen3_xml"),
        ({"model": {"toolCalling": {"enabled": False}}}, "--tool-call-parser", None),
        ({"model": {"name": "Qwen/Qwen3-8B", "quantization": "fp8"}}, "--quantization", "fp8"),
        ({"model": {"name": "Qwen/Qwen3-8B-FP8", "quantization": "fp8"}}, "--quantization", None),
        ({"model": {"name": "Qwen/Qwen3-8B-FP8"}}, "--quantization", None),
        ({"model": {"name": "Org/X-AWQ", "maxModelLen": 4096, "quantization": "awq"}}, "--quantization", None),
    ],
)
def test_flag(spec_fields: dict[str, Any], flag: str, value: str | None) -> None:
    assert flag_value(args(build(make_spec(**spec_fields))), flag) == value


@pytest.mark.parametrize(
    ("spec_fields", "present"),
    [
        ({"model": {"toolCalling": {"enabled": True}}}, True),
        ({}, False),
    ],
)
def test_auto_tool_choice(spec_fields: dict[str, Any], present: bool) -> None:
    assert ("--enable-auto-tool-choice" in args(build(make_spec(**spec_fields)))) is present


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({}, None),
        ({"thinking": {"enabledByDefault": True}}, None),
        ({"thinking": {"enabledByDefault": False}}, {"enable_thinking": False}),
        ({"name": "Qwen/Qwen3-32B", "thinking": {"enabledByDefault": False}}, {"enable_thinking": False}),
        # Thinking-only models ignore enable_thinking: no flag that promises otherwise.
        ({"name": "Qwen/Qwen3-4B-Thinking-2507", "thinking": {"enabledByDefault": False}}, None),
    ],
)
def test_thinking_default(model: dict[str, Any], expected: dict[str, Any] | None) -> None:
    value = flag_value(args(build(make_spec(model=model))), "--default-chat-template-kwargs")
    assert (json.loads(value) if value is not None else None) == expected


def test_extra_args_come_last_in_order() -> None:
    extra = ["--enable-prefix-caching", "--uvicorn-log-level", "warning"]
    a = args(build(make_spec(engine={"extraArgs": extra})))
    assert a[-3:] == extra


@pytest.mark.parametrize(
    "spec_fields",
    [
        {},
        {"model": {"name": "Qwen/Qwen3-8B", "quantization": "fp8", "thinking": {"enabledByDefault": False}}},
        {"auth": {"apiKeySecretRef": {"name": "keys", "key": "api-key"}}, "model": {"toolCalling": {"enabled": True}}},
    ],
)
def test_never_removed_or_secret_flags(spec_fields: dict[str, Any]) -> None:
    a = args(build(make_spec(**spec_fields)))
    for forbidden in ("--disable-log-requests", "--enable-reasoning", "--api-key", "--download-dir"):
        assert not any(arg == forbidden or arg.startswith(forbidden + "=") for arg in a)


@pytest.mark.parametrize("name", ["Qwen/Qwen3-0.6B-FP8", "Qwen/Qwen3-1.7B-FP8", "Qwen/Qwen3-4B-FP8", "Qwen/Qwen3-8B-FP8", "Qwen/Qwen3-4B-Thinking-2507-FP8"])
@pytest.mark.parametrize("quantization", ["auto", "fp8"])
def test_fp8_checkpoints_never_get_quantization_flag(name: str, quantization: str) -> None:
    assert "--quantization" not in args(build(make_spec(model={"name": name, "quantization": quantization})))


# --- secrets ---------------------------------------------------------------------------------


def test_api_key_and_hf_token_only_as_secret_refs() -> None:
    spec = make_spec(
        auth={"apiKeySecretRef": {"name": "keys", "key": "api-key"}},
        model={"source": {"tokenSecretRef": {"name": "hf", "key": "token"}}},
    )
    d = build(spec)
    server_env = env_of(server(d))
    assert server_env["VLLM_API_KEY"] == {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "api-key"}}}
    assert "HF_TOKEN" not in server_env  # the server is offline; only the download needs the token
    (download,) = init_containers(d)
    assert env_of(download)["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    assert "VLLM_API_KEY" not in env_of(download)
    serialized = json.dumps(d)
    # Secret names appear only inside secretKeyRef; no env var carries a literal value for them.
    for container in [server(d), download]:
        for entry in container["env"]:
            if entry["name"] in ("VLLM_API_KEY", "HF_TOKEN"):
                assert "value" not in entry
        words = container.get("args", []) + container.get("command", [])
        assert not any(w.split("=")[0] in ("--api-key", "--token", "--hf-token") for w in words)
    # vLLM's key, the deep health agent's (the same Secret: its 1-token completion needs it) and the download's token.
    assert serialized.count("secretKeyRef") == 3


def test_no_secret_env_without_refs() -> None:
    d = build()
    assert "VLLM_API_KEY" not in env_of(server(d))
    assert "HF_TOKEN" not in env_of(init_containers(d)[0])


def test_server_env() -> None:
    env = env_of(server(build()))
    assert env["HF_HUB_OFFLINE"]["value"] == "1"
    assert env["VLLM_NO_USAGE_STATS"]["value"] == "1"
    assert env["DO_NOT_TRACK"]["value"] == "1"
    assert env["HF_HOME"]["value"] == "/model-cache"
    for name in ("HOME", "XDG_CACHE_HOME", "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR"):
        assert env[name]["value"].startswith("/scratch"), name


def test_user_env_is_added_and_may_override_without_duplicates() -> None:
    spec = make_spec(engine={"env": [{"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}, {"name": "DO_NOT_TRACK", "value": "0"}]})
    env_list = server(build(spec))["env"]
    names = [e["name"] for e in env_list]
    assert len(names) == len(set(names))
    env = env_of(server(build(spec)))
    assert env["VLLM_LOGGING_LEVEL"]["value"] == "DEBUG"
    assert env["DO_NOT_TRACK"]["value"] == "0"


# --- download and volumes --------------------------------------------------------------------


def test_download_init_container() -> None:
    d = build(make_spec(model={"name": "Qwen/Qwen3-8B", "revision": "abc"}))
    (download,) = init_containers(d)
    assert download["name"] == "download-model"
    assert download["command"] == ["hf", "download", "Qwen/Qwen3-8B", "--revision", "abc"]
    assert env_of(download)["HF_HOME"]["value"] == "/model-cache"
    assert "HF_HUB_OFFLINE" not in env_of(download)
    assert {"name": "model-cache", "mountPath": "/model-cache"} in download["volumeMounts"]
    assert "nvidia.com/gpu" not in download["resources"]["limits"]
    assert download["securityContext"] == server(d)["securityContext"]


@pytest.mark.parametrize(
    ("cache", "expected_volume"),
    [
        ({}, {"persistentVolumeClaim": {"claimName": cache_claim_name(OWNER)}}),
        ({"existingClaim": "shared-models"}, {"persistentVolumeClaim": {"claimName": "shared-models"}}),
        ({"enabled": False, "size": "30Gi"}, {"emptyDir": {"sizeLimit": "30Gi"}}),
    ],
)
def test_model_cache_volume(cache: dict[str, Any], expected_volume: dict[str, Any]) -> None:
    d = build(make_spec(model={"source": {"cache": cache}}))
    volumes = {v["name"]: v for v in pod(d)["volumes"]}
    assert volumes["model-cache"] == {"name": "model-cache", **expected_volume}
    assert {"name": "model-cache", "mountPath": "/model-cache"} in server(d)["volumeMounts"]
    assert len(init_containers(d)) == 1


@pytest.mark.parametrize(("path", "model_arg"), [("qwen3-8b", "/models/qwen3-8b"), ("", "/models"), ("a/b", "/models/a/b")])
def test_preloaded_model_from_pvc(path: str, model_arg: str) -> None:
    d = build(make_spec(model={"name": "Qwen/Qwen3-8B", "source": {"pvc": {"claimName": "weights", "path": path}}}))
    a = args(d)
    assert a[0] == model_arg
    assert "--revision" not in a
    assert flag_value(a, "--served-model-name") == "qwen3-8b"
    assert init_containers(d) == []
    volumes = {v["name"]: v for v in pod(d)["volumes"]}
    assert volumes["model-source"]["persistentVolumeClaim"] == {"claimName": "weights", "readOnly": True}
    assert "model-cache" not in volumes
    assert "/model-cache" not in [m["mountPath"] for m in server(d)["volumeMounts"]]
    assert {"name": "model-source", "mountPath": "/models", "readOnly": True} in server(d)["volumeMounts"]


def test_model_baked_into_the_image() -> None:
    d = build(make_spec(model={"name": "Qwen/Qwen3-0.6B-FP8", "source": {"bakedIntoImage": True}}))
    assert init_containers(d) == []
    assert args(d)[0] == "Qwen/Qwen3-0.6B-FP8"
    env = env_of(server(d))
    assert "HF_HOME" not in env  # the image's own HF_HOME holds the model
    assert env["HF_HUB_OFFLINE"]["value"] == "1"
    assert "model-cache" not in {v["name"] for v in pod(d)["volumes"]}
    assert "/model-cache" not in [m["mountPath"] for m in server(d)["volumeMounts"]]



def test_writable_dirs_and_shared_memory() -> None:
    d = build()
    volumes = {v["name"]: v for v in pod(d)["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in server(d)["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory"}
    # Size limits: the kubelet evicts a pod that outgrows them instead of letting it fill the node's disk.
    assert volumes[mounts["/tmp"]]["emptyDir"] == {"sizeLimit": "1Gi"}
    assert volumes[mounts["/scratch"]]["emptyDir"] == {"sizeLimit": "8Gi"}


@pytest.mark.parametrize(
    ("source", "model", "cache_volume", "ephemeral"),
    [
        # Cache on: the pod writes only scratch (8) + tmp (1) + logs (1).
        ({}, "Qwen/Qwen3-0.6B-FP8", None, "10Gi"),
        # Cache off: the download goes into the pod; cache.size covers a small model...
        ({"cache": {"enabled": False}}, "Qwen/Qwen3-0.6B-FP8", "20Gi", "30Gi"),
        # ...and the catalog's weights (61 GiB, +10% for the download's temporary files) raise it for a large one.
        ({"cache": {"enabled": False}}, "Qwen/Qwen3-32B", "68Gi", "78Gi"),
        ({"cache": {"enabled": False, "size": "100Gi"}}, "Qwen/Qwen3-32B", "100Gi", "110Gi"),
        ({"bakedIntoImage": True}, "Qwen/Qwen3-0.6B-FP8", None, "10Gi"),
    ],
)
def test_ephemeral_storage_covers_the_emptydirs_and_the_model(source: dict[str, Any], model: str, cache_volume: str | None, ephemeral: str) -> None:
    d = build(make_spec(model={"name": model, "source": source}, engine={"tensorParallelSize": 2} if "32B" in model else {},
                        resources={"gpu": {"count": 2}} if "32B" in model else {}))
    volumes = {v["name"]: v for v in pod(d)["volumes"]}
    if cache_volume is not None:
        assert volumes["model-cache"]["emptyDir"] == {"sizeLimit": cache_volume}
    for container in [server(d)] + init_containers(d):  # the deep health agent writes only its log
        assert container["resources"]["requests"]["ephemeral-storage"] == ephemeral
        assert container["resources"]["limits"]["ephemeral-storage"] == ephemeral


# --- probes, drain, resources ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec_fields", "threshold"),
    [
        ({}, 30),  # 0.6B-FP8: catalog budget 300s
        ({"model": {"name": "Qwen/Qwen3-32B"}}, 180),  # 1800s
        ({"engine": {"startupTimeoutSeconds": 95}}, 10),  # rounded up
        ({"engine": {"startupTimeoutSeconds": 3600}}, 360),
        ({"model": {"name": "Org/Other", "maxModelLen": 4096}}, 120),  # unknown model: 1200s
    ],
)
def test_startup_probe_threshold_from_budget(spec_fields: dict[str, Any], threshold: int) -> None:
    probe = server(build(make_spec(**spec_fields)))["startupProbe"]
    assert probe["failureThreshold"] == threshold
    assert probe["periodSeconds"] == 10
    assert probe["timeoutSeconds"] >= 5


def without_deep_health(spec_fields: dict[str, Any]) -> dict[str, Any]:
    """spec_fields with spec.engine.deepHealth off: vLLM's liveness probe then asks its own /health (tests/unit/test_deep_health.py
    covers the probe on the agent)."""
    return {**spec_fields, "engine": {**spec_fields.get("engine", {}), "deepHealth": {"enabled": False}}}


@pytest.mark.parametrize(
    ("spec_fields", "readiness", "liveness"),
    [
        # The catalog's defaults: readiness (timeout, threshold) (5, 3) every 10 s; liveness (10, 6) every 20 s.
        ({}, (5, 3), (10, 6)),
        # Large models batch more per step and answer /health later: the catalog gives them 10 s.
        ({"model": {"name": "Qwen/Qwen3-32B"}, "engine": {"tensorParallelSize": 2}, "resources": {"gpu": {"count": 2}}}, (10, 3), (20, 6)),
        ({"model": {"name": "Org/Other", "maxModelLen": 4096}}, (5, 3), (10, 6)),
        ({"engine": {"probes": {"readinessTimeoutSeconds": 8, "readinessFailureThreshold": 5}}}, (8, 5), (10, 6)),
        # Raising only readiness past the catalog's liveness timeout keeps liveness the more tolerant one.
        ({"engine": {"probes": {"readinessTimeoutSeconds": 15}}}, (15, 3), (15, 6)),
        ({"engine": {"probes": {"livenessTimeoutSeconds": 30, "livenessFailureThreshold": 10}}}, (5, 3), (30, 10)),
        # A liveness timeout below the catalog's readiness timeout is raised to it.
        ({"engine": {"probes": {"livenessTimeoutSeconds": 2}}}, (5, 3), (5, 6)),
    ],
)
def test_readiness_and_liveness(spec_fields: dict[str, Any], readiness: tuple[int, int], liveness: tuple[int, int]) -> None:
    c = server(build(make_spec(**without_deep_health(spec_fields))))
    health = {"path": "/health", "port": "http"}
    assert c["readinessProbe"] == {"httpGet": health, "periodSeconds": 10, "timeoutSeconds": readiness[0], "failureThreshold": readiness[1]}
    assert c["livenessProbe"] == {"httpGet": health, "periodSeconds": 20, "timeoutSeconds": liveness[0], "failureThreshold": liveness[1]}
    # Liveness tolerates at least as long a silence as readiness: a busy pod leaves the Service before any restart.
    def silence(p: dict[str, Any]) -> int:
        return p["periodSeconds"] * p["failureThreshold"]
    assert silence(c["livenessProbe"]) > silence(c["readinessProbe"])
    assert c["livenessProbe"]["timeoutSeconds"] >= c["readinessProbe"]["timeoutSeconds"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "initialDelaySeconds" not in c[probe]
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]


@pytest.mark.parametrize(("pre_stop", "shutdown", "grace"), [(10, 30, 55), (0, 0, 15), (60, 600, 675)])
def test_drain(pre_stop: int, shutdown: int, grace: int) -> None:
    d = build(make_spec(engine={"preStopSleepSeconds": pre_stop, "shutdownTimeoutSeconds": shutdown, "deepHealth": {"enabled": False}}))
    assert pod(d)["terminationGracePeriodSeconds"] == grace
    assert flag_value(args(d), "--shutdown-timeout") == str(shutdown)
    lifecycle = server(d).get("lifecycle")
    if pre_stop:
        assert lifecycle == {"preStop": {"sleep": {"seconds": pre_stop}}}
    else:
        assert lifecycle is None


def test_resources() -> None:
    spec = make_spec(resources={"gpu": {"count": 2, "resourceName": "nvidia.com/mig-3g.40gb"}, "cpu": "8", "memory": "64Gi"}, engine={"tensorParallelSize": 2})
    res = server(build(spec))["resources"]
    expected = {"cpu": "8", "memory": "64Gi", "nvidia.com/mig-3g.40gb": "2", "ephemeral-storage": "10Gi"}
    assert res == {"requests": expected, "limits": expected}


@pytest.mark.parametrize(("tensor_parallel", "cpu"), [(1, "4"), (2, "8"), (4, "16"), (8, "32")])
def test_cpu_scales_with_tensor_parallel_size_when_unset(tensor_parallel: int, cpu: str) -> None:
    spec = make_spec(engine={"tensorParallelSize": tensor_parallel}, resources={"gpu": {"count": tensor_parallel}})
    res = server(build(spec))["resources"]
    # Request equals limit: Guaranteed QoS (the memory is equal too), so the static CPU manager can pin cores.
    assert res["requests"]["cpu"] == res["limits"]["cpu"] == cpu
    assert res["requests"]["memory"] == res["limits"]["memory"]


@pytest.mark.parametrize(
    ("fields", "strategy"),
    [
        ({}, {"maxUnavailable": 0, "maxSurge": 1}),
        ({"rollout": {"maxSurge": 0, "maxUnavailable": 1}}, {"maxUnavailable": 1, "maxSurge": 0}),
        ({"rollout": {"maxSurge": 2, "maxUnavailable": 1}}, {"maxUnavailable": 1, "maxSurge": 2}),
    ],
)
def test_rollout_strategy_from_spec(fields: dict[str, Any], strategy: dict[str, int]) -> None:
    assert build(make_spec(**fields))["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": strategy}


SOFT_HOSTNAME_SPREAD = [{
    "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
    "labelSelector": {"matchLabels": selector_labels(OWNER)}, "matchLabelKeys": ["pod-template-hash"],
}]


@pytest.mark.parametrize(
    ("fields", "spread"),
    [
        # Even for one replica, so that scaling to two does not change the template (a rollout).
        ({}, SOFT_HOSTNAME_SPREAD),
        ({"replicas": 2}, SOFT_HOSTNAME_SPREAD),
        ({"replicas": 1, "autoscaling": {"enabled": True, "maxReplicas": 3}}, SOFT_HOSTNAME_SPREAD),
        ({"replicas": 1, "autoscaling": {"enabled": True, "maxReplicas": 1}}, SOFT_HOSTNAME_SPREAD),
        # The user's own placement wins: a spread of theirs, or an affinity.
        ({"replicas": 2, "scheduling": {"topologySpreadConstraints": [{"maxSkew": 2, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]}},
         [{"maxSkew": 2, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]),
        ({"replicas": 2, "scheduling": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"a": "b"}}}]}}}}, None),
    ],
)
def test_soft_spread_over_nodes(fields: dict[str, Any], spread: list[dict[str, Any]] | None) -> None:
    assert pod(build(make_spec(model=BF16_MODEL, **fields))).get("topologySpreadConstraints") == spread


def test_runtime_class_name() -> None:
    assert pod(build(make_spec(scheduling={"runtimeClassName": "nvidia"})))["runtimeClassName"] == "nvidia"
    assert "runtimeClassName" not in pod(build())


def test_pod_settings() -> None:
    p = pod(build())
    assert p["enableServiceLinks"] is False
    assert p["automountServiceAccountToken"] is False


# --- security --------------------------------------------------------------------------------


def test_restricted_security() -> None:
    d = build(make_spec(model={"source": {"tokenSecretRef": {"name": "hf", "key": "t"}}}))
    psc = pod(d)["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == psc["runAsGroup"] == psc["fsGroup"] == 1000
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod(d)["containers"] + pod(d)["initContainers"]:  # the agent sidecar included
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["readOnlyRootFilesystem"] is True
        assert not sc.get("privileged", False)


# --- scheduling ------------------------------------------------------------------------------


BF16_MODEL = {"name": "Qwen/Qwen3-8B"}  # no FP8 affinity: the tables below see only what they set


def test_scheduling_passthrough() -> None:
    spread = {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"a": "b"}}}
    spec = make_spec(
        model=BF16_MODEL,
        scheduling={
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "inference",
            "topologySpreadConstraints": [spread],
        },
    )
    p = pod(build(spec))
    assert p["nodeSelector"] == {"pool": "gpu"}
    assert p["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert p["priorityClassName"] == "inference"
    assert p["topologySpreadConstraints"] == [spread]
    assert "affinity" not in p


def test_no_scheduling_fields_by_default_for_a_bf16_model_but_the_soft_spread() -> None:
    p = pod(build(make_spec(model=BF16_MODEL)))
    for field in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "runtimeClassName"):
        assert field not in p
    assert p["topologySpreadConstraints"] == SOFT_HOSTNAME_SPREAD


def test_scaling_changes_nothing_in_the_pod_template() -> None:
    """A new template rolls every engine (and reloads its model): replicas must not reach it."""
    assert pod(build(make_spec(replicas=1))) == pod(build(make_spec(replicas=3)))


PRODUCT_TERM = {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-L4", "NVIDIA-L40S"]}
ZONE_TERM = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}
POOL_TERM = {"key": "pool", "operator": "In", "values": ["gpu"]}
HOST_FIELD = {"key": "metadata.name", "operator": "In", "values": ["gpu-l4-0"]}
POD_ANTI_AFFINITY = {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}
USER_PREFERENCE = {"weight": 5, "preference": {"matchExpressions": [ZONE_TERM]}}


def required(*terms: dict[str, Any]) -> dict[str, Any]:
    return {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}}


def term(*expressions: dict[str, Any]) -> dict[str, Any]:
    return {"matchExpressions": list(expressions)}


@pytest.mark.parametrize(
    ("user", "products", "expected"),
    [
        (None, [], None),
        ({"podAntiAffinity": POD_ANTI_AFFINITY}, [], {"podAntiAffinity": POD_ANTI_AFFINITY}),
        (None, ["NVIDIA-L4", "NVIDIA-L40S"], {"nodeAffinity": required(term(PRODUCT_TERM))}),
        (
            {"podAntiAffinity": POD_ANTI_AFFINITY},
            ["NVIDIA-L4", "NVIDIA-L40S"],
            {"podAntiAffinity": POD_ANTI_AFFINITY, "nodeAffinity": required(term(PRODUCT_TERM))},
        ),
        # Terms are ORed: the product requirement joins every one of them.
        (
            {"nodeAffinity": required(term(ZONE_TERM), term(POOL_TERM))},
            ["NVIDIA-L4", "NVIDIA-L40S"],
            {"nodeAffinity": required(term(ZONE_TERM, PRODUCT_TERM), term(POOL_TERM, PRODUCT_TERM))},
        ),
        # A preferred node affinity of the user stays as it is.
        (
            {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [USER_PREFERENCE]}},
            ["NVIDIA-L4", "NVIDIA-L40S"],
            {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [USER_PREFERENCE], **required(term(PRODUCT_TERM))}},
        ),
    ],
)
def test_gpu_product_affinity_merge(user: dict[str, Any] | None, products: list[str], expected: dict[str, Any] | None) -> None:
    scheduling = {"affinity": user} if user is not None else {}
    spec = make_spec(model=BF16_MODEL, scheduling=scheduling, resources={"gpu": {"products": products}})
    assert pod(build(spec)).get("affinity") == expected


MAJOR_ABOVE_7 = {"key": "nvidia.com/gpu.compute.major", "operator": "Gt", "values": ["7"]}
NO_MAJOR_LABEL = {"key": "nvidia.com/gpu.compute.major", "operator": "DoesNotExist"}
NATIVE_FP8 = [
    {"weight": 100, "preference": term({"key": "nvidia.com/gpu.compute.major", "operator": "Gt", "values": ["8"]})},
    {
        "weight": 100,
        "preference": term(
            {"key": "nvidia.com/gpu.compute.major", "operator": "In", "values": ["8"]},
            {"key": "nvidia.com/gpu.compute.minor", "operator": "Gt", "values": ["8"]},
        ),
    },
]


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        # Nothing of the user's: FP8-capable or unlabelled nodes, native FP8 preferred.
        (None, {"nodeAffinity": {**required(term(MAJOR_ABOVE_7), term(NO_MAJOR_LABEL)), "preferredDuringSchedulingIgnoredDuringExecution": NATIVE_FP8}}),
        (
            {"podAntiAffinity": POD_ANTI_AFFINITY},
            {"podAntiAffinity": POD_ANTI_AFFINITY, "nodeAffinity": {**required(term(MAJOR_ABOVE_7), term(NO_MAJOR_LABEL)), "preferredDuringSchedulingIgnoredDuringExecution": NATIVE_FP8}},
        ),
        # One user term: (zone) and (major > 7 or no label) = (zone and major > 7) or (zone and no label).
        (
            {"nodeAffinity": required(term(ZONE_TERM))},
            {"nodeAffinity": {**required(term(ZONE_TERM, MAJOR_ABOVE_7), term(ZONE_TERM, NO_MAJOR_LABEL)), "preferredDuringSchedulingIgnoredDuringExecution": NATIVE_FP8}},
        ),
        # Two user terms: the cross product, four terms, each user term's own expressions first.
        (
            {"nodeAffinity": required(term(ZONE_TERM), term(POOL_TERM))},
            {
                "nodeAffinity": {
                    **required(term(ZONE_TERM, MAJOR_ABOVE_7), term(ZONE_TERM, NO_MAJOR_LABEL), term(POOL_TERM, MAJOR_ABOVE_7), term(POOL_TERM, NO_MAJOR_LABEL)),
                    "preferredDuringSchedulingIgnoredDuringExecution": NATIVE_FP8,
                }
            },
        ),
        # matchFields of a user term stay with every combination made from it.
        (
            {"nodeAffinity": required({"matchFields": [HOST_FIELD]})},
            {
                "nodeAffinity": {
                    **required({"matchFields": [HOST_FIELD], "matchExpressions": [MAJOR_ABOVE_7]}, {"matchFields": [HOST_FIELD], "matchExpressions": [NO_MAJOR_LABEL]}),
                    "preferredDuringSchedulingIgnoredDuringExecution": NATIVE_FP8,
                }
            },
        ),
        # A term with no requirements matches no node; it stays so rather than gaining some.
        (
            {"nodeAffinity": required({}, term(POOL_TERM))},
            {"nodeAffinity": {**required({}, term(POOL_TERM, MAJOR_ABOVE_7), term(POOL_TERM, NO_MAJOR_LABEL)), "preferredDuringSchedulingIgnoredDuringExecution": NATIVE_FP8}},
        ),
        # The user's preferences come first and are kept; the FP8 ones add to their weights.
        (
            {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [USER_PREFERENCE]}},
            {"nodeAffinity": {**required(term(MAJOR_ABOVE_7), term(NO_MAJOR_LABEL)), "preferredDuringSchedulingIgnoredDuringExecution": [USER_PREFERENCE, *NATIVE_FP8]}},
        ),
        # An empty required section of the user's is filled, not crossed with nothing.
        (
            {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}},
            {"nodeAffinity": {**required(term(MAJOR_ABOVE_7), term(NO_MAJOR_LABEL)), "preferredDuringSchedulingIgnoredDuringExecution": NATIVE_FP8}},
        ),
    ],
)
def test_fp8_model_without_products_requires_an_fp8_capable_gpu(user: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    scheduling = {"affinity": user} if user is not None else {}
    spec = make_spec(model={"name": "Qwen/Qwen3-0.6B-FP8"}, scheduling=scheduling)
    assert pod(build(spec)).get("affinity") == expected


@pytest.mark.parametrize(
    "model",
    [
        {"name": "Qwen/Qwen3-8B-FP8"},
        {"name": "Qwen/Qwen3-8B", "quantization": "fp8"},  # quantized on load: FP8 kernels too
        {"name": "someone/custom-model-FP8", "maxModelLen": 4096},  # outside the catalog, named -FP8
    ],
)
def test_every_fp8_model_gets_the_fp8_affinity(model: dict[str, Any]) -> None:
    affinity = pod(build(make_spec(model=model))).get("affinity")
    assert affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] == [term(MAJOR_ABOVE_7), term(NO_MAJOR_LABEL)]


@pytest.mark.parametrize("products", [["NVIDIA-L4"], ["NVIDIA-A100-SXM4-80GB"], ["Tesla-T4"]])
def test_pinned_products_replace_the_fp8_affinity(products: list[str]) -> None:
    # The user chose the GPUs: they alone decide placement, and the reconcile judges them (a
    # condition), rather than an affinity that could contradict the choice and leave pods Pending.
    affinity = pod(build(make_spec(model={"name": "Qwen/Qwen3-0.6B-FP8"}, resources={"gpu": {"products": products}})))["affinity"]
    only = {"key": "nvidia.com/gpu.product", "operator": "In", "values": products}
    assert affinity == {"nodeAffinity": required(term(only))}


def test_affinity_merge_does_not_mutate_the_spec() -> None:
    user = {
        "nodeAffinity": {
            **required(term(ZONE_TERM), term(POOL_TERM)),
            "preferredDuringSchedulingIgnoredDuringExecution": [USER_PREFERENCE],
        }
    }
    for model, products in (({"name": "Qwen/Qwen3-0.6B-FP8"}, []), (BF16_MODEL, ["NVIDIA-L40S"])):
        spec = make_spec(model=model, scheduling={"affinity": user}, resources={"gpu": {"products": products}})
        before = json.dumps(spec.scheduling.affinity, sort_keys=True)
        build(spec)
        build(spec)
        assert json.dumps(spec.scheduling.affinity, sort_keys=True) == before
    merged = merge_node_affinity(user, [], is_fp8=True)
    assert len(merged["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]) == 4
    assert user["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] == [term(ZONE_TERM), term(POOL_TERM)]
    assert user["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] == [USER_PREFERENCE]


def test_build_is_deterministic() -> None:
    spec = make_spec(model={"name": "Qwen/Qwen3-8B-FP8"}, resources={"gpu": {"products": ["NVIDIA-L4"]}})
    assert json.dumps(build(spec), sort_keys=True) == json.dumps(build(spec), sort_keys=True)
