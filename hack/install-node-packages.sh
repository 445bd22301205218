#!/usr/bin/env bash
# Installs the Debian packages the real node of hack/cluster.sh needs: containerd and runc (the
# container runtime), containernetworking-plugins (bridge, host-local, portmap in /usr/lib/cni),
# iptables (kubelet and kube-proxy program it), nftables (down deletes the tables iptables made),
# conntrack, socat (the apiserver's address on the pod bridge), gcc and libc6-dev (the static pause
# binary), and for hack/images.sh debootstrap (with Debian's archive keyring) and buildah; redis-server for the
# gateway's tests (they start it themselves on 127.0.0.1; the package's own service is never started), and chromium for
# the gateway's chat page test (Playwright drives this system browser: nothing downloads a browser); docker.io for
# the kind tests (hack/dockerd.sh starts a private dockerd for them; the package's own service is never started).
# Idempotent and non-interactive; never starts a service (hack/cluster.sh runs a private containerd).
#
# Without root nothing can be installed, and nothing could run the node either: it says so and
# exits 0, and hack/cluster.sh then runs without the real node (its tests skip, naming the reason).
set -euo pipefail

PACKAGES=(containerd runc containernetworking-plugins iptables nftables conntrack socat gcc libc6-dev
  debootstrap debian-archive-keyring buildah redis-server chromium docker.io)

log() { echo "[install-node-packages] $*" >&2; }

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -ne 0 ]]; then
  log "not root: skipping ${missing[*]} (the real node needs root; hack/cluster.sh will run without it)"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  log "no apt-get: install ${missing[*]} yourself for the real node (hack/cluster.sh will run without it)"
  exit 0
fi

# A policy-rc.d that answers 101 tells the package scripts not to start services (containerd's).
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi
log "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Other setup scripts may be using apt at the same time: wait for the dpkg lock, do not fail.
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
