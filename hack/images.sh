#!/usr/bin/env bash
# Builds the images the real node runs, without any registry, and imports them into its containerd.
#
#   hack/images.sh build                 build every image (each is cached by the hash of its inputs)
#   hack/images.sh prebuild              the same where the real node can run (make tools), else say why
#   hack/images.sh import SOCKET FILE    build, then import every image into the containerd at SOCKET,
#                                        and write their references to FILE (NAME=REFERENCE lines)
#   hack/images.sh ref NAME              print the reference of base|pause|operator|standin|router
#
# The images:
#   base      Debian (DEBIAN_SUITE in hack/versions.env) made with debootstrap from Debian's mirror,
#             with Python 3 for the operator and the stand-in
#   pause     the pod sandbox: the pause binary hack/build-tools.sh compiles from k8s.io/kubernetes
#   operator  images/operator/Dockerfile, BASE=the Debian base
#   standin   tests/standin/Dockerfile (the vLLM stand-in, not vLLM), BASE=the Debian base
#   router    images/router/Dockerfile (vllm-router VLLM_ROUTER_VERSION from its hash-locked wheel), BASE=the
#             Debian base; on import it is also tagged localhost/qwen-vllm-router:VLLM_ROUTER_VERSION, the
#             operator's default router image (operator/qwen_operator/config.py)
# The Dockerfiles take their base as the build argument BASE, so the same files build elsewhere
# against public bases.
#
# The build tool is Debian's buildah: it needs no daemon (nothing to start, keep running and clean
# up), runs RUN steps with chroot isolation (Docker's engine needs capabilities this VM withholds for
# privileged work), and writes docker-archive files that `ctr images import` reads. Its storage is
# private, under ~/.cache/qwen-operator/buildah, and archives are kept in ~/.cache/qwen-operator/images/
# named by the hash of what went into them, so an unchanged image is neither rebuilt nor re-exported.
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$HACK_DIR/.." && pwd)
# shellcheck source=versions.env
source "$HACK_DIR/versions.env"

CACHE_DIR=${QWEN_CACHE_DIR:-$HOME/.cache/qwen-operator}
ARCHIVES=$CACHE_DIR/images
BUILDAH=(buildah --root "$CACHE_DIR/buildah/root" --runroot "$CACHE_DIR/buildah/run" --storage-driver overlay)
# What the base holds besides debootstrap's minimal system: Python with venv and pip (the operator
# image builds a virtual environment), PyYAML (the stand-in reads vLLM's flag list), CA certificates.
BASE_PACKAGES=python3,python3-venv,python3-pip,python3-setuptools,python3-wheel,python-is-python3,python3-yaml,ca-certificates,passwd
FLAGS_FILE=$REPO_DIR/operator/qwen_operator/api/vllm_flags.yaml

log() { echo "[images] $*" >&2; }
die() { echo "[images] error: $*" >&2; exit 1; }

hash_of() { sha256sum | cut -c1-12; }

# The Debian mirror apt already uses, so that debootstrap reaches nothing apt does not.
debian_mirror() {
  local mirror
  mirror=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
    | grep -v security | grep -oE 'https?://[^ ]+' | head -n1)
  echo "${mirror:-http://deb.debian.org/debian}"
}

base_hash() { echo "$DEBIAN_SUITE $BASE_PACKAGES minbase v1" | hash_of; }
pause_hash() { { echo "$KUBERNETES_VERSION"; cat "$REPO_DIR/images/pause/Dockerfile"; } | hash_of; }
# The files each build reads (what its .dockerignore or its own context lets in), and its base.
operator_hash() {
  {
    base_hash
    cd "$REPO_DIR"
    find images/operator requirements.lock pyproject.toml README.md operator -type f \
      ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' | LC_ALL=C sort | xargs sha256sum
  } | hash_of
}
standin_files() { echo "$REPO_DIR/tests/standin/Dockerfile" "$REPO_DIR/tests/standin/vllm_standin.py" "$REPO_DIR/tests/standin/vllm" "$FLAGS_FILE"; }
standin_hash() {
  { base_hash; for f in $(standin_files); do [[ -f $f ]] && sha256sum <"$f"; done; } | hash_of
}

router_files() { echo "$REPO_DIR/images/router/Dockerfile" "$REPO_DIR/images/router/requirements.lock"; }
router_hash() {
  { base_hash; echo "$VLLM_ROUTER_VERSION"; for f in $(router_files); do sha256sum <"$f"; done; } | hash_of
}
# The name the operator deploys by default: the same on every node, whatever the build's hash.
ROUTER_IMAGE=localhost/qwen-vllm-router:$VLLM_ROUTER_VERSION

