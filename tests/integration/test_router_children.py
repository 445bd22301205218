"""The router (spec.router) against the real local control plane, on kwok pods (nothing here connects to a pod:
kwok's pod addresses are fake; tests/realnode/test_router.py sends real traffic through the router).

One QwenInference with two engine replicas carries the module: its router children, what its Role lets the
router's ServiceAccount do (asked of the API server's own authorizer), drift repair of that Role, the Routing
condition, and turning the router off and on again. Admission refusals need no operator."""

from __future__ import annotations

import json
import uuid

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from conftest import WORKER, WORKER_LABEL, wait_until
from qwen_resources import GROUP, PLURAL, VERSION, condition, create, get, live_pods, patch_spec, qwi, wait_condition, wait_ready

pytestmark = pytest.mark.cluster

NAME = "routed"
ROUTER = f"{NAME}-router"
ENGINE_SELECTOR = {"app.kubernetes.io/name": "qwen-inference", "app.kubernetes.io/instance": NAME}
ROUTER_SELECTOR = {"app.kubernetes.io/name": "qwen-router", "app.kubernetes.io/instance": NAME}
SPEC = {"replicas": 2, "networkPolicy": {"enabled": True}, "router": {"policy": "round_robin", "resources": {"cpu": "100m", "memory": "128Mi"}}}


@pytest.fixture(scope="module")
def routed(operator, k8s, cluster) -> str:
    """A namespace of this module's worker with the routed QwenInference, Ready."""
    core = client.CoreV1Api(k8s)
    namespace = f"router-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace, labels={"qwen-tests": "true", WORKER_LABEL: WORKER})))
    wait_until(lambda: core.read_namespaced_service_account("default", namespace), 30, f"default service account in {namespace}")
    create(k8s, namespace, NAME, SPEC)
    wait_ready(k8s, namespace, NAME, timeout=120)
    yield namespace
    core.delete_namespace(namespace)


def can_i(cluster, namespace: str, verb: str, resource: str, in_namespace: str) -> bool:
    """What the API server's authorizer answers for the router's ServiceAccount (kubectl auth can-i --as)."""
    result = cluster.kubectl("auth", "can-i", verb, resource, "-n", in_namespace, f"--as=system:serviceaccount:{namespace}:{ROUTER}", check=False)
    return result.stdout.strip() == "yes"


def test_router_children_are_owned_and_the_services_select_the_right_pods(k8s, routed):
    namespace = routed
    uid = get(k8s, namespace, NAME)["metadata"]["uid"]
    apps, core, rbac = client.AppsV1Api(k8s), client.CoreV1Api(k8s), client.RbacAuthorizationV1Api(k8s)
    policy, networking = client.PolicyV1Api(k8s), client.NetworkingV1Api(k8s)
    children = {
        "Deployment": apps.read_namespaced_deployment(ROUTER, namespace),
        "ServiceAccount": core.read_namespaced_service_account(ROUTER, namespace),
        "Role": rbac.read_namespaced_role(ROUTER, namespace),
        "RoleBinding": rbac.read_namespaced_role_binding(ROUTER, namespace),
        "PodDisruptionBudget": policy.read_namespaced_pod_disruption_budget(ROUTER, namespace),
        "NetworkPolicy": networking.read_namespaced_network_policy(ROUTER, namespace),
        "Service": core.read_namespaced_service(f"{NAME}-engine", namespace),
    }
    for kind, child in children.items():
        (ref,) = child.metadata.owner_references
        assert (ref.uid, ref.controller) == (uid, True), kind
        assert child.metadata.labels["app.kubernetes.io/managed-by"] == "qwen-operator", kind

    deployment = children["Deployment"]
    (container,) = deployment.spec.template.spec.containers
    assert deployment.spec.template.spec.service_account_name == ROUTER
    assert container.command == ["vllm-router"] and container.args[container.args.index("--policy") + 1] == "round_robin"
    assert container.security_context.read_only_root_filesystem and container.security_context.run_as_non_root

    assert core.read_namespaced_service(NAME, namespace).spec.selector == ROUTER_SELECTOR
    assert children["Service"].spec.selector == ENGINE_SELECTOR
    # The engines' NetworkPolicy lets in the router only (and monitoring).
    engines_policy = networking.read_namespaced_network_policy(NAME, namespace)
    assert engines_policy.spec.ingress[0]._from[0].pod_selector.match_labels == ROUTER_SELECTOR

    # Two router pods and two engine pods, told apart by their labels.
    router_pods = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=qwen-router").items
    assert len(router_pods) == 2 and len(live_pods(k8s, namespace, NAME)) == 2


