"""Production-grade inference pods against the real local control plane (issue 4): the model
cache, the download step, API keys, disruption budgets and rollouts, the NetworkPolicy, the
restricted Pod Security Standard, scheduling and FP8 placement, and missing references."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from conftest import wait_until
from qwen_resources import condition, create, events_for, get, live_pods, patch_spec, wait_condition, wait_ready
from support_production import (
    BF16_MODEL,
    FP8_MODEL,
    MAJOR_LABEL,
    POOL_KEY,
    PRODUCT_LABEL,
    container,
    create_pvc,
    create_secret,
    delete_node_and_wait,
    deployment_or_none,
    env_of,
    fake_gpu_node,
    gpu_nodes,
    mount_path,
    node_is_ready,
    node_labels,
    private_gpu_pool,
    private_pool_scheduling,
    pvcs_of,
    volume,
)

pytestmark = pytest.mark.cluster

HF_CACHE_PATH = "/model-cache"  # HF_HOME of the pods
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}


def run_to_completion(pod_spec) -> list:
    """The init containers that run before vLLM and end (the deep health agent is a sidecar: restartPolicy Always)."""
    return [c for c in pod_spec.init_containers or [] if c.restart_policy != "Always"]


def resync_window(operator) -> float:
    return 3 * operator.resync_seconds + 30


# --- model cache -----------------------------------------------------------------------------


def test_cache_is_a_bound_pvc_per_resource_mounted_as_the_hf_cache(operator, k8s, namespace):
    create(k8s, namespace, "cached", {"model": {"source": {"cache": {"size": "7Gi"}}}})
    wait_ready(k8s, namespace, "cached")
    owner_uid = get(k8s, namespace, "cached")["metadata"]["uid"]

    (pvc,) = pvcs_of(k8s, namespace, "cached")
    assert pvc.metadata.name == "cached-model-cache"
    assert pvc.metadata.owner_references[0].uid == owner_uid
    # One replica: ReadWriteOnce, which every default StorageClass offers.
    assert pvc.spec.access_modes == ["ReadWriteOnce"] and pvc.spec.resources.requests["storage"] == "7Gi"
    wait_until(lambda: client.CoreV1Api(k8s).read_namespaced_persistent_volume_claim("cached-model-cache", namespace).status.phase == "Bound", 30, "the cache PVC to bind")
    # The claim is applied before the Deployment, so no pod ever met a missing claim.
    assert not [e.message for e in events_for(k8s, namespace, "cached") if e.reason == "Unschedulable"]

    for pod in live_pods(k8s, namespace, "cached"):
        assert volume(pod.spec, "model-cache").persistent_volume_claim.claim_name == "cached-model-cache"
        server = container(pod.spec)
        assert mount_path(server, "model-cache") == HF_CACHE_PATH
        assert env_of(server)["HF_HOME"].value == HF_CACHE_PATH
        (download,) = run_to_completion(pod.spec)
        assert mount_path(download, "model-cache") == HF_CACHE_PATH and env_of(download)["HF_HOME"].value == HF_CACHE_PATH


def test_a_shared_existing_claim_is_used_and_no_own_pvc_is_made(operator, k8s, namespace):
    create_pvc(k8s, namespace, "shared-cache", size="50Gi")
    spec = {"model": {"source": {"cache": {"existingClaim": "shared-cache"}}}}
    create(k8s, namespace, "first", spec)
    create(k8s, namespace, "second", spec)
    for name in ("first", "second"):
        wait_ready(k8s, namespace, name)
        pods = live_pods(k8s, namespace, name)
        assert pods and all(volume(p.spec, "model-cache").persistent_volume_claim.claim_name == "shared-cache" for p in pods)
        assert pvcs_of(k8s, namespace, name) == []
    claims = {c.metadata.name for c in client.CoreV1Api(k8s).list_namespaced_persistent_volume_claim(namespace).items}
    assert claims == {"shared-cache"}


def test_disabled_cache_downloads_into_an_empty_dir_without_a_pvc(operator, k8s, namespace):
    create(k8s, namespace, "nocache", {"model": {"source": {"cache": {"enabled": False, "size": "5Gi"}}}})
    wait_ready(k8s, namespace, "nocache")
    (pod,) = live_pods(k8s, namespace, "nocache")
    cache = volume(pod.spec, "model-cache")
    assert cache.persistent_volume_claim is None and cache.empty_dir.size_limit == "5Gi"
    assert mount_path(container(pod.spec), "model-cache") == HF_CACHE_PATH
    assert [c.name for c in run_to_completion(pod.spec)] == ["download-model"]  # still downloads, into the pod
    assert client.CoreV1Api(k8s).list_namespaced_persistent_volume_claim(namespace).items == []


def test_preloaded_pvc_is_the_model_source_without_download(operator, k8s, namespace):
    create_pvc(k8s, namespace, "weights", size="10Gi", access_mode="ReadOnlyMany")
    create(k8s, namespace, "preloaded", {"model": {"source": {"pvc": {"claimName": "weights", "path": "qwen3/0.6b-fp8"}}}})
    wait_ready(k8s, namespace, "preloaded")
    (pod,) = live_pods(k8s, namespace, "preloaded")
    server = container(pod.spec)
    assert server.args[0] == "/models/qwen3/0.6b-fp8"
    assert "--revision" not in server.args
    assert not run_to_completion(pod.spec)
    source = volume(pod.spec, "model-source").persistent_volume_claim
    assert source.claim_name == "weights" and source.read_only is True
    (source_mount,) = [m for m in server.volume_mounts if m.name == "model-source"]
    assert source_mount.mount_path == "/models" and source_mount.read_only is True
    assert env_of(server)["HF_HUB_OFFLINE"].value == "1"
    # Nothing to cache: no claim of its own.
    assert {c.metadata.name for c in client.CoreV1Api(k8s).list_namespaced_persistent_volume_claim(namespace).items} == {"weights"}


def test_missing_existing_claim_blocks_until_it_is_created(operator, k8s, namespace):
    pid = operator.process.pid
    create(k8s, namespace, "waiting", {"model": {"source": {"cache": {"existingClaim": "later-cache"}}}})
    ready = wait_condition(k8s, namespace, "waiting", "Ready", "False", "ClaimNotFound")
    assert "later-cache" in ready["message"] and "existingClaim" in ready["message"]
    assert condition(k8s, namespace, "waiting", "Progressing")["reason"] == "Blocked"
    wait_until(lambda: any(e.reason == "ClaimNotFound" and e.type == "Warning" for e in events_for(k8s, namespace, "waiting")), 30, "a ClaimNotFound event")
    time.sleep(operator.resync_seconds + 1)  # a resync passes: still nothing rolled out
    assert deployment_or_none(k8s, namespace, "waiting") is None

    create_pvc(k8s, namespace, "later-cache")
    wait_ready(k8s, namespace, "waiting", timeout=resync_window(operator))
    (pod,) = live_pods(k8s, namespace, "waiting")
    assert volume(pod.spec, "model-cache").persistent_volume_claim.claim_name == "later-cache"
    assert operator.process.poll() is None and operator.process.pid == pid  # the same operator, never restarted


# --- download step and secrets ---------------------------------------------------------------


def test_download_init_container_gets_the_hf_token_and_the_server_runs_offline(operator, k8s, namespace):
    create_secret(k8s, namespace, "hf-token", {"token": "hf_not_a_real_token"})
    create(k8s, namespace, "gated", {"model": {"revision": "v1.0", "source": {"tokenSecretRef": {"name": "hf-token", "key": "token"}}}})
    wait_ready(k8s, namespace, "gated")
    (pod,) = live_pods(k8s, namespace, "gated")
    (download,) = run_to_completion(pod.spec)
    assert download.name == "download-model"
    assert download.command == ["hf", "download", FP8_MODEL, "--revision", "v1.0"]
    token = env_of(download)["HF_TOKEN"]
    assert token.value is None
    assert (token.value_from.secret_key_ref.name, token.value_from.secret_key_ref.key) == ("hf-token", "token")

    server = container(pod.spec)
    server_env = env_of(server)
    assert "HF_TOKEN" not in server_env  # the server never needs the Hub
    assert server_env["HF_HUB_OFFLINE"].value == "1"
    assert "HF_HUB_OFFLINE" not in env_of(download)  # the download step is the one that goes online


def test_missing_hf_token_secret_or_key_blocks_until_fixed(operator, k8s, namespace):
    pid = operator.process.pid
    create(k8s, namespace, "gated", {"model": {"source": {"tokenSecretRef": {"name": "hf-token", "key": "token"}}}})
    ready = wait_condition(k8s, namespace, "gated", "Ready", "False", "SecretNotFound")
    assert "tokenSecretRef" in ready["message"] and "hf-token" in ready["message"]
    assert deployment_or_none(k8s, namespace, "gated") is None

    # The Secret appears, but with another key: still blocked, for the new reason.
    create_secret(k8s, namespace, "hf-token", {"hf-token": "hf_wrong_key"})
    ready = wait_condition(k8s, namespace, "gated", "Ready", "False", "SecretKeyNotFound", timeout=resync_window(operator))
    assert "token" in ready["message"]
    assert deployment_or_none(k8s, namespace, "gated") is None

    client.CoreV1Api(k8s).patch_namespaced_secret("hf-token", namespace, {"stringData": {"token": "hf_right_key"}})
    wait_ready(k8s, namespace, "gated", timeout=resync_window(operator))
    assert operator.process.poll() is None and operator.process.pid == pid


def test_api_key_comes_from_the_secret_and_probes_stay_on_health(operator, k8s, namespace):
    create_secret(k8s, namespace, "qwen-keys", {"api-key": "sk-not-a-real-key"})
    create(k8s, namespace, "keyed", {"auth": {"apiKeySecretRef": {"name": "qwen-keys", "key": "api-key"}}})
    wait_ready(k8s, namespace, "keyed")
    (pod,) = live_pods(k8s, namespace, "keyed")
    server = container(pod.spec)
    key = env_of(server)["VLLM_API_KEY"]
    assert key.value is None
    assert (key.value_from.secret_key_ref.name, key.value_from.secret_key_ref.key) == ("qwen-keys", "api-key")
    assert not any(a == "--api-key" or a.startswith("--api-key=") for a in server.args)
    assert "VLLM_API_KEY" not in env_of(run_to_completion(pod.spec)[0])  # the download step has no use for it
    for probe in (server.startup_probe, server.readiness_probe):
        assert probe.http_get.path == "/health" and probe.http_get.port == "http"
        assert not probe.http_get.http_headers  # /health needs no key
    # Liveness asks the deep health agent beside vLLM (spec.engine.deepHealth, on by default), which holds the key itself.
    assert (server.liveness_probe.http_get.path, server.liveness_probe.http_get.port) == ("/livez", 8081)
    assert not server.liveness_probe.http_get.http_headers


# --- disruptions and rollouts ----------------------------------------------------------------


def pdbs(k8s, namespace: str, name: str) -> list[client.V1PodDisruptionBudget]:
    """The engines' PDB (with more than one replica the router has its own, <name>-router: tests/integration/test_router_children.py)."""
    found = client.PolicyV1Api(k8s).list_namespaced_pod_disruption_budget(namespace, label_selector=f"app.kubernetes.io/instance={name}").items
    return [pdb for pdb in found if pdb.metadata.name == name]


