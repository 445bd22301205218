#!/usr/bin/env bash
# `make lint`: the operator's own layering, then what reaches a cluster, checked by real linters:
#   - the chart rendered in its modes, and the children the operator makes for every example;
#   - kubeconform -strict against JSON schemas generated offline (hack/gen-lint-schemas.py) from the pinned
#     k8s.io/kubernetes module's OpenAPI spec and from the CRDs (QwenInference, Prometheus Operator);
#   - kube-score (built from its Go module, hack/build-tools.sh lint), whose findings must each be fixed or listed
#     in hack/lint-allowlist.yaml with a reason (hack/lint-findings.py fails on any other, and on stale entries).
# LINT_OUT=DIR keeps the rendered files and reports there; LINT_ALLOWLIST=FILE judges against another allowlist.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PYTHON=${PYTHON:-$REPO/.venv/bin/python}

"$REPO/.venv/bin/lint-imports"

hack/build-tools.sh lint
HELM=$(hack/build-tools.sh path helm)
KUBE_SCORE=$(hack/build-tools.sh path kube-score)
KUBECONFORM=$(hack/build-tools.sh path kubeconform)

OUT=${LINT_OUT:-$(mktemp -d)}
[[ -n ${LINT_OUT:-} ]] || trap 'rm -rf "$OUT"' EXIT
mkdir -p "$OUT/rendered" "$OUT/schemas"

# The chart: defaults, namespaced mode, and every optional object turned on.
"$HELM" template qwen-operator charts/qwen-operator --namespace qwen-system >"$OUT/rendered/chart-default.yaml"
"$HELM" template qwen-operator charts/qwen-operator --namespace qwen-system \
  --set-json 'watchNamespaces=["team-a","team-b"]' >"$OUT/rendered/chart-namespaced.yaml"
"$HELM" template qwen-operator charts/qwen-operator --namespace qwen-system \
  --set serviceMonitor.enabled=true --set prometheusAdapter.enabled=true \
  --set monitoring.labels.release=monitoring --set rbac.readSecrets=false \
  --set gateway.enabled=true --set gateway.serviceMonitor.enabled=true --set gateway.redis.url=redis://redis:6379/0 \
  >"$OUT/rendered/chart-all.yaml"
# The operator's children, one file per example (kube-score judges the objects of one file together).
for example in examples/*.yaml; do
  "$PYTHON" hack/render-children.py "$example" >"$OUT/rendered/children-$(basename "$example")"
done

"$PYTHON" hack/gen-lint-schemas.py "$OUT/schemas"
echo "kubeconform $(basename "$(dirname "$KUBECONFORM")") -strict: the chart, the children and the examples"
"$KUBECONFORM" -strict -summary -output text \
  -schema-location "$OUT/schemas/{{ .ResourceKind }}-{{ .Group }}-{{ .ResourceAPIVersion }}.json" \
  "$OUT"/rendered/*.yaml examples/*.yaml

: >"$OUT/kube-score.txt"
for file in "$OUT"/rendered/*.yaml; do
  # kube-score exits 1 on any critical finding; hack/lint-findings.py judges them against the allowlist.
  "$KUBE_SCORE" score --output-format ci --enable-optional-test container-seccomp-profile "$file" \
    | sed "s|^|$(basename "$file") |" >>"$OUT/kube-score.txt" || true
done
"$PYTHON" hack/lint-findings.py "$OUT/kube-score.txt" "${LINT_ALLOWLIST:-hack/lint-allowlist.yaml}"