ref() {
  case "$1" in
    base) echo "localhost/qwen-debian-base:$DEBIAN_SUITE-$(base_hash)" ;;
    pause) echo "localhost/qwen-pause:$KUBERNETES_VERSION-$(pause_hash)" ;;
    operator) echo "localhost/qwen-operator:$(operator_hash)" ;;
    standin) echo "localhost/qwen-vllm-standin:$(standin_hash)" ;;
    router) echo "localhost/qwen-vllm-router:$VLLM_ROUTER_VERSION-$(router_hash)" ;;
    *) die "unknown image: $1 (base, pause, operator, standin, router)" ;;
  esac
}
archive_for() { local r=$1; echo "$ARCHIVES/${r#localhost/}.tar" | tr ':' '-'; }
archive_of() { archive_for "$(ref "$1")"; }

in_storage() { "${BUILDAH[@]}" inspect --type image "$1" >/dev/null 2>&1; }

# Exports an image from buildah's storage as a docker-archive (written under a temporary name first).
# It takes the reference, not the name: the files behind a hash may change while a build runs.
export_archive() { # reference
  local r=$1 archive
  archive=$(archive_for "$r")
  "${BUILDAH[@]}" push --quiet "$r" "docker-archive:$archive.tmp:$r" >/dev/null
  mv "$archive.tmp" "$archive"
}

# Puts an image into buildah's storage, from its archive when the storage lost it.
ensure_in_storage() { # name
  local r archive
  r=$(ref "$1"); archive=$(archive_of "$1")
  in_storage "$r" && return 0
  [[ -f $archive ]] || return 1
  "${BUILDAH[@]}" pull --quiet "docker-archive:$archive" >/dev/null
  in_storage "$r"
}

