"""The informer's store (qwen_operator.k8s.informer): what counts as a change, and the content revision the resync compares."""

from __future__ import annotations

from qwen_operator.cache import slim_pod
from qwen_operator.k8s import client as kinds
from qwen_operator.k8s.informer import REVISION, Informer


def pod(resource_version: str, phase: str, labels: dict[str, str] | None = None) -> dict:
    return {"metadata": {"name": "p", "namespace": "ns", "resourceVersion": resource_version, "labels": labels or {},
                         "managedFields": [{"manager": "kubelet", "time": resource_version}]},
            "spec": {"nodeName": "n1"}, "status": {"phase": phase}}


def test_a_new_resource_version_with_the_same_slim_form_keeps_the_revision_and_reports_nothing() -> None:
    changes = []
    informer = Informer(None, kinds.POD, slim=slim_pod, on_change=lambda old, new: changes.append((old, new)))  # type: ignore[arg-type]
    informer._upsert(pod("1", "Pending"))
    first = informer.get("ns", "p")
    informer._upsert(pod("2", "Pending"))  # only resourceVersion and managedFields moved
    second = informer.get("ns", "p")
    assert second["metadata"]["resourceVersion"] == "2"
    assert second[REVISION] == first[REVISION]
    assert len(changes) == 1  # the add; the version bump reported nothing


def test_a_real_change_gets_a_new_revision_and_is_reported() -> None:
    changes = []
    informer = Informer(None, kinds.POD, slim=slim_pod, on_change=lambda old, new: changes.append((old, new)))  # type: ignore[arg-type]
    informer._upsert(pod("1", "Pending"))
    before = informer.get("ns", "p")[REVISION]
    informer._upsert(pod("2", "Running"))
    after = informer.get("ns", "p")
    assert after[REVISION] != before and after["status"]["phase"] == "Running"
    assert [new["status"]["phase"] for _, new in changes] == ["Pending", "Running"]


def test_store_of_the_operators_own_write_changes_the_revision_without_reporting() -> None:
    changes = []
    informer = Informer(None, kinds.POD, slim=slim_pod, on_change=lambda old, new: changes.append((old, new)))  # type: ignore[arg-type]
    informer._upsert(pod("1", "Pending"))
    before = informer.get("ns", "p")[REVISION]
    informer.store(pod("2", "Pending", labels={"written": "by-the-operator"}))
    assert informer.get("ns", "p")[REVISION] != before
    assert len(changes) == 1
    informer._upsert(pod("2", "Pending", labels={"written": "by-the-operator"}))  # its watch event, later: nothing new
    assert len(changes) == 1


def test_store_of_the_operators_own_write_keeps_a_newer_version_the_watch_delivered_first() -> None:
    informer = Informer(None, kinds.POD, slim=slim_pod)  # type: ignore[arg-type]
    informer._upsert(pod("7", "Running"))  # the watch was faster than the API's answer to the write of version 5
    informer.store(pod("5", "Pending", labels={"written": "by-the-operator"}))
    kept = informer.get("ns", "p")
    assert kept["metadata"]["resourceVersion"] == "7" and kept["status"]["phase"] == "Running"
    informer.store(pod("8", "Running", labels={"written": "by-the-operator"}))  # a newer answer replaces it
    assert informer.get("ns", "p")["metadata"]["labels"] == {"written": "by-the-operator"}


def claim(annotations: dict[str, str], volume_name: str | None, phase: str, modes: list[str]) -> dict:
    spec = {"accessModes": modes, "resources": {"requests": {"storage": "50Gi"}}, "storageClassName": "standard"}
    if volume_name:
        spec["volumeName"] = volume_name
    return {"metadata": {"name": "cache", "namespace": "ns", "resourceVersion": str(len(annotations)) + phase, "annotations": annotations,
                         "labels": {"app.kubernetes.io/instance": "q"}},
            "spec": spec, "status": {"phase": phase, "capacity": {"storage": "50Gi"}, "accessModes": modes}}


def test_a_claims_binding_steps_are_one_change_its_phase() -> None:
    from qwen_operator.cache import slim_child

    changes = []
    informer = Informer(None, kinds.PVC, slim=slim_child, on_change=lambda old, new: changes.append(new))  # type: ignore[arg-type]
    provisioner = {"volume.kubernetes.io/storage-provisioner": "kwok.x-k8s.io/volume", "volume.beta.kubernetes.io/storage-provisioner": "kwok.x-k8s.io/volume"}
    bound = {**provisioner, "pv.kubernetes.io/bind-completed": "yes", "pv.kubernetes.io/bound-by-controller": "yes"}
    for step in (claim({}, None, "Pending", ["ReadWriteOnce"]), claim(provisioner, None, "Pending", ["ReadWriteOnce"]),
                 claim(bound, None, "Pending", ["ReadWriteOnce"]), claim(bound, "pvc-1", "Pending", ["ReadWriteOnce"]),
                 claim(bound, "pvc-1", "Bound", ["ReadWriteOnce"])):
        informer._upsert(step)
    assert [c["status"]["phase"] for c in changes] == ["Pending", "Bound"]  # listed (no kind), then its phase


