"""Issue 11 against the real API server: pods, PVCs, disruption budgets, RBAC and monitoring objects that a GPU
platform team accepts as they are. Where an item is API behaviour (what the API server stores, schedules, admits,
selects or authorizes), it is checked here; the pure judgements have their tables in tests/unit."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from conftest import REPO, wait_until
from qwen_resources import GROUP, PLURAL, VERSION, condition, create, get, live_pods, patch_spec, qwi, wait_condition, wait_ready

from qwen_operator import status as status_lib
from qwen_operator.api.models import QwenInferenceSpec
from qwen_operator.catalog import resolve_model

pytestmark = pytest.mark.cluster

MONITORING = ("monitoring.coreos.com", "v1")
CAPABILITY_TTL_SECONDS = 30  # reconcile.CapabilityCache: the operator looks for the monitoring API this often
BF16_SMALL = "Qwen/Qwen3-0.6B"  # 8 GiB: fits every GPU of the test cluster, FP8 or not


def refused(k8s, namespace: str, spec: dict) -> str:
    with pytest.raises(ApiException) as caught:
        client.CustomObjectsApi(k8s).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, qwi("bad", spec), dry_run="All")
    assert caught.value.status == 422, caught.value.body
    return json.loads(caught.value.body)["message"]


def admitted(k8s, namespace: str, body: dict) -> dict:
    return client.CustomObjectsApi(k8s).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body, dry_run="All")


def deployment(k8s, namespace: str, name: str) -> client.V1Deployment:
    return client.AppsV1Api(k8s).read_namespaced_deployment(name, namespace)


# ---- admission and kubectl explain --------------------------------------------------------------


def test_new_fields_are_admitted_and_their_rules_refuse_what_cannot_work(operator, k8s, namespace):
    assert "cannot both be 0" in refused(k8s, namespace, {"rollout": {"maxSurge": 0, "maxUnavailable": 0}})
    assert "liveness is the more tolerant probe" in refused(k8s, namespace, {"engine": {"probes": {"readinessTimeoutSeconds": 10, "livenessTimeoutSeconds": 5}}})
    assert "bakedIntoImage" in refused(k8s, namespace, {"model": {"source": {"bakedIntoImage": True, "pvc": {"claimName": "weights"}}}})
    assert "runtimeClassName" in refused(k8s, namespace, {"scheduling": {"runtimeClassName": "Not_A_Name"}})
    # Defaults as stored: no access mode (the operator picks it per replica count), no end-to-end latency threshold.
    stored = admitted(k8s, namespace, qwi("defaults", {}))["spec"]
    assert "accessMode" not in stored["model"]["source"]["cache"]
    assert "latencyP95Seconds" not in stored["monitoring"]["alerts"] and "kvCacheUsage" not in stored["monitoring"]["alerts"]
    assert stored["rollout"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert stored["monitoring"]["alerts"]["interTokenLatencyP95Seconds"] == 0.25
    # Every example is a valid QwenInference.
    for example in sorted((REPO / "examples").glob("*.yaml")):
        for document in yaml.safe_load_all(example.read_text()):
            admitted(k8s, namespace, document)


@pytest.mark.parametrize(
    ("field", "words"),
    [
        ("qwi.spec.rollout.maxSurge", "spare GPU"),
        ("qwi.spec.rollout.maxUnavailable", "full pool"),
        ("qwi.spec.engine.probes.readinessTimeoutSeconds", "catalog"),
        ("qwi.spec.scheduling.runtimeClassName", "nvidia"),
        ("qwi.spec.scheduling.topologySpreadConstraints", "ScheduleAnyway"),
        ("qwi.spec.model.source.bakedIntoImage", "HF_HOME"),
        ("qwi.spec.model.source.cache.accessMode", "ReadWriteOnce"),
        ("qwi.spec.monitoring.labels", "release"),
        ("qwi.spec.monitoring.alerts.interTokenLatencyP95Seconds", "output tokens"),
        ("qwi.spec.monitoring.alerts.preemptionsPerMinute", "KV cache"),
        ("qwi.spec.resources.cpu", "tensorParallelSize"),
    ],
)
def test_kubectl_explain_says_what_each_new_field_does(operator, cluster, field: str, words: str):
    text = cluster.kubectl("explain", field).stdout
    assert words in " ".join(text.split()), text


# ---- the pods the API server stores and the scheduler places ------------------------------------


@pytest.fixture
def runtime_class(k8s):
    name = f"nvidia-{uuid.uuid4().hex[:6]}"
    api = client.NodeV1Api(k8s)
    api.create_runtime_class(client.V1RuntimeClass(metadata=client.V1ObjectMeta(name=name), handler="nvidia"))
    yield name
    api.delete_runtime_class(name)


def test_two_replicas_spread_over_nodes_with_sized_storage_probes_and_runtime_class(operator, k8s, namespace, runtime_class):
    create(k8s, namespace, "spread", {
        "model": {"name": BF16_SMALL, "maxModelLen": 8192},
        "replicas": 2,
        "scheduling": {"runtimeClassName": runtime_class, "nodeSelector": {"node-role.qwenops.io/gpu": "true"}},
        # The catalog's timing of vLLM's own /health liveness is checked: without the deep health agent.
        "engine": {"deepHealth": {"enabled": False}},
    })
    wait_ready(k8s, namespace, "spread", timeout=120)
    pod_spec = deployment(k8s, namespace, "spread").spec.template.spec
    (server,) = pod_spec.containers
    # Probes as the API server stored them: timeouts, and a liveness that tolerates a longer silence.
    assert (server.readiness_probe.timeout_seconds, server.readiness_probe.failure_threshold) == (5, 3)
    assert (server.liveness_probe.timeout_seconds, server.liveness_probe.failure_threshold) == (10, 6)
    assert server.liveness_probe.period_seconds * server.liveness_probe.failure_threshold > server.readiness_probe.period_seconds * server.readiness_probe.failure_threshold
    assert server.resources.requests["ephemeral-storage"] == "10Gi" and server.resources.limits["cpu"] == "4"
    volumes = {v.name: v for v in pod_spec.volumes}
    assert volumes["scratch"].empty_dir.size_limit == "8Gi" and volumes["tmp"].empty_dir.size_limit == "1Gi"
    (spread,) = pod_spec.topology_spread_constraints
    assert (spread.topology_key, spread.when_unsatisfiable) == ("kubernetes.io/hostname", "ScheduleAnyway")
    # The scheduler honoured the soft spread, and the pods carry the runtime class.
    def scheduled():
        pods = live_pods(k8s, namespace, "spread")
        return pods if len(pods) == 2 and all(p.spec.node_name for p in pods) else None

    pods = wait_until(scheduled, 60, "two scheduled pods")
    assert len({p.spec.node_name for p in pods}) == 2, [p.spec.node_name for p in pods]
    assert {p.spec.runtime_class_name for p in pods} == {runtime_class}
    # Two replicas share the cache: ReadWriteMany. The PDB lets stuck-loading pods be evicted.
    claim = client.CoreV1Api(k8s).read_namespaced_persistent_volume_claim("spread-model-cache", namespace)
    assert claim.spec.access_modes == ["ReadWriteMany"]
    pdb = client.PolicyV1Api(k8s).read_namespaced_pod_disruption_budget("spread", namespace)
    assert pdb.spec.unhealthy_pod_eviction_policy == "AlwaysAllow"


def test_one_replica_gets_a_read_write_once_cache_that_binds(operator, k8s, namespace):
    create(k8s, namespace, "single", {"model": {"name": BF16_SMALL, "maxModelLen": 8192}})
    wait_ready(k8s, namespace, "single", timeout=120)
    claim = client.CoreV1Api(k8s).read_namespaced_persistent_volume_claim("single-model-cache", namespace)
    assert claim.spec.access_modes == ["ReadWriteOnce"] and claim.status.phase == "Bound"


def test_a_model_baked_into_the_image_needs_no_download_and_no_cache(operator, k8s, namespace):
    create(k8s, namespace, "baked", {"model": {"name": BF16_SMALL, "maxModelLen": 8192, "source": {"bakedIntoImage": True}},
                                     "engine": {"image": "registry.example.com/qwen-vllm:v0.19.1-qwen3-0.6b"}})
    wait_ready(k8s, namespace, "baked", timeout=120)
    pod_spec = deployment(k8s, namespace, "baked").spec.template.spec
    assert [c.name for c in pod_spec.init_containers or []] == ["health-agent"]  # no download, only the agent sidecar
    assert "model-cache" not in {v.name for v in pod_spec.volumes}
    assert "HF_HOME" not in {e.name for e in pod_spec.containers[0].env}
    with pytest.raises(ApiException) as caught:
        client.CoreV1Api(k8s).read_namespaced_persistent_volume_claim("baked-model-cache", namespace)
    assert caught.value.status == 404


# ---- GPU memory fit -----------------------------------------------------------------------------


def test_a_model_too_large_for_the_pinned_gpus_is_refused_with_a_reason(operator, k8s, namespace):
    create(k8s, namespace, "too-big", {"model": {"name": "Qwen/Qwen3-8B"}, "resources": {"gpu": {"products": ["NVIDIA-L4"]}}})
    ready = wait_condition(k8s, namespace, "too-big", "Ready", "False", "GPUMemoryTooSmall")
    assert "NVIDIA-L4 (22 GiB)" in ready["message"] and "maxModelLen to 24576" in ready["message"]
    with pytest.raises(ApiException):
        deployment(k8s, namespace, "too-big")  # nothing rolled out: no pod ever crash-loops on load
    # Following the advice makes it fit.
    patch_spec(k8s, namespace, "too-big", {"model": {"maxModelLen": 24576}})
    wait_ready(k8s, namespace, "too-big", timeout=120)


def test_gpu_memory_is_judged_on_the_nodes_the_live_pod_template_may_land_on(operator, k8s, namespace):
    # No products pinned, so admission and the catalog cannot judge it: the GPU nodes' memory labels can.
    create(k8s, namespace, "eight-b", {"model": {"name": "Qwen/Qwen3-8B"}, "scheduling": {"nodeSelector": {"node-role.qwenops.io/gpu": "true"}}})
    live = wait_until(lambda: deployment(k8s, namespace, "eight-b"), 60, "the Deployment")
    pod_spec = client.ApiClient().sanitize_for_serialization(live.spec.template.spec)
    nodes = [client.ApiClient().sanitize_for_serialization(n) for n in client.CoreV1Api(k8s).list_node().items]
    candidates = status_lib.candidate_nodes(pod_spec, nodes)
    assert candidates and all(n["metadata"]["labels"].get("node-role.qwenops.io/gpu") == "true" for n in candidates)
    spec = QwenInferenceSpec.model_validate(get(k8s, namespace, "eight-b")["spec"])
    problem = status_lib.gpu_memory_problem_on_nodes(resolve_model(spec), spec, candidates)
    # The test cluster's GPUs are L4s (22.5 GiB) and a T4 (15 GiB): Qwen3-8B at 32k needs 23.2 GiB.
    assert problem is not None and problem.reason == "GPUMemoryTooSmall" and "gpu-l4-0" in problem.message
    fitting = QwenInferenceSpec.model_validate({**spec.model_dump(by_alias=True, exclude_none=True), "model": {"name": "Qwen/Qwen3-8B", "maxModelLen": 16384}})
    assert status_lib.gpu_memory_problem_on_nodes(resolve_model(fitting), fitting, [n for n in candidates if "l4" in n["metadata"]["name"]]) is None


# ---- a rollout blocked by capacity --------------------------------------------------------------


@pytest.fixture
def full_gpu_node(k8s):
    """A fake node with exactly 2 GPUs, tainted so that only this test's pods land on it."""
    name = f"gpu-full-{uuid.uuid4().hex[:6]}"
    capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti", "nvidia.com/gpu": "2"}
    node = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                     "labels": {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
        "spec": {"taints": [{"key": "qwenops.io/platform-test", "value": name, "effect": "NoSchedule"}]},
        "status": {"allocatable": capacity, "capacity": capacity},
    }
    api = client.CoreV1Api(k8s)
    api.create_node(node)
    wait_until(lambda: any(c.type == "Ready" and c.status == "True" for c in (api.read_node(name).status.conditions or [])), 60, f"node {name} Ready")
    yield name
    api.delete_node(name)


