{{/* Names and labels. */}}

{{- define "qwen-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "qwen-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
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
The operator's RBAC rules, kept in this one place. Everything the operator reads or writes is
listed here with exactly the verbs it uses; no wildcards.

  include "qwen-operator.rbacRules" (dict "scope" "namespaced")  rules for namespaced kinds
                                                                 (a Role per watched namespace)
  include "qwen-operator.rbacRules" (dict "scope" "cluster")     rules for cluster-scoped kinds
  include "qwen-operator.rbacRules" (dict "scope" "all")         both (the cluster-mode ClusterRole)

It renders a YAML list with a leading newline: use it as `... | trim | nindent 2` under `rules:`.
*/}}
{{- define "qwen-operator.rbacRules" -}}
{{- $namespaced := has .scope (list "all" "namespaced") -}}
{{- $cluster := has .scope (list "all" "cluster") -}}
{{- if not (or $namespaced $cluster) -}}
{{- fail (printf "qwen-operator.rbacRules: scope must be all, namespaced or cluster, not %q" .scope) -}}
{{- end -}}
{{- if $namespaced }}
# The QwenInference resources: watched, patched (finalizers, kopf's progress annotations).
- apiGroups: ["inference.qwenops.io"]
  resources: ["qweninferences"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["inference.qwenops.io"]
  resources: ["qweninferences/status"]
  verbs: ["get", "patch", "update"]
# The children it applies (server-side apply is a patch), prunes and repairs.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["services", "persistentvolumeclaims", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors", "prometheusrules"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Observed only: the vLLM pods, and the Secrets a spec refers to (it checks that they exist).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Events about each QwenInference.
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# kopf peering in namespaced mode.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- if $cluster }}
# Discovery of optional integrations (is the ServiceMonitor CRD there?) and kopf's resource scan.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
# The GPU capability check (compute capability labels of the nodes).
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list", "watch"]
# kopf: namespace patterns, and peering in cluster mode.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end -}}
