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
