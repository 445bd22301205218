"""Never wrong, never unsafe (issue 9): each defect an outside review found, against the real API server.

Each test names the defect it guards. They fail on the operator before issue 9 and pass after.
"""

from __future__ import annotations

import base64
import copy
import json
import time
import uuid

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from conftest import REPO, wait_until
from qwen_operator.k8s.client import KubeApi, KubeError
from qwen_resources import GROUP, PLURAL, VERSION, condition, create, events_for, get, live_pods, patch_spec, qwi, wait_condition, wait_ready

pytestmark = pytest.mark.cluster

CRD_NAME = f"{PLURAL}.{GROUP}"


def refused(k8s, namespace: str, name: str, spec: dict) -> str:
    """Creates (dry run) and returns the API server's refusal message; fails if it was admitted."""
    with pytest.raises(ApiException) as caught:
        client.CustomObjectsApi(k8s).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, qwi(name, spec), dry_run="All")
    assert caught.value.status == 422, caught.value.body
    return json.loads(caught.value.body)["message"]


def admitted(k8s, namespace: str, name: str, spec: dict) -> None:
    client.CustomObjectsApi(k8s).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, qwi(name, spec), dry_run="All")


# 1. One bad resource stalls resync for all the others.


def test_affinity_tolerations_and_spread_are_typed_by_kubernetes_schemas(operator, k8s, namespace):
    assert "nodeAffinity" in refused(k8s, namespace, "bad", {"scheduling": {"affinity": {"nodeAffinity": "yes"}}})
    message = refused(k8s, namespace, "bad", {"scheduling": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"operator": "In"}]}]}}}}})
    assert "key" in message and "Required" in message
    assert "whenUnsatisfiable" in refused(k8s, namespace, "bad", {"scheduling": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone"}]}})
    assert "tolerations" in refused(k8s, namespace, "bad", {"scheduling": {"tolerations": [{"key": "a", "operator": "Sometimes"}]}})
    admitted(k8s, namespace, "good", {"scheduling": {
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 10, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"a": "b"}}}}]}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}],
    }})


@pytest.fixture
def loose_crd(cluster, k8s):
    """The CRD as an older release shipped it: affinity accepted as any object. Restored afterwards."""
    ext = client.ApiextensionsV1Api(k8s)
    original = yaml.safe_load((REPO / "crds" / "inference.qwenops.io_qweninferences.yaml").read_text())
    loose = copy.deepcopy(original)
    scheduling = loose["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["scheduling"]
    scheduling["properties"]["affinity"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager", "qwen-tests", "-f", "-", input=yaml.safe_dump(loose))
    time.sleep(2)  # the API server swaps the validator a moment after the CRD update
    yield
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager", "qwen-tests", "-f", str(REPO / "crds"))
    wait_until(lambda: ext.read_custom_resource_definition(CRD_NAME).metadata.generation, 30, "the CRD restored")
    time.sleep(2)


def test_a_bad_resource_stored_earlier_gets_a_status_and_never_stalls_the_others(operator, loose_crd, k8s, namespace):
    # Names sort before and after the bad one: a sequential resync that stopped at it would skip "zz-good".
    create(k8s, namespace, "aa-good", {})
    client.CustomObjectsApi(k8s).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, qwi("mm-bad", {"scheduling": {"affinity": {"nodeAffinity": "yes"}}}))
    create(k8s, namespace, "zz-good", {})
    ready = wait_condition(k8s, namespace, "mm-bad", "Ready", "False", "InvalidSpec")
    assert "affinity.nodeAffinity: expected object" in ready["message"]
    wait_ready(k8s, namespace, "aa-good")
    wait_ready(k8s, namespace, "zz-good")
    # Resync repairs the others while the bad one keeps failing.
    client.CoreV1Api(k8s).delete_namespaced_service("zz-good", namespace)
    wait_until(lambda: client.CoreV1Api(k8s).read_namespaced_service("zz-good", namespace), 2 * operator.resync_seconds + 15, "zz-good's Service repaired")
    assert "Traceback" not in operator.log_text()


# 2. Names that cannot work are admitted.


def test_names_whose_children_would_be_invalid_are_refused_at_admission(operator, k8s, namespace):
    assert "at most 56 characters" in refused(k8s, namespace, "a" * 57, {})
    assert "valid Service name" in refused(k8s, namespace, "chat.v2", {})
    assert "valid Service name" in refused(k8s, namespace, "1chat", {})
    admitted(k8s, namespace, "a" * 56, {})


# 3. The operator takes over objects it did not create.


def test_objects_made_by_someone_else_are_never_adopted_changed_or_deleted(operator, k8s, namespace):
    core, apps = client.CoreV1Api(k8s), client.AppsV1Api(k8s)
    users_labels = {"app": "users-nginx"}
    core.create_namespaced_service(namespace, {"metadata": {"name": "taken"}, "spec": {"selector": users_labels, "ports": [{"name": "web", "port": 80}]}})
    apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": "taken"},
        "spec": {"replicas": 1, "selector": {"matchLabels": users_labels}, "template": {"metadata": {"labels": users_labels},
                 "spec": {"containers": [{"name": "nginx", "image": "nginx:stand-in-never-pulled"}],
                          "tolerations": [{"operator": "Exists"}]}}},
    })
    create(k8s, namespace, "taken", {})
    ready = wait_condition(k8s, namespace, "taken", "Ready", "False", "NameConflict")
    assert f"{namespace}/taken" in ready["message"] and "no controlling owner" in ready["message"]
    wait_until(lambda: any(e.reason == "NameConflict" and e.type == "Warning" for e in events_for(k8s, namespace, "taken")), 30, "a NameConflict event")
    time.sleep(operator.resync_seconds + 1)  # a resync too must leave them alone
    service = core.read_namespaced_service("taken", namespace)
    deployment = apps.read_namespaced_deployment("taken", namespace)
    assert service.spec.selector == users_labels and not service.metadata.owner_references
    assert deployment.spec.template.spec.containers[0].name == "nginx" and not deployment.metadata.owner_references
    assert condition(k8s, namespace, "taken", "Ready")["status"] == "False"

    client.CustomObjectsApi(k8s).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "taken")
    time.sleep(5)  # garbage collection would have run by now
    assert core.read_namespaced_service("taken", namespace).spec.selector == users_labels
    assert apps.read_namespaced_deployment("taken", namespace).metadata.uid == deployment.metadata.uid


