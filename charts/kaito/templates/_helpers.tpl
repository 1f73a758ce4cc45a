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
