{{/* The gateway's names, labels and RBAC rules (templates/gateway.yaml). */}}

{{- define "qwen-operator.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-gateway" (include "qwen-operator.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "qwen-operator.gatewayLabels" -}}
{{ include "qwen-operator.gatewaySelectorLabels" . }}
app.kubernetes.io/component: gateway
app.kubernetes.io/part-of: {{ include "qwen-operator.name" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Exactly what the gateway uses: it lists and watches QwenInferences (their status says where each model is),
stamps its latest request on them (an annotation: patch), and wakes a model scaled to zero (scale subresource). */}}
{{- define "qwen-operator.gatewayRules" -}}
- apiGroups: ["inference.qwenops.io"]
  resources: ["qweninferences"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["inference.qwenops.io"]
  resources: ["qweninferences/scale"]
  verbs: ["patch"]
{{- if .Values.gateway.readModelKeys }}
# The engine's own API key a QwenInference names (spec.auth.apiKeySecretRef), read by name: get only, no list.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
{{- end -}}