def test_an_apply_that_may_only_create_never_changes_an_existing_object(k8s, namespace):
    """The operator makes a child its caches do not show with KubeApi.apply(create_only=True): on the real API
    server it creates when the name is free, and is refused (409) without a change when anyone holds the name."""
    api = KubeApi(k8s, "qwen-operator-test")
    core = client.CoreV1Api(k8s)
    users = core.create_namespaced_config_map(namespace, {"metadata": {"name": "users"}, "data": {"owner": "a person"}})

    def config_map(name: str) -> dict:
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}, "data": {"owner": "the operator"}}

    with pytest.raises(KubeError) as refusal:
        api.apply(config_map("users"), create_only=True)
    assert refusal.value.status == 409 and not refusal.value.transient
    after = core.read_namespaced_config_map("users", namespace)
    assert after.data == {"owner": "a person"} and after.metadata.resource_version == users.metadata.resource_version

    made = api.apply(config_map("made"), create_only=True)
    assert made["data"] == {"owner": "the operator"} and made["metadata"]["resourceVersion"] != "1"
    assert [(m["manager"], m["operation"]) for m in made["metadata"]["managedFields"]] == [("qwen-operator-test", "Apply")]
    with pytest.raises(KubeError):  # and once made, not again
        api.apply(config_map("made"), create_only=True)


# 4. An empty API key disables authentication while reporting Ready.


@pytest.mark.parametrize("value", ["", "  \n"])
def test_an_empty_api_key_is_an_error_and_never_rolled_out(operator, k8s, namespace, value):
    core = client.CoreV1Api(k8s)
    core.create_namespaced_secret(namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="keys"), data={"api-key": base64.b64encode(value.encode()).decode()}))
    create(k8s, namespace, "keyed", {"auth": {"apiKeySecretRef": {"name": "keys", "key": "api-key"}}})
    ready = wait_condition(k8s, namespace, "keyed", "Ready", "False", "SecretKeyEmpty")
    assert "keys" in ready["message"] and "empty" in ready["message"]
    with pytest.raises(ApiException) as missing:
        client.AppsV1Api(k8s).read_namespaced_deployment("keyed", namespace)
    assert missing.value.status == 404
    core.patch_namespaced_secret("keys", namespace, {"stringData": {"api-key": "sk-test-0123456789"}})
    wait_ready(k8s, namespace, "keyed", timeout=3 * operator.resync_seconds + 30)
    container = client.AppsV1Api(k8s).read_namespaced_deployment("keyed", namespace).spec.template.spec.containers[0]
    # The pod itself refuses to start vLLM with an empty key (a Secret emptied after the rollout).
    assert container.command[:2] == ["/bin/sh", "-c"] and "exec vllm serve" in container.command[2]


# 5. The forbidden-flag rule in extraArgs is bypassed with underscores.


