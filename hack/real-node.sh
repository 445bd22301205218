# The real node of the local control plane, sourced by hack/cluster.sh: a kubelet that runs real
# containers, beside the kwok nodes. On this machine:
#   containerd (Debian's), its own root, state and socket under $CLUSTER_DIR/node/containerd, with
#     restrict_oom_score_adj (this VM withholds CAP_SYS_RESOURCE), sandbox image and every test image
#     imported by hack/images.sh, and a proxy setting that sends any image pull to a closed loopback
#     port: nothing ever reaches a registry;
#   kubelet and kube-proxy (iptables mode) from the pinned k8s.io/kubernetes module;
#   the CNI bridge $NODE_BRIDGE with host-local addresses from $NODE_CIDR (and portmap): no
#     masquerading, no default route in the pods (only the service range, via the bridge), and a
#     filter that forwards nothing between the bridge and any other interface;
#   CoreDNS on the bridge address (pods' cluster DNS; no upstream, so outside names never resolve);
#   socat, so pods reach the apiserver (it listens on 127.0.0.1) at the bridge address, which the
#     `kubernetes` Service's EndpointSlice names;
#   the fake GPU device plugin (hack/fake-gpu-plugin), so nvidia.com/gpu goes through the kubelet.
# The node is tainted $NODE_TAINT_KEY=true:NoSchedule: only pods that tolerate it run there, so the
# kwok tests' pods never land on it. Of the GPU feature labels it carries the product, count and
# memory, of a product the kwok pools do not use (NVIDIA-L40S), but not nvidia.com/gpu.present nor
# the compute capability: the kwok scheduling tests derive their node sets from those labels over
# every node, and a tainted node in those sets would take no pod.
#
# The bridge, its addresses and port 53 on it are host-wide: one cluster at a time runs the real node
# (/run/qwen-real-node.owner says which). `down` undoes every host change: processes, pods' network
# namespaces, mounts under the node folder, cgroups under $NODE_CGROUP, iptables chains named KUBE-*,
# CNI-* and QWEN-* (kubelet's, kube-proxy's, portmap's and ours), the sysctls it found, the route and
# the bridge.

NODE_NAME=qwen-real-node
NODE_DIR=$CLUSTER_DIR/node
NODE_CIDR=${QWEN_REAL_NODE_CIDR:-10.85.0.0/24}
NODE_BRIDGE=${QWEN_REAL_NODE_BRIDGE:-qwen0}
NODE_IP=${NODE_CIDR%.*}.1
NODE_PREFIX=${NODE_CIDR#*/}
NODE_GPUS=${QWEN_REAL_NODE_GPUS:-8}
NODE_GPU_PRODUCT=${QWEN_REAL_NODE_GPU_PRODUCT:-NVIDIA-L40S}
NODE_TAINT_KEY=qwen.qwenops.io/real-node
NODE_CGROUP=qwen-real-node
NODE_OWNER_FILE=/run/qwen-real-node.owner
NODE_SKIP_FILE=$CLUSTER_DIR/real-node.skip
CNI_NETWORK=qwen-real-node
CONTAINERD_SOCKET=$NODE_DIR/containerd/containerd.sock
# NAME=REFERENCE of the images in the node's containerd (pause, operator, standin): what tests deploy.
NODE_IMAGES_FILE=$NODE_DIR/images.env
# Ports on loopback or the bridge, derived from the apiserver's so that clusters never collide.
KUBELET_PORT=$((APISERVER_PORT + 10))
KUBELET_HEALTHZ_PORT=$((APISERVER_PORT + 11))
KUBE_PROXY_HEALTHZ_PORT=$((APISERVER_PORT + 12))
KUBE_PROXY_METRICS_PORT=$((APISERVER_PORT + 13))
# Everything that may ask a registry (containerd's image pulls) is sent here: nothing listens.
CLOSED_PROXY=http://127.0.0.1:9
NODE_COMPONENTS=(containerd apiserver-on-bridge coredns kubelet kube-proxy fake-gpu-plugin)
# The kubelet serves device plugins at this fixed path, whatever its --root-dir.
DEVICE_PLUGIN_DIR=/var/lib/kubelet/device-plugins
# Host folders the kubelet, containerd or CNI make outside the node folder; those that did not exist
# before the first `up` are removed by `down` (once emptied of what the node put there).
HOST_DIRS=(/var/lib/kubelet /var/log/containers /var/lib/cni /run/netns /run/containerd)
SYSCTLS_TO_RESTORE=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.conf.all.route_localnet)

