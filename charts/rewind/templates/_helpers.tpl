{{/*
The release's base name: the release name when it already says "rewind", else "<release>-rewind".
Cut to 40 characters so that every name derived from it ("-operator-discovery", "-operator-metrics")
stays a valid object name.
*/}}
{{- define "rewind.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The operator's Deployment, its ClusterRole and its (Cluster)RoleBindings. */}}
{{- define "rewind.operatorName" -}}
{{- printf "%s-operator" (include "rewind.fullname" .) -}}
{{- end -}}

{{- define "rewind.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "rewind.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: the existing ServiceAccount to run as (serviceAccount.create is false)" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The namespaces the operator watches, as a JSON list (read it with `include ... | fromJsonArray`):
watchNamespaces, else the release's namespace; [] when clusterWide (every namespace).
*/}}
{{- define "rewind.watchedNamespaces" -}}
{{- if .Values.clusterWide -}}
{{- list | toJson -}}
{{- else if .Values.watchNamespaces -}}
{{- .Values.watchNamespaces | toJson -}}
{{- else -}}
{{- list .Release.Namespace | toJson -}}
{{- end -}}
{{- end -}}

{{- define "rewind.peeringName" -}}
{{- default (include "rewind.fullname" .) .Values.leaderElection.peeringName -}}
{{- end -}}

{{- define "rewind.selectorLabels" -}}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "rewind.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "rewind.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: rewind
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* repository@digest when a digest is set (it wins), else repository:tag (default: appVersion). */}}
{{- define "rewind.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Values that would make a broken or unsafe install fail at render time, with the reason. */}}
{{- define "rewind.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) -}}
{{- fail (printf "replicas is %d: more than one replica needs leaderElection.enabled=true (without it every replica would drive every Rollback)" (int .Values.replicas)) -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled=true (the ServiceMonitor scrapes the metrics Service)" -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor")) -}}
{{- fail "metrics.serviceMonitor.enabled needs the ServiceMonitor CRD (monitoring.coreos.com/v1, from the Prometheus Operator) in the cluster; with `helm template`, pass --api-versions monitoring.coreos.com/v1/ServiceMonitor" -}}
{{- end -}}
{{- if and .Values.clusterWide .Values.watchNamespaces -}}
{{- fail (printf "clusterWide=true watches every namespace: leave watchNamespaces empty (it lists %s), or set clusterWide=false to watch only those" (join ", " .Values.watchNamespaces)) -}}
{{- end -}}
{{- if eq (int .Values.ports.health) (int .Values.metrics.port) -}}
{{- fail "ports.health and metrics.port must differ (two servers listen on them)" -}}
{{- end -}}
{{- end -}}
