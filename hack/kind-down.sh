#!/usr/bin/env bash
# Deletes the kind cluster that hack/kind-up.sh made, the host routes it added, and its files.
# (The private Docker engine, when hack/dockerd.sh started one, stops with `hack/dockerd.sh down`.)
#
#   hack/kind-down.sh      (same KIND_CLUSTER_NAME and QWEN_KIND_KUBECONFIG as kind-up.sh)
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_DIR=${QWEN_CACHE_DIR:-$HOME/.cache/qwen-operator}
CLUSTER_NAME=${KIND_CLUSTER_NAME:-qwen-e2e}
KUBECONFIG_FILE=${QWEN_KIND_KUBECONFIG:-$CACHE_DIR/kind-$CLUSTER_NAME.kubeconfig}
ROUTES_FILE=$CACHE_DIR/kind-$CLUSTER_NAME.routes

KIND=$("$HACK_DIR/build-tools.sh" path kind)
if [[ -x $KIND ]] && docker info >/dev/null 2>&1 && "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  echo "[kind-down] deleting kind cluster $CLUSTER_NAME" >&2
  "$KIND" delete cluster --name "$CLUSTER_NAME"
else
  echo "[kind-down] no kind cluster $CLUSTER_NAME" >&2
fi
if [[ -f $ROUTES_FILE ]]; then
  while read -r subnet _ gateway; do
    ip route del "$subnet" via "$gateway" 2>/dev/null || true
  done <"$ROUTES_FILE"
fi
rm -f "$KUBECONFIG_FILE" "$ROUTES_FILE" "$CACHE_DIR/kind-$CLUSTER_NAME.images"
