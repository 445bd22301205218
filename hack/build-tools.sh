#!/usr/bin/env bash
# Builds the local control plane's binaries from the Go module proxy, at the versions pinned in
# hack/versions.env, into ~/.cache/qwen-operator/bin/<name>-<version>/. Each binary is built once;
# later calls find it in the cache and return at once.
#
#   hack/build-tools.sh [all|cluster|node|kind-node|lint|kubernetes|etcd|kwok|helm|prometheus-adapter|kind|...]...
#   hack/build-tools.sh path NAME      prints the cached path of one binary
#
# `node` is the real node's part (hack/cluster.sh, QWEN_REAL_NODE): kubelet and kube-proxy from the
# same k8s.io/kubernetes module as the control plane, the pause binary compiled from that module's
# build/pause/linux/pause.c, crictl, CoreDNS, and the fake GPU device plugin in hack/fake-gpu-plugin.
# `kind-node` is what hack/kind-node-image.sh packs: the node's part, the control plane, kubeadm's etcd and CoreDNS, and
# kubeadm and kubectl from the same module.
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$HACK_DIR/versions.env"

CACHE_DIR=${QWEN_CACHE_DIR:-$HOME/.cache/qwen-operator}
BIN_DIR=$CACHE_DIR/bin
BUILD_DIR=$CACHE_DIR/build
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

log() { echo "[build-tools] $*" >&2; }

bin_path() {
  case "$1" in
    kube-apiserver|kube-controller-manager|kube-scheduler) echo "$BIN_DIR/kubernetes-$KUBERNETES_VERSION/$1" ;;
    etcd) echo "$BIN_DIR/etcd-$ETCD_VERSION/etcd" ;;
    kind-etcd) echo "$BIN_DIR/etcd-$KIND_ETCD_VERSION/etcd" ;;
    kind-coredns) echo "$BIN_DIR/coredns-$KIND_COREDNS_VERSION/coredns" ;;
    kwok) echo "$BIN_DIR/kwok-$KWOK_VERSION/kwok" ;;
    helm) echo "$BIN_DIR/helm-$HELM_VERSION/helm" ;;
    prometheus-adapter) echo "$BIN_DIR/prometheus-adapter-$PROMETHEUS_ADAPTER_VERSION/adapter" ;;
    kind) echo "$BIN_DIR/kind-$KIND_VERSION/kind" ;;
    kube-score) echo "$BIN_DIR/kube-score-$KUBE_SCORE_VERSION/kube-score" ;;
    kubeconform) echo "$BIN_DIR/kubeconform-$KUBECONFORM_VERSION/kubeconform" ;;
    kubelet|kube-proxy) echo "$BIN_DIR/kubernetes-node-$KUBERNETES_VERSION/$1" ;;
    kubeadm|kubectl) echo "$BIN_DIR/kubernetes-kind-$KUBERNETES_VERSION/$1" ;;
    pause) echo "$BIN_DIR/pause-$KUBERNETES_VERSION/pause" ;;
    crictl) echo "$BIN_DIR/crictl-$CRICTL_VERSION/crictl" ;;
    coredns) echo "$BIN_DIR/coredns-$COREDNS_VERSION/coredns" ;;
    fake-gpu-plugin) echo "$BIN_DIR/fake-gpu-plugin-$(fake_gpu_plugin_hash)/fake-gpu-plugin" ;;
    *) echo "unknown binary: $1" >&2; return 1 ;;
  esac
}

# Builds into a temporary folder and renames it into place, so that an interrupted build never
# leaves a half-filled cache entry that later runs would trust.
install_dir() {
  local final=$1 tmp=$1.tmp.$$
  rm -rf "$tmp"; mkdir -p "$tmp"; echo "$tmp"
}
commit_dir() { rm -rf "$1"; mv "$2" "$1"; }