@pytest.mark.parametrize(
    "args, named",
    [
        (["--api_key=sk-do-not-echo"], "--api-key"),
        (["--api-key", "sk-do-not-echo"], "--api-key"),
        (["--tensor_parallel_size=4"], "--tensor-parallel-size"),
        (["--max_model_len", "1024"], "--max-model-len"),
        (["-tp", "4"], "-tp"),
        (["--config", "f.yaml"], "--config"),
        (["--api-k", "sk-do-not-echo"], "--api-k"),
        (["--enable-reasoning"], "--enable-reasoning"),
    ],
)
def test_extra_args_are_judged_as_vllm_parses_them(operator, k8s, namespace, args, named):
    message = refused(k8s, namespace, "flags", {"engine": {"extraArgs": args}})
    # The API server quotes the refused item itself ('Invalid value: "..."'); the rule's own words never add it.
    ours = message.split('": ', 1)[-1]
    assert named in ours and "sk-do-not-echo" not in ours


def test_valid_extra_args_pass(operator, k8s, namespace):
    admitted(k8s, namespace, "flags", {"engine": {"extraArgs": ["--max-loras", "4", "--enable-prefix-caching", "--no-enable-log-requests", "-O3", "--max-logprobs", "-1"]}})


# 6. gpuMemoryUtilization bounds; an empty image.


@pytest.mark.parametrize("value", [0, 1, 0.05, 1.5])
def test_gpu_memory_utilization_bounds_hold_for_integers_too(operator, k8s, namespace, value):
    # The API server truncates fractional bounds for integer values (0 passed, 1 was "at most 0").
    message = refused(k8s, namespace, "gmu", {"engine": {"gpuMemoryUtilization": value}})
    assert "gpuMemoryUtilization must be at least 0.1 and at most 0.99" in message


def test_engine_bounds_are_right_and_clear(operator, k8s, namespace):
    admitted(k8s, namespace, "gmu", {"engine": {"gpuMemoryUtilization": 0.99}})
    admitted(k8s, namespace, "gmu", {"engine": {"gpuMemoryUtilization": 0.1}})
    assert "image" in refused(k8s, namespace, "img", {"engine": {"image": ""}})


# 7. A child whose apply keeps failing is never repaired, and the status hides it.


def test_a_service_edited_into_an_unappliable_state_is_recreated(operator, k8s, namespace):
    core = client.CoreV1Api(k8s)
    create(k8s, namespace, "ports", {})
    wait_ready(k8s, namespace, "ports")
    before = core.read_namespaced_service("ports", namespace)
    # As `kubectl edit` would: the one port changed in place, under another field manager.
    core.patch_namespaced_service("ports", namespace, [{"op": "replace", "path": "/spec/ports/0/port", "value": 8001}])

    def repaired():
        service = core.read_namespaced_service("ports", namespace)
        return service.metadata.uid != before.metadata.uid and [p.port for p in service.spec.ports] == [8000]

    wait_until(repaired, 2 * operator.resync_seconds + 15, "the Service recreated with port 8000")
    wait_ready(k8s, namespace, "ports")


def test_a_child_the_api_refuses_is_reported_in_ready(operator, k8s, namespace):
    # whenUnsatisfiable is a string in the schema, so admission passes; the Deployment API refuses it.
    create(k8s, namespace, "refused", {"scheduling": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "Sometimes"}]}})
    ready = wait_condition(k8s, namespace, "refused", "Ready", "False", "ApplyFailed")
    assert "Deployment refused" in ready["message"] and "whenUnsatisfiable" in ready["message"]
    assert condition(k8s, namespace, "refused", "Progressing")["status"] == "False"
    assert condition(k8s, namespace, "refused", "Degraded")["status"] == "True"
    patch_spec(k8s, namespace, "refused", {"scheduling": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}]}})
    wait_ready(k8s, namespace, "refused")


def test_a_bad_spec_change_never_deletes_a_serving_deployment(operator, k8s, namespace):
    apps = client.AppsV1Api(k8s)
    create(k8s, namespace, "serving", {})
    wait_ready(k8s, namespace, "serving")
    uid = apps.read_namespaced_deployment("serving", namespace).metadata.uid
    patch_spec(k8s, namespace, "serving", {"scheduling": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "Sometimes"}]}})
    wait_condition(k8s, namespace, "serving", "Ready", "False", "ApplyFailed")
    time.sleep(operator.resync_seconds + 1)
    assert apps.read_namespaced_deployment("serving", namespace).metadata.uid == uid


# 8. Problems the Deployment reports are not surfaced.