def test_a_rollout_blocked_by_capacity_is_reported_and_in_place_replacement_finishes_it(operator, k8s, namespace, full_gpu_node):
    create(k8s, namespace, "packed", {
        "model": {"name": BF16_SMALL, "maxModelLen": 8192},
        "replicas": 2,
        "resources": {"cpu": "2", "memory": "8Gi"},
        "scheduling": {"nodeSelector": {"kubernetes.io/hostname": full_gpu_node},
                       "tolerations": [{"key": "qwenops.io/platform-test", "operator": "Exists", "effect": "NoSchedule"}]},
    })
    wait_ready(k8s, namespace, "packed", timeout=120)
    # A spec change: the default strategy (maxSurge 1, maxUnavailable 0) needs a third GPU that does not exist.
    patch_spec(k8s, namespace, "packed", {"engine": {"env": [{"name": "ROLLOUT", "value": "2"}]}})
    blocked = wait_condition(k8s, namespace, "packed", "Ready", "False", "RolloutBlockedByCapacity", timeout=90)
    assert "Insufficient nvidia.com/gpu" in blocked["message"] and "maxUnavailable: 1" in blocked["message"]
    assert condition(k8s, namespace, "packed", "Degraded")["status"] == "False"  # the previous pods still serve
    # The advice: replace pods in place.
    patch_spec(k8s, namespace, "packed", {"rollout": {"maxSurge": 0, "maxUnavailable": 1}})
    wait_ready(k8s, namespace, "packed", timeout=180)
    assert all(any(e.name == "ROLLOUT" for e in p.spec.containers[0].env) for p in live_pods(k8s, namespace, "packed"))