build_base() {
  local r; r=$(ref base)
  [[ -f $(archive_of base) ]] && ensure_in_storage base && return
  command -v debootstrap >/dev/null || die "debootstrap is missing: run make tools (hack/install-node-packages.sh)"
  local t0=$SECONDS mirror container mountpoint
  mirror=$(debian_mirror)
  log "base: debootstrap --variant=minbase $DEBIAN_SUITE from $mirror (about a minute)"
  container=$("${BUILDAH[@]}" from --quiet scratch)
  mountpoint=$("${BUILDAH[@]}" mount "$container")
  if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" "$DEBIAN_SUITE" "$mountpoint" "$mirror" \
      >"$ARCHIVES/debootstrap.log" 2>&1; then
    "${BUILDAH[@]}" umount "$container" >/dev/null; "${BUILDAH[@]}" rm "$container" >/dev/null
    die "debootstrap failed (log: $ARCHIVES/debootstrap.log)"
  fi
  # What a container image does not need: apt's downloaded packages and lists, and the docs.
  rm -rf "$mountpoint"/var/cache/apt/archives/*.deb "$mountpoint"/var/lib/apt/lists/* \
    "$mountpoint"/usr/share/doc/* "$mountpoint"/usr/share/man/*
  "${BUILDAH[@]}" umount "$container" >/dev/null
  "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd /bin/bash "$container"
  "${BUILDAH[@]}" commit --quiet --rm "$container" "$r" >/dev/null
  export_archive "$r"
  log "base: $r in $((SECONDS - t0))s"
}

build_dockerfile() { # name dockerfile context [build-args...]
  local name=$1 dockerfile=$2 context=$3; shift 3
  local r; r=$(ref "$name")
  [[ -f $(archive_for "$r") ]] && return
  local t0=$SECONDS
  log "$name: building $r"
  # RUN steps trust what this machine trusts (a TLS-inspecting proxy's CA on the way to PyPI, say):
  # the host's CA bundle is mounted for the build only, never written into the image.
  local trust=()
  [[ -f /etc/ssl/certs/ca-certificates.crt ]] && trust+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  [[ -f /etc/pip.conf ]] && trust+=(-v /etc/pip.conf:/etc/pip.conf:ro)
  "${BUILDAH[@]}" bud --quiet --isolation chroot --pull=never --layers=false "${trust[@]}" \
    -f "$dockerfile" -t "$r" "$@" "$context" >"$ARCHIVES/$name-build.log" 2>&1 \
    || { tail -n 30 "$ARCHIVES/$name-build.log" >&2; die "building $name failed (log: $ARCHIVES/$name-build.log)"; }
  export_archive "$r"
  # Only the archive is kept: storage would otherwise grow by one copy per change.
  "${BUILDAH[@]}" rmi "$r" >/dev/null 2>&1 || true
  prune_archives "$r"
  log "$name: built in $((SECONDS - t0))s"
}

# Keeps the newest archives of an image (each source change makes one; other clusters may still
# import a recent one) and deletes the older ones.
ARCHIVES_KEPT=3
prune_archives() { # reference
  local r=$1 repository
  repository=${r%:*}; repository=${repository#localhost/}
  # shellcheck disable=SC2012
  ls -t "$ARCHIVES/$repository"-*.tar 2>/dev/null | tail -n +$((ARCHIVES_KEPT + 1)) | xargs -r rm -f
}

build_pause() {
  local context
  context=$(mktemp -d)
  cp "$("$HACK_DIR/build-tools.sh" path pause)" "$context/pause"
  cp "$REPO_DIR/images/pause/Dockerfile" "$context/"
  build_dockerfile pause "$context/Dockerfile" "$context"
  rm -rf "$context"
}

# images/operator/Dockerfile names its public base (python:3.11-slim-bookworm) in its FROM lines;
# the build here puts the Debian base in their place, in a copy, and changes nothing else.
build_operator() {
  local dockerfile
  dockerfile=$(mktemp)
  sed -E "s|^FROM python:[^ ]+|FROM $(ref base)|" "$REPO_DIR/images/operator/Dockerfile" >"$dockerfile"
  build_dockerfile operator "$dockerfile" "$REPO_DIR" --ignorefile "$REPO_DIR/.dockerignore"
  rm -f "$dockerfile"
}

# The stand-in's context is tests/standin plus vLLM's flag list, which lives with the operator's API.
build_standin() {
  [[ -f $FLAGS_FILE ]] || die "$FLAGS_FILE is missing (the stand-in rejects flags the pinned vLLM does not know)"
  local context
  context=$(mktemp -d)
  cp $(standin_files) "$context/"
  build_dockerfile standin "$context/Dockerfile" "$context" --build-arg "BASE=$(ref base)"
  rm -rf "$context"
}

# The router's context is images/router: its Dockerfile and the hash-locked requirements.
build_router() {
  local context
  context=$(mktemp -d)
  cp $(router_files) "$context/"
  build_dockerfile router "$context/Dockerfile" "$context" --build-arg "BASE=$(ref base)"
  rm -rf "$context"
}

build_all() {
  command -v buildah >/dev/null || die "buildah is missing: run make tools (hack/install-node-packages.sh)"
  [[ $(id -u) -eq 0 ]] || die "building images needs root (debootstrap, buildah's storage)"
  mkdir -p "$ARCHIVES"
  "$HACK_DIR/build-tools.sh" pause
  build_pause
  local need_base=0 name
  for name in operator standin router; do [[ -f $(archive_of "$name") ]] || need_base=1; done
  if ((need_base)); then build_base; fi
  build_operator
  build_standin
  build_router
}

# Imports every archive whose image the containerd does not have yet (the name carries the hash),
# and records which references it holds: the files behind a hash may change after the import.
import_all() { # socket refs-file
  local socket=$1 refs_file=$2 name r present
  build_all
  present=$(ctr --address "$socket" --namespace k8s.io images list --quiet)
  : >"$refs_file.tmp"
  for name in pause operator standin router; do
    r=$(ref "$name")
    [[ -f $(archive_for "$r") ]] || die "no archive for $r (its files changed during the build? run it again)"
    if ! grep -qxF "$r" <<<"$present"; then
      local t0=$SECONDS
      ctr --address "$socket" --namespace k8s.io images import "$(archive_for "$r")" >/dev/null
      log "$name: imported $r in $((SECONDS - t0))s"
    fi
    echo "$name=$r" >>"$refs_file.tmp"
  done
  # The router's default name points at the build just imported (a changed build moves the tag).
  ctr --address "$socket" --namespace k8s.io images tag --force "$(ref router)" "$ROUTER_IMAGE" >/dev/null
  mv "$refs_file.tmp" "$refs_file"
}

# make tools builds the images ahead of the tests, unless the real node is off or could not run here.
prebuild() {
  if [[ ${QWEN_REAL_NODE:-auto} == 0 ]]; then log "QWEN_REAL_NODE=0: not building the real node's images"; return; fi
  if [[ $(id -u) -ne 0 ]] || ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
    log "not building the real node's images: they need root, buildah and debootstrap (hack/install-node-packages.sh)"
    return
  fi
  build_all
}

case "${1:-}" in
  build) build_all ;;
  prebuild) prebuild ;;
  import) [[ -n ${3:-} ]] || die "usage: $0 import CONTAINERD_SOCKET REFS_FILE"; import_all "$2" "$3" ;;
  ref) ref "${2:?usage: $0 ref base|pause|operator|standin|router}" ;;
  *) echo "usage: $0 build | prebuild | import CONTAINERD_SOCKET REFS_FILE | ref NAME" >&2; exit 2 ;;
esac