def test_the_routers_role_lets_it_watch_this_namespaces_pods_and_nothing_else(cluster, routed):
    namespace = routed
    assert can_i(cluster, namespace, "list", "pods", namespace) and can_i(cluster, namespace, "watch", "pods", namespace)
    for verb, resource in (("get", "secrets"), ("delete", "pods"), ("patch", "pods"), ("create", "pods/exec"), ("list", "services")):
        assert not can_i(cluster, namespace, verb, resource, namespace), (verb, resource)
    assert not can_i(cluster, namespace, "list", "pods", "default")  # namespaced: other namespaces stay closed


def test_a_widened_role_is_put_back(k8s, routed):
    namespace = routed
    rbac = client.RbacAuthorizationV1Api(k8s)
    widened = {"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
                         {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]}
    rbac.patch_namespaced_role(ROUTER, namespace, widened)
    wait_until(lambda: [r.resources for r in rbac.read_namespaced_role(ROUTER, namespace).rules] == [["pods"]], 30,
               "the operator to put the router's Role back")


def test_routing_condition(k8s, routed):
    namespace = routed
    routing = wait_condition(k8s, namespace, NAME, "Routing", "True", "Routing", timeout=60)
    assert routing["message"].startswith("2/2 router replicas ready, routing over the 2 engine pod(s)")
    # The router scaled to one replica: the condition follows the router Deployment.
    patch_spec(k8s, namespace, NAME, {"router": {"replicas": 1}})
    wait_until(lambda: (condition(k8s, namespace, NAME, "Routing") or {}).get("message", "").startswith("1/1 router replicas ready"), 60,
               "Routing to count one router replica")
    wait_until(lambda: not _exists(lambda: client.PolicyV1Api(k8s).read_namespaced_pod_disruption_budget(ROUTER, namespace)), 30,
               "the router's PDB to go (one replica)")


def test_turning_the_router_off_and_on(k8s, routed):
    namespace = routed
    core, apps, rbac = client.CoreV1Api(k8s), client.AppsV1Api(k8s), client.RbacAuthorizationV1Api(k8s)
    patch_spec(k8s, namespace, NAME, {"router": {"enabled": False}})
    wait_until(lambda: core.read_namespaced_service(NAME, namespace).spec.selector == ENGINE_SELECTOR, 30, "the Service to select the engines")
    for read in (lambda: apps.read_namespaced_deployment(ROUTER, namespace), lambda: rbac.read_namespaced_role(ROUTER, namespace),
                 lambda: rbac.read_namespaced_role_binding(ROUTER, namespace), lambda: core.read_namespaced_service_account(ROUTER, namespace),
                 lambda: core.read_namespaced_service(f"{NAME}-engine", namespace)):
        wait_until(lambda: not _exists(read), 30, "the router's children to be pruned")
    wait_until(lambda: condition(k8s, namespace, NAME, "Routing") is None, 30, "the Routing condition to go")
    wait_ready(k8s, namespace, NAME)
    patch_spec(k8s, namespace, NAME, {"router": {"enabled": None}})  # back to the default: on for 2 replicas
    wait_until(lambda: core.read_namespaced_service(NAME, namespace).spec.selector == ROUTER_SELECTOR, 30, "the Service to select the router")
    wait_condition(k8s, namespace, NAME, "Routing", "True", timeout=60)
    wait_ready(k8s, namespace, NAME)


def _exists(read) -> bool:
    try:
        read()
        return True
    except ApiException as error:
        if error.status == 404:
            return False
        raise


@pytest.mark.parametrize(
    ("router", "words"),
    [
        ({"policy": "random"}, 'spec.router.policy: Unsupported value: "random"'),
        ({"replicas": 0}, "spec.router.replicas: Invalid value: 0"),
        ({"image": ""}, "spec.router.image"),
        ({"resources": {"memory": "lots"}}, "spec.router.resources.memory"),
        ({"sticky": True}, 'unknown field "spec.router.sticky"'),
    ],
)
def test_admission_refuses_a_bad_router(k8s, routed, router, words):
    with pytest.raises(ApiException) as refused:
        client.CustomObjectsApi(k8s).create_namespaced_custom_object(
            GROUP, VERSION, routed, PLURAL, qwi("bad-router", {"router": router}), dry_run="All", field_validation="Strict")
    # Strict field validation refuses an unknown field while decoding (400), the schema the rest (422).
    assert refused.value.status == (400 if "unknown field" in words else 422)
    assert words in json.loads(refused.value.body)["message"], refused.value.body
