{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "mgeo-worker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart unless the release name already holds the chart name. */}}
{{- define "mgeo-worker.fullname" -}}
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

{{- define "mgeo-worker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mgeo-worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mgeo-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "mgeo-worker.labels" -}}
helm.sh/chart: {{ include "mgeo-worker.chart" . }}
{{ include "mgeo-worker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mgeo
{{- end }}

{{- define "mgeo-worker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mgeo-worker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mgeo-worker.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* MGEO_DEVICE: the explicit value, else cuda with a GPU and cpu without. */}}
{{- define "mgeo-worker.device" -}}
{{- if .Values.worker.device }}{{ .Values.worker.device }}{{ else if .Values.gpu.enabled }}cuda{{ else }}cpu{{ end }}
{{- end }}

{{/* The pod's grace period: explicit, else the drain budget plus 30 s for flush and exit. */}}
{{- define "mgeo-worker.gracePeriod" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add (ceil (float64 .Values.worker.shutdownTimeout) | int) 30 }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding the librdkafka .properties file, empty when there is none. */}}
{{- define "mgeo-worker.kafkaSecretName" -}}
{{- if .Values.kafka.existingSecret }}
{{- .Values.kafka.existingSecret }}
{{- else if .Values.kafka.properties }}
{{- printf "%s-kafka" (include "mgeo-worker.fullname" .) }}
{{- end }}
{{- end }}

{{- define "mgeo-worker.settingsSecretName" -}}
{{- printf "%s-settings" (include "mgeo-worker.fullname" .) }}
{{- end }}

{{- define "mgeo-worker.kafkaConfigDir" -}}/etc/mgeo/kafka{{- end }}

{{/* One env/properties value as text: strings verbatim, anything else as JSON (no 1e+06). */}}
{{- define "mgeo-worker.scalar" -}}
{{- if kindIs "string" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/* The replica ceiling of the chosen scaling mode. */}}
{{- define "mgeo-worker.maxReplicas" -}}
{{- if eq .Values.autoscaling.mode "none" }}{{ int .Values.replicaCount }}{{ else }}{{ int .Values.autoscaling.maxReplicas }}{{ end }}
{{- end }}

{{/*
Cross-field rules a JSON schema cannot express. Included by the Deployment, so every render
and install checks them.
*/}}
{{- define "mgeo-worker.validate" -}}
{{- $partitions := int .Values.kafka.partitions }}
{{- $max := int (include "mgeo-worker.maxReplicas" .) }}
{{- if gt $max $partitions }}
{{- if eq .Values.autoscaling.mode "none" }}
{{- fail (printf "replicaCount (%d) exceeds kafka.partitions (%d): workers beyond the partition count get no partition and sit idle on a GPU; lower replicaCount or add partitions to %s and raise kafka.partitions" $max $partitions .Values.kafka.inputTopic) }}
{{- else }}
{{- fail (printf "autoscaling.maxReplicas (%d) exceeds kafka.partitions (%d): workers beyond the partition count get no partition and sit idle on a GPU; lower maxReplicas or add partitions to %s and raise kafka.partitions" $max $partitions .Values.kafka.inputTopic) }}
{{- end }}
{{- end }}
{{- if ne .Values.autoscaling.mode "none" }}
{{- if gt (int .Values.autoscaling.minReplicas) $max }}
{{- fail (printf "autoscaling.minReplicas (%d) exceeds autoscaling.maxReplicas (%d)" (int .Values.autoscaling.minReplicas) $max) }}
{{- end }}
{{- end }}
{{- if and (eq .Values.autoscaling.mode "hpa") (lt (int .Values.autoscaling.minReplicas) 1) }}
{{- fail "autoscaling.minReplicas must be at least 1 with autoscaling.mode=hpa; scaling to zero needs autoscaling.mode=keda" }}
{{- end }}
{{- $grace := int (include "mgeo-worker.gracePeriod" .) }}
{{- if le (float64 $grace) (float64 .Values.worker.shutdownTimeout) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed worker.shutdownTimeout (%v), or Kubernetes kills workers mid-drain; leave it null to derive it" $grace .Values.worker.shutdownTimeout) }}
{{- end }}
{{- if and (eq .Values.model.source "pvc") (not .Values.model.pvc.claimName) }}
{{- fail "model.source=pvc needs model.pvc.claimName (a PersistentVolumeClaim holding the Hugging Face model directory)" }}
{{- end }}
{{- if and (eq .Values.model.source "hostPath") (not .Values.model.hostPath.path) }}
{{- fail "model.source=hostPath needs model.hostPath.path (the model directory on the node)" }}
{{- end }}
{{- if and .Values.kafka.existingSecret .Values.kafka.properties }}
{{- fail "set kafka.properties or kafka.existingSecret, not both" }}
{{- end }}
{{- $device := include "mgeo-worker.device" . }}
{{- if and .Values.gpu.enabled (eq $device "cpu") }}
{{- fail "worker.device=cpu with gpu.enabled=true would hold a GPU it never uses; set gpu.enabled=false" }}
{{- end }}
{{- if and (not .Values.gpu.enabled) (eq $device "cuda") }}
{{- fail "worker.device=cuda needs gpu.enabled=true (the pod gets no GPU otherwise)" }}
{{- end }}
{{- $managed := dict "bootstrap_servers" "kafka.bootstrapServers" "input_topic" "kafka.inputTopic" "output_topic" "kafka.outputTopic" "dlq_topic" "kafka.dlqTopic" "group_id" "kafka.groupId" "kafka_config_file" "kafka.properties or kafka.existingSecret" "delivery" "worker.delivery" "device" "worker.device" "precision" "worker.precision" "token_budget" "worker.tokenBudget" "max_length" "worker.maxLength" "log_level" "worker.logLevel" "log_format" "worker.logFormat" "shutdown_timeout" "worker.shutdownTimeout" "session_timeout_ms" "worker.sessionTimeoutMs" "metrics_port" "worker.metricsPort" "model" "model.source and model.path" }}
{{- range $key, $_ := .Values.worker.settings }}
{{- if hasKey $managed $key }}
{{- fail (printf "worker.settings.%s is managed by the chart: set %s instead" $key (get $managed $key)) }}
{{- end }}
{{- end }}
{{- range $key, $_ := .Values.worker.secretSettings }}
{{- if hasKey $managed $key }}
{{- fail (printf "worker.secretSettings.%s is managed by the chart: set %s instead" $key (get $managed $key)) }}
{{- end }}
{{- if hasKey $.Values.worker.settings $key }}
{{- fail (printf "%s is in both worker.settings and worker.secretSettings: keep one" $key) }}
{{- end }}
{{- end }}
{{- /* One id shared by several pods fences them against each other. */}}
{{- if gt $max 1 }}
{{- $perPod := dict "group_instance_id" "leave it unset (no static membership)" "transactional_id" "leave it unset: the worker derives one per pod from its hostname" }}
{{- range $key, $advice := $perPod }}
{{- if or (hasKey $.Values.worker.settings $key) (hasKey $.Values.worker.secretSettings $key) }}
{{- fail (printf "worker setting %s would be the same in each of up to %d pods, and Kafka fences pods that share one; %s" $key $max $advice) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.autoscaling.keda.authenticationRef .Values.autoscaling.keda.secretTargetRef }}
{{- fail "set autoscaling.keda.authenticationRef (an existing TriggerAuthentication) or autoscaling.keda.secretTargetRef (the chart makes one), not both" }}
{{- end }}
{{- end }}
