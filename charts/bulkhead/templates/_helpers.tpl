{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "bulkhead.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects. A release called "bulkhead" (or one that
contains the chart name) is used as is, so `helm install bulkhead` gives
objects named "bulkhead".
*/}}
{{- define "bulkhead.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "bulkhead.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels every object carries.
*/}}
{{- define "bulkhead.labels" -}}
helm.sh/chart: {{ include "bulkhead.chart" . }}
{{ include "bulkhead.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bulkhead
{{- end }}

{{/*
Labels that select the operator's pods; never change them (a Deployment's
selector is immutable).
*/}}
{{- define "bulkhead.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bulkhead.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "bulkhead.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bulkhead.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bulkhead.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Namespaces no Environment may claim besides default and kube-*: the
release's, the credentials namespace and values.deniedNamespaces, as a CEL
list literal.
*/}}
{{- define "bulkhead.deniedNamespacesCEL" -}}
{{- $denied := list .Release.Namespace (default .Release.Namespace .Values.credentialsNamespace) }}
{{- range .Values.deniedNamespaces }}{{ $denied = append $denied . }}{{ end }}
{{- $quoted := list }}
{{- range ($denied | uniq) }}{{ $quoted = append $quoted (printf "'%s'" .) }}{{ end }}
{{- printf "[%s]" (join ", " $quoted) }}
{{- end }}

{{- define "bulkhead.environmentRoleLabels" -}}
helm.sh/chart: {{ include "bulkhead.chart" . }}
app.kubernetes.io/name: {{ include "bulkhead.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: bulkhead
app.kubernetes.io/component: environment-role
app.kubernetes.io/managed-by: bulkhead
{{- end }}
