{{/* Names and labels. */}}

{{- define "qwen-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "qwen-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "qwen-operator.serviceAccountName" -}}
{{- default (include "qwen-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "qwen-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "qwen-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qwen-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "qwen-operator.labels" -}}
{{ include "qwen-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/*
The operator's RBAC rules, kept in this one place. Everything the operator (its informers and
reconcile) reads or writes is listed here with exactly the verbs it uses; no wildcards, no `update`
(nothing is ever PUT: children are server-side applied, which is a PATCH, and a PATCH that creates
needs `create` too). tests/integration/test_helm_install.py runs the operator under these rules.

  include "qwen-operator.rbacRules" (dict "scope" "namespaced")  namespaced mode: the Role in each
                                                                 watched namespace
  include "qwen-operator.rbacRules" (dict "scope" "cluster")     namespaced mode: the ClusterRole
                                                                 (cluster-scoped kinds only)
  include "qwen-operator.rbacRules" (dict "scope" "all")         cluster mode: the one ClusterRole

It renders a YAML list with a leading newline: use it as `... | trim | nindent 2` under `rules:`.
*/}}
{{- define "qwen-operator.rbacRules" -}}
{{- $namespaced := has .scope (list "all" "namespaced") -}}
{{- $cluster := has .scope (list "all" "cluster") -}}
{{- if not (or $namespaced $cluster) -}}
{{- fail (printf "qwen-operator.rbacRules: scope must be all, namespaced or cluster, not %q" .scope) -}}
{{- end -}}
{{- if $namespaced }}
# The QwenInference resources: listed and watched by the operator's informer; the operator writes only
# their status and scale subresources.
- apiGroups: ["inference.qwenops.io"]
  resources: ["qweninferences"]
  verbs: ["list", "watch"]
- apiGroups: ["inference.qwenops.io"]
  resources: ["qweninferences/status"]
  verbs: ["patch"]
# Scale to zero (autoscaling.minReplicas 0): spec.replicas 0 through the scale subresource when idle.
- apiGroups: ["inference.qwenops.io"]
  resources: ["qweninferences/scale"]
  verbs: ["patch"]
# Owner references with blockOwnerDeletion need update on the owner's finalizers where the
# OwnerReferencesPermissionEnforcement admission plugin runs (OpenShift).
- apiGroups: ["inference.qwenops.io"]
  resources: ["qweninferences/finalizers"]
  verbs: ["update"]
# The children: listed and watched by the operator's caches (label selector managed-by), applied,
# pruned; made by an apply that can only create, and read by name when it is refused (an object of
# that name made by someone else is a NameConflict, never taken over); a cache claim the spec names is read by name.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors", "prometheusrules"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The router's ServiceAccount, and its Role (list and watch pods, for vllm-router's discovery) with its
# binding. No escalate or bind verb is needed: the API server lets the operator grant what it holds
# itself, and it lists and watches pods (below).
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Observed only: the vLLM pods (watched, managed-by label), and the Secrets a spec refers to (it checks
# that they exist and hold the key; never listed, so no Secret it was not pointed at is read). Without
# rbac.readSecrets, a missing Secret is seen in the pods' status instead (SecretNotFound).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
{{- if .readSecrets }}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
# Events about each QwenInference (core/v1, created only).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
{{- if $cluster }}
# The GPU capability check reads the compute capability labels of the nodes its pods run on.
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list", "watch"]
{{- if and (eq .scope "all") .namespaceSelector }}
# With watchNamespaceSelector the operator watches the namespaces whose labels match it.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}
{{- end -}}

{{/* The Lease the replicas elect a leader on. */}}
{{- define "qwen-operator.leaseName" -}}
{{- default (include "qwen-operator.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}
