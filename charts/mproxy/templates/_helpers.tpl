{{/* Chart name, overridable. */}}
{{- define "mproxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; the release name alone when it already contains the chart name. */}}
{{- define "mproxy.fullname" -}}
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

{{- define "mproxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels for every object. helm.sh/chart changes on upgrade, so it is never in a selector. */}}
{{- define "mproxy.labels" -}}
helm.sh/chart: {{ include "mproxy.chart" . }}
{{ include "mproxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mproxy
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels: stable across upgrades. */}}
{{- define "mproxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mproxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mproxy.operator.fullname" -}}
{{- printf "%s-operator" (include "mproxy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mproxy.operator.selectorLabels" -}}
{{ include "mproxy.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "mproxy.edge.fullname" -}}
{{- printf "%s-edge" (include "mproxy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mproxy.edge.selectorLabels" -}}
{{ include "mproxy.selectorLabels" . }}
app.kubernetes.io/component: edge
{{- end }}

{{/* The edge config file: edge.config, with auth.secretFile at the Secret edge-deployment.yaml mounts,
replicas (the count each edge announces to sidecars) from edge.replicas and, with
edge.replicasFromEndpointSlices, replicasFrom naming the headless tunnel Service.
One definition for the ConfigMap and for the Deployment's config-hash annotation. */}}
{{/* The edge ConfigMap: "-config", apart from the dashboard ConfigMaps (<fullname>-dashboard-edge). */}}
{{- define "mproxy.edge.configMapName" -}}
{{- printf "%s-config" (include "mproxy.edge.fullname" .) }}
{{- end }}
{{- define "mproxy.edge.forwarding" -}}
{{- if and .Values.edge.forwarding.enabled .Values.edge.tunnelService.enabled }}true{{ end }}
{{- end }}
{{- define "mproxy.edge.config" -}}
{{- $chart := dict "auth" (dict "secretFile" "/var/run/mproxy/edge/secret") "replicas" (int .Values.edge.replicas | max 1) }}
{{- if .Values.edge.replicasFromEndpointSlices }}
{{- if not .Values.edge.tunnelService.enabled }}
{{- fail "edge.replicasFromEndpointSlices counts the headless tunnel Service's endpoints: set edge.tunnelService.enabled=true" }}
{{- end }}
{{- $_ := set $chart "replicasFrom" (dict "endpointSlices" (dict "service" (printf "%s-tunnel" (include "mproxy.edge.fullname" .)))) }}
{{- end }}
{{- if include "mproxy.edge.forwarding" . }}
{{- /* Peers: every ready edge pod behind the headless tunnel Service; the key comes from auth.secretFile. */}}
{{- $peers := dict "listen" (printf "0.0.0.0:%d" (int .Values.edge.forwarding.port)) "hostname" (printf "%s-tunnel.%s.svc.%s" (include "mproxy.edge.fullname" .) .Release.Namespace .Values.operator.clusterDomain) }}
{{- $_ := set $chart "peers" $peers }}
{{- end }}
{{- toYaml (merge $chart (deepCopy .Values.edge.config)) }}
{{- end }}

{{- define "mproxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mproxy.operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The webhook's Service, its DNS name (in the certificate), the cert-manager Certificate and Issuer
(the MutatingWebhookConfiguration's inject-ca-from names the Certificate) and the certificate Secret. */}}
{{- define "mproxy.webhook.serviceName" -}}
{{- printf "%s-webhook" (include "mproxy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "mproxy.webhook.dnsName" -}}
{{- printf "%s.%s.svc" (include "mproxy.webhook.serviceName" .) .Release.Namespace }}
{{- end }}
{{- define "mproxy.webhook.certificateName" -}}
{{- printf "%s-webhook" (include "mproxy.fullname" .) }}
{{- end }}
{{- define "mproxy.webhook.issuerName" -}}
{{- printf "%s-selfsigned" (include "mproxy.fullname" .) }}
{{- end }}
{{- define "mproxy.webhook.certSecret" -}}
{{- printf "%s-webhook-tls" (include "mproxy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* image: repository:tag (tag defaults to the chart's appVersion) or repository@digest. */}}
{{- define "mproxy.image" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository (toString .tag) }}
{{- end }}
{{- end }}
{{- define "mproxy.operator.image" -}}
{{- include "mproxy.image" (dict "repository" .Values.image.repository "tag" (.Values.image.tag | default .Chart.AppVersion) "digest" .Values.image.digest) }}
{{- end }}
{{- define "mproxy.sidecar.image" -}}
{{- $repo := .Values.sidecar.image.repository | default .Values.image.repository }}
{{- $tag := .Values.sidecar.image.tag | default .Values.image.tag | default .Chart.AppVersion }}
{{- include "mproxy.image" (dict "repository" $repo "tag" $tag "digest" .Values.sidecar.image.digest) }}
{{- end }}

{{/* The restricted container securityContext (Pod Security Standards "restricted"). */}}
{{- define "mproxy.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "mproxy.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}
