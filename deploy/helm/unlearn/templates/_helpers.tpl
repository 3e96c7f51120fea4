{{- define "unlearn.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "unlearn.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "unlearn.labels" -}}
app.kubernetes.io/name: {{ include "unlearn.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "unlearn.selectorLabels" -}}
app.kubernetes.io/name: {{ include "unlearn.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: consumer
{{- end -}}

{{/* Refuse secrets passed as plain values: they would land in a ConfigMap. */}}
{{- define "unlearn.noPlainSecrets" -}}
{{- range $key, $_ := .Values.kafka.properties }}
{{- if regexMatch `(?i)(password|secret|\.key$|token)` $key }}
{{- fail (printf "kafka.properties.%s looks secret: reference a Secret (kafka.saslPasswordSecret, kafka.sslKeyPasswordSecret, kafka.tlsSecretName)" $key) }}
{{- end }}
{{- end }}
{{- if regexMatch "^rediss?://[^/@]*:[^/@]*@" .Values.redis.url }}
{{- fail "redis.url holds a password: reference a Secret with redis.passwordSecret" }}
{{- end }}
{{- end -}}

{{- define "unlearn.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Threads for implicit's OpenMP loop: the CPU limit, rounded up (at least 1). */}}
{{- define "unlearn.threads" -}}
{{- $cpu := toString (default "1" .Values.resources.limits.cpu) -}}
{{- if hasSuffix "m" $cpu -}}
{{- max 1 (div (add (trimSuffix "m" $cpu | atoi) 999) 1000) -}}
{{- else -}}
{{- max 1 (ceil (float64 $cpu)) -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by the service and the bootstrap Job: secrets by reference only. */}}
{{- define "unlearn.env" -}}
- name: OMP_NUM_THREADS
  value: {{ include "unlearn.threads" . | quote }}
- name: OPENBLAS_NUM_THREADS
  value: "1"
- name: UNLEARN_SOLVE_THREADS  # a batch's row solves over the pod's CPUs
  value: {{ include "unlearn.threads" . | quote }}
- name: UNLEARN_INSTANCE_ID  # the pod's name as the owner of its shards
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- with .Values.kafka.saslPasswordSecret }}
- name: UNLEARN_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.saslPasswordSecret.name" .name }}
      key: {{ required "kafka.saslPasswordSecret.key" .key }}
{{- end }}
{{- with .Values.kafka.sslKeyPasswordSecret }}
- name: UNLEARN_KAFKA_SSL_KEY_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.sslKeyPasswordSecret.name" .name }}
      key: {{ required "kafka.sslKeyPasswordSecret.key" .key }}
{{- end }}
{{- with .Values.redis.passwordSecret }}
- name: UNLEARN_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required "redis.passwordSecret.name" .name }}
      key: {{ required "redis.passwordSecret.key" .key }}
{{- end }}
{{- end -}}

{{/* Ports the pods reach Kafka on: explicit, or those of kafka.bootstrapServers. */}}
{{- define "unlearn.kafkaPorts" -}}
{{- $ports := list -}}
{{- range .Values.networkPolicy.kafkaPorts -}}
{{- $ports = append $ports (int .) -}}
{{- end -}}
{{- if not $ports -}}
{{- range splitList "," .Values.kafka.bootstrapServers -}}
{{- $server := regexReplaceAll "^[A-Za-z_]+://" (trim .) "" -}}
{{- if $server -}}
{{- $port := regexFind ":[0-9]+$" $server | trimPrefix ":" | default "9092" -}}
{{- $ports = append $ports (atoi $port) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson (uniq $ports) -}}
{{- end -}}

{{/* Ports the pods reach Redis on: explicit, or that of redis.url. */}}
{{- define "unlearn.redisPorts" -}}
{{- $ports := list -}}
{{- range .Values.networkPolicy.redisPorts -}}
{{- $ports = append $ports (int .) -}}
{{- end -}}
{{- if not $ports -}}
{{- $host := (urlParse .Values.redis.url).host -}}
{{- $port := regexFind ":[0-9]+$" $host | trimPrefix ":" | default "6379" -}}
{{- $ports = append $ports (atoi $port) -}}
{{- end -}}
{{- toJson (uniq $ports) -}}
{{- end -}}

{{/* The service's settings (the ConfigMap's data; the bootstrap hook, which runs before
the ConfigMap exists, takes them as its environment). */}}
{{- define "unlearn.config" -}}
UNLEARN_KAFKA_BOOTSTRAP_SERVERS: {{ .Values.kafka.bootstrapServers | quote }}
UNLEARN_KAFKA_PROPERTIES: {{ .Values.kafka.properties | toJson | quote }}
UNLEARN_REDIS_URL: {{ .Values.redis.url | quote }}
UNLEARN_REDIS_CLUSTER: {{ .Values.redis.cluster | quote }}
UNLEARN_NAMESPACE: {{ .Values.settings.namespace | quote }}
UNLEARN_GROUP_ID: {{ .Values.settings.groupId | quote }}
UNLEARN_TOPIC_INTERACTIONS: {{ .Values.settings.topics.interactions | quote }}
UNLEARN_TOPIC_DELETIONS: {{ .Values.settings.topics.deletions | quote }}
UNLEARN_TOPIC_RECEIPTS: {{ .Values.settings.topics.receipts | quote }}
UNLEARN_TOPIC_DLQ: {{ .Values.settings.topics.dlq | quote }}
UNLEARN_TOPIC_FACTORS: {{ .Values.settings.topics.factors | quote }}
UNLEARN_METRICS_PORT: {{ .Values.metrics.port | quote }}
# Inside the pod the endpoints must be reachable by the kubelet's probes and Prometheus;
# the NetworkPolicy decides who may connect.
UNLEARN_METRICS_HOST: "0.0.0.0"
UNLEARN_BATCH_MAX_EVENTS: {{ .Values.settings.batchMaxEvents | quote }}
UNLEARN_BATCH_MAX_MS: {{ .Values.settings.batchMaxMs | quote }}
UNLEARN_CONSOLIDATE_IDLE_MS: {{ .Values.settings.consolidateIdleMs | quote }}
UNLEARN_CONSOLIDATE_QUIET_MS: {{ .Values.settings.consolidateQuietMs | quote }}
UNLEARN_CONSOLIDATE_QUIET_REACH: {{ .Values.settings.consolidateQuietReach | quote }}
UNLEARN_CONSOLIDATE_SLICE_MS: {{ .Values.settings.consolidateSliceMs | quote }}
UNLEARN_CONSOLIDATE_TOLERANCE: {{ .Values.settings.consolidateTolerance | quote }}
UNLEARN_CONSOLIDATE_WRITE_TOLERANCE: {{ .Values.settings.consolidateWriteTolerance | quote }}
UNLEARN_CONSOLIDATE_MAX_ROUNDS: {{ .Values.settings.consolidateMaxRounds | quote }}
UNLEARN_CONSOLIDATE_SWEEPS: {{ .Values.settings.consolidateSweeps | quote }}
UNLEARN_RETENTION_DAYS: {{ .Values.settings.retentionDays | quote }}
UNLEARN_REVOKE_BUDGET_S: {{ .Values.settings.revokeBudgetS | quote }}
UNLEARN_SESSION_TIMEOUT_MS: {{ .Values.settings.sessionTimeoutMs | quote }}
UNLEARN_WAIT_FOR_MODEL_S: {{ .Values.settings.waitForModelS | quote }}
{{- end -}}

{{/* KEDA's name for the SASL mechanism of kafka.properties ("" without SASL). */}}
{{- define "unlearn.kedaSasl" -}}
{{- $protocol := upper (toString (get .Values.kafka.properties "security.protocol")) -}}
{{- if hasPrefix "SASL_" $protocol -}}
{{- $mechanism := upper (toString (get .Values.kafka.properties "sasl.mechanism" | default "PLAIN")) -}}
{{- $names := dict "PLAIN" "plaintext" "SCRAM-SHA-256" "scram_sha256" "SCRAM-SHA-512" "scram_sha512" -}}
{{- if not (hasKey $names $mechanism) -}}
{{- fail (printf "keda.enabled: KEDA's Kafka scaler cannot authenticate with sasl.mechanism %s (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)" $mechanism) -}}
{{- end -}}
{{- get $names $mechanism -}}
{{- end -}}
{{- end -}}

{{/* "enable" when the brokers are reached over TLS. */}}
{{- define "unlearn.kafkaTls" -}}
{{- $protocol := upper (toString (get .Values.kafka.properties "security.protocol")) -}}
{{- if or (eq $protocol "SSL") (eq $protocol "SASL_SSL") -}}enable{{- end -}}
{{- end -}}

{{/* Does the KEDA scaler need a TriggerAuthentication? */}}
{{- define "unlearn.kedaAuth" -}}
{{- if or (include "unlearn.kedaSasl" .) (include "unlearn.kafkaTls" .) -}}yes{{- end -}}
{{- end -}}

{{/* What the TriggerAuthentication reads from the pods' environment (not secrets). */}}
{{- define "unlearn.kedaEnv" -}}
{{- if and .Values.keda.enabled (include "unlearn.kedaSasl" .) }}
- name: KEDA_KAFKA_SASL
  value: {{ include "unlearn.kedaSasl" . | quote }}
- name: KEDA_KAFKA_USERNAME
  value: {{ required "kafka.properties.sasl.username is required with SASL" (get .Values.kafka.properties "sasl.username") | quote }}
{{- end }}
{{- if and .Values.keda.enabled (include "unlearn.kafkaTls" .) }}
- name: KEDA_KAFKA_TLS
  value: "enable"
{{- end }}
{{- end -}}
