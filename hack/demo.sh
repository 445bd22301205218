#!/usr/bin/env bash
# `make demo`: the local control plane, the operator, and examples/qwen3-0.6b-fp8.yaml.
#
#   hack/demo.sh        start everything, apply the sample, wait for Ready, show it, scale it
#   hack/demo.sh down   stop the operator this script started, then the cluster
#
# The operator keeps running in the background afterwards (log: $QWEN_CLUSTER_DIR/logs/operator.log)
# so you can keep using kubectl; `make demo-down` stops it.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER_DIR=${QWEN_CLUSTER_DIR:-$HOME/.cache/qwen-operator/cluster}
OPERATOR_PID=$CLUSTER_DIR/pids/operator
OPERATOR_LOG=$CLUSTER_DIR/logs/operator.log
NAMESPACE=${QWEN_DEMO_NAMESPACE:-demo}
export PATH=$REPO_DIR/.venv/bin:$PATH

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

stop_operator() {
  if [[ -f $OPERATOR_PID ]] && kill -0 "$(cat "$OPERATOR_PID")" 2>/dev/null; then
    echo "[demo] stopping the operator (pid $(cat "$OPERATOR_PID"))"
    kill "$(cat "$OPERATOR_PID")"
    for _ in $(seq 100); do kill -0 "$(cat "$OPERATOR_PID")" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$OPERATOR_PID"
}

if [[ ${1:-} == down ]]; then
  stop_operator
  "$REPO_DIR/hack/cluster.sh" down
  exit 0
fi

say "1. The local control plane (first run builds Kubernetes from source: a few minutes)"
"$REPO_DIR/hack/cluster.sh" up
KUBECONFIG=$("$REPO_DIR/hack/cluster.sh" kubeconfig)
export KUBECONFIG
kubectl get nodes -L nvidia.com/gpu.product -L nvidia.com/gpu.count

say "2. The QwenInference CRD"
"$REPO_DIR/hack/cluster.sh" crds

say "3. The operator (qwen-operator run --all-namespaces), in the background"
stop_operator
mkdir -p "$(dirname "$OPERATOR_LOG")" "$(dirname "$OPERATOR_PID")"
QWEN_OPERATOR_RESYNC_SECONDS=${QWEN_OPERATOR_RESYNC_SECONDS:-30} QWEN_OPERATOR_METRICS_ADDRESS=127.0.0.1 \
  QWEN_OPERATOR_METRICS_PORT=${QWEN_OPERATOR_METRICS_PORT:-19090} \
  setsid qwen-operator run --all-namespaces --standalone >"$OPERATOR_LOG" 2>&1 </dev/null &
echo $! >"$OPERATOR_PID"
echo "pid $(cat "$OPERATOR_PID"), log $OPERATOR_LOG, metrics http://127.0.0.1:${QWEN_OPERATOR_METRICS_PORT:-19090}/metrics"

say "4. The sample: kubectl apply -n $NAMESPACE -f examples/qwen3-0.6b-fp8.yaml"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -n "$NAMESPACE" -f "$REPO_DIR/examples/qwen3-0.6b-fp8.yaml"
kubectl wait -n "$NAMESPACE" --for=condition=Ready qwi/chat --timeout=120s
kubectl get qwi -n "$NAMESPACE"

say "5. What the operator made for it"
kubectl get deployment,service,pvc,configmap,pods -n "$NAMESPACE" -l app.kubernetes.io/instance=chat
kubectl get deployment chat -n "$NAMESPACE" -o jsonpath='{"vllm "}{.spec.template.spec.containers[0].args}{"\n"}'

say "6. kubectl scale qwi chat --replicas=2"
kubectl scale qwi chat -n "$NAMESPACE" --replicas=2
for _ in $(seq 60); do
  [[ $(kubectl get qwi chat -n "$NAMESPACE" -o jsonpath='{.status.ready}') == 2/2 ]] && break
  sleep 1
done
kubectl get qwi -n "$NAMESPACE"
kubectl get events -n "$NAMESPACE" --field-selector involvedObject.kind=QwenInference

cat <<EOF

The cluster and the operator keep running. Try:
  export KUBECONFIG=$KUBECONFIG
  kubectl get qwi -A
  kubectl describe qwi chat -n $NAMESPACE
  kubectl label pod -n $NAMESPACE -l app.kubernetes.io/instance=chat stage.qwenops.io/crash-loop=true   # fake a crash loop
Stop everything with: make demo-down
EOF
