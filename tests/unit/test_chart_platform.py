"""The chart's parity items of issue 11 (cert-manager and kube-prometheus-stack have them): aggregated roles,
an operator PDB, overridable names, securityContext and affinity, optional Secret access, monitoring labels."""

from __future__ import annotations

import json

from test_chart import documents, grants, helm, the  # noqa: F401  (helm is a fixture)

# OpenShift assigns each namespace a UID range: the fixed IDs go (a null drops a default key in Helm).
OPENSHIFT = ["--set-json", 'podSecurityContext={"runAsUser": null, "runAsGroup": null, "fsGroup": null}',
             "--set-json", 'securityContext={"runAsUser": null, "runAsGroup": null}']


def operator_pod(docs: list[dict]) -> dict:
    return the(docs, "Deployment")["spec"]["template"]["spec"]


def env_of(docs: list[dict]) -> dict[str, str]:
    (container,) = operator_pod(docs)["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_aggregated_cluster_roles_give_namespace_users_qwen_inference_rights(helm: str) -> None:
    docs = documents(helm)
    edit = the(docs, "ClusterRole", "qwen-operator-edit")
    view = the(docs, "ClusterRole", "qwen-operator-view")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert {"create", "update", "patch", "delete"} <= grants(edit["rules"])[("inference.qwenops.io", "qweninferences")]
    assert grants(view["rules"])[("inference.qwenops.io", "qweninferences")] == {"get", "list", "watch"}
    assert not any(d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith(("-edit", "-view"))
                   for d in documents(helm, "--set", "rbac.aggregateToDefaultRoles=false"))


def test_operator_pdb_with_two_or_more_replicas(helm: str) -> None:
    pdb = the(documents(helm), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1 and pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert pdb["spec"]["selector"]["matchLabels"] == the(documents(helm), "Deployment")["spec"]["selector"]["matchLabels"]
    assert "PodDisruptionBudget" not in [d["kind"] for d in documents(helm, "--set", "replicaCount=1")]
    assert "PodDisruptionBudget" not in [d["kind"] for d in documents(helm, "--set", "podDisruptionBudget.enabled=false")]


def test_name_overrides(helm: str) -> None:
    renamed = documents(helm, "--set", "fullnameOverride=qwen-ctl")
    assert the(renamed, "Deployment")["metadata"]["name"] == "qwen-ctl"
    assert the(renamed, "ServiceAccount")["metadata"]["name"] == "qwen-ctl"
    short = documents(helm, "--set", "nameOverride=qwenop")
    assert the(short, "Deployment")["metadata"]["name"] == "qwen-operator-qwenop"
    assert the(short, "Deployment")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "qwenop"


def test_security_context_is_overridable_for_openshift(helm: str) -> None:
    default = operator_pod(documents(helm))
    assert default["securityContext"]["runAsUser"] == 65532
    pod = operator_pod(documents(helm, *OPENSHIFT))
    assert "runAsUser" not in pod["securityContext"] and pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert "runAsUser" not in container["securityContext"] and container["securityContext"]["readOnlyRootFilesystem"] is True


def test_affinity_is_overridable(helm: str) -> None:
    assert "podAntiAffinity" in operator_pod(documents(helm))["affinity"]
    custom = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"}]}]}}}
    assert operator_pod(documents(helm, "--set-json", f"affinity={json.dumps(custom)}"))["affinity"] == custom


def test_secret_access_is_optional(helm: str) -> None:
    for mode in ([], ["--set-json", 'watchNamespaces=["team-a"]']):
        docs = documents(helm, *mode, "--set", "rbac.readSecrets=false")
        for role in (d for d in docs if d["kind"] in ("Role", "ClusterRole")):
            assert ("", "secrets") not in grants(role["rules"]), role["metadata"]["name"]
        assert env_of(docs)["QWEN_OPERATOR_READ_SECRETS"] == "false"
    assert "QWEN_OPERATOR_READ_SECRETS" not in env_of(documents(helm))


def test_monitoring_labels_reach_the_operator(helm: str) -> None:
    docs = documents(helm, "--set", "monitoring.labels.release=kube-prometheus-stack")
    assert json.loads(env_of(docs)["QWEN_OPERATOR_MONITORING_LABELS"]) == {"release": "kube-prometheus-stack"}
    assert "QWEN_OPERATOR_MONITORING_LABELS" not in env_of(documents(helm))


def test_memory_limit_and_ephemeral_storage(helm: str) -> None:
    (container,) = operator_pod(documents(helm))["containers"]
    assert container["resources"]["limits"]["memory"] == "1Gi"
    assert container["resources"]["requests"]["ephemeral-storage"] and container["resources"]["limits"]["ephemeral-storage"]
