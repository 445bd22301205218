"""The operator against the real local control plane: the sample, scaling, failures, drift,
steady state, bad specs and cleanup (issue 3's acceptance)."""

from __future__ import annotations

import time

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from qwen_operator.k8s.client import WRITE_VERBS
from conftest import REPO, start_operator, stop_operator, wait_until
from qwen_resources import GROUP, PLURAL, VERSION, condition, create, events_for, get, patch_spec, pods, wait_condition

pytestmark = pytest.mark.cluster

SAMPLE = REPO / "examples" / "qwen3-0.6b-fp8.yaml"


def test_sample_becomes_ready_with_owned_deployment_and_service(operator, cluster, k8s, namespace):
    cluster.kubectl("apply", "-n", namespace, "-f", str(SAMPLE))
    name = yaml.safe_load(SAMPLE.read_text())["metadata"]["name"]
    wait_condition(k8s, namespace, name, "Ready", "True")
    owner_uid = get(k8s, namespace, name)["metadata"]["uid"]

    deployment = client.AppsV1Api(k8s).read_namespaced_deployment(name, namespace)
    service = client.CoreV1Api(k8s).read_namespaced_service(name, namespace)
    for child in (deployment, service):
        refs = child.metadata.owner_references
        assert refs and refs[0].uid == owner_uid and refs[0].controller

    container = deployment.spec.template.spec.containers[0]
    assert container.command == ["vllm", "serve"]
    assert container.args[0] == "Qwen/Qwen3-0.6B-FP8"
    assert "--quantization" not in container.args  # pre-quantized FP8 checkpoint
    assert container.startup_probe.http_get.path == "/health"
    assert deployment.spec.template.spec.enable_service_links is False

    gpu_nodes = {n.metadata.name for n in client.CoreV1Api(k8s).list_node(label_selector="nvidia.com/gpu.present=true").items}
    assert all(p.spec.node_name in gpu_nodes for p in pods(k8s, namespace, name))

    table = cluster.kubectl("get", "qwi", name, "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    assert header.split()[:5] == ["NAME", "MODEL", "READY", "STATUS", "ENDPOINT"]
    assert row.split()[1:5] == ["Qwen/Qwen3-0.6B-FP8", "1/1", "Ready", f"http://{name}.{namespace}.svc:8000/v1"]
    assert any(e.reason == "Ready" and e.type == "Normal" for e in events_for(k8s, namespace, name))


def test_kubectl_scale_changes_the_replicas(operator, cluster, k8s, namespace):
    create(k8s, namespace, "scaled", {})
    wait_condition(k8s, namespace, "scaled", "Ready", "True")
    cluster.kubectl("scale", "qwi", "scaled", "-n", namespace, "--replicas=3")
    wait_until(lambda: client.AppsV1Api(k8s).read_namespaced_deployment("scaled", namespace).spec.replicas == 3, 30, "Deployment replicas 3")
    wait_until(lambda: (get(k8s, namespace, "scaled").get("status") or {}).get("ready") == "3/3", 60, "status ready 3/3")
    assert cluster.kubectl("get", "qwi", "scaled", "-n", namespace, "-o", "jsonpath={.status.readyReplicas}").stdout == "3"


def test_crash_looping_pod_turns_ready_false_and_degraded(operator, k8s, namespace):
    create(k8s, namespace, "crashy", {})
    wait_condition(k8s, namespace, "crashy", "Ready", "True")
    pod = pods(k8s, namespace, "crashy")[0]
    client.CoreV1Api(k8s).patch_namespaced_pod(pod.metadata.name, namespace, {"metadata": {"labels": {"stage.qwenops.io/crash-loop": "true"}}})
    degraded = wait_condition(k8s, namespace, "crashy", "Degraded", "True", "CrashLoop")
    assert pod.metadata.name in degraded["message"] and "vllm" in degraded["message"]
    ready = condition(k8s, namespace, "crashy", "Ready")
    assert ready["status"] == "False" and ready["reason"] == "CrashLoop"
    wait_until(lambda: any(e.reason == "CrashLoop" and e.type == "Warning" for e in events_for(k8s, namespace, "crashy")), 30, "a CrashLoop warning event")


def test_ninety_nine_gpus_report_unschedulable(operator, k8s, namespace):
    create(k8s, namespace, "greedy", {"resources": {"gpu": {"count": 99}}})
    ready = wait_condition(k8s, namespace, "greedy", "Ready", "False", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in ready["message"]
    assert condition(k8s, namespace, "greedy", "Degraded")["reason"] == "Unschedulable"


def test_model_loading_is_reported_while_the_startup_probe_runs(operator, k8s, namespace):
    create(k8s, namespace, "loading", {})
    wait_condition(k8s, namespace, "loading", "Ready", "True")
    pod = pods(k8s, namespace, "loading")[0]
    client.CoreV1Api(k8s).patch_namespaced_pod(pod.metadata.name, namespace, {"metadata": {"labels": {"stage.qwenops.io/model-loading": "true"}}})
    wait_condition(k8s, namespace, "loading", "Ready", "False", "ModelLoading")
    assert condition(k8s, namespace, "loading", "Progressing")["status"] == "True"
    assert condition(k8s, namespace, "loading", "Degraded")["status"] == "False"


def test_deleting_the_resource_removes_everything_it_made(operator, k8s, namespace):
    create(k8s, namespace, "doomed", {"replicas": 2})
    wait_condition(k8s, namespace, "doomed", "Ready", "True")
    core, apps, policy = client.CoreV1Api(k8s), client.AppsV1Api(k8s), client.PolicyV1Api(k8s)
    selector = "app.kubernetes.io/instance=doomed"
    assert apps.list_namespaced_deployment(namespace, label_selector=selector).items
    assert policy.list_namespaced_pod_disruption_budget(namespace, label_selector=selector).items
    client.CustomObjectsApi(k8s).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "doomed")

    def all_gone():
        return not (
            apps.list_namespaced_deployment(namespace, label_selector=selector).items
            or core.list_namespaced_service(namespace, label_selector=selector).items
            or core.list_namespaced_persistent_volume_claim(namespace, label_selector=selector).items
            or policy.list_namespaced_pod_disruption_budget(namespace, label_selector=selector).items
            or core.list_namespaced_config_map(namespace, label_selector=selector).items
            or core.list_namespaced_pod(namespace, label_selector=selector).items
        )

    wait_until(all_gone, 90, "every child to be garbage collected")


def test_deleted_and_edited_children_return_to_the_spec(operator, k8s, namespace):
    create(k8s, namespace, "drift", {})
    wait_condition(k8s, namespace, "drift", "Ready", "True")
    core, apps = client.CoreV1Api(k8s), client.AppsV1Api(k8s)
    original = apps.read_namespaced_deployment("drift", namespace).spec.template.spec.containers[0]

    core.delete_namespaced_service("drift", namespace)
    body = {"spec": {"template": {"spec": {"containers": [{"name": "vllm", "image": "registry.invalid/hand-edited:1"}]}}}}
    apps.patch_namespaced_deployment("drift", namespace, body)

    wait_until(lambda: core.read_namespaced_service("drift", namespace), 2 * operator.resync_seconds + 10, "the Service to come back")
    wait_until(
        lambda: apps.read_namespaced_deployment("drift", namespace).spec.template.spec.containers[0].image == original.image,
        2 * operator.resync_seconds + 10, "the image to return to the spec",
    )


def test_resync_of_an_unchanged_resource_makes_no_writes(operator, cluster, k8s, namespace, tmp_path):
    # Without a ServiceMonitor and PrometheusRule: nothing of this resource then depends on the Prometheus Operator's
    # CRDs, which other modules (test_monitoring, test_platform, test_helm_install) install and remove meanwhile.
    create(k8s, namespace, "steady", {"replicas": 2, "monitoring": {"serviceMonitor": False, "prometheusRule": False}})
    wait_condition(k8s, namespace, "steady", "Ready", "True")
    selector = "app.kubernetes.io/instance=steady"

    def versions() -> dict[str, str]:
        found = {"qwi": get(k8s, namespace, "steady")["metadata"]["resourceVersion"]}
        for d in client.AppsV1Api(k8s).list_namespaced_deployment(namespace, label_selector=selector).items:
            found[f"deployment/{d.metadata.name}"] = d.metadata.resource_version
        for s in client.CoreV1Api(k8s).list_namespaced_service(namespace, label_selector=selector).items:
            found[f"service/{s.metadata.name}"] = s.metadata.resource_version
        for c in client.CoreV1Api(k8s).list_namespaced_config_map(namespace, label_selector=selector).items:
            found[f"configmap/{c.metadata.name}"] = c.metadata.resource_version
        return found

    # A second operator that watches only this namespace: its request counters then speak of this
    # resource alone (the session operator also serves other tests' namespaces). It adopts a
    # resource that is already Ready, so even its first reconcile must write nothing.
    time.sleep(operator.resync_seconds + 1)  # let the rollout's last status write land
    before_versions = versions()
    watcher = start_operator(cluster, tmp_path / "namespaced-operator.log", "--namespace", namespace)
    try:
        def reconciles() -> float:
            return sum(v for k, v in watcher.metrics().items() if k.startswith("qwen_operator_reconciles_total"))

        def judged() -> float:  # runs, and resyncs that found the inputs of the last run (nothing to run)
            return reconciles() + watcher.metrics().get("qwen_operator_resyncs_unchanged_total", 0.0)

        wait_until(lambda: reconciles() > 0, 30, "the namespaced operator to reconcile")

        def reads_settled() -> dict[str, float] | None:  # the informers' first lists done (nodes and monitoring kinds list late)
            before = watcher.requests_by_kind({"get", "list"})
            time.sleep(1.5)
            return before if watcher.requests_by_kind({"get", "list"}) == before else None

        reads_after_first = wait_until(reads_settled, 30, "the operator's first lists to finish", interval=0)
        judged_after_first = judged()
        time.sleep(3 * watcher.resync_seconds + 1)
        assert judged() >= judged_after_first + 2, "no resync happened during the observation window"
        # The resync judges from the watch-fed caches: a steady state reads nothing either. The informers of the
        # monitoring kinds are left out: they start, fail and list again as other modules install and remove
        # the Prometheus Operator's CRDs.
        monitoring_kinds = {"ServiceMonitor", "PrometheusRule"}
        reads = {kind: n for kind, n in watcher.requests_by_kind({"get", "list"}).items() if kind not in monitoring_kinds}
        assert reads == {kind: n for kind, n in reads_after_first.items() if kind not in monitoring_kinds}, watcher.log_text()[-3000:]
        writes = watcher.requests(set(WRITE_VERBS))
    finally:
        stop_operator(watcher)
    assert writes == 0, watcher.log_text()[-3000:]
    assert versions() == before_versions


def test_unknown_model_is_reported_not_retried_and_recovers_when_fixed(operator, k8s, namespace):
    create(k8s, namespace, "mystery", {"model": {"name": "someone/not-in-the-catalog"}})
    ready = wait_condition(k8s, namespace, "mystery", "Ready", "False", "UnknownModel")
    assert "maxModelLen" in ready["message"]
    assert condition(k8s, namespace, "mystery", "Degraded")["status"] == "True"
    wait_until(lambda: any(e.reason == "UnknownModel" and e.type == "Warning" for e in events_for(k8s, namespace, "mystery")), 30, "an UnknownModel event")
    with pytest.raises(ApiException) as missing:
        client.AppsV1Api(k8s).read_namespaced_deployment("mystery", namespace)
    assert missing.value.status == 404

    patch_spec(k8s, namespace, "mystery", {"model": {"maxModelLen": 8192}})
    wait_condition(k8s, namespace, "mystery", "Ready", "True")
    args = client.AppsV1Api(k8s).read_namespaced_deployment("mystery", namespace).spec.template.spec.containers[0].args
    assert args[0] == "someone/not-in-the-catalog" and "8192" in args


def test_missing_secret_blocks_until_it_appears(operator, k8s, namespace):
    create(k8s, namespace, "keyed", {"auth": {"apiKeySecretRef": {"name": "qwen-keys", "key": "api-key"}}})
    ready = wait_condition(k8s, namespace, "keyed", "Ready", "False", "SecretNotFound")
    assert "qwen-keys" in ready["message"]
    client.CoreV1Api(k8s).create_namespaced_secret(namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="qwen-keys"), string_data={"api-key": "sk-test-0123456789"}))
    wait_condition(k8s, namespace, "keyed", "Ready", "True", timeout=operator.resync_seconds * 3 + 30)


