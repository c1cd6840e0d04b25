{{/* Names and labels. */}}
{{- define "slim.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "slim.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "slim.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "slim.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "slim.selectorLabels" -}}
app.kubernetes.io/name: {{ include "slim.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The image of a container: gpu images for GPU pools. Takes (dict "root" $ "gpu" bool). */}}
{{- define "slim.image" -}}
{{- $root := .root -}}
{{- if .gpu -}}
{{- printf "%s:%s" $root.Values.gpuImage.repository (default (printf "%s-cuda" $root.Chart.AppVersion) $root.Values.gpuImage.tag) -}}
{{- else -}}
{{- printf "%s:%s" $root.Values.image.repository (default $root.Chart.AppVersion $root.Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The names of the Secrets (created by the chart or not). */}}
{{- define "slim.secret.rabbitmq" -}}{{ .Values.secrets.rabbitmq.name }}{{- end -}}
{{- define "slim.secret.s3" -}}{{ .Values.secrets.s3.name }}{{- end -}}
{{- define "slim.secret.teacher" -}}{{ .Values.secrets.teacher.name }}{{- end -}}

{{/* The environment every slim container shares. */}}
{{- define "slim.env" -}}
- name: SLIM_AMQP_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "slim.secret.rabbitmq" . }}
      key: {{ .Values.secrets.rabbitmq.amqpUrlKey }}
- name: SLIM_STORE
  value: {{ .Values.config.store | quote }}
- name: SLIM_QUEUE_PREFIX
  value: {{ .Values.config.queuePrefix | quote }}
- name: SLIM_DELIVERY_LIMIT
  value: {{ .Values.config.deliveryLimit | quote }}
- name: SLIM_TASK_TIMEOUT_HOURS
  value: {{ .Values.config.taskTimeoutHours | quote }}
- name: SLIM_LOG_FORMAT
  value: {{ .Values.config.logFormat | quote }}
- name: RUST_LOG
  value: {{ .Values.config.logLevel | quote }}
{{- with .Values.config.s3.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
- name: AWS_REGION
  value: {{ .Values.config.s3.region | quote }}
{{- if .Values.secrets.s3.name }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "slim.secret.s3" . }}
      key: {{ .Values.secrets.s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "slim.secret.s3" . }}
      key: {{ .Values.secrets.s3.secretAccessKeyKey }}
{{- end }}
{{- if .Values.secrets.teacher.name }}
- name: {{ .Values.secrets.teacher.env }}
  valueFrom:
    secretKeyRef:
      name: {{ include "slim.secret.teacher" . }}
      key: {{ .Values.secrets.teacher.key }}
{{- end }}
{{- with .Values.config.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Probes on the metrics port: alive while the process answers, ready while its consumers are
subscribed on a live broker connection. */}}
{{- define "slim.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 2
  failureThreshold: 30
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}

{{- define "slim.metricsAnnotations" -}}
{{- if .root.Values.metrics.annotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/* A worker pool with every unset key taken from .Values.defaults (one level deep, two for
autoscaling; a key set to false or 0 in the pool wins). Takes (dict "root" $ "pool" $p);
returns YAML. */}}
{{- define "slim.pool" -}}
{{- $defaults := .root.Values.defaults -}}
{{- $pool := .pool -}}
{{- $out := dict -}}
{{- range $k, $v := $defaults }}
{{- $_ := set $out $k (ternary (index $pool $k) $v (hasKey $pool $k)) }}
{{- end }}
{{- range $k, $v := $pool }}
{{- if not (hasKey $out $k) }}{{ $_ := set $out $k $v }}{{ end }}
{{- end }}
{{- $as := dict -}}
{{- $poolAs := $pool.autoscaling | default dict -}}
{{- range $k, $v := $defaults.autoscaling }}
{{- $_ := set $as $k (ternary (index $poolAs $k) $v (hasKey $poolAs $k)) }}
{{- end }}
{{- $_ := set $out "autoscaling" $as -}}
{{- toYaml $out -}}
{{- end -}}

{{/* The stages a pool serves (every stage when none is listed). */}}
{{- define "slim.poolStages" -}}
{{- if .stages -}}
{{- join "," .stages -}}
{{- else -}}
prepare,teacher,distill,student,encode,train,probe
{{- end -}}
{{- end -}}

{{/* KEDA triggers of a pool: one per stage queue, depth through the management API.
Takes (dict "root" $ "pool" $pool). */}}
{{- define "slim.triggers" -}}
{{- $root := .root -}}
{{- $pool := .pool -}}
{{- range (splitList "," (include "slim.poolStages" $pool)) }}
- type: rabbitmq
  metadata:
    protocol: http
    mode: QueueLength
    value: {{ $pool.autoscaling.tasksPerReplica | quote }}
    activationValue: "0"
    queueName: {{ printf "%s.tasks.%s" $root.Values.config.queuePrefix . | quote }}
  authenticationRef:
    name: {{ include "slim.fullname" $root }}-rabbitmq
{{- end }}
{{- end -}}

{{/* The pod template of a worker pool. Takes (dict "root" $ "name" poolName "pool" $pool
"oneShot" bool). */}}
{{- define "slim.workerPod" -}}
{{- $root := .root -}}
{{- $pool := .pool -}}
metadata:
  labels:
    {{- include "slim.selectorLabels" $root | nindent 4 }}
    app.kubernetes.io/component: worker
    slim.dev/pool: {{ .name }}
  annotations:
    {{- include "slim.metricsAnnotations" (dict "root" $root "port" $root.Values.metrics.workerPort) | nindent 4 }}
    {{- with $pool.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  {{- if .oneShot }}
  restartPolicy: Never
  {{- end }}
  automountServiceAccountToken: false
  # Longer than the worker's own grace: a stopping worker finishes its task or requeues it.
  terminationGracePeriodSeconds: {{ add (int $pool.graceSeconds) 30 }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  containers:
    - name: worker
      image: {{ include "slim.image" (dict "root" $root "gpu" $pool.gpu) }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args:
        - worker
        {{- if .oneShot }}
        - --max-tasks
        - {{ $pool.autoscaling.maxTasks | quote }}
        - --idle-exit-secs
        - {{ $pool.autoscaling.idleExitSeconds | quote }}
        {{- end }}
      env:
        {{- include "slim.env" $root | nindent 8 }}
        - name: SLIM_STAGES
          value: {{ include "slim.poolStages" $pool | quote }}
        - name: SLIM_PREFETCH
          value: {{ $pool.prefetch | quote }}
        - name: SLIM_CONCURRENCY
          value: {{ $pool.concurrency | quote }}
        - name: SLIM_GRACE_SECS
          value: {{ $pool.graceSeconds | quote }}
        - name: SLIM_METRICS_ADDR
          value: {{ printf "0.0.0.0:%v" $root.Values.metrics.workerPort | quote }}
      ports:
        - name: metrics
          containerPort: {{ $root.Values.metrics.workerPort }}
          protocol: TCP
      {{- include "slim.probes" $root | nindent 6 }}
      resources:
        {{- $resources := deepCopy ($pool.resources | default dict) }}
        {{- if $pool.gpu }}
        {{- $limits := $resources.limits | default dict }}
        {{- $_ := set $limits "nvidia.com/gpu" ($pool.gpusPerWorker | int) }}
        {{- $_ := set $resources "limits" $limits }}
        {{- $requests := $resources.requests | default dict }}
        {{- $_ := set $requests "nvidia.com/gpu" ($pool.gpusPerWorker | int) }}
        {{- $_ := set $resources "requests" $requests }}
        {{- end }}
        {{- toYaml $resources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- with $pool.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir: {}
    {{- with $pool.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $pool.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $pool.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $pool.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* The coordinator's pod template. Takes (dict "root" $). */}}
{{- define "slim.coordinatorPod" -}}
{{- $root := .root -}}
{{- $c := $root.Values.coordinator -}}
{{- $isJob := eq $c.kind "Job" -}}
metadata:
  labels:
    {{- include "slim.selectorLabels" $root | nindent 4 }}
    app.kubernetes.io/component: coordinator
  annotations:
    {{- include "slim.metricsAnnotations" (dict "root" $root "port" $root.Values.metrics.coordinatorPort) | nindent 4 }}
    {{- with $c.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  {{- if $isJob }}
  # Never: a failed pod is replaced by the Job controller, as podFailurePolicy says.
  restartPolicy: Never
  {{- end }}
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: {{ $c.terminationGracePeriodSeconds }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  {{- if and $isJob $c.job.manifest }}
  initContainers:
    # Submitting again resumes a job: safe on every retry of this Job.
    - name: submit
      image: {{ include "slim.image" (dict "root" $root "gpu" false) }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args: ["submit", "/etc/slim/job/job.toml", "--output", "$(SLIM_STORE)"]
      env:
        {{- include "slim.env" $root | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: job
          mountPath: /etc/slim/job
          readOnly: true
        - name: tmp
          mountPath: /tmp
  {{- end }}
  containers:
    - name: coordinator
      image: {{ include "slim.image" (dict "root" $root "gpu" false) }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args:
        - coordinator
        {{- if $isJob }}
        - --until-done
        {{- end }}
      env:
        {{- include "slim.env" $root | nindent 8 }}
        - name: SLIM_POLL_MS
          value: {{ $c.pollMs | quote }}
        - name: SLIM_METRICS_ADDR
          value: {{ printf "0.0.0.0:%v" $root.Values.metrics.coordinatorPort | quote }}
      ports:
        - name: metrics
          containerPort: {{ $root.Values.metrics.coordinatorPort }}
          protocol: TCP
      {{- include "slim.probes" $root | nindent 6 }}
      resources:
        {{- toYaml $c.resources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: tmp
      emptyDir: {}
    {{- if and $isJob $c.job.manifest }}
    - name: job
      configMap:
        name: {{ include "slim.fullname" $root }}-coordinator-job
    {{- end }}
  {{- with $c.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
