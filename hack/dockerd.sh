#!/usr/bin/env bash
# A private Docker engine for the kind tests, on a machine where none runs: Debian's dockerd
# (hack/install-node-packages.sh installs docker.io; its own service is never started), with its own
# data-root, exec-root, pidfile and socket under ~/.cache/qwen-operator/dockerd, so it never meets
# another engine, and one bridge network for kind, closed to the outside.
#
#   hack/dockerd.sh up       start it (or find it running); prints DOCKER_HOST=unix://... on its last line
#   hack/dockerd.sh down     stop it (by its pidfile), remove the kind network and the host rule it added
#   hack/dockerd.sh status   exit 0 when it answers
#
# What this VM needs and what the network safety rules ask for:
# - The capability bounding set lacks CAP_SYS_RESOURCE, and Docker's --privileged asks for every
#   capability, so runc fails with "unable to apply caps". The default runtime is a wrapper
#   (hack/runc-drop-sys-resource) that deletes CAP_SYS_RESOURCE from the OCI spec, then runs runc.
# - --iptables=false, --ip-masq=false, --ip-forward=false: dockerd writes no NAT or filter rule and no
#   sysctl. Ports published on 127.0.0.1 go through docker-proxy (userland), which needs no rule.
# - --bridge=none: no default docker0 bridge. kind uses the network named "kind", created here on
#   $KIND_SUBNET over the bridge $KIND_BRIDGE, and the host forwards nothing that comes from it to
#   any other interface (one FORWARD DROP rule, removed by down): nodes and pods reach the host's
#   bridge address and each other, nothing else.
# - --dns: the embedded DNS of the kind network forwards to the bridge's own host address, where no
#   DNS server listens, so no query for a name outside the cluster leaves the machine.
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_DIR=${QWEN_CACHE_DIR:-$HOME/.cache/qwen-operator}
DOCKERD_DIR=${QWEN_DOCKERD_DIR:-$CACHE_DIR/dockerd}
SOCKET=$DOCKERD_DIR/docker.sock
PIDFILE=$DOCKERD_DIR/dockerd.pid
LOG=$DOCKERD_DIR/dockerd.log
KIND_SUBNET=${QWEN_KIND_SUBNET:-172.29.0.0/24}
KIND_GATEWAY=${KIND_SUBNET%.*}.1
KIND_BRIDGE=${QWEN_KIND_BRIDGE:-qwenkind0}
RUNTIME=$HACK_DIR/runc-drop-sys-resource
FORWARD_RULE=(FORWARD -i "$KIND_BRIDGE" ! -o "$KIND_BRIDGE" -j DROP -m comment --comment qwen-kind-closed)

log() { echo "[dockerd] $*" >&2; }
die() { echo "[dockerd] error: $*" >&2; exit 1; }
# Debian's client, not whatever else is on PATH: it speaks this engine's API version.
docker_cli() { /usr/bin/docker --host "unix://$SOCKET" "$@"; }

running_pid() {
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]] && echo "$pid"
}

answers() { docker_cli info >/dev/null 2>&1; }

up() {
  [[ $(id -u) -eq 0 ]] || die "starting dockerd needs root"
  [[ -x /usr/sbin/dockerd ]] || die "no /usr/sbin/dockerd: run make tools (hack/install-node-packages.sh installs docker.io)"
  mkdir -p "$DOCKERD_DIR"/{data,exec}
  if ! running_pid >/dev/null; then
    log "starting dockerd (data-root $DOCKERD_DIR/data, socket $SOCKET)"
    rm -f "$SOCKET" "$PIDFILE"
    # setsid: a process group of its own, so that a test run's Ctrl-C does not reach it half-way.
    setsid /usr/sbin/dockerd \
      --host "unix://$SOCKET" --data-root "$DOCKERD_DIR/data" --exec-root "$DOCKERD_DIR/exec" --pidfile "$PIDFILE" \
      --iptables=false --ip6tables=false --ip-masq=false --ip-forward=false --bridge=none --userland-proxy=true \
      --dns "$KIND_GATEWAY" --add-runtime "qwen-runc=$RUNTIME" --default-runtime qwen-runc \
      --storage-driver overlay2 --log-driver local --no-new-privileges=false \
      </dev/null >"$LOG" 2>&1 &
    for _ in $(seq 60); do answers && break; sleep 0.5; done
    answers || { tail -n 20 "$LOG" >&2; die "dockerd did not answer within 30 s (log: $LOG)"; }
  fi
  if ! docker_cli network inspect kind >/dev/null 2>&1; then
    log "creating the kind network ($KIND_SUBNET on $KIND_BRIDGE, no masquerade)"
    docker_cli network create --driver bridge --subnet "$KIND_SUBNET" --gateway "$KIND_GATEWAY" \
      -o com.docker.network.bridge.name="$KIND_BRIDGE" -o com.docker.network.bridge.enable_ip_masquerade=false \
      -o com.docker.network.driver.mtu=1500 kind >/dev/null
  fi
  iptables -C "${FORWARD_RULE[@]}" 2>/dev/null || iptables -I "${FORWARD_RULE[@]}"
  echo "DOCKER_HOST=unix://$SOCKET"
}

down() {
  local pid
  if pid=$(running_pid); then
    docker_cli network rm kind >/dev/null 2>&1 || true
    log "stopping dockerd (pid $pid)"
    kill "$pid"
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { log "dockerd $pid still running after 30 s: SIGKILL"; kill -9 "$pid"; }
  fi
  rm -f "$PIDFILE" "$SOCKET"
  while iptables -C "${FORWARD_RULE[@]}" 2>/dev/null; do iptables -D "${FORWARD_RULE[@]}"; done
  # The bridge goes with the network; after a SIGKILL it may stay behind.
  if ip link show "$KIND_BRIDGE" >/dev/null 2>&1; then ip link delete "$KIND_BRIDGE"; fi
  # Mounts dockerd leaves behind when it is killed (its exec-root's netns files, overlay mounts).
  { grep -oE " $DOCKERD_DIR/[^ ]+" /proc/self/mounts || true; } | sort -r | while read -r mountpoint; do
    umount -l "$mountpoint" 2>/dev/null || true
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) answers ;;
  *) echo "usage: $0 up | down | status" >&2; exit 2 ;;
esac