# ---- a cache PVC its class cannot provision -----------------------------------------------------


def test_a_cache_claim_its_class_cannot_provision_is_named_from_the_api_objects(operator, k8s, namespace):
    class_name = f"rwo-only-{uuid.uuid4().hex[:6]}"
    storage = client.StorageV1Api(k8s)
    # local-path makes node-local volumes only; nothing provisions for it here, so the claim stays Pending.
    storage.create_storage_class(client.V1StorageClass(metadata=client.V1ObjectMeta(name=class_name), provisioner="rancher.io/local-path"))
    try:
        create(k8s, namespace, "shared", {"model": {"name": BF16_SMALL, "maxModelLen": 8192, "source": {"cache": {"storageClassName": class_name}}},
                                          "replicas": 2})
        core = client.CoreV1Api(k8s)
        claim = wait_until(lambda: _read_claim(core, namespace, "shared-model-cache"), 60, "the cache claim")
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and claim["status"]["phase"] == "Pending"
        storage_class = client.ApiClient().sanitize_for_serialization(storage.read_storage_class(class_name))
        problem = status_lib.cache_claim_problem(claim, storage_class, [])
        assert problem is not None and problem.reason == "CacheAccessModeUnsupported" and "rancher.io/local-path" in problem.message
        # The claim alone is enough: the PV controller annotates it with the provisioner it waits for.
        claim = wait_until(lambda: (c := _read_claim(core, namespace, "shared-model-cache"))["metadata"].get("annotations", {}).get(
            "volume.kubernetes.io/storage-provisioner") and c, 30, "the provisioner annotation")
        problem = status_lib.cache_claim_problem(claim, None, [])
        assert problem is not None and problem.reason == "CacheAccessModeUnsupported" and "rancher.io/local-path" in problem.message
        # What the provisioner would post when asked (here by the test, as local-path's controller does).
        core.create_namespaced_event(namespace, {
            "metadata": {"generateName": "shared-model-cache."},
            "involvedObject": {"kind": "PersistentVolumeClaim", "namespace": namespace, "name": "shared-model-cache", "uid": claim["metadata"]["uid"]},
            "reason": "ProvisioningFailed", "type": "Warning", "source": {"component": "rancher.io/local-path_local-path-provisioner"},
            "message": f'failed to provision volume with StorageClass "{class_name}": Only support ReadWriteOnce access mode',
        })
        events = [client.ApiClient().sanitize_for_serialization(e) for e in core.list_namespaced_event(
            namespace, field_selector="involvedObject.kind=PersistentVolumeClaim,involvedObject.name=shared-model-cache").items]
        problem = status_lib.cache_claim_problem(claim, None, events)
        assert problem is not None and "Only support ReadWriteOnce" in problem.message
        ready = wait_until(lambda: condition(k8s, namespace, "shared", "Ready"), 30, "a Ready condition")
        assert ready["status"] == "False"
    finally:
        storage.delete_storage_class(class_name)


