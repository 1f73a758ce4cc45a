{{/* Names and labels shared by the chart's templates. */}}

{{- define "kaito.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kaito.serviceAccountName" -}}
{{- default (include "kaito.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "kaito.webhookServiceName" -}}
{{- printf "%s-webhook" (include "kaito.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kaito.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kaito.labels" -}}
{{ include "kaito.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kaito.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "kaito.runtimeImage" -}}
{{- printf "%s:%s" .Values.runtime.repository (default .Chart.AppVersion .Values.runtime.tag) -}}
{{- end -}}

{{- define "kaito.leaseName" -}}
{{- printf "%s-leader" (include "kaito.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
"true" when several operator pods may run at once: the Lease gates reconciling, and every pod
serves the webhook with the same certificate (cert-manager's Secret) or there is no webhook.
*/}}
{{- define "kaito.multiReplicaSafe" -}}
{{- and .Values.leaderElection.enabled (or (not .Values.webhook.enabled) .Values.webhook.certManager.enabled) -}}
{{- end -}}
