#!/usr/bin/env bash
# A kind node image assembled without any registry, for machines that cannot pull kindest/node
# (hack/kind-up.sh uses it with KIND_NODE_IMAGE=local). Cached by the hash of what goes into it: an
# unchanged image is neither rebuilt nor reloaded.
#
#   hack/kind-node-image.sh build    build it (or find it) in the Docker engine of DOCKER_HOST; prints its name
#   hack/kind-node-image.sh prebuild assemble its root file system archive ahead (make tools), where it can be
#                                    (root, debootstrap, buildah), else say why; needs no Docker engine
#   hack/kind-node-image.sh ref      print its name, qwen-kind-node:KUBERNETES_VERSION-HASH
#
# What it holds:
#   - a Debian (DEBIAN_SUITE) root made with debootstrap from the mirror apt uses, with systemd and the
#     packages kind's own base image installs, and Debian's containerd, runc and CNI plugins;
#   - kind's base files from the pinned kind module (sigs.k8s.io/kind KIND_VERSION, images/base/files):
#     the entrypoint, the systemd units, containerd's config (plus restrict_oom_score_adj, which this
#     VM needs: it withholds CAP_SYS_RESOURCE) and the kubelet drop-ins;
#   - kubeadm, kubelet and kubectl from the pinned k8s.io/kubernetes module, crictl (hack/build-tools.sh);
#   - a bridge CNI config for the single node's pod range, with no masquerade (kind-up turns kind's own
#     CNI, kindnetd, off: its image would come from a registry);
#   - the images `kubeadm config images list` names, under exactly those names, pre-imported into the
#     node's containerd: kube-apiserver, kube-controller-manager, kube-scheduler and kube-proxy from the same
#     module, etcd and CoreDNS at the versions kubeadm asks for, and pause, each built FROM the local
#     Debian base of hack/images.sh (pause: the static binary only) with its binary copied in.
# The import runs in a private containerd on the host (the same Debian containerd as in the node),
# whose root is the node's /var/lib/containerd; nothing runs privileged.
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$HACK_DIR/versions.env"

CACHE_DIR=${QWEN_CACHE_DIR:-$HOME/.cache/qwen-operator}
ARCHIVES=$CACHE_DIR/images
WORK=$CACHE_DIR/build/kind-node
BUILDAH=(buildah --root "$CACHE_DIR/buildah/root" --runroot "$CACHE_DIR/buildah/run" --storage-driver overlay)
# The pod range of the single node: hack/kind-up.sh gives kind the /16 around it (podSubnet).
POD_CIDR=${QWEN_KIND_NODE_POD_CIDR:-10.246.0.0/24}
# What kind's images/base/Dockerfile installs (less nfs-common, open-iscsi, fuse-overlayfs and curl: no
# test needs them), and Debian's container runtime.
NODE_PACKAGES=systemd,systemd-sysv,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,e2fsprogs,bash,ca-certificates,jq,procps,containerd,runc,containernetworking-plugins
# kube-proxy (iptables mode) execs iptables and conntrack.
KUBE_PROXY_PACKAGES=(iptables conntrack)

log() { echo "[kind-node-image] $*" >&2; }
die() { echo "[kind-node-image] error: $*" >&2; exit 1; }

kind_module_dir() {
  go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}
bin() { "$HACK_DIR/build-tools.sh" path "$1"; }
BINARIES=(kubeadm kubelet kubectl crictl kube-apiserver kube-controller-manager kube-scheduler kube-proxy kind-etcd kind-coredns pause)

image_hash() {
  {
    echo "$KUBERNETES_VERSION $KIND_VERSION $KIND_ETCD_VERSION $KIND_COREDNS_VERSION $KIND_PAUSE_TAG $CRICTL_VERSION"
    echo "$DEBIAN_SUITE $NODE_PACKAGES ${KUBE_PROXY_PACKAGES[*]} $POD_CIDR"
    "$HACK_DIR/images.sh" ref base
    cat "${BASH_SOURCE[0]}"
  } | sha256sum | cut -c1-12
}
ref() { echo "qwen-kind-node:$KUBERNETES_VERSION-$(image_hash)"; }
rootfs_archive() { echo "$ARCHIVES/kind-node-$KUBERNETES_VERSION-$(image_hash).tar"; }

