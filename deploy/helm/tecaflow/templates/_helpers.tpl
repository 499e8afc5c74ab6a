{{/* Names and labels */}}
{{- define "tecaflow.name" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "tecaflow.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tecaflow.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The Faust app's id, which is the workers' consumer group (stream/app.py) */}}
{{- define "tecaflow.consumerGroup" -}}tecaflow{{- end -}}

{{- define "tecaflow.tritonUrl" -}}
{{- if .Values.triton.enabled -}}
{{ include "tecaflow.name" . }}-triton:8001
{{- else -}}
{{ .Values.triton.url }}
{{- end -}}
{{- end -}}

{{/* Where the model repository is mounted, in Triton and in the workers (the tokenizer) */}}
{{- define "tecaflow.modelMountPath" -}}/models{{- end -}}

{{- define "tecaflow.modelVolume" -}}
- name: models
{{- if .Values.modelRepository.claimName }}
  persistentVolumeClaim:
    claimName: {{ .Values.modelRepository.claimName }}
    readOnly: true
{{- else }}
  emptyDir: {}
{{- end }}
{{- end -}}

{{/* With an image that carries the repository: copy it into the pod's volume before start */}}
{{- define "tecaflow.modelInit" -}}
{{- if not .Values.modelRepository.claimName }}
initContainers:
  - name: model-repository
    image: {{ .Values.modelRepository.image }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    command: ["sh", "-c", {{ printf "cp -a %s/. %s/" .Values.modelRepository.path (include "tecaflow.modelMountPath" .) | quote }}]
    volumeMounts:
      - name: models
        mountPath: {{ include "tecaflow.modelMountPath" . }}
{{- end }}
{{- end -}}

{{- define "tecaflow.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret.name }}
      key: {{ .secret.key }}
{{- end -}}
