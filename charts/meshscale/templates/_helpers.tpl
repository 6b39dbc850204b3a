{{- define "meshscale.fullname" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "meshscale.labels" -}}
app.kubernetes.io/name: meshscale
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "meshscale.image" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{ $root.Values.image.registry }}/{{ $name }}:{{ $root.Values.image.tag | default $root.Chart.AppVersion }}
{{- end -}}

{{- define "meshscale.controlHost" -}}
{{ include "meshscale.fullname" . }}-control.{{ .Release.Namespace }}.svc
{{- end -}}

{{- define "meshscale.webhookHost" -}}
{{ include "meshscale.fullname" . }}-webhook.{{ .Release.Namespace }}.svc
{{- end -}}
