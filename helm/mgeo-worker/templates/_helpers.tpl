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
{{ include "mgeo-worker.selectorLabels" . }}
{{ include "mgeo-worker.commonLabels" . }}
{{- end }}

{{/* Labels of every object, less the component (the workers' selector labels add it). */}}
{{- define "mgeo-worker.commonLabels" -}}
helm.sh/chart: {{ include "mgeo-worker.chart" . }}
app.kubernetes.io/version: {{ include "mgeo-worker.version" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mgeo
{{- end }}

{{/*
app.kubernetes.io/version: the image tag (or appVersion) without a digest, made a valid label
value (at most 63 of [A-Za-z0-9_.-], alphanumeric at both ends).
*/}}
{{- define "mgeo-worker.version" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion | toString | splitList "@" | first }}
{{- regexReplaceAll "[^A-Za-z0-9_.-]" $tag "_" | trunc 63 | trimAll "_.-" }}
{{- end }}

{{- define "mgeo-worker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mgeo-worker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: repository:tag, or with image.digest repository@digest (repository:tag@digest
when a tag is set too, for readers; the digest alone decides what runs).
*/}}
{{- define "mgeo-worker.image" -}}
{{- if .Values.image.digest }}
{{- if .Values.image.tag }}
{{- printf "%s:%s@%s" .Values.image.repository .Values.image.tag .Values.image.digest }}
{{- else }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- end }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The workload kind. auto: a StatefulSet with exactly-once delivery (each pod keeps its name, hence
its transactional id, across restarts), else a Deployment.
*/}}
{{- define "mgeo-worker.kind" -}}
{{- if ne .Values.worker.kind "auto" }}{{ .Values.worker.kind }}
{{- else if eq .Values.worker.delivery "exactly-once" }}StatefulSet
{{- else }}Deployment
{{- end }}
{{- end }}

{{/* The `job` label of the workers' scrape targets: set, or the metrics Service's name (what a ServiceMonitor gives). */}}
{{- define "mgeo-worker.metricsJob" -}}
{{- .Values.metrics.prometheusRule.workerJob | default (printf "%s-metrics" (include "mgeo-worker.fullname" .)) }}
{{- end }}