def test_pdb_exists_only_while_more_than_one_replica_is_wanted(operator, k8s, namespace):
    create(k8s, namespace, "budget", {"replicas": 1})
    wait_ready(k8s, namespace, "budget")
    time.sleep(operator.resync_seconds + 1)
    assert pdbs(k8s, namespace, "budget") == []

    patch_spec(k8s, namespace, "budget", {"replicas": 2})
    (pdb,) = wait_until(lambda: pdbs(k8s, namespace, "budget"), resync_window(operator), "a PDB for 2 replicas")
    assert pdb.spec.max_unavailable == 1 and pdb.spec.min_available is None
    # Both replicas (Ready alone may still be the judgement of one replica, from before the patch).
    wait_until(lambda: (get(k8s, namespace, "budget").get("status") or {}).get("ready") == "2/2", resync_window(operator), "ready 2/2")
    pod_names = {p.metadata.name for p in live_pods(k8s, namespace, "budget")}
    selected = client.CoreV1Api(k8s).list_namespaced_pod(namespace, label_selector=",".join(f"{k}={v}" for k, v in pdb.spec.selector.match_labels.items())).items
    assert {p.metadata.name for p in selected} == pod_names and len(pod_names) == 2
    wait_until(lambda: client.PolicyV1Api(k8s).read_namespaced_pod_disruption_budget("budget", namespace).status.disruptions_allowed == 1, 30, "the PDB to allow one disruption")

    patch_spec(k8s, namespace, "budget", {"replicas": 1})
    wait_until(lambda: pdbs(k8s, namespace, "budget") == [], resync_window(operator), "the PDB to be pruned at 1 replica")

    # Autoscaling: the budget follows maxReplicas, not the current replica count.
    patch_spec(k8s, namespace, "budget", {"autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3}})
    wait_until(lambda: pdbs(k8s, namespace, "budget"), resync_window(operator), "a PDB with autoscaling up to 3")
    patch_spec(k8s, namespace, "budget", {"autoscaling": {"maxReplicas": 1}})
    wait_until(lambda: pdbs(k8s, namespace, "budget") == [], resync_window(operator), "the PDB to be pruned at maxReplicas 1")


def test_rollout_keeps_every_replica_available_and_drains_in_time(operator, k8s, namespace):
    create(k8s, namespace, "rolling", {"replicas": 4, "engine": {"preStopSleepSeconds": 7, "shutdownTimeoutSeconds": 20}})
    wait_ready(k8s, namespace, "rolling")
    apps = client.AppsV1Api(k8s)
    deployment = apps.read_namespaced_deployment("rolling", namespace)
    assert deployment.spec.strategy.type == "RollingUpdate"
    assert deployment.spec.strategy.rolling_update.max_unavailable == 0

    for pod in live_pods(k8s, namespace, "rolling"):
        server = container(pod.spec)
        hook = server.lifecycle.pre_stop
        # With deep health (on by default) the hook is an exec that asks the agent for a verdict, then sleeps its last argument.
        pre_stop = hook.sleep.seconds if hook.sleep else int(hook._exec.command[-1])
        shutdown = int(server.args[server.args.index("--shutdown-timeout") + 1])
        assert (pre_stop, shutdown) == (7, 20)
        assert pod.spec.termination_grace_period_seconds > pre_stop + shutdown

    # With 4 replicas the Kubernetes default (25%) would let one go unavailable; maxUnavailable 0
    # keeps all four serving while each new pod comes up first.
    lowest = {"available": 4}
    done = threading.Event()

    def watch_availability() -> None:
        while not done.is_set():
            status = apps.read_namespaced_deployment_status("rolling", namespace).status
            lowest["available"] = min(lowest["available"], status.available_replicas or 0)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_availability, daemon=True)
    watcher.start()
    try:
        generation = deployment.metadata.generation
        patch_spec(k8s, namespace, "rolling", {"engine": {"maxNumSeqs": 128}})

        def rolled_out() -> bool:
            d = apps.read_namespaced_deployment("rolling", namespace)
            s = d.status
            return d.metadata.generation > generation and s.observed_generation == d.metadata.generation and s.updated_replicas == 4 and s.ready_replicas == 4 and s.replicas == 4

        wait_until(rolled_out, 120, "the rollout to finish")
    finally:
        done.set()
        watcher.join(timeout=10)
    assert all("128" in container(p.spec).args for p in live_pods(k8s, namespace, "rolling"))
    assert lowest["available"] == 4


# --- network policy --------------------------------------------------------------------------


def test_network_policy_only_when_enabled_and_pruned_when_disabled(operator, k8s, namespace):
    networking = client.NetworkingV1Api(k8s)

    def policies():
        return networking.list_namespaced_network_policy(namespace, label_selector="app.kubernetes.io/instance=fenced").items

    create(k8s, namespace, "fenced", {})
    wait_ready(k8s, namespace, "fenced")
    time.sleep(operator.resync_seconds + 1)
    assert policies() == []

    allow = [{"namespaceSelector": {"team": "a"}}, {"podSelector": {"role": "client"}}]
    patch_spec(k8s, namespace, "fenced", {"networkPolicy": {"enabled": True, "allowFrom": allow, "monitoringNamespace": "observability"}})
    (policy,) = wait_until(policies, resync_window(operator), "the NetworkPolicy")
    assert policy.spec.policy_types == ["Ingress"]
    pod_labels = live_pods(k8s, namespace, "fenced")[0].metadata.labels
    assert policy.spec.pod_selector.match_labels.items() <= pod_labels.items()

    rules = [([p.to_dict() for p in rule._from], [(port.port, port.protocol) for port in rule.ports]) for rule in policy.spec.ingress]
    clients = [
        {"namespace_selector": {"match_expressions": None, "match_labels": {"team": "a"}}, "pod_selector": None, "ip_block": None},
        {"namespace_selector": None, "pod_selector": {"match_expressions": None, "match_labels": {"role": "client"}}, "ip_block": None},
    ]
    scrapers = [{"namespace_selector": {"match_expressions": None, "match_labels": {"kubernetes.io/metadata.name": "observability"}}, "pod_selector": None, "ip_block": None}]
    assert rules == [(clients, [(8000, "TCP")]), (scrapers, [(8000, "TCP")])]

    patch_spec(k8s, namespace, "fenced", {"networkPolicy": {"enabled": False}})
    wait_until(lambda: policies() == [], resync_window(operator), "the NetworkPolicy to be pruned")


# --- restricted pod security -----------------------------------------------------------------


def failed_creates(k8s, namespace: str) -> list[client.CoreV1Event]:
    return [e for e in client.CoreV1Api(k8s).list_namespaced_event(namespace).items if e.reason == "FailedCreate"]


@pytest.mark.parametrize("namespace", [RESTRICTED], indirect=True)
def test_restricted_namespace_admits_the_pods(operator, k8s, namespace):
    assert client.CoreV1Api(k8s).read_namespace(namespace).metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"
    create_secret(k8s, namespace, "hf-token", {"token": "hf_x"})
    create_secret(k8s, namespace, "qwen-keys", {"api-key": "sk-x"})
    create_pvc(k8s, namespace, "weights", access_mode="ReadOnlyMany")
    # Every volume the builders make: the cache PVC, emptyDirs, a preloaded source PVC.
    create(k8s, namespace, "downloaded", {"replicas": 2, "model": {"source": {"tokenSecretRef": {"name": "hf-token", "key": "token"}}}, "auth": {"apiKeySecretRef": {"name": "qwen-keys", "key": "api-key"}}})
    create(k8s, namespace, "preloaded", {"model": {"source": {"pvc": {"claimName": "weights"}}}})
    for name, replicas in (("downloaded", 2), ("preloaded", 1)):
        wait_ready(k8s, namespace, name)
        d = client.AppsV1Api(k8s).read_namespaced_deployment(name, namespace)
        assert d.status.ready_replicas == replicas
    assert failed_creates(k8s, namespace) == []

    for pod in live_pods(k8s, namespace, "downloaded") + live_pods(k8s, namespace, "preloaded"):
        assert pod.spec.security_context.run_as_non_root is True
        assert pod.spec.security_context.seccomp_profile.type == "RuntimeDefault"
        for c in pod.spec.containers + (pod.spec.init_containers or []):
            sc = c.security_context
            assert sc.allow_privilege_escalation is False and sc.capabilities.drop == ["ALL"]
            assert sc.read_only_root_filesystem is True and sc.run_as_non_root is True


@pytest.mark.parametrize("namespace", [RESTRICTED], indirect=True)
def test_restricted_namespace_refuses_a_privileged_container(operator, k8s, namespace):
    """The control for the test above: the same namespace does refuse what the standard forbids."""
    create(k8s, namespace, "template", {})
    wait_ready(k8s, namespace, "template")
    core, apps = client.CoreV1Api(k8s), client.AppsV1Api(k8s)
    template = apps.read_namespaced_deployment("template", namespace).spec.template
    pod = client.V1Pod(metadata=client.V1ObjectMeta(name="copy", labels={"copy": "true"}), spec=template.spec)
    core.create_namespaced_pod(namespace, pod, dry_run="All")  # the operator's pod as it is: admitted

    pod.spec.containers[0].security_context.privileged = True
    pod.spec.containers[0].security_context.allow_privilege_escalation = None
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, pod, dry_run="All")
    assert refused.value.status == 403 and "violates PodSecurity" in refused.value.body and "privileged" in refused.value.body

    # Through a Deployment the refusal shows as FailedCreate on the ReplicaSet, which is what
    # the admission test above checks is absent.
    privileged = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="privileged"),
        spec=client.V1DeploymentSpec(
            selector=client.V1LabelSelector(match_labels={"copy": "true"}),
            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels={"copy": "true"}), spec=pod.spec),
        ),
    )
    apps.create_namespaced_deployment(namespace, privileged)
    event = wait_until(lambda: failed_creates(k8s, namespace), 60, "a FailedCreate event for the privileged Deployment")[0]
    assert event.involved_object.kind == "ReplicaSet" and "violates PodSecurity" in event.message