# The names kubeadm asks for, each with the binary its image runs and where.
control_plane_images() { # prints NAME BINARY PATH-IN-IMAGE
  local kubeadm name
  kubeadm=$(bin kubeadm)
  for name in $("$kubeadm" config images list --kubernetes-version "$KUBERNETES_VERSION"); do
    case "$name" in
      */kube-apiserver:*) echo "$name kube-apiserver /usr/local/bin/kube-apiserver" ;;
      */kube-controller-manager:*) echo "$name kube-controller-manager /usr/local/bin/kube-controller-manager" ;;
      */kube-scheduler:*) echo "$name kube-scheduler /usr/local/bin/kube-scheduler" ;;
      */kube-proxy:*) echo "$name kube-proxy /usr/local/bin/kube-proxy" ;;
      */etcd:*) [[ $name == *":${KIND_ETCD_VERSION#v}-0" ]] || die "kubeadm asks for $name, KIND_ETCD_VERSION is $KIND_ETCD_VERSION"
                echo "$name kind-etcd /usr/local/bin/etcd" ;;
      */coredns:*) [[ $name == *":$KIND_COREDNS_VERSION" ]] || die "kubeadm asks for $name, KIND_COREDNS_VERSION is $KIND_COREDNS_VERSION"
                   echo "$name kind-coredns /coredns" ;;
      */pause:*) [[ $name == *":$KIND_PAUSE_TAG" ]] || die "kubeadm asks for $name, KIND_PAUSE_TAG is $KIND_PAUSE_TAG"
                 echo "$name pause /pause" ;;
      *) die "kubeadm asks for an image this script does not know: $name" ;;
    esac
  done
}

# One control-plane image as a docker-archive: the Debian base (the static pause: nothing else) with its binary.
build_control_plane_image() { # name binary path archive
  local name=$1 binary=$2 path=$3 archive=$4 container mountpoint
  if [[ $binary == pause ]]; then container=$("${BUILDAH[@]}" from --quiet scratch)
  else container=$("${BUILDAH[@]}" from --quiet --pull=never "$("$HACK_DIR/images.sh" ref base)")
  fi
  if [[ $binary == kube-proxy ]]; then
    "${BUILDAH[@]}" run --isolation chroot "$container" -- sh -c \
      "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${KUBE_PROXY_PACKAGES[*]} >/dev/null && rm -rf /var/lib/apt/lists/*" >&2
  fi
  mountpoint=$("${BUILDAH[@]}" mount "$container")
  install -D -m 0755 "$(bin "$binary")" "$mountpoint$path"
  "${BUILDAH[@]}" umount "$container" >/dev/null
  "${BUILDAH[@]}" config --cmd '' "$container"
  "${BUILDAH[@]}" config --entrypoint "[\"$path\"]" "$container"
  [[ $binary == pause ]] && "${BUILDAH[@]}" config --user 65535:65535 "$container"
  "${BUILDAH[@]}" commit --quiet --rm "$container" "$name" >/dev/null
  "${BUILDAH[@]}" push --quiet "$name" "docker-archive:$archive:$name" >/dev/null
  "${BUILDAH[@]}" rmi "$name" >/dev/null
}

# The layer digests of every image in the containerd at SOCKET (namespace k8s.io).
layer_digests() { # socket
  local socket=$1 manifest
  for manifest in $(ctr --address "$socket" --namespace k8s.io images list | awk 'NR > 1 {print $3}' | sort -u); do
    ctr --address "$socket" --namespace k8s.io content get "$manifest" \
      | python3 -c 'import json, sys; print("\n".join(layer["digest"] for layer in json.load(sys.stdin)["layers"]))'
  done | sort -u
}