{{- define "mgeo-worker.headlessServiceName" -}}
{{- printf "%s-pods" (include "mgeo-worker.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* A CPU quantity (a number of cores or "<n>m") times an integer, as a quantity string. */}}
{{- define "mgeo-worker.cpuTimes" -}}
{{- $q := index . 0 | toString }}
{{- $n := index . 1 | int }}
{{- $milli := 0 }}
{{- if hasSuffix "m" $q }}
{{- $milli = trimSuffix "m" $q | atoi }}
{{- else }}
{{- $milli = round (mulf (float64 $q) 1000) 0 | int }}
{{- end }}
{{- $total := mul $milli $n }}
{{- if eq (mod $total 1000) 0 }}{{ div $total 1000 }}{{ else }}{{ $total }}m{{ end }}
{{- end }}

{{/*
The container's resources: `resources` with requests.cpu and limits.cpu counted per worker process
(times worker.processes), and the GPU limit.
*/}}
{{- define "mgeo-worker.resources" -}}
{{- $resources := deepCopy (.Values.resources | default dict) }}
{{- $n := int .Values.worker.processes }}
{{- range $section := list "requests" "limits" }}
{{- $s := get $resources $section }}
{{- if and $s (hasKey $s "cpu") (gt $n 1) }}
{{- $_ := set $s "cpu" (include "mgeo-worker.cpuTimes" (list (get $s "cpu") $n)) }}
{{- end }}
{{- end }}
{{- if .Values.gpu.enabled }}
{{- $limits := get $resources "limits" | default dict }}
{{- $_ := set $limits .Values.gpu.resourceName 1 }}
{{- $_ := set $resources "limits" $limits }}
{{- end }}
{{- toYaml $resources }}
{{- end }}

{{/* Whether the cluster serves a kind: by group/version/kind (discovery) or group/version. */}}
{{- define "mgeo-worker.serves" -}}
{{- $caps := index . 0 }}
{{- $gv := index . 1 }}
{{- $kind := index . 2 }}
{{- if or ($caps.APIVersions.Has (printf "%s/%s" $gv $kind)) ($caps.APIVersions.Has $gv) }}true{{ end }}
{{- end }}

{{/* Whether the cluster serves the external metrics API (an aggregated API: prometheus-adapter's or KEDA's). */}}
{{- define "mgeo-worker.servesExternalMetrics" -}}
{{- if .APIVersions.Has "external.metrics.k8s.io/v1beta1" }}true{{ end }}
{{- end }}

{{/*
What a plain HPA scales on: lag, or cpu. auto takes lag only where the external metrics API is
served and KEDA is not: with KEDA installed that API is KEDA's, which serves only its
ScaledObjects' metrics, and an HPA asking it for the lag would never scale.
*/}}
{{- define "mgeo-worker.hpaMetric" -}}
{{- $metric := .Values.autoscaling.hpa.metric }}
{{- if ne $metric "auto" }}{{ $metric }}
{{- else if and (include "mgeo-worker.servesExternalMetrics" .Capabilities) (not (include "mgeo-worker.serves" (list .Capabilities "keda.sh/v1alpha1" "ScaledObject"))) }}lag
{{- else }}cpu
{{- end }}
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
{{- $processes := int .Values.worker.processes }}
{{- $field := ternary "replicaCount" "autoscaling.maxReplicas" (eq .Values.autoscaling.mode "none") }}
{{- if and (gt $max $partitions) (eq $processes 1) }}
{{- fail (printf "%s (%d) exceeds kafka.partitions (%d): workers beyond the partition count get no partition and sit idle on a GPU; lower %s or add partitions to %s and raise kafka.partitions" $field $max $partitions $field .Values.kafka.inputTopic) }}
{{- end }}
{{- if gt (mul $max $processes) $partitions }}
{{- fail (printf "%s (%d) x worker.processes (%d) = %d consumers exceeds kafka.partitions (%d): each worker process is a member of the consumer group, and those beyond the partition count get no partition; lower %s or worker.processes, or add partitions to %s and raise kafka.partitions" $field $max $processes (mul $max $processes) $partitions $field .Values.kafka.inputTopic) }}
{{- end }}
{{- /* The cluster must serve the custom resources the chart would create. */}}
{{- if and (eq .Values.autoscaling.mode "keda") (not (include "mgeo-worker.serves" (list .Capabilities "keda.sh/v1alpha1" "ScaledObject"))) }}
{{- fail "autoscaling.mode=keda needs KEDA, but this cluster does not serve keda.sh/v1alpha1 ScaledObject: install KEDA first (helm install keda kedacore/keda -n keda --create-namespace) or set autoscaling.mode=hpa (or none). With helm template, pass --api-versions keda.sh/v1alpha1/ScaledObject" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not (include "mgeo-worker.serves" (list .Capabilities "monitoring.coreos.com/v1" "ServiceMonitor"))) }}
{{- fail "metrics.serviceMonitor.enabled needs the Prometheus operator, but this cluster does not serve monitoring.coreos.com/v1 ServiceMonitor: install the operator (e.g. kube-prometheus-stack) or set metrics.serviceMonitor.enabled=false (the pods keep their prometheus.io/* annotations). With helm template, pass --api-versions monitoring.coreos.com/v1/ServiceMonitor" }}
{{- end }}
{{- if and .Values.metrics.prometheusRule.enabled (not (include "mgeo-worker.serves" (list .Capabilities "monitoring.coreos.com/v1" "PrometheusRule"))) }}
{{- fail "metrics.prometheusRule.enabled needs the Prometheus operator, but this cluster does not serve monitoring.coreos.com/v1 PrometheusRule: install the operator (e.g. kube-prometheus-stack) or set metrics.prometheusRule.enabled=false and load files/alerts.yml into your Prometheus yourself. With helm template, pass --api-versions monitoring.coreos.com/v1/PrometheusRule" }}
{{- end }}
{{- if and (hasKey .Values.gpu "count") (ne (int .Values.gpu.count) 1) }}
{{- fail (printf "gpu.count (%d) was removed: a worker process drives one GPU, so each pod gets exactly one, shared by its worker.processes; more per pod would sit idle. Delete gpu.count and add GPUs by adding replicas (autoscaling.maxReplicas)" (int .Values.gpu.count)) }}
{{- end }}
{{- if and (eq .Values.autoscaling.mode "hpa") (eq .Values.autoscaling.hpa.metric "lag") (not .Values.autoscaling.hpa.metrics) (not (include "mgeo-worker.servesExternalMetrics" .Capabilities)) }}
{{- fail "autoscaling.hpa.metric=lag needs the external metrics API, but this cluster does not serve external.metrics.k8s.io/v1beta1: install prometheus-adapter with an external rule for the lag metric (see the chart README), or set autoscaling.hpa.metric=cpu (or auto). With helm template, pass --api-versions external.metrics.k8s.io/v1beta1" }}
{{- end }}
{{- if and .Values.image.digest (contains "@" .Values.image.tag) }}
{{- fail "image.tag already holds a digest (tag@sha256:...) and image.digest is set too: give the digest once, in image.digest" }}
{{- end }}
{{- $kind := include "mgeo-worker.kind" . }}
{{- if and (eq $kind "Deployment") (eq .Values.worker.delivery "exactly-once") }}
{{- fail "worker.kind=Deployment with worker.delivery=exactly-once: a replaced Deployment pod gets a new name and so a new transactional id, and a crashed pod's open transaction then blocks read_committed readers until the transaction timeout. Use worker.kind=StatefulSet (or auto), whose pods keep their names and fence their own leftovers on restart" }}
{{- end }}
{{- if eq $kind "StatefulSet" }}
{{- range $key := list "transactional_id" "group_instance_id" }}
{{- if or (hasKey $.Values.worker.settings $key) (hasKey $.Values.worker.secretSettings $key) }}
{{- fail (printf "worker setting %s is derived from the pod name in a StatefulSet (stable across restarts, unique per pod): leave it unset" $key) }}
{{- end }}
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
{{- $managed := dict "bootstrap_servers" "kafka.bootstrapServers" "input_topic" "kafka.inputTopic" "output_topic" "kafka.outputTopic" "dlq_topic" "kafka.dlqTopic" "group_id" "kafka.groupId" "kafka_config_file" "kafka.properties or kafka.existingSecret" "delivery" "worker.delivery" "device" "worker.device" "precision" "worker.precision" "token_budget" "worker.tokenBudget" "max_length" "worker.maxLength" "log_level" "worker.logLevel" "log_format" "worker.logFormat" "shutdown_timeout" "worker.shutdownTimeout" "session_timeout_ms" "worker.sessionTimeoutMs" "metrics_port" "worker.metricsPort" "model" "model.source and model.path" "processes" "worker.processes" }}
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