# The wrapper module that builds commands of k8s.io/kubernetes: it requires the pinned version and
# replaces each staging module (v0.0.0 in its go.mod) with the matching v0.X.Y release.
kubernetes_wrapper_module() {
  local staging_version=v0.${KUBERNETES_VERSION#v1.}
  local mod=$BUILD_DIR/kubernetes-$KUBERNETES_VERSION
  mkdir -p "$mod"
  [[ -f $mod/go.mod ]] && grep -q "require k8s.io/kubernetes $KUBERNETES_VERSION" "$mod/go.mod" && { echo "$mod"; return; }
  log "kubernetes $KUBERNETES_VERSION: writing wrapper module (staging modules => $staging_version)"
  local gomod_file
  gomod_file=$(mktemp)
  curl -fsSL "$(go env GOPROXY | cut -d, -f1)/k8s.io/kubernetes/@v/$KUBERNETES_VERSION.mod" -o "$gomod_file" \
    || go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" >/dev/null
  {
    echo "module qwen-operator.local/kubernetes-build"
    echo
    echo "go $(awk '$1=="go"{print $2; exit}' "$gomod_file")"
    echo
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    echo
    awk -v v="$staging_version" '$2=="v0.0.0" && $1 ~ /^k8s\.io\//{print "replace " $1 " => " $1 " " v}' "$gomod_file" | sort -u
  } >"$mod/go.mod"
  rm -f "$gomod_file"
  echo "$mod"
}

# -ldflags that stamp the version: unstamped binaries report v0.0.0-master.
kubernetes_ldflags() {
  local major=${KUBERNETES_VERSION#v}; major=${major%%.*}
  local minor=${KUBERNETES_VERSION#v*.}; minor=${minor%%.*}
  local date ld=""
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit=module-proxy-$KUBERNETES_VERSION -X $pkg.buildDate=$date"
  done
  echo "$ld"
}

build_kubernetes_commands() { # output-dir command...
  local out=$1; shift
  local cmd missing=0
  for cmd in "$@"; do [[ -x $out/$cmd ]] || missing=1; done
  ((missing)) || return 0
  local mod ld tmp
  mod=$(kubernetes_wrapper_module)
  ld=$(kubernetes_ldflags)
  tmp=$(install_dir "$out")
  for cmd in "$@"; do
    log "kubernetes $KUBERNETES_VERSION: building $cmd (the first build takes many minutes)"
    (cd "$mod" && go build -mod=mod -trimpath -ldflags "-s -w $ld" -o "$tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd")
  done
  commit_dir "$out" "$tmp"
}

build_kubernetes() {
  build_kubernetes_commands "$BIN_DIR/kubernetes-$KUBERNETES_VERSION" kube-apiserver kube-controller-manager kube-scheduler
}
build_kubernetes_node() {
  build_kubernetes_commands "$BIN_DIR/kubernetes-node-$KUBERNETES_VERSION" kubelet kube-proxy
}
# What a kind node runs besides the kubelet (hack/kind-node-image.sh): kubeadm, and the kubectl kind calls inside it.
build_kubernetes_kind() {
  build_kubernetes_commands "$BIN_DIR/kubernetes-kind-$KUBERNETES_VERSION" kubeadm kubectl
}

# The pod sandbox's pause process, from the pinned module's own source, linked statically so that
# the image needs nothing else (hack/images.sh packs it).
build_pause() {
  local out=$BIN_DIR/pause-$KUBERNETES_VERSION
  [[ -x $out/pause ]] && return
  local dir
  dir=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [[ -f $dir/build/pause/linux/pause.c ]] || { echo "no build/pause/linux/pause.c in k8s.io/kubernetes@$KUBERNETES_VERSION" >&2; return 1; }
  log "pause (k8s.io/kubernetes $KUBERNETES_VERSION): compiling"
  local tmp; tmp=$(install_dir "$out")
  gcc -Os -Wall -Werror -static -DVERSION="$KUBERNETES_VERSION" -o "$tmp/pause" "$dir/build/pause/linux/pause.c"
  strip "$tmp/pause"
  commit_dir "$out" "$tmp"
}

# The device plugin is this project's own module: its cache key is the hash of its files.
fake_gpu_plugin_hash() { cat "$HACK_DIR"/fake-gpu-plugin/{go.mod,go.sum,main.go} | sha256sum | cut -c1-12; }
build_fake_gpu_plugin() {
  local out; out=$(dirname "$(bin_path fake-gpu-plugin)")
  [[ -x $out/fake-gpu-plugin ]] && return
  log "fake-gpu-plugin: building"
  local tmp; tmp=$(install_dir "$out")
  (cd "$HACK_DIR/fake-gpu-plugin" && go build -mod=readonly -trimpath -ldflags "-s -w" -o "$tmp/fake-gpu-plugin" .)
  commit_dir "$out" "$tmp"
}

build_crictl() {
  go_install crictl sigs.k8s.io/cri-tools/cmd/crictl "$CRICTL_VERSION" crictl "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION"
}
build_coredns() {
  go_install coredns github.com/coredns/coredns "$COREDNS_VERSION" coredns
}

build_etcd() {
  local out=$BIN_DIR/etcd-$ETCD_VERSION
  [[ -x $out/etcd ]] && return
  local mod=$BUILD_DIR/etcd-$ETCD_VERSION
  mkdir -p "$mod"
  # etcd's server module carries replace directives, so `go install` refuses it; a wrapper module
  # that requires it (and its sibling modules at the same version) builds it as a dependency.
  cat >"$mod/go.mod" <<EOF
module qwen-operator.local/etcd-build

go 1.26.0

require (
	go.etcd.io/etcd/server/v3 $ETCD_VERSION
	go.etcd.io/etcd/api/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/pkg/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/v3 $ETCD_VERSION
	go.etcd.io/etcd/pkg/v3 $ETCD_VERSION
)
EOF
  log "etcd $ETCD_VERSION: building"
  local tmp; tmp=$(install_dir "$out")
  (cd "$mod" && go build -mod=mod -trimpath \
    -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=module-proxy" \
    -o "$tmp/etcd" go.etcd.io/etcd/server/v3)
  commit_dir "$out" "$tmp"
}

go_install() { # name module version binary-name
  local name=$1 module=$2 version=$3 binary=$4 ldflags=${5:-}
  local out=$BIN_DIR/$name-$version
  [[ -x $out/$binary ]] && return
  log "$name $version: building"
  local tmp; tmp=$(install_dir "$out")
  GOBIN=$tmp go install -trimpath -ldflags "-s -w $ldflags" "$module@$version"
  commit_dir "$out" "$tmp"
}

build_kwok() { go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION" kwok; }
build_helm() {
  [[ -x $(bin_path helm) ]] && return
  # helm's own Makefile stamps the Kubernetes version that `helm template` and `helm lint` assume
  # (.Capabilities.KubeVersion) from its client-go requirement: v0.34.x => v1.34. Unstamped, helm
  # assumes v1.20.0 and refuses every chart whose kubeVersion asks for more, ours included.
  local helm_gomod client_go k8s_major k8s_minor
  helm_gomod=$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  client_go=$(awk '$1=="k8s.io/client-go"{print $2; exit}' "$helm_gomod")
  [[ $client_go =~ ^v([0-9]+)\.([0-9]+)\. ]] || { echo "no k8s.io/client-go version in $helm_gomod" >&2; return 1; }
  k8s_major=$((BASH_REMATCH[1] + 1)) k8s_minor=${BASH_REMATCH[2]}
  local ld="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ld+=" -X $pkg.k8sVersionMajor=$k8s_major -X $pkg.k8sVersionMinor=$k8s_minor"
  done
  go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" helm "$ld"
}
build_prometheus_adapter() {
  local out=$BIN_DIR/prometheus-adapter-$PROMETHEUS_ADAPTER_VERSION
  [[ -x $out/adapter ]] && return
  # `go install module@version` first asks the proxy for the module's version list (to look for a
  # deprecation notice), and the proxy answers 403 for this module's list. Downloading the pinned
  # version and building inside it (its own go.mod and go.sum, no replaces) needs no list.
  local dir
  dir=$(go mod download -json "sigs.k8s.io/prometheus-adapter@$PROMETHEUS_ADAPTER_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [[ -n $dir && -f $dir/go.mod ]] || { echo "could not download sigs.k8s.io/prometheus-adapter@$PROMETHEUS_ADAPTER_VERSION" >&2; return 1; }
  log "prometheus-adapter $PROMETHEUS_ADAPTER_VERSION: building"
  local tmp; tmp=$(install_dir "$out")
  (cd "$dir" && go build -mod=readonly -trimpath -ldflags "-s -w" -o "$tmp/adapter" ./cmd/adapter)
  commit_dir "$out" "$tmp"
}
build_kind() { go_install kind sigs.k8s.io/kind "$KIND_VERSION" kind; }
# The etcd and CoreDNS of the kind node image: the versions kubeadm asks for (KIND_* in versions.env).
build_kind_etcd_and_coredns() {
  ETCD_VERSION=$KIND_ETCD_VERSION build_etcd
  go_install coredns github.com/coredns/coredns "$KIND_COREDNS_VERSION" coredns
}
# The linters of `make lint` (hack/lint.sh). kube-score stamps its version through -X main.version.
build_kube_score() {
  go_install kube-score github.com/zegl/kube-score/cmd/kube-score "$KUBE_SCORE_VERSION" kube-score "-X main.version=$KUBE_SCORE_VERSION"
}
build_kubeconform() { go_install kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION" kubeconform; }
build_lint() { build_helm; build_kube_score; build_kubeconform; }
build_node() { build_pause; build_fake_gpu_plugin; build_crictl; build_coredns; build_kubernetes_node; }
# `all` (make tools) builds the real node's part, and what else the local kind node image holds, only where
# they could run: as root (with gcc for pause).
build_node_if_possible() {
  if [[ $(id -u) -ne 0 ]] || ! command -v gcc >/dev/null; then
    log "skipping the real node's and the kind node image's binaries (they need root and gcc; hack/cluster.sh runs without the real node)"
    return
  fi
  build_node
  build_kubernetes_kind
  build_kind_etcd_and_coredns
}

main() {
  if [[ ${1:-} == path ]]; then bin_path "$2"; return; fi
  mkdir -p "$BIN_DIR" "$BUILD_DIR"
  local targets=("$@")
  [[ ${#targets[@]} -eq 0 ]] && targets=(cluster)
  for t in "${targets[@]}"; do
    case "$t" in
      cluster) build_etcd; build_kwok; build_kubernetes ;;
      all) build_etcd; build_kwok; build_kubernetes; build_helm; build_prometheus_adapter; build_lint; build_kind; build_node_if_possible ;;
      node) build_node ;;
      kubelet|kube-proxy) build_kubernetes_node ;;
      pause) build_pause ;;
      crictl) build_crictl ;;
      coredns) build_coredns ;;
      fake-gpu-plugin) build_fake_gpu_plugin ;;
      kubernetes) build_kubernetes ;;
      etcd) build_etcd ;;
      kwok) build_kwok ;;
      helm) build_helm ;;
      prometheus-adapter) build_prometheus_adapter ;;
      kind) build_kind ;;
      kind-node) build_node; build_kubernetes; build_kubernetes_kind; build_kind_etcd_and_coredns ;;
      kubeadm|kubectl) build_kubernetes_kind ;;
      lint) build_lint ;;
      kube-score) build_kube_score ;;
      kubeconform) build_kubeconform ;;
      *) echo "unknown target: $t" >&2; exit 2 ;;
    esac
  done
}

main "$@"
