"""The local control plane is a real Kubernetes: scheduling on fake GPU nodes, garbage collection,
CEL admission, the HPA controller, PVC provisioning, the crash-loop stage and aggregation."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from conftest import REPO, wait_crds_established, wait_until

pytestmark = pytest.mark.cluster

PINNED = dict(
    line.split("=", 1) for line in (REPO / "hack" / "versions.env").read_text().splitlines() if re.match(r"^[A-Z_]+=", line)
)


def gpu_deployment(name: str, gpus: int, replicas: int = 1) -> client.V1Deployment:
    labels = {"app": name}
    container = client.V1Container(
        name="main", image="registry.invalid/stand-in:1",
        resources=client.V1ResourceRequirements(limits={"nvidia.com/gpu": str(gpus)}),
    )
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels), spec=client.V1PodSpec(containers=[container])),
        ),
    )


def pods_of(core: client.CoreV1Api, namespace: str, app: str) -> list[client.V1Pod]:
    return core.list_namespaced_pod(namespace, label_selector=f"app={app}").items


def test_server_version_is_the_pinned_one(cluster):
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == PINNED["KUBERNETES_VERSION"]
    client_minor = int(version["clientVersion"]["minor"])
    assert abs(client_minor - int(version["serverVersion"]["minor"])) <= 1


def test_fake_gpu_nodes_are_ready_and_labelled(k8s):
    nodes = client.CoreV1Api(k8s).list_node(label_selector="type=kwok").items
    gpu_nodes = [n for n in nodes if "nvidia.com/gpu" in (n.status.allocatable or {})]
    cpu_nodes = [n for n in nodes if "nvidia.com/gpu" not in (n.status.allocatable or {})]
    assert len(gpu_nodes) >= 3 and len(cpu_nodes) >= 1
    for node in gpu_nodes:
        ready = {c.type: c.status for c in node.status.conditions}["Ready"]
        assert ready == "True", node.metadata.name
        assert node.status.allocatable["nvidia.com/gpu"] == "8"
        for label in ("nvidia.com/gpu.product", "nvidia.com/gpu.memory", "nvidia.com/gpu.compute.major", "nvidia.com/gpu.compute.minor"):
            assert node.metadata.labels.get(label), f"{node.metadata.name} lacks {label}"


def test_gpu_deployment_is_scheduled_on_a_gpu_node_and_becomes_ready(k8s, namespace):
    apps, core = client.AppsV1Api(k8s), client.CoreV1Api(k8s)
    apps.create_namespaced_deployment(namespace, gpu_deployment("one-gpu", gpus=1, replicas=2))

    def ready():
        d = apps.read_namespaced_deployment("one-gpu", namespace)
        return d.status.ready_replicas == 2

    wait_until(ready, 60, "2 ready replicas")
    gpu_nodes = {n.metadata.name for n in core.list_node(label_selector="nvidia.com/gpu.present=true").items}
    for pod in pods_of(core, namespace, "one-gpu"):
        assert pod.spec.node_name in gpu_nodes, f"{pod.metadata.name} landed on {pod.spec.node_name}"
        assert pod.status.phase == "Running"


def test_too_many_gpus_stay_pending_unschedulable(k8s, namespace):
    apps, core = client.AppsV1Api(k8s), client.CoreV1Api(k8s)
    apps.create_namespaced_deployment(namespace, gpu_deployment("greedy", gpus=99))

    def unschedulable():
        for pod in pods_of(core, namespace, "greedy"):
            for c in pod.status.conditions or []:
                if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
                    return c
        return None

    condition = wait_until(unschedulable, 60, "an Unschedulable pod")
    assert "Insufficient nvidia.com/gpu" in condition.message
    assert all(p.status.phase == "Pending" for p in pods_of(core, namespace, "greedy"))


def test_deleting_an_owner_garbage_collects_what_it_owns(k8s, namespace):
    core = client.CoreV1Api(k8s)
    owner = core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner")))
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="child", owner_references=[ref])))
    core.delete_namespaced_config_map("owner", namespace)

    def child_gone():
        try:
            core.read_namespaced_config_map("child", namespace)
        except ApiException as error:
            return error.status == 404
        return False

    wait_until(child_gone, 60, "the garbage collector to delete the child")


CEL_CRD = textwrap.dedent(
    """
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata: {name: widgets.celtest.qwenops.io}
    spec:
      group: celtest.qwenops.io
      scope: Namespaced
      names: {plural: widgets, singular: widget, kind: Widget}
      versions:
      - name: v1
        served: true
        storage: true
        schema:
          openAPIV3Schema:
            type: object
            properties:
              spec:
                type: object
                x-kubernetes-validations:
                - rule: "self.min <= self.max"
                  message: "min must not exceed max"
                properties:
                  min: {type: integer}
                  max: {type: integer}
    """
)


def test_crd_with_a_cel_rule_refuses_an_invalid_object(cluster, namespace):
    cluster.apply(CEL_CRD)
    wait_crds_established(cluster, ["widgets.celtest.qwenops.io"])
    good = "apiVersion: celtest.qwenops.io/v1\nkind: Widget\nmetadata: {name: good}\nspec: {min: 1, max: 2}\n"
    bad = "apiVersion: celtest.qwenops.io/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {min: 3, max: 2}\n"
    wait_until(lambda: cluster.kubectl("apply", "-n", namespace, "-f", "-", input=good, check=False).returncode == 0, 30, "the Widget API to serve")
    refused = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=bad, check=False)
    assert refused.returncode != 0
    assert "min must not exceed max" in refused.stderr


def test_hpa_is_accepted_and_the_controller_reports_its_conditions(k8s, namespace):
    apps = client.AppsV1Api(k8s)
    apps.create_namespaced_deployment(namespace, gpu_deployment("scaled", gpus=1))
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "scaled"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "scaled"},
            "minReplicas": 1,
            "maxReplicas": 3,
            "metrics": [{"type": "Pods", "pods": {"metric": {"name": "vllm_num_requests_waiting"}, "target": {"type": "AverageValue", "averageValue": "5"}}}],
        },
    }
    autoscaling = client.AutoscalingV2Api(k8s)
    autoscaling.create_namespaced_horizontal_pod_autoscaler(namespace, hpa)

    def conditions():
        current = autoscaling.read_namespaced_horizontal_pod_autoscaler("scaled", namespace)
        return {c.type: c for c in current.status.conditions or []}

    found = wait_until(lambda: (c := conditions()) and "ScalingActive" in c and c, 60, "HPA conditions from the controller")
    assert found["AbleToScale"].status == "True"
    # No custom metrics API is registered in this test, so the controller says it cannot get the metric.
    assert found["ScalingActive"].status == "False"
    assert found["ScalingActive"].reason == "FailedGetPodsMetric"


def test_pvc_is_provisioned_and_bound(k8s, namespace):
    core = client.CoreV1Api(k8s)
    pvc = client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name="cache"),
        spec=client.V1PersistentVolumeClaimSpec(access_modes=["ReadWriteMany"], resources=client.V1VolumeResourceRequirements(requests={"storage": "20Gi"})),
    )
    core.create_namespaced_persistent_volume_claim(namespace, pvc)
    wait_until(lambda: core.read_namespaced_persistent_volume_claim("cache", namespace).status.phase == "Bound", 30, "the PVC to bind")


def test_crash_loop_stage_raises_restart_count(k8s, namespace):
    apps, core = client.AppsV1Api(k8s), client.CoreV1Api(k8s)
    apps.create_namespaced_deployment(namespace, gpu_deployment("crashy", gpus=1))
    pod = wait_until(lambda: [p for p in pods_of(core, namespace, "crashy") if p.status.phase == "Running"], 60, "a running pod")[0]
    core.patch_namespaced_pod(pod.metadata.name, namespace, {"metadata": {"labels": {"stage.qwenops.io/crash-loop": "true"}}})

    def restarts() -> int:
        status = core.read_namespaced_pod(pod.metadata.name, namespace).status
        container = (status.container_statuses or [None])[0]
        if container is None or not container.state.waiting:
            return 0
        assert container.state.waiting.reason == "CrashLoopBackOff"
        return container.restart_count

    first = wait_until(restarts, 30, "a first restart")
    wait_until(lambda: restarts() > first, 30, "restartCount to keep rising")
    ready = {c.type: c.status for c in core.read_namespaced_pod(pod.metadata.name, namespace).status.conditions}
    assert ready["Ready"] == "False"


def test_aggregation_layer_is_configured(cluster):
    # The front-proxy client certificate is what the aggregator presents to an aggregated API server;
    # without these flags custom.metrics.k8s.io could not be served.
    config = cluster.kubectl("get", "configmap", "extension-apiserver-authentication", "-n", "kube-system", "-o", "json").stdout
    data = json.loads(config)["data"]
    assert "requestheader-client-ca-file" in data
    assert json.loads(data["requestheader-allowed-names"]) == ["front-proxy-client"]


def test_fake_nodes_renew_their_leases(k8s):
    # Without lease renewal the node lifecycle controller marks every node NotReady after its grace
    # period and evicts readiness from their pods.
    leases = client.CoordinationV1Api(k8s).list_namespaced_lease("kube-node-lease").items
    nodes = {n.metadata.name for n in client.CoreV1Api(k8s).list_node(label_selector="type=kwok").items}
    assert nodes <= {lease.metadata.name for lease in leases}
    assert all(lease.spec.lease_duration_seconds == 40 for lease in leases if lease.metadata.name in nodes)