# Whether the real node is wanted: QWEN_REAL_NODE=1 (must run), 0 (never), auto (the default: runs
# where it can; where it cannot, $NODE_SKIP_FILE says why and the real-node tests skip with that).
real_node_mode() { echo "${QWEN_REAL_NODE:-auto}"; }

# Prints why the real node cannot run on this machine ("needs ..."), or nothing when it can.
real_node_missing() {
  [[ $(id -u) -eq 0 ]] || { echo "needs root (containerd, the kubelet and the pod network need it)"; return; }
  local c
  for c in containerd runc ctr iptables ip6tables iptables-save socat buildah debootstrap gcc ip; do
    command -v "$c" >/dev/null || { echo "needs the '$c' command (make tools installs it: hack/install-node-packages.sh)"; return; }
  done
  for c in bridge host-local portmap; do
    [[ -x /usr/lib/cni/$c ]] || { echo "needs the CNI plugin /usr/lib/cni/$c (Debian's containernetworking-plugins)"; return; }
  done
  [[ -d /sys/fs/cgroup/memory || -f /sys/fs/cgroup/cgroup.controllers ]] || { echo "needs the memory cgroup (/sys/fs/cgroup)"; return; }
  grep -qw overlay /proc/filesystems || { echo "needs overlayfs (containerd's snapshotter)"; return; }
  [[ -d /proc/sys/net/bridge ]] || { echo "needs bridge netfilter (br_netfilter)"; return; }
  if [[ -f $NODE_OWNER_FILE ]]; then
    local owner; owner=$(cat "$NODE_OWNER_FILE")
    if [[ $owner != "$CLUSTER_DIR" && -f $owner/pids/containerd ]] && kill -0 "$(cat "$owner/pids/containerd")" 2>/dev/null; then
      echo "is in use by the cluster in $owner (one real node per host)"
      return
    fi
  fi
}

real_node_wanted() {
  local mode missing
  mode=$(real_node_mode)
  case "$mode" in
    # "Start none": a node another caller started (tests/realnode) is left running, with its state (no skip file).
    0|off|false) real_node_running || echo "QWEN_REAL_NODE=0" >"$NODE_SKIP_FILE"; return 1 ;;
    1|on|true|auto) ;;
    *) die "QWEN_REAL_NODE must be auto, 1 or 0, not '$mode'" ;;
  esac
  rm -f "$NODE_SKIP_FILE"
  missing=$(real_node_missing)
  [[ -z $missing ]] && return 0
  [[ $mode == auto ]] || die "the real node $missing"
  log "no real node: it $missing"
  echo "the real node $missing" >"$NODE_SKIP_FILE"
  return 1
}

real_node_running() {
  local c
  for c in "${NODE_COMPONENTS[@]}"; do pid_alive "$c" || return 1; done
}

# ---- certificates and kubeconfigs ----------------------------------------------------------------

node_pki() {
  local o=$PKI
  [[ -f $o/kubelet-client.crt && -f $o/kube-proxy.crt && -f $o/kubelet-serving.crt ]] && return
  openssl_quiet() { openssl "$@" >/dev/null 2>&1 || { openssl "$@"; exit 1; }; }
  sign() { # name subject extfile
    openssl_quiet req -newkey rsa:2048 -nodes -subj "$2" -keyout "$o/$1.key" -out "$o/$1.csr"
    openssl_quiet x509 -req -in "$o/$1.csr" -CA "$o/ca.crt" -CAkey "$o/ca.key" -CAcreateserial -days 3650 \
      -out "$o/$1.crt" -extfile "$3"
    rm -f "$o/$1.csr"
  }
  # The kubelet acts as system:node:NAME (the Node authorizer), kube-proxy as system:kube-proxy
  # (bound to system:node-proxier by the default RBAC policy).
  sign kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" "$o/client.ext"
  sign kube-proxy "/CN=system:kube-proxy" "$o/client.ext"
  printf 'subjectAltName=IP:%s,DNS:%s\nextendedKeyUsage=serverAuth\n' "$NODE_IP" "$NODE_NAME" >"$o/kubelet-serving.ext"
  sign kubelet-serving "/CN=$NODE_NAME" "$o/kubelet-serving.ext"
}