def test_resources_carry_no_finalizer_so_they_delete_without_the_operator(operator, k8s, namespace):
    # kopf timers and daemons would add a finalizer, and a QwenInference (and its namespace) could then
    # not be deleted while the operator is down or uninstalled. The resync rides kopf's re-lists instead.
    create(k8s, namespace, "plain", {})
    wait_condition(k8s, namespace, "plain", "Ready", "True")
    def judged(samples: dict[str, float]) -> float:  # runs, and resyncs that found nothing to run
        return sum(v for k, v in samples.items() if k.startswith(("qwen_operator_reconciles_total", "qwen_operator_resyncs_unchanged_total")))

    before = judged(operator.metrics())
    time.sleep(2 * operator.resync_seconds + 1)
    assert judged(operator.metrics()) > before, "no resync ran"
    body = get(k8s, namespace, "plain")
    assert not body["metadata"].get("finalizers"), body["metadata"].get("finalizers")
    assert not any(k.startswith("kopf.zalando.org") for k in body["metadata"].get("annotations", {}))


def test_a_namespace_selector_serves_only_the_namespaces_it_matches(cluster, k8s, tmp_path):
    """`--namespace-selector` (chart: watchNamespaceSelector): an operator serves the namespaces whose
    labels match, leaves the others untouched, and takes a namespace over once it is labelled."""
    import uuid

    core = client.CoreV1Api(k8s)
    mark = uuid.uuid4().hex[:8]
    served, other = f"selected-{mark}", f"not-selected-{mark}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=served, labels={"qwen-tests": "true", "qwen-tests-selector": mark})))
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other, labels={"qwen-tests": "true"})))
    operator = start_operator(cluster, tmp_path / "selector-operator.log", "--all-namespaces", "--namespace-selector", f"qwen-tests-selector={mark}")
    try:
        wait_until(lambda: core.read_namespaced_service_account("default", served) and core.read_namespaced_service_account("default", other), 30, "service accounts")
        create(k8s, served, "chosen", {})
        create(k8s, other, "ignored", {})
        wait_condition(k8s, served, "chosen", "Ready", "True")
        time.sleep(operator.resync_seconds + 1)  # a resync judged every known resource meanwhile
        assert "status" not in get(k8s, other, "ignored")
        assert client.AppsV1Api(k8s).list_namespaced_deployment(other).items == []

        core.patch_namespace(other, {"metadata": {"labels": {"qwen-tests-selector": mark}}})
        wait_condition(k8s, other, "ignored", "Ready", "True")
    finally:
        stop_operator(operator)
        for name in (served, other):
            core.delete_namespace(name)
    assert "Traceback" not in operator.log_text(), operator.log_text()[-3000:]