# Imports the archives into a private containerd whose root is ROOTFS/var/lib/containerd.
preimport() { # rootfs archive...
  local rootfs=$1; shift
  local state=$WORK/containerd-state socket=$WORK/containerd-state/containerd.sock pid archive
  mkdir -p "$state" "$rootfs/var/lib/containerd"
  cat >"$state/config.toml" <<EOF
version = 2
root = "$rootfs/var/lib/containerd"
state = "$state/run"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$socket"
EOF
  containerd --config "$state/config.toml" >"$state/containerd.log" 2>&1 &
  pid=$!
  # Whatever fails below, this containerd does not outlive the script.
  trap 'kill '"$pid"' 2>/dev/null || true' EXIT
  for _ in $(seq 50); do ctr --address "$socket" version >/dev/null 2>&1 && break; sleep 0.2; done
  for archive in "$@"; do
    ctr --address "$socket" --namespace k8s.io images import --snapshotter overlayfs "$archive" >/dev/null \
      || die "importing $archive failed (log: $state/containerd.log)"
  done
  # As kind's containerd config does for pulls (discard_unpacked_layers): the layer blobs go once their
  # snapshots exist. What the node needs, the manifests, configs and snapshots, stays. containerd's
  # garbage collector would delete the files later; they go here, so that the image never carries them.
  local layer kept blob
  for layer in $(layer_digests "$socket"); do
    ctr --address "$socket" --namespace k8s.io content rm "$layer" >/dev/null
  done
  kept=$(ctr --address "$socket" --namespace k8s.io content list --quiet)
  ctr --address "$socket" --namespace k8s.io images list --quiet >&2
  kill "$pid"; wait "$pid" || true
  trap - EXIT
  for blob in "$rootfs"/var/lib/containerd/io.containerd.content.v1.content/blobs/sha256/*; do
    grep -qx "sha256:$(basename "$blob")" <<<"$kept" || rm -f "$blob"
  done
  # containerd's overlay snapshots stay plain directories; nothing of the run is kept.
  { grep -oE " $state/[^ ]+" /proc/self/mounts || true; } | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf "$state"
}

debian_mirror() {
  local mirror
  mirror=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
    | grep -v security | grep -oE 'https?://[^ ]+' | head -n1)
  echo "${mirror:-http://deb.debian.org/debian}"
}

assemble_rootfs() { # rootfs
  local rootfs=$1 kind_files
  kind_files=$(kind_module_dir)/images/base/files
  [[ -f $kind_files/usr/local/bin/entrypoint ]] || die "no images/base/files in sigs.k8s.io/kind@$KIND_VERSION"
  log "debootstrap --variant=minbase $DEBIAN_SUITE with systemd and containerd (a minute or two)"
  debootstrap --variant=minbase --include="$NODE_PACKAGES" "$DEBIAN_SUITE" "$rootfs" "$(debian_mirror)" \
    >"$WORK/debootstrap.log" 2>&1 || die "debootstrap failed (log: $WORK/debootstrap.log)"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*

  # kind's base files, with the modes its Dockerfile gives them.
  install -m 0755 "$kind_files"/usr/local/bin/* "$rootfs/usr/local/bin/"
  mkdir -p "$rootfs/kind/bin" "$rootfs/etc/containerd" "$rootfs/etc/systemd/system/kubelet.service.d" "$rootfs/etc/kubernetes/manifests"
  install -m 0644 "$kind_files"/kind/*.txt "$rootfs/kind/"
  install -m 0755 "$kind_files"/kind/bin/* "$rootfs/kind/bin/"
  install -m 0644 "$kind_files"/etc/crictl.yaml "$rootfs/etc/"
  install -m 0644 "$kind_files"/etc/default/* "$rootfs/etc/default/"
  install -m 0644 "$kind_files"/etc/sysctl.d/* "$rootfs/etc/sysctl.d/"
  find "$kind_files/etc/systemd/system" -maxdepth 1 -type f -exec install -m 0644 {} "$rootfs/etc/systemd/system/" \;
  install -m 0644 "$kind_files"/etc/systemd/system/kubelet.service.d/* "$rootfs/etc/systemd/system/kubelet.service.d/"
  local pause_name
  pause_name=$(control_plane_images | awk '$2=="pause"{print $1}')
  sed -e 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' \
      -e "s|sandbox_image = .*|sandbox_image = \"$pause_name\"|" \
      "$kind_files/etc/containerd/config.toml" >"$rootfs/etc/containerd/config.toml"
  grep -q 'restrict_oom_score_adj = true' "$rootfs/etc/containerd/config.toml" || die "kind's containerd config changed: no restrict_oom_score_adj"

  # What kind's Dockerfile does after installing its packages.
  find "$rootfs/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
  rm -f "$rootfs"/lib/systemd/system/multi-user.target.wants/* "$rootfs"/etc/systemd/system/*.wants/* \
    "$rootfs"/lib/systemd/system/local-fs.target.wants/* "$rootfs"/lib/systemd/system/sockets.target.wants/*udev* \
    "$rootfs"/lib/systemd/system/sockets.target.wants/*initctl* "$rootfs"/lib/systemd/system/basic.target.wants/*
  echo "ReadKMsg=no" >>"$rootfs/etc/systemd/journald.conf"
  ln -sf /usr/lib/systemd/systemd "$rootfs/sbin/init"
  chroot "$rootfs" systemctl enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1
  chroot "$rootfs" systemctl mask systemd-binfmt.service >/dev/null 2>&1
  [[ -L $rootfs/etc/systemd/system/multi-user.target.wants/kubelet.service ]] || die "systemctl enable kubelet did not take"

  # Debian's containerd lives in /usr/bin; kind's unit starts /usr/local/bin/containerd. The OCI base
  # spec is kind's: containerd's default, with kind's createContainer hook and no rlimits.
  ln -sf /usr/bin/containerd "$rootfs/usr/local/bin/containerd"
  ctr oci spec | python3 -c '
import json, sys
spec = json.load(sys.stdin)
spec.setdefault("hooks", {}).setdefault("createContainer", []).append({"path": "/kind/bin/mount-product-files.sh"})
spec["process"].pop("rlimits", None)
json.dump(spec, sys.stdout, indent=2)' >"$rootfs/etc/containerd/cri-base.json"

  # CNI: Debian's plugins where kind looks for them, and one bridge for the single node, no masquerade.
  mkdir -p "$rootfs/opt/cni/bin" "$rootfs/etc/cni/net.d"
  for plugin in "$rootfs"/usr/lib/cni/*; do ln -sf "/usr/lib/cni/$(basename "$plugin")" "$rootfs/opt/cni/bin/"; done
  cat >"$rootfs/etc/cni/net.d/10-qwen-bridge.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "qwen-kind",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

  local name
  for name in kubeadm kubelet kubectl; do install -m 0755 "$(bin "$name")" "$rootfs/usr/bin/$name"; done
  install -m 0755 "$(bin crictl)" "$rootfs/usr/local/bin/crictl"
  echo "$KUBERNETES_VERSION" >"$rootfs/kind/version"
}

# The node's root file system as a tar archive in ARCHIVES (the cache), assembled when missing.
assemble() {
  local archive
  archive=$(rootfs_archive)
  if [[ ! -f $archive ]]; then
    [[ $(id -u) -eq 0 ]] || die "assembling the node image needs root (debootstrap, chroot)"
    command -v debootstrap >/dev/null && command -v buildah >/dev/null || die "debootstrap and buildah are missing: run make tools"
    local t0=$SECONDS
    "$HACK_DIR/build-tools.sh" kind-node
    "$HACK_DIR/images.sh" build >/dev/null
    rm -rf "$WORK"; mkdir -p "$WORK/images"
    local rootfs=$WORK/rootfs line name binary path images archives=()
    assemble_rootfs "$rootfs"
    mapfile -t images < <(control_plane_images)
    for line in "${images[@]}"; do
      read -r name binary path <<<"$line"
      log "image $name ($binary)"
      build_control_plane_image "$name" "$binary" "$path" "$WORK/images/$binary.tar" </dev/null
      archives+=("$WORK/images/$binary.tar")
    done
    log "pre-importing ${#archives[@]} images into the node's containerd"
    preimport "$rootfs" "${archives[@]}"
    tar --numeric-owner --xattrs -C "$rootfs" -cf "$archive.tmp" .
    mv "$archive.tmp" "$archive"
    rm -rf "$WORK"
    # Older node images of other inputs are not kept.
    find "$ARCHIVES" -maxdepth 1 -name "kind-node-*.tar" ! -path "$archive" -delete
    log "assembled $archive in $((SECONDS - t0))s"
  fi
}

build() {
  local r archive
  r=$(ref); archive=$(rootfs_archive)
  if docker image inspect "$r" >/dev/null 2>&1; then echo "$r"; return; fi
  assemble
  local t0=$SECONDS
  # kind's image also sets STOPSIGNAL SIGRTMIN+3, which `docker import` cannot: kind deletes its nodes
  # with `docker rm -f`, which kills them whatever the signal.
  docker import --change 'ENV container=docker' \
    --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' "$archive" "$r" >/dev/null
  log "imported $r into Docker in $((SECONDS - t0))s"
  # Node images of other inputs are not kept (a cluster still running one keeps its layers).
  docker images --format '{{.Repository}}:{{.Tag}}' qwen-kind-node | grep -vxF "$r" | xargs -r docker rmi >/dev/null 2>&1 || true
  echo "$r"
}

prebuild() {
  if [[ $(id -u) -ne 0 ]] || ! command -v debootstrap >/dev/null || ! command -v buildah >/dev/null; then
    log "not assembling the kind node image: it needs root, debootstrap and buildah (hack/install-node-packages.sh)"
    return
  fi
  assemble
}

case "${1:-}" in
  build) build ;;
  prebuild) prebuild ;;
  ref) ref ;;
  *) echo "usage: $0 build | prebuild | ref" >&2; exit 2 ;;
esac