# --- scheduling ------------------------------------------------------------------------------


@pytest.fixture
def priority_class(k8s):
    scheduling = client.SchedulingV1Api(k8s)
    name = f"qwen-test-{uuid.uuid4().hex[:6]}"
    scheduling.create_priority_class(client.V1PriorityClass(metadata=client.V1ObjectMeta(name=name), value=100000, description="issue 4 test"))
    yield name
    scheduling.delete_priority_class(name)


def test_scheduling_fields_reach_the_pods(operator, k8s, namespace, priority_class):
    node_affinity_term = {"matchExpressions": [{"key": "node-role.qwenops.io/gpu", "operator": "In", "values": ["true"]}]}
    anti_affinity = {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 10, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "placed"}}}}]}
    spread = {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "placed"}}}
    toleration = {"key": "dedicated", "operator": "Equal", "value": "inference", "effect": "NoSchedule"}
    create(k8s, namespace, "placed", {
        "replicas": 3,
        "scheduling": {
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [toleration],
            "affinity": {"podAntiAffinity": anti_affinity, "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [node_affinity_term]}}},
            "priorityClassName": priority_class,
            "topologySpreadConstraints": [spread],
        },
    })  # fmt: skip
    wait_ready(k8s, namespace, "placed")
    pods = live_pods(k8s, namespace, "placed")
    assert len(pods) == 3
    for pod in pods:
        spec = pod.spec
        assert spec.node_selector == {"nvidia.com/gpu.present": "true"}
        assert any(t.key == "dedicated" and t.value == "inference" and t.effect == "NoSchedule" for t in spec.tolerations)
        assert spec.priority_class_name == priority_class and spec.priority == 100000  # resolved by admission
        (constraint,) = spec.topology_spread_constraints
        assert (constraint.max_skew, constraint.topology_key, constraint.when_unsatisfiable) == (1, "kubernetes.io/hostname", "DoNotSchedule")
        assert spec.affinity.pod_anti_affinity.preferred_during_scheduling_ignored_during_execution[0].weight == 10
        # The user's required term, crossed with the FP8 requirement (the default model is FP8).
        terms = [[(e.key, e.operator, e.values) for e in t.match_expressions] for t in spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms]
        user = ("node-role.qwenops.io/gpu", "In", ["true"])
        assert terms == [[user, (MAJOR_LABEL, "Gt", ["7"])], [user, (MAJOR_LABEL, "DoesNotExist", None)]]
    # DoNotSchedule with maxSkew 1 over hostnames: three replicas on three different nodes.
    assert len({p.spec.node_name for p in pods}) == 3


def fill_every_node_and_one_more(k8s, namespace: str, name: str, spec: dict, pool: str, allowed: set[str]) -> tuple[list[client.V1Pod], list[client.V1Pod]]:
    """Runs one replica per allowed node of the private GPU pool, each asking for a whole node's GPUs,
    plus one more.

    The extra replica fits only on a node of the pool that the affinity rejects. The pool is this
    test's own (tainted, so no other test's pod is there), so without the affinity the scheduler
    would place it there; with the affinity it stays Pending, and the scheduler says that every node
    it could tolerate but not select failed on node affinity. Returns (scheduled, pending) pods.
    """
    pool_nodes = [n for n in gpu_nodes(k8s) if (n.metadata.labels or {}).get(POOL_KEY) == pool]
    (gpus,) = {int(n.status.allocatable["nvidia.com/gpu"]) for n in pool_nodes}
    assert {n.metadata.name for n in pool_nodes} - allowed, "no node of the pool that the affinity must keep the pods off"

    replicas = len(allowed) + 1
    gpu = {**spec.get("resources", {}).get("gpu", {}), "count": gpus}
    create(k8s, namespace, name, {**spec, "replicas": replicas, "resources": {"gpu": gpu}, "scheduling": private_pool_scheduling(pool)})
    try:
        wait_until(
            lambda: (c := condition(k8s, namespace, name, "Ready")) and c["reason"] == "Unschedulable" and "node affinity" in c["message"],
            90, "Ready=False Unschedulable for node affinity",
        )
    except AssertionError as error:
        placed = sorted((p.metadata.name, p.spec.node_name) for p in live_pods(k8s, namespace, name))
        raise AssertionError(f"{error}; Ready: {condition(k8s, namespace, name, 'Ready')}; pods on nodes: {placed}") from None

    def settled():
        pods = live_pods(k8s, namespace, name)
        scheduled = [p for p in pods if p.spec.node_name]
        pending = [p for p in pods if not p.spec.node_name]
        return (scheduled, pending) if len(pods) == replicas and pending and all(p.status.phase == "Running" for p in scheduled) else None

    scheduled, pending = wait_until(settled, 60, f"{replicas} pods, the extra one Pending")
    assert len(pending) == 1  # exactly the replica that only a rejected node had room for
    (unschedulable,) = [c for c in pending[0].status.conditions if c.type == "PodScheduled"]
    assert unschedulable.reason == "Unschedulable"
    # The scheduler reports each node by the first filter it fails, taints before affinity: the
    # nodes with a taint the pods do not tolerate (every other node with one) count as such.
    toleration = private_pool_scheduling(pool)["tolerations"][0]
    untolerated = {n.metadata.name for n in client.CoreV1Api(k8s).list_node().items
                   if any(t.effect == "NoSchedule" and (t.key, t.value) != (toleration["key"], toleration["value"]) for t in n.spec.taints or [])}
    affinity_rejected = {n.metadata.name for n in client.CoreV1Api(k8s).list_node().items} - allowed - untolerated
    assert f"{len(affinity_rejected)} node(s) didn't match Pod's node affinity/selector" in unschedulable.message, unschedulable.message
    return scheduled, pending


def test_gpu_products_pin_the_pods_to_those_nodes(operator, k8s, namespace):
    with private_gpu_pool(k8s, ("NVIDIA-L4", 8, 9), ("NVIDIA-L4", 8, 9), ("Tesla-T4", 7, 5)) as (pool, nodes):
        l4 = set(nodes[:2])
        spec = {"model": {"name": BF16_MODEL}, "resources": {"gpu": {"products": ["NVIDIA-L4"]}}}
        scheduled, _ = fill_every_node_and_one_more(k8s, namespace, "l4only", spec, pool, allowed=l4)
        assert {p.spec.node_name for p in scheduled} == l4
        assert all(node_labels(k8s, p.spec.node_name)[PRODUCT_LABEL] == "NVIDIA-L4" for p in scheduled)


def test_fp8_model_without_products_never_lands_on_the_t4(operator, k8s, namespace):
    with private_gpu_pool(k8s, ("NVIDIA-L4", 8, 9), ("NVIDIA-L4", 8, 9), ("Tesla-T4", 7, 5)) as (pool, nodes):
        fp8_capable, too_old = set(nodes[:2]), nodes[2]
        assert int(node_labels(k8s, too_old)[MAJOR_LABEL]) < 8
        scheduled, _ = fill_every_node_and_one_more(k8s, namespace, "fp8", {"model": {"name": FP8_MODEL}}, pool, allowed=fp8_capable)
        assert {p.spec.node_name for p in scheduled} == fp8_capable
        assert all(int(node_labels(k8s, p.spec.node_name)[MAJOR_LABEL]) >= 8 for p in scheduled)


def test_fp8_model_pinned_to_t4_is_gpu_incompatible_and_never_rolled_out(operator, k8s, namespace):
    create(k8s, namespace, "oldgpu", {"model": {"name": FP8_MODEL}, "resources": {"gpu": {"products": ["Tesla-T4"]}}})
    ready = wait_condition(k8s, namespace, "oldgpu", "Ready", "False", "GPUIncompatible")
    assert "Tesla-T4" in ready["message"] and "7.5" in ready["message"]
    assert condition(k8s, namespace, "oldgpu", "Degraded")["status"] == "True"
    assert condition(k8s, namespace, "oldgpu", "Progressing")["reason"] == "Blocked"
    wait_until(lambda: any(e.reason == "GPUIncompatible" and e.type == "Warning" for e in events_for(k8s, namespace, "oldgpu")), 30, "a GPUIncompatible event")
    time.sleep(2 * operator.resync_seconds + 1)  # resyncs pass and still roll nothing out
    assert deployment_or_none(k8s, namespace, "oldgpu") is None
    assert live_pods(k8s, namespace, "oldgpu") == []

    patch_spec(k8s, namespace, "oldgpu", {"resources": {"gpu": {"products": ["NVIDIA-L4"]}}})
    wait_ready(k8s, namespace, "oldgpu", timeout=resync_window(operator))
    assert condition(k8s, namespace, "oldgpu", "Degraded")["status"] == "False"


@pytest.fixture
def a100_node(k8s):
    """A fake A100 (compute capability 8.0: FP8 weight-only) node, for the length of one test."""
    name = f"gpu-a100-test-{uuid.uuid4().hex[:5]}"
    client.CoreV1Api(k8s).create_node(fake_gpu_node(name, "NVIDIA-A100-SXM4-80GB", 8, 0, pool=name))
    try:
        wait_until(lambda: node_is_ready(k8s, name), 60, f"the fake node {name} to be Ready")
        yield name
    finally:
        delete_node_and_wait(k8s, name)


def test_fp8_model_on_a100_runs_but_is_degraded_weight_only(operator, k8s, namespace, a100_node):
    create(k8s, namespace, "ampere", {"model": {"name": FP8_MODEL}, "resources": {"gpu": {"products": ["NVIDIA-A100-SXM4-80GB"]}},
                                      "scheduling": private_pool_scheduling(a100_node)})
    degraded = wait_condition(k8s, namespace, "ampere", "Degraded", "True", "GPUWithoutNativeFP8")
    assert "weight-only" in degraded["message"] and "NVIDIA-A100-SXM4-80GB" in degraded["message"]
    wait_ready(k8s, namespace, "ampere")  # a warning, not a block: it is deployed and serves
    (pod,) = live_pods(k8s, namespace, "ampere")
    assert pod.spec.node_name == a100_node
    assert condition(k8s, namespace, "ampere", "Degraded")["reason"] == "GPUWithoutNativeFP8"
    wait_until(lambda: any(e.reason == "GPUWithoutNativeFP8" and e.type == "Warning" for e in events_for(k8s, namespace, "ampere")), 30, "a GPUWithoutNativeFP8 event")