def _read_claim(core, namespace: str, name: str) -> dict | None:
    try:
        return client.ApiClient().sanitize_for_serialization(core.read_namespaced_persistent_volume_claim(name, namespace))
    except ApiException as error:
        if error.status == 404:
            return None
        raise


# ---- monitoring objects a real Prometheus selects -----------------------------------------------


def test_monitoring_objects_match_a_selector_that_requires_a_release_label(operator, cluster, k8s, namespace, prometheus_operator_crds):
    create(k8s, namespace, "watched", {"model": {"name": BF16_SMALL, "maxModelLen": 8192}, "monitoring": {"labels": {"release": "kps"}}})
    create(k8s, namespace, "unlabelled", {"model": {"name": BF16_SMALL, "maxModelLen": 8192}})
    for name in ("watched", "unlabelled"):
        wait_condition(k8s, namespace, name, "Monitoring", "True", "Configured", timeout=CAPABILITY_TTL_SECONDS + 60)
    custom = client.CustomObjectsApi(k8s)
    # kube-prometheus-stack's Prometheus selects with serviceMonitorSelector/ruleSelector {matchLabels: {release: kps}}:
    # the same label selector, evaluated by the API server.
    for plural in ("servicemonitors", "prometheusrules"):
        selected = wait_until(lambda: custom.list_namespaced_custom_object(*MONITORING, namespace, plural, label_selector="release=kps")["items"] or None,
                              30, f"{plural} with release=kps")
        assert [item["metadata"]["name"] for item in selected] == ["watched"], plural
    # Changing the labels relabels the live objects.
    patch_spec(k8s, namespace, "watched", {"monitoring": {"labels": {"release": "prom-b"}}})
    wait_until(lambda: [i["metadata"]["name"] for i in custom.list_namespaced_custom_object(*MONITORING, namespace, "servicemonitors", label_selector="release=prom-b")["items"]] == ["watched"] or None,
               60, "the ServiceMonitor relabelled")