def test_a_read_write_many_claim_keeps_the_provisioner_the_status_reads() -> None:
    from qwen_operator.cache import slim_child

    changes = []
    informer = Informer(None, kinds.PVC, slim=slim_child, on_change=lambda old, new: changes.append(new))  # type: ignore[arg-type]
    informer._upsert(claim({}, None, "Pending", ["ReadWriteMany"]))
    informer._upsert(claim({"volume.kubernetes.io/storage-provisioner": "ebs.csi.aws.com"}, None, "Pending", ["ReadWriteMany"]))
    assert len(changes) == 2
    assert changes[1]["metadata"]["annotations"] == {"volume.kubernetes.io/storage-provisioner": "ebs.csi.aws.com"}


def test_a_deployments_rollout_counter_and_status_leave_its_spec_digest() -> None:
    from qwen_operator.cache import SPEC_DIGEST, slim_child

    def deployment(annotations: dict[str, str], status: dict, replicas: int = 1) -> dict:
        return {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "q", "namespace": "ns", "generation": 1, "resourceVersion": str(len(status)), "annotations": annotations},
                "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "vllm", "image": "v"}]}}}, "status": status}

    ours = {"qwenops.io/desired-hash": "abc"}
    created = slim_child(deployment(ours, {}))
    progressed = slim_child(deployment({**ours, "deployment.kubernetes.io/revision": "1"},
                                       {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1,
                                        "conditions": [{"type": "Available", "status": "True", "lastUpdateTime": "2026-12-01T00:00:00Z"}]}))
    assert progressed[SPEC_DIGEST] == created[SPEC_DIGEST]
    assert progressed["status"]["conditions"] == [{"type": "Available", "status": "True"}]
    assert slim_child(deployment(ours, {}, replicas=2))[SPEC_DIGEST] != created[SPEC_DIGEST]
    assert slim_child(deployment({"qwenops.io/desired-hash": "def"}, {}))[SPEC_DIGEST] != created[SPEC_DIGEST]


def test_a_child_whose_digest_stays_reuses_the_packed_bytes_of_its_previous_version_and_a_changed_one_is_packed_anew() -> None:
    from qwen_operator.cache import PACKED, SPEC_DIGEST, expand, slim_child, spec_digest

    def deployment(replicas: int, ready: int) -> dict:
        return {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "q", "namespace": "ns", "generation": replicas, "resourceVersion": str(10 * replicas + ready)},
                "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "vllm", "image": "v", "args": ["--port", "8000"]}]}}},
                "status": {"readyReplicas": ready}}

    created = slim_child(deployment(1, 0))
    assert spec_digest(deployment(1, 0)) == created[SPEC_DIGEST]
    ready = slim_child(deployment(1, 1), created)
    assert ready[PACKED] is created[PACKED]  # the same spec: not compressed again
    assert ready["status"] == {"readyReplicas": 1}
    scaled = slim_child(deployment(2, 1), ready)
    assert scaled[PACKED] is not ready[PACKED] and scaled[PACKED] != ready[PACKED]
    assert expand(scaled)["spec"]["replicas"] == 2 and expand(ready)["spec"]["replicas"] == 1
    assert scaled == slim_child(deployment(2, 1))  # the same as packed without a previous version


def test_the_informer_hands_slim_the_version_it_keeps() -> None:
    seen: list[dict | None] = []

    def slim(obj: dict, previous: dict | None) -> dict:
        seen.append(previous)
        return slim_pod(obj)

    informer = Informer(None, kinds.POD, slim=slim)  # type: ignore[arg-type]
    informer._upsert(pod("1", "Pending"))
    informer._upsert(pod("2", "Running"))
    assert seen[0] is None
    assert seen[1] is not None and seen[1]["status"]["phase"] == "Pending" and seen[1]["metadata"]["resourceVersion"] == "1"


def test_an_object_at_the_kept_resource_version_is_not_slimmed_again_nor_reported() -> None:
    slimmed, changes = [], []

    def counting_slim(obj: dict, previous: dict | None = None) -> dict:
        slimmed.append(obj["metadata"]["resourceVersion"])
        return slim_pod(obj, previous)

    informer = Informer(None, kinds.POD, slim=counting_slim, on_change=lambda old, new: changes.append(new))  # type: ignore[arg-type]
    informer._upsert(pod("3", "Running"))
    kept = informer.get("ns", "p")
    informer._upsert(pod("3", "Running"))  # a relist, or the watch echoing what store() kept
    assert slimmed == ["3"] and len(changes) == 1
    assert informer.get("ns", "p") is kept
    recreated = pod("3", "Pending")
    recreated["metadata"]["uid"] = "another-object"  # same name and version string, another object: not the same state
    informer._upsert(recreated)
    assert slimmed == ["3", "3"] and informer.get("ns", "p")["status"]["phase"] == "Pending" and len(changes) == 2