def test_a_missing_priority_class_is_the_reason(operator, k8s, namespace):
    create(k8s, namespace, "prio", {"scheduling": {"priorityClassName": "no-such-class"}})
    ready = wait_condition(k8s, namespace, "prio", "Ready", "False", "ReplicaFailure", timeout=90)
    assert "no-such-class" in ready["message"]
    assert condition(k8s, namespace, "prio", "Degraded")["status"] == "True"


# 9. Status during a rollout lies.


def test_ready_is_false_while_the_old_pod_serves_a_stuck_rollout(operator, k8s, namespace):
    create(k8s, namespace, "rolling", {})
    wait_ready(k8s, namespace, "rolling")
    patch_spec(k8s, namespace, "rolling", {"resources": {"gpu": {"count": 99}}})  # the new pod can never schedule
    generation = get(k8s, namespace, "rolling")["metadata"]["generation"]

    def stuck():
        status = get(k8s, namespace, "rolling").get("status") or {}
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
        # The new pod cannot schedule while the old one keeps its GPU and maxUnavailable is 0 (the default), which
        # status.rollout_blocked_by_capacity names; its message carries the scheduler's words.
        return status.get("observedGeneration") == generation and ready.get("reason") == "RolloutBlockedByCapacity" and ready

    ready = wait_until(stuck, 60, "Ready=False RolloutBlockedByCapacity for the new generation")
    assert "Insufficient nvidia.com/gpu" in ready["message"]
    assert ready["status"] == "False"
    assert condition(k8s, namespace, "rolling", "Progressing")["reason"] != "Complete"
    assert len([p for p in live_pods(k8s, namespace, "rolling") if any(c.ready for c in p.status.container_statuses or [])]) == 1


# 10. Removing an optional field does not roll it out.


def test_removed_optional_fields_are_rolled_out(operator, k8s, namespace):
    apps = client.AppsV1Api(k8s)
    create(k8s, namespace, "optional", {"scheduling": {"tolerations": [{"key": "team", "operator": "Exists"}], "nodeSelector": {"node-role.qwenops.io/gpu": "true"}},
                                          # The preStop sleep (not the deep health agent's hook) is the optional field removed here.
                                          "engine": {"preStopSleepSeconds": 5, "deepHealth": {"enabled": False}}})
    wait_ready(k8s, namespace, "optional")
    pod_spec = apps.read_namespaced_deployment("optional", namespace).spec.template.spec
    assert any(t.key == "team" for t in pod_spec.tolerations or []) and pod_spec.node_selector
    patch_spec(k8s, namespace, "optional", {"scheduling": {"tolerations": None, "nodeSelector": None}, "engine": {"preStopSleepSeconds": 0}})

    def removed():
        spec = apps.read_namespaced_deployment("optional", namespace).spec.template.spec
        return not any(t.key == "team" for t in spec.tolerations or []) and not spec.node_selector and spec.containers[0].lifecycle is None

    wait_until(removed, 30, "tolerations, nodeSelector and preStop removed from the Deployment")


# 11. Turning autoscaling on can cut a serving Deployment to 1.


def test_enabling_autoscaling_keeps_every_serving_pod_and_disabling_returns_to_spec_replicas(operator, k8s, namespace):
    apps = client.AppsV1Api(k8s)
    create(k8s, namespace, "handover", {"replicas": 3})
    wait_ready(k8s, namespace, "handover")
    names = {p.metadata.name for p in live_pods(k8s, namespace, "handover")}
    assert len(names) == 3
    patch_spec(k8s, namespace, "handover", {"autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4}})
    wait_until(lambda: client.AutoscalingV2Api(k8s).read_namespaced_horizontal_pod_autoscaler("handover", namespace), 30, "the HPA")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # the window in which a reset to 1 would show
        assert apps.read_namespaced_deployment("handover", namespace).spec.replicas == 3
        assert {p.metadata.name for p in live_pods(k8s, namespace, "handover")} == names
        time.sleep(0.5)
    managers = {m.manager for m in apps.read_namespaced_deployment("handover", namespace).metadata.managed_fields
                if m.fields_v1 and "f:replicas" in (m.fields_v1.get("f:spec") or {})}
    assert "qwen-operator" not in managers  # the HPA side owns replicas now

    # Disabling: the operator takes replicas back at spec.replicas (documented in the README).
    patch_spec(k8s, namespace, "handover", {"replicas": 2, "autoscaling": {"enabled": False}})
    wait_until(lambda: apps.read_namespaced_deployment("handover", namespace).spec.replicas == 2, 30, "replicas back to spec.replicas")
    wait_ready(k8s, namespace, "handover")