# ---- optional Secret access in the chart's RBAC -------------------------------------------------


@pytest.mark.parametrize("read_secrets", [True, False])
def test_chart_rbac_grants_secrets_only_when_asked(cluster, k8s, namespace, read_secrets: bool):
    helm = subprocess.run([str(REPO / "hack" / "build-tools.sh"), "path", "helm"], capture_output=True, text=True, check=True).stdout.strip()
    release = f"qwen-rbac-{uuid.uuid4().hex[:6]}"
    rendered = subprocess.run([helm, "template", release, str(REPO / "charts" / "qwen-operator"), "--namespace", namespace,
                               "--set", f"rbac.readSecrets={str(read_secrets).lower()}", "--set", "crds.enabled=false",
                               "--set", "rbac.aggregateToDefaultRoles=false", "--set-json", f'watchNamespaces=["{namespace}"]'],
                              capture_output=True, text=True, check=True, timeout=60).stdout
    wanted = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    cluster.apply(yaml.safe_dump_all(wanted))
    account = f"system:serviceaccount:{namespace}:{release}-qwen-operator"
    answer = cluster.kubectl("auth", "can-i", "get", "secrets", "-n", namespace, "--as", account, check=False).stdout.strip()
    assert answer == ("yes" if read_secrets else "no")
    assert cluster.kubectl("auth", "can-i", "list", "pods", "-n", namespace, "--as", account, check=False).stdout.strip() == "yes"
