"""OperatorConfig and from_env()."""

from __future__ import annotations

import pytest

from qwen_operator.config import DEFAULT_VLLM_IMAGE, OperatorConfig, from_env


def test_defaults() -> None:
    config = from_env({})
    assert config == OperatorConfig()
    assert config.default_vllm_image == DEFAULT_VLLM_IMAGE
    assert config.field_manager == "qwen-operator"
    assert config.cluster_domain == "cluster.local"


@pytest.mark.parametrize(
    ("env", "image", "domain"),
    [
        ({"QWEN_OPERATOR_VLLM_IMAGE": "mirror/vllm:x"}, "mirror/vllm:x", "cluster.local"),
        ({"QWEN_OPERATOR_CLUSTER_DOMAIN": "corp.internal"}, DEFAULT_VLLM_IMAGE, "corp.internal"),
        ({"QWEN_OPERATOR_VLLM_IMAGE": "", "QWEN_OPERATOR_CLUSTER_DOMAIN": ""}, DEFAULT_VLLM_IMAGE, "cluster.local"),
    ],
)
def test_from_env(env: dict[str, str], image: str, domain: str) -> None:
    config = from_env(env)
    assert (config.default_vllm_image, config.cluster_domain) == (image, domain)


def test_frozen() -> None:
    with pytest.raises(AttributeError):
        OperatorConfig().field_manager = "other"  # type: ignore[misc]


def test_default_image_matches_versions_env() -> None:
    from pathlib import Path

    versions = Path(__file__).resolve().parents[2] / "hack" / "versions.env"
    pinned = dict(line.split("=", 1) for line in versions.read_text().splitlines() if line and not line.startswith("#"))
    assert pinned["VLLM_IMAGE"] == DEFAULT_VLLM_IMAGE


def test_monitoring_labels_and_secret_access_from_env() -> None:
    config = from_env({"QWEN_OPERATOR_MONITORING_LABELS": '{"release": "kps", "team": "ml"}', "QWEN_OPERATOR_READ_SECRETS": "false"})
    assert config.monitoring_labels == {"release": "kps", "team": "ml"}
    assert config.read_secrets is False
    assert from_env({}).monitoring_labels == {} and from_env({}).read_secrets is True


@pytest.mark.parametrize("text", ['["release"]', '{"release": 1}', "release=kps"])
def test_bad_monitoring_labels_stop_the_operator(text: str) -> None:
    with pytest.raises(ValueError):
        from_env({"QWEN_OPERATOR_MONITORING_LABELS": text})
