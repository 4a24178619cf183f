{{/*
Names, labels, image references and the shared environment of the Phoenix chart.
*/}}

{{- define "phoenix.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name; every object is named "<fullname>-<component>". */}}
{{- define "phoenix.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "phoenix.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object; call with (dict "root" $ "component" "api"). */}}
{{- define "phoenix.labels" -}}
helm.sh/chart: {{ include "phoenix.chart" .root }}
{{ include "phoenix.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: phoenix
{{- end }}

{{/* Labels that select one component's pods; call with (dict "root" $ "component" "api"). */}}
{{- define "phoenix.selectorLabels" -}}
app.kubernetes.io/name: {{ include "phoenix.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* A Phoenix image; call with (dict "root" $ "image" .Values.api.image). */}}
{{- define "phoenix.image" -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}

{{/* A third-party image (Postgres, Prometheus, ...): repository and tag both given. */}}
{{- define "phoenix.externalImage" -}}
{{- printf "%s:%s" .repository .tag }}
{{- end }}

{{/* The Secret that holds the API tokens (generated, or the user's own). */}}
{{- define "phoenix.tokensSecret" -}}
{{- .Values.auth.existingSecret | default (printf "%s-tokens" (include "phoenix.fullname" .)) }}
{{- end }}

{{/* The Secret and key that hold DATABASE_URL. */}}
{{- define "phoenix.databaseSecret" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else }}
{{- printf "%s-database" (include "phoenix.fullname" .) }}
{{- end }}
{{- end }}

{{- define "phoenix.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecretKey }}
{{- else -}}
database-url
{{- end }}
{{- end }}

{{/* Fails the render when no database is configured. */}}
{{- define "phoenix.checkDatabase" -}}
{{- if and (not .Values.postgres.enabled) (not .Values.database.url) (not .Values.database.existingSecret) }}
{{- fail "no database: set postgres.enabled=true (bundled), database.url, or database.existingSecret" }}
{{- end }}
{{- end }}

{{- define "phoenix.apiUrl" -}}
{{- printf "http://%s-api.%s.svc:%d" (include "phoenix.fullname" .) .Release.Namespace (int .Values.api.service.port) }}
{{- end }}

{{/* Where experiment collectors remote-write their metrics. */}}
{{- define "phoenix.remoteWriteUrl" -}}
{{- if .Values.prometheus.enabled }}
{{- printf "http://%s-prometheus.%s.svc:9090/api/v1/write" (include "phoenix.fullname" .) .Release.Namespace }}
{{- else if .Values.prometheus.remoteWriteUrl }}
{{- .Values.prometheus.remoteWriteUrl }}
{{- else }}
{{- fail "no Prometheus: set prometheus.enabled=true (bundled) or prometheus.remoteWriteUrl" }}
{{- end }}
{{- end }}

{{/* Where the analyzer queries the measurements (Prometheus' HTTP API). */}}
{{- define "phoenix.prometheusUrl" -}}
{{- if .Values.prometheus.enabled }}
{{- printf "http://%s-prometheus.%s.svc:9090" (include "phoenix.fullname" .) .Release.Namespace }}
{{- else if .Values.prometheus.url }}
{{- .Values.prometheus.url }}
{{- else }}
{{- fail "no Prometheus to query: set prometheus.enabled=true (bundled) or prometheus.url (the reconciler's analyzer reads the measurements there)" }}
{{- end }}
{{- end }}

{{/* Where agents push per-collector CPU and memory: agent.pushgatewayUrl, the bundled
Pushgateway or pushgateway.url. Experiments measure collector overhead from it. */}}
{{- define "phoenix.pushgatewayUrl" -}}
{{- if .Values.agent.pushgatewayUrl }}
{{- .Values.agent.pushgatewayUrl }}
{{- else if .Values.pushgateway.enabled }}
{{- printf "http://%s-pushgateway.%s.svc:9091" (include "phoenix.fullname" .) .Release.Namespace }}
{{- else if .Values.pushgateway.url }}
{{- .Values.pushgateway.url }}
{{- else }}
{{- fail "no Pushgateway: set pushgateway.enabled=true (bundled) or pushgateway.url (the agents push each collector's CPU and memory there)" }}
{{- end }}
{{- end }}

{{/* DATABASE_URL from its Secret. */}}
{{- define "phoenix.databaseEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "phoenix.databaseSecret" . }}
      key: {{ include "phoenix.databaseSecretKey" . }}
{{- end }}

{{/* A container security context for a process that needs nothing from the host. */}}
{{- define "phoenix.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Waits for the bundled Postgres, so the first start does not crash-loop. */}}
{{- define "phoenix.waitForPostgres" -}}
{{- if .Values.postgres.enabled -}}
initContainers:
  - name: wait-for-postgres
    image: {{ include "phoenix.externalImage" .Values.postgres.image }}
    imagePullPolicy: IfNotPresent
    command:
      - sh
      - -c
      - until pg_isready --quiet --host={{ include "phoenix.fullname" . }}-postgres --port=5432; do echo waiting for postgres; sleep 2; done
    securityContext:
      {{- include "phoenix.restrictedContainer" . | nindent 6 }}
      runAsUser: 999
    resources:
      requests: {cpu: 10m, memory: 16Mi}
      limits: {memory: 64Mi}
{{- end }}
{{- end }}

{{/* The environment of Phoenix's own logs and traces (values: telemetry), for every
Phoenix container: PHOENIX_LOG_FORMAT, and OTEL_EXPORTER_OTLP_ENDPOINT when set. */}}
{{- define "phoenix.telemetryEnv" -}}
- name: PHOENIX_LOG_FORMAT
  value: {{ .Values.telemetry.logFormat | quote }}
{{- with .Values.telemetry.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* agent.labels as the agent's --labels: "key=value,key=value", sorted by key. */}}
{{- define "phoenix.agentLabels" -}}
{{- $pairs := list }}
{{- range $key, $value := . }}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}