node_kubeconfig() { # file cert-name
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: qwen-local
  cluster: {server: "https://127.0.0.1:$APISERVER_PORT", certificate-authority: "$PKI/ca.crt"}
users:
- name: user
  user: {client-certificate: "$PKI/$2.crt", client-key: "$PKI/$2.key"}
contexts:
- name: qwen-local
  context: {cluster: qwen-local, user: user}
current-context: qwen-local
EOF
}

# ---- host changes and their undoing --------------------------------------------------------------

# The values of the sysctls the node's components change, as found before the first `up`.
save_sysctls() {
  [[ -f $CLUSTER_DIR/host-sysctls.before ]] && return
  local s
  for s in "${SYSCTLS_TO_RESTORE[@]}"; do
    [[ -e /proc/sys/${s//.//} ]] && echo "$s=$(sysctl -n "$s")"
  done >"$CLUSTER_DIR/host-sysctls.before"
}
restore_sysctls() {
  [[ -f $CLUSTER_DIR/host-sysctls.before ]] || return 0
  local line
  while IFS= read -r line; do sysctl -qw "$line" >/dev/null || log "could not restore $line"; done <"$CLUSTER_DIR/host-sysctls.before"
  rm -f "$CLUSTER_DIR/host-sysctls.before"
}

save_host_dirs() {
  [[ -f $CLUSTER_DIR/host-dirs.created ]] && return
  local d
  for d in "${HOST_DIRS[@]}"; do [[ -e $d ]] || echo "$d"; done >"$CLUSTER_DIR/host-dirs.created"
}
remove_host_dirs() {
  [[ -f $CLUSTER_DIR/host-dirs.created ]] || return 0
  local d
  rm -f "$DEVICE_PLUGIN_DIR"/kubelet.sock "$DEVICE_PLUGIN_DIR"/qwen-fake-gpu.sock "$DEVICE_PLUGIN_DIR"/kubelet_internal_checkpoint
  while IFS= read -r d; do
    [[ -d $d ]] || continue
    find "$d" -depth -type d -empty -delete 2>/dev/null || true
    [[ -e $d ]] && log "left $d in place: it holds files the real node did not make"
  done <"$CLUSTER_DIR/host-dirs.created"
  rm -f "$CLUSTER_DIR/host-dirs.created"
}

cgroup_dirs() { # every hierarchy's copy of the node's cgroup root
  if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then echo "/sys/fs/cgroup/$NODE_CGROUP"; return; fi
  local h
  for h in /sys/fs/cgroup/*/; do
    [[ -f $h/cgroup.procs && $h != /sys/fs/cgroup/unified/ ]] && echo "${h%/}/$NODE_CGROUP"
  done
}
make_cgroups() {
  local d parent
  for d in $(cgroup_dirs); do
    mkdir -p "$d"
    parent=$(dirname "$d")
    # A cpuset cgroup takes no task until it has CPUs and memory nodes: copy its parent's.
    if [[ -f $d/cpuset.cpus ]]; then
      cat "$parent/cpuset.cpus" >"$d/cpuset.cpus"
      cat "$parent/cpuset.mems" >"$d/cpuset.mems"
    fi
  done
}
remove_cgroups() {
  local d attempt left
  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    left=0
    # Every hierarchy, the cgroup2 one of a hybrid host included (runc makes the pods' paths there too).
    for d in /sys/fs/cgroup/*/"$NODE_CGROUP" /sys/fs/cgroup/"$NODE_CGROUP"; do
      [[ -d $d ]] || continue
      # Deepest first: a cgroup can only be removed once its children are.
      find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || left=1
    done
    ((left)) || return 0
    sleep 0.5
  done
  log "some cgroups under $NODE_CGROUP are still in use: $(ls -d /sys/fs/cgroup/*/"$NODE_CGROUP" 2>/dev/null)"
}

# Forwarding only within the bridge, and no host traffic to kwok's fake pod addresses (a Service
# whose endpoints are kwok pods must never send packets out of this machine).
add_network_guard() {
  local cmd=iptables
  $cmd -w -N QWEN-REAL-NODE-FORWARD 2>/dev/null || $cmd -w -F QWEN-REAL-NODE-FORWARD
  $cmd -w -A QWEN-REAL-NODE-FORWARD -i "$NODE_BRIDGE" -o "$NODE_BRIDGE" -j ACCEPT
  $cmd -w -A QWEN-REAL-NODE-FORWARD -i "$NODE_BRIDGE" -j DROP
  $cmd -w -A QWEN-REAL-NODE-FORWARD -o "$NODE_BRIDGE" -j DROP
  $cmd -w -C FORWARD -j QWEN-REAL-NODE-FORWARD 2>/dev/null || $cmd -w -I FORWARD 1 -j QWEN-REAL-NODE-FORWARD
  $cmd -w -N QWEN-REAL-NODE-OUTPUT 2>/dev/null || $cmd -w -F QWEN-REAL-NODE-OUTPUT
  $cmd -w -A QWEN-REAL-NODE-OUTPUT -d "$POD_CIDR" -j REJECT
  $cmd -w -A QWEN-REAL-NODE-OUTPUT -d "$KWOK_NODE_IP/32" -j REJECT
  $cmd -w -C OUTPUT -j QWEN-REAL-NODE-OUTPUT 2>/dev/null || $cmd -w -I OUTPUT 1 -j QWEN-REAL-NODE-OUTPUT
}

# The iptables tables (nf_tables backend) that exist before the first `up`: iptables makes a table
# the first time anything lists or changes it, and down deletes those it made.
save_iptables_tables() {
  [[ -f $CLUSTER_DIR/host-iptables-tables.before ]] && return
  { iptables-save | sed -n 's/^\*/ip /p'; ip6tables-save | sed -n 's/^\*/ip6 /p'; } >"$CLUSTER_DIR/host-iptables-tables.before"
}
remove_new_iptables_tables() {
  [[ -f $CLUSTER_DIR/host-iptables-tables.before ]] || return 0
  local family table
  if [[ $(iptables -V) == *nf_tables* ]] && command -v nft >/dev/null; then
    for family in ip ip6; do
      for table in filter nat mangle raw security; do
        grep -qx "$family $table" "$CLUSTER_DIR/host-iptables-tables.before" && continue
        nft list table "$family" "$table" >/dev/null 2>&1 || continue
        # Only a table left empty by the clean-up goes: a rule someone else added keeps it.
        [[ -z $(nft list table "$family" "$table" | grep -vE '^\s*(table|chain|type|policy|\}|$)') ]] && nft delete table "$family" "$table"
      done
    done
  fi
  rm -f "$CLUSTER_DIR/host-iptables-tables.before"
}

# Removes every rule that jumps to a KUBE-*, CNI-* or QWEN-* chain, then those chains, in every table
# of both address families: what the kubelet, kube-proxy, portmap and add_network_guard made.
remove_iptables_chains() {
  local cmd table rule chain
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null || continue
    for table in filter nat mangle raw; do
      "$cmd-save" -t "$table" >/dev/null 2>&1 || continue
      while IFS= read -r rule; do
        eval "$cmd -w -t $table ${rule/#-A/-D}" 2>/dev/null || true
      done < <("$cmd-save" -t "$table" | grep -E '^-A [^ ]+ .*-j (KUBE-|CNI-|QWEN-)' | grep -vE '^-A (KUBE-|CNI-|QWEN-)')
      for chain in $("$cmd-save" -t "$table" | grep -oE '^:(KUBE-|CNI-|QWEN-)[^ ]+' | cut -c2-); do
        "$cmd" -w -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$cmd-save" -t "$table" | grep -oE '^:(KUBE-|CNI-|QWEN-)[^ ]+' | cut -c2-); do
        "$cmd" -w -t "$table" -X "$chain" 2>/dev/null || log "could not delete $cmd chain $table/$chain"
      done
    done
  done
}

make_bridge() {
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$NODE_BRIDGE" type bridge
  fi
  ip addr replace "$NODE_IP/$NODE_PREFIX" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  # Service addresses stay on this machine: from the host they leave by the bridge with its address.
  ip route replace "$SERVICE_CIDR" dev "$NODE_BRIDGE" src "$NODE_IP"
}
remove_bridge() {
  ip route del "$SERVICE_CIDR" dev "$NODE_BRIDGE" 2>/dev/null || true
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
}

# Mounts under the node folder (kubelet volumes, containerd snapshots and sandboxes), deepest first.
unmount_node_dir() {
  local mounts m
  for _ in 1 2 3; do
    mounts=$(awk -v p="$NODE_DIR/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r)
    [[ -z $mounts ]] && return 0
    for m in $mounts; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  done
  [[ -z $(awk -v p="$NODE_DIR/" 'index($5, p) == 1' /proc/self/mountinfo) ]] || log "mounts left under $NODE_DIR"
}

# ---- the components -------------------------------------------------------------------------------

write_containerd_config() {
  mkdir -p "$NODE_DIR/containerd/certs.d" "$NODE_DIR/cni/net.d" "$NODE_DIR/cni/ipam"
  cat >"$NODE_DIR/containerd/config.toml" <<EOF
version = 2
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
# Plugins that would write outside the node folder (opt: /opt/containerd) or are not needed.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "$CONTAINERD_SOCKET"
[ttrpc]
  address = "$CONTAINERD_SOCKET.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$("$HACK_DIR/images.sh" ref pause)"
  # runc cannot lower the pause process's oom_score_adj without CAP_SYS_RESOURCE.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$NODE_DIR/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    # An empty folder: no mirrors, no credentials.
    config_path = "$NODE_DIR/containerd/certs.d"
EOF
  cat >"$NODE_DIR/cni/net.d/10-$CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE_DIR/cni/ipam",
        "ranges": [[{"subnet": "$NODE_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "$SERVICE_CIDR"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

write_kubelet_config() {
  local gpu_labels facts mem
  facts=$(gpu_facts "$NODE_GPU_PRODUCT"); read -r mem _ <<<"$facts"
  gpu_labels="nvidia.com/gpu.product=$NODE_GPU_PRODUCT,nvidia.com/gpu.count=$NODE_GPUS,nvidia.com/gpu.memory=$mem"
  echo "type=real,node-role.qwenops.io/real=true,$gpu_labels" >"$NODE_DIR/kubelet-node-labels"
  mkdir -p "$NODE_DIR/kubelet" "$NODE_DIR/manifests" "$NODE_DIR/pod-logs"
  # Pods resolve through CoreDNS only; this file is what "dnsPolicy: Default" pods get: no server.
  echo "# the real node's pods have no DNS outside the cluster" >"$NODE_DIR/resolv.conf"
  cat >"$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$CONTAINERD_SOCKET
imageServiceEndpoint: unix://$CONTAINERD_SOCKET
# This VM: cgroup v1, which v1.36 refuses unless told; containerd 1.6 cannot tell the kubelet its
# cgroup driver; a cgroup of our own holds every pod, so down removes them all.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$NODE_CGROUP
failSwapOn: false
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
resolvConf: $NODE_DIR/resolv.conf
staticPodPath: $NODE_DIR/manifests
podLogsDir: $NODE_DIR/pod-logs
# A test machine's disk may be fairly full: never evict or garbage-collect test images for it.
evictionHard: {memory.available: "0%", nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
registerWithTaints:
- {key: $NODE_TAINT_KEY, value: "true", effect: NoSchedule}
maxPods: 40
serializeImagePulls: false
rotateCertificates: false
shutdownGracePeriod: 0s
EOF
  cat >"$NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
hostnameOverride: $NODE_NAME
clientConnection: {kubeconfig: $NODE_DIR/kube-proxy.kubeconfig}
clusterCIDR: $NODE_CIDR
healthzBindAddress: 127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$KUBE_PROXY_METRICS_PORT
# NodePorts only on the bridge address, never on this machine's other interfaces.
nodePortAddresses: ["$NODE_IP/32"]
# Leave the host's conntrack settings as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {minSyncPeriod: 0s, syncPeriod: 30s}
EOF
  cat >"$NODE_DIR/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $KUBECONFIG_FILE qwen-local
        pods insecure
    }
    cache 5
}
EOF
}

# The apiserver listens on loopback; the `kubernetes` Service leads pods to its bridge address.
kubernetes_service_endpoints() {
  cat <<EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes
  namespace: default
  labels:
    kubernetes.io/service-name: kubernetes
    endpointslice.kubernetes.io/managed-by: qwen-cluster
addressType: IPv4
endpoints:
- addresses: ["$NODE_IP"]
  conditions: {ready: true}
ports:
- {name: https, port: $APISERVER_PORT, protocol: TCP}
EOF
}

containerd_ready() { ctr --address "$CONTAINERD_SOCKET" version >/dev/null 2>&1; }
node_ready() {
  [[ $(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}
node_gpus_allocatable() {
  [[ $(kc get node "$NODE_NAME" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}' 2>/dev/null) == "$NODE_GPUS" ]]
}

real_node_up() {
  real_node_wanted || return 0
  if real_node_running && node_ready; then
    log "reusing the running real node $NODE_NAME"
    "$HACK_DIR/images.sh" import "$CONTAINERD_SOCKET" "$NODE_IMAGES_FILE"
    return
  fi
  real_node_down_quietly
  local t0=$SECONDS
  "$HACK_DIR/build-tools.sh" node
  local bin_node bin_coredns bin_plugin
  bin_node=$(dirname "$("$HACK_DIR/build-tools.sh" path kubelet)")
  bin_coredns=$("$HACK_DIR/build-tools.sh" path coredns)
  bin_plugin=$("$HACK_DIR/build-tools.sh" path fake-gpu-plugin)
  CRICTL_BIN=$("$HACK_DIR/build-tools.sh" path crictl)
  "$HACK_DIR/images.sh" build

  echo "$CLUSTER_DIR" >"$NODE_OWNER_FILE"
  mkdir -p "$NODE_DIR"
  save_sysctls
  save_host_dirs
  save_iptables_tables
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 >/dev/null
  make_bridge
  add_network_guard
  make_cgroups
  node_pki
  node_kubeconfig "$NODE_DIR/kubelet.kubeconfig" kubelet-client
  node_kubeconfig "$NODE_DIR/kube-proxy.kubeconfig" kube-proxy
  write_containerd_config
  write_kubelet_config

  HTTP_PROXY=$CLOSED_PROXY HTTPS_PROXY=$CLOSED_PROXY NO_PROXY="" \
    start containerd containerd --config "$NODE_DIR/containerd/config.toml" --log-level warn
  wait_for containerd 30 containerd_ready
  "$HACK_DIR/images.sh" import "$CONTAINERD_SOCKET" "$NODE_IMAGES_FILE"

  start apiserver-on-bridge socat "TCP-LISTEN:$APISERVER_PORT,bind=$NODE_IP,fork,reuseaddr" "TCP:127.0.0.1:$APISERVER_PORT"
  kubernetes_service_endpoints | kc apply --server-side --field-manager qwen-cluster -f - >/dev/null
  start coredns "$bin_coredns" -conf "$NODE_DIR/Corefile"
  start kubelet "$bin_node/kubelet" --config "$NODE_DIR/kubelet.yaml" --kubeconfig "$NODE_DIR/kubelet.kubeconfig" \
    --root-dir "$NODE_DIR/kubelet" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
    --node-labels "$(cat "$NODE_DIR/kubelet-node-labels")" --v 1
  start kube-proxy "$bin_node/kube-proxy" --config "$NODE_DIR/kube-proxy.yaml" --v 1
  wait_for "real node $NODE_NAME Ready" 120 node_ready
  start fake-gpu-plugin "$bin_plugin" --device-plugin-dir "$DEVICE_PLUGIN_DIR" --count "$NODE_GPUS"
  wait_for "$NODE_GPUS nvidia.com/gpu on $NODE_NAME" 60 node_gpus_allocatable
  log "real node $NODE_NAME Ready in $((SECONDS - t0))s (pods on $NODE_CIDR, bridge $NODE_BRIDGE)"
}

# Stops every pod sandbox through the CRI, which also tears down its network (CNI DEL) and network
# namespace, while containerd still runs.
stop_pods() {
  pid_alive containerd || return 0
  local crictl=(${CRICTL_BIN:-$("$HACK_DIR/build-tools.sh" path crictl)} --runtime-endpoint "unix://$CONTAINERD_SOCKET" --timeout 20s)
  [[ -x ${crictl[0]} ]] || return 0
  local pods
  pods=$("${crictl[@]}" pods -q 2>/dev/null || true)
  [[ -z $pods ]] && return 0
  log "stopping $(wc -w <<<"$pods") pod sandboxes on $NODE_NAME"
  # shellcheck disable=SC2086
  "${crictl[@]}" stopp $pods >/dev/null 2>&1 || true
  # shellcheck disable=SC2086
  "${crictl[@]}" rmp --force $pods >/dev/null 2>&1 || true
}

# containerd's shims outlive containerd; each names our socket on its command line.
stop_shims() {
  local pid
  for pid in $(grep -lsF -- "$CONTAINERD_SOCKET" /proc/[0-9]*/cmdline | cut -d/ -f3); do
    [[ $( { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null) == *containerd-shim* ]] || continue
    kill -9 "$pid" 2>/dev/null || true
  done
}

stop_node_process() { # name
  local pid
  [[ -f $PIDS/$1 ]] || return 0
  pid=$(cat "$PIDS/$1")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $1 (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDS/$1"
}

real_node_down_quietly() {
  [[ -d $NODE_DIR || -f $PIDS/containerd || -f $PIDS/kubelet ]] || return 0
  local c
  for c in fake-gpu-plugin kube-proxy kubelet coredns apiserver-on-bridge; do stop_node_process "$c"; done
  stop_pods
  stop_node_process containerd
  stop_shims
  unmount_node_dir
  remove_cgroups
  remove_iptables_chains
  remove_new_iptables_tables
  remove_bridge
  restore_sysctls
  # What the kubelet and CNI keep outside the node folder: container log links and cached results.
  find /var/log/containers -maxdepth 1 -type l -lname "$NODE_DIR/*" -delete 2>/dev/null || true
  rm -f /var/lib/cni/results/"$CNI_NETWORK"-* 2>/dev/null || true
  remove_host_dirs
  rm -rf "$NODE_DIR"
  [[ -f $NODE_OWNER_FILE && $(cat "$NODE_OWNER_FILE") == "$CLUSTER_DIR" ]] && rm -f "$NODE_OWNER_FILE"
  return 0
}

real_node_down() {
  [[ -d $NODE_DIR || -f $PIDS/containerd ]] || return 0
  real_node_down_quietly
  # A control plane that keeps running sees kwok nodes only again.
  if apiserver_ready; then
    kc delete node "$NODE_NAME" --ignore-not-found --wait=false >/dev/null || true
    kc delete endpointslice kubernetes -n default --ignore-not-found >/dev/null || true
  fi
  log "real node down"
}

real_node_status() {
  local c
  for c in "${NODE_COMPONENTS[@]}"; do
    if pid_alive "$c"; then echo "$c: running (pid $(cat "$PIDS/$c"))"; else echo "$c: stopped"; fi
  done
  [[ -f $NODE_SKIP_FILE ]] && echo "real node: not started ($(cat "$NODE_SKIP_FILE"))"
  return 0
}
