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
- name: UNLEARN_INSTANCE_ID  # the pod's name in the namespace's write lease
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
