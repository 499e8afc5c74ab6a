"""The Helm chart (deploy/helm/tecaflow), checked offline: no cluster can run here.

helm lint and helm template on the default values and on two other sets; every rendered manifest
against the Kubernetes JSON schemas (kubernetes-validate, strict: an unknown field is an error),
the KEDA and Prometheus Operator resources against validators compiled from their CRDs
(deploy/crd-schemas); the chart against docker-compose.yml; bad values refused by helm itself.
helm and the CRD validators are installed, checksums verified, by `make setup`
(deploy/kube_tools.py)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from deploy.kube_tools import CRD_SCHEMAS, helm_path
from stream import health
from stream.config import Settings, env_name
from stream.stack.embedded import ALERT_RULES

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "tecaflow"
OLDEST, NEWEST = "1.27.0", "1.37.0"  # the chart's kubeVersion floor, and the newest schemas shipped

# Every switch away from the defaults at least once: SASL over TLS with a CA, Redis Cluster from a
# Secret, an external Triton, the model repository from an image, a webhook, extra settings.
PRODUCTION = {
    "kafka": {"bootstrapServers": "b-1.kafka:9096,b-2.kafka:9096", "partitions": 12, "security": "SASL_SSL",
              "sasl": {"mechanism": "SCRAM-SHA-512", "username": "tecaflow",
                       "passwordSecret": {"name": "kafka-sasl", "key": "password"}},
              "caSecret": {"name": "kafka-ca", "key": "ca.crt"}},
    "redis": {"urlSecret": {"name": "redis-cluster", "key": "url"}},
    "triton": {"enabled": False, "url": "triton.inference:8001"},
    "modelRepository": {"claimName": "", "image": "registry.example/tecaflow-models:2026-11-26"},
    "worker": {"minReplicas": 2, "maxReplicas": 12, "settings": {"TECAFLOW_BATCH_SIZE": 64}},
    "alerts": {"webhookSecret": {"name": "slack", "key": "url"}},
}
# Everything optional off: fixed workers, no dashboard, no Prometheus Operator, SASL without TLS.
MINIMAL = {
    "kafka": {"security": "SASL_PLAINTEXT", "sasl": {"username": "u", "passwordSecret": {"name": "s", "key": "k"}}},
    "autoscaling": {"enabled": False}, "dashboard": {"enabled": False},
    "monitoring": {"serviceMonitor": False, "prometheusRule": False},
}
VARIANTS = {"default": {}, "production": PRODUCTION, "minimal": MINIMAL}


@pytest.fixture(scope="module")
def helm():
    path = helm_path()
    if not path.is_file():
        pytest.fail(f"{path} is missing: `make setup` installs it (deploy/kube_tools.py)")
    return str(path)


def run_helm(helm: str, *args: str, values: dict | None = None, tmp: Path | None = None):
    extra = []
    if values:
        file = tmp / "values.yaml"
        file.write_text(yaml.safe_dump(values))
        extra = ["-f", str(file)]
    return subprocess.run([helm, *args, str(CHART), *extra], capture_output=True, text=True, timeout=120)


def render(helm: str, values: dict | None, tmp: Path) -> list[dict]:
    result = run_helm(helm, "template", "tf", values=values, tmp=tmp)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def failure(helm: str, values: dict, tmp: Path) -> str:
    result = run_helm(helm, "template", "tf", values=values, tmp=tmp)
    assert result.returncode != 0, "helm template accepted values it should refuse"
    return result.stderr


@pytest.fixture(scope="module")
def rendered(helm, tmp_path_factory) -> dict[str, list[dict]]:
    return {name: render(helm, values, tmp_path_factory.mktemp(name)) for name, values in VARIANTS.items()}


def one(docs: list[dict], kind: str, component: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (component is None or d["metadata"]["name"].endswith(component))]
    assert len(found) == 1, f"{len(found)} {kind} {component or ''}"
    return found[0]


def container(docs: list[dict], component: str) -> dict:
    return one(docs, "Deployment", component)["spec"]["template"]["spec"]["containers"][0]


def settings_of(docs: list[dict], component: str = "worker") -> dict[str, str]:
    """The TECAFLOW_* variables a component's container gets: the ConfigMap's, then its own env
    (a secret reference shows as 'secret:NAME/KEY')."""
    spec = container(docs, component)
    env = {}
    for source in spec.get("envFrom", []):
        env.update(one(docs, "ConfigMap")["data"] if "configMapRef" in source else {})
    for var in spec.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        env[var["name"]] = f"secret:{ref['name']}/{ref['key']}" if ref else var["value"]
    return env


# ---- lint, render, validate ----------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_passes(helm, variant, tmp_path):
    result = run_helm(helm, "lint", "--strict", values=VARIANTS[variant], tmp=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_core_manifest_is_valid_against_the_kubernetes_schemas(rendered, variant, version):
    core = [d for d in rendered[variant] if "/" not in d["apiVersion"] or d["apiVersion"].startswith("apps/")]
    assert {d["kind"] for d in core} >= {"ConfigMap", "Deployment", "Service"}
    for doc in core:
        kubernetes_validate.validate(doc, version, strict=True)  # raises, naming the field


def test_the_schema_check_catches_a_wrong_field(rendered):
    broken = json.loads(json.dumps(one(rendered["default"], "Deployment", "worker")))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["prot"] = 9108
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, NEWEST, strict=True)


def crd_check(manifests: list[dict]) -> list[dict]:
    node = shutil.which("node")
    if node is None or not (CRD_SCHEMAS / "node_modules").is_dir():
        pytest.fail("the CRD validators are missing: `make setup` installs them (deploy/kube_tools.py)")
    result = subprocess.run([node, "validate.mjs"], cwd=CRD_SCHEMAS, input=json.dumps(manifests),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_custom_resources_are_valid_against_their_crds(rendered):
    custom = [d for v in rendered.values() for d in v if d["apiVersion"].split("/")[0] in ("keda.sh", "monitoring.coreos.com")]
    kinds = {d["kind"] for d in custom}
    assert kinds == {"ScaledObject", "TriggerAuthentication", "PrometheusRule", "ServiceMonitor"}
    results = crd_check(custom)
    assert [r for r in results if r["error"]] == [] and len(results) == len(custom)


def test_the_crd_check_catches_a_broken_scaled_object(rendered):
    """A lag threshold as a number (the CRD wants strings in trigger metadata) and a replica count
    as text are refused."""
    scaled = one(rendered["default"], "ScaledObject")
    as_number = json.loads(json.dumps(scaled))
    as_number["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 1000
    as_text = json.loads(json.dumps(scaled))
    as_text["spec"]["maxReplicaCount"] = "4"
    errors = [r["error"] for r in crd_check([as_number, as_text])]
    assert "lagThreshold must be string" in errors[0] and "maxReplicaCount must be integer" in errors[1]


# ---- what the chart says -------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["default", "production"])
def test_keda_scales_workers_on_the_groups_lag_never_past_the_partitions(rendered, variant):
    values = {**{"partitions": 4, "maxReplicas": 4}, **VARIANTS[variant].get("kafka", {}),
              **VARIANTS[variant].get("worker", {})}
    scaled = one(rendered[variant], "ScaledObject")["spec"]
    trigger = scaled["triggers"][0]
    assert trigger["type"] == "kafka" and trigger["metadata"]["consumerGroup"] == "tecaflow"  # the Faust app id
    assert trigger["metadata"]["topic"] == settings_of(rendered[variant])["TECAFLOW_TOPIC_SEGMENTS"]
    assert trigger["metadata"]["allowIdleConsumers"] == "false"
    assert scaled["maxReplicaCount"] == values["maxReplicas"] <= values["partitions"]
    assert scaled["scaleTargetRef"]["name"] == one(rendered[variant], "Deployment", "worker")["metadata"]["name"]
    assert "replicas" not in one(rendered[variant], "Deployment", "worker")["spec"]  # KEDA owns it


def test_sasl_reaches_keda_through_secrets_and_the_workers_env(rendered):
    docs = rendered["production"]
    trigger = one(docs, "ScaledObject")["spec"]["triggers"][0]
    assert (trigger["metadata"]["sasl"], trigger["metadata"]["tls"]) == ("scram_sha512", "enable")
    auth = one(docs, "TriggerAuthentication")["spec"]
    assert trigger["authenticationRef"]["name"] == one(docs, "TriggerAuthentication")["metadata"]["name"]
    assert {(r["parameter"], r["name"]) for r in auth["secretTargetRef"]} == {("password", "kafka-sasl"), ("ca", "kafka-ca")}
    assert auth["env"][0]["name"] in settings_of(docs)


def test_secrets_come_from_secrets_only(rendered):
    env = settings_of(rendered["production"])
    assert env["TECAFLOW_BROKER_SASL_PASSWORD"] == "secret:kafka-sasl/password"
    assert env["TECAFLOW_REDIS_URL"] == "secret:redis-cluster/url"
    assert env["TECAFLOW_WEBHOOK_URL"] == "secret:slack/url"
    assert env["TECAFLOW_BROKER_CA_FILE"].startswith("/etc/tecaflow/kafka-ca/")
    assert settings_of(rendered["default"], "dashboard")["TECAFLOW_REDIS_URL"] == "secret:tecaflow-dashboard-redis/url"


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_chart_sets_only_settings_the_code_reads(rendered, variant):
    known = {env_name(f) for f in fields(Settings)}
    for component in ("worker", "dashboard") if VARIANTS[variant].get("dashboard", {}).get("enabled", True) else ("worker",):
        assert set(settings_of(rendered[variant], component)) <= known


def test_the_workers_settings_are_valid_settings(rendered):
    """Settings.from_env accepts what the chart gives the workers (secret references aside)."""
    for variant in VARIANTS:
        env = {k: v for k, v in settings_of(rendered[variant]).items() if not v.startswith("secret:")}
        env.setdefault("TECAFLOW_REDIS_URL", "redis://r:6379/0")
        Settings.from_env(env)


def test_probes_use_the_workers_health_endpoints(rendered):
    worker = container(rendered["default"], "worker")
    port = int(settings_of(rendered["default"])["TECAFLOW_METRICS_PORT"])
    assert worker["ports"][0] == {"name": "metrics", "containerPort": port}
    assert worker["livenessProbe"]["httpGet"] == {"path": health.LIVE_PATH, "port": "metrics"}
    assert worker["readinessProbe"]["httpGet"] == {"path": health.READY_PATH, "port": "metrics"}
    assert settings_of(rendered["default"])["TECAFLOW_METRICS_HOST"] == "0.0.0.0"


def test_triton_asks_for_a_gpu_and_waits_for_the_model_to_load(rendered):
    triton = container(rendered["default"], "triton")
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    startup = triton["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # triton.modelLoadSeconds
    assert "--strict-readiness=true" in triton["args"]  # ready only once the model is loaded
    assert settings_of(rendered["default"])["TECAFLOW_TRITON_URL"].endswith("-triton:8001")
    assert settings_of(rendered["production"])["TECAFLOW_TRITON_URL"] == "triton.inference:8001"
    assert not [d for d in rendered["production"] if d["metadata"]["name"].endswith("-triton")]


def test_the_model_repository_comes_from_a_claim_or_an_image(rendered):
    for variant, source in (("default", "persistentVolumeClaim"), ("production", "emptyDir")):
        pod = one(rendered[variant], "Deployment", "worker")["spec"]["template"]["spec"]
        assert source in next(v for v in pod["volumes"] if v["name"] == "models")
    pod = one(rendered["production"], "Deployment", "worker")["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["image"] == PRODUCTION["modelRepository"]["image"]


def test_the_prometheus_rule_is_the_rules_file(rendered):
    """files/rules.yml in the chart is a link to stream/prometheus/rules.yml, not a copy, and the
    PrometheusRule carries exactly its groups."""
    assert (CHART / "files" / "rules.yml").resolve() == ALERT_RULES
    rule = one(rendered["default"], "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERT_RULES.read_text())["groups"]


def test_scrape_jobs_are_the_ones_the_rules_name(rendered):
    jobs = set(re.findall(r'job="([^"]+)"', ALERT_RULES.read_text()))
    monitors = [d for d in rendered["default"] if d["kind"] == "ServiceMonitor"]
    named = {m["spec"]["endpoints"][0]["relabelings"][0]["replacement"] for m in monitors}
    assert jobs and jobs == named


# ---- the chart and docker-compose.yml carry the same settings ------------------------------------
ENDPOINTS = {"TECAFLOW_BROKER_URL", "TECAFLOW_REDIS_URL", "TECAFLOW_TRITON_URL"}  # where things are differs


def effective(env: dict[str, str]) -> Settings:
    """The settings a process with this environment runs with (a secret reference stands for a
    value the chart cannot know: the default's)."""
    return Settings.from_env({k: v for k, v in env.items() if not v.startswith("secret:")})


def compose_differences(docs: list[dict], compose: dict) -> list[str]:
    """What docker-compose.yml and the rendered chart disagree on: every setting of the worker and
    the dashboard as each would run (the endpoints only have to be set in both: each place has its
    own), the partitions of the topics, the commands, Triton's image and options, its /dev/shm."""
    services, problems = compose["services"], []
    for component in ("worker", "dashboard"):
        chart, ours = settings_of(docs, component), {k: str(v) for k, v in services[component]["environment"].items()}
        for name in sorted(ENDPOINTS & (set(chart) ^ set(ours))):
            problems.append(f"{component} {name}: set only in {'the chart' if name in chart else 'docker-compose'}")
        ran_chart, ran_compose = effective(chart), effective(ours)
        for f in fields(Settings):
            if env_name(f) not in ENDPOINTS and getattr(ran_chart, f.name) != getattr(ran_compose, f.name):
                problems.append(f"{component} {env_name(f)}: chart {getattr(ran_chart, f.name)!r}, "
                                f"docker-compose {getattr(ran_compose, f.name)!r}")
        if container(docs, component)["args"] != services[component]["command"]:
            problems.append(f"{component} command: chart {container(docs, component)['args']}, "
                            f"docker-compose {services[component]['command']}")
    created = re.search(r"--partitions (\d+)", services["kafka-topics"]["command"][0]).group(1)
    if created != settings_of(docs)["TECAFLOW_PARTITIONS"]:
        problems.append(f"partitions: chart {settings_of(docs)['TECAFLOW_PARTITIONS']}, docker-compose creates {created}")
    triton = container(docs, "triton")
    for what, chart, ours in (("image", triton["image"], services["triton"]["image"]),
                              ("command", triton["args"], services["triton"]["command"])):
        if chart != ours:
            problems.append(f"triton {what}: chart {chart}, docker-compose {ours}")
    shm = next(v for v in one(docs, "Deployment", "triton")["spec"]["template"]["spec"]["volumes"] if v["name"] == "shm")
    if shm["emptyDir"]["sizeLimit"].lower().rstrip("i") != services["triton"]["shm_size"].lower().rstrip("b"):
        problems.append(f"triton /dev/shm: chart {shm['emptyDir']['sizeLimit']}, docker-compose {services['triton']['shm_size']}")
    return problems


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_the_chart_and_docker_compose_carry_the_same_settings(rendered, compose):
    assert compose_differences(rendered["default"], compose) == []


@pytest.mark.parametrize("change, expected", [
    (lambda c: c["services"]["worker"]["environment"].__setitem__("TECAFLOW_METRICS_PORT", "9200"),
     "worker TECAFLOW_METRICS_PORT: chart 9108, docker-compose 9200"),
    (lambda c: c["services"]["worker"]["environment"].__setitem__("TECAFLOW_BATCH_SIZE", "64"),
     "worker TECAFLOW_BATCH_SIZE: chart 32, docker-compose 64"),
    (lambda c: c["services"]["worker"]["environment"].pop("TECAFLOW_TRITON_URL"),
     "worker TECAFLOW_TRITON_URL: set only in the chart"),
    (lambda c: c["services"]["kafka-topics"]["command"].__setitem__(0, "--partitions 8"), "partitions"),
    (lambda c: c["services"]["triton"]["command"].remove("--strict-readiness=true"), "triton command"),
    (lambda c: c["services"]["dashboard"]["command"].__setitem__(-1, "8600"), "dashboard command"),
])
def test_the_comparison_fails_when_docker_compose_drifts(rendered, change, expected):
    drifted = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    change(drifted)
    problems = compose_differences(rendered["default"], drifted)
    assert any(expected in p for p in problems), problems


# ---- bad values fail helm template with one clear line -------------------------------------------
@pytest.mark.parametrize("values, message", [
    ({"worker": {"maxReplicas": 8}}, "worker.maxReplicas=8 is above kafka.partitions=4"),
    ({"autoscaling": {"enabled": False}, "worker": {"replicas": 6}}, "worker.replicas=6 is above kafka.partitions=4"),
    ({"worker": {"minReplicas": 4, "maxReplicas": 3}}, "worker.minReplicas=4 is above worker.maxReplicas=3"),
    ({"kafka": {"sasl": {"password": "hunter2"}}}, "kafka.sasl.password: secrets never go in values"),
    ({"redis": {"url": "redis://:hunter2@redis:6379/0"}}, "redis.url holds a password"),
    ({"worker": {"settings": {"TECAFLOW_BROKER_SASL_PASSWORD": "hunter2"}}}, "comes from a Secret"),
    ({"worker": {"settings": {"BATCH_SIZE": 8}}}, "is not a tecaflow setting"),
    ({"kafka": {"security": "SASL_SSL"}}, "needs kafka.sasl.username and kafka.sasl.passwordSecret.name"),
    ({"modelRepository": {"claimName": ""}}, "the model repository comes from nowhere"),
    ({"triton": {"enabled": False}}, "triton.url is empty"),
    ({"autoscaling": {"activationLagThreshold": 5000}}, "activationLagThreshold=5000 is above"),
    ({"worker": {"maxReplica": 3}}, "additional properties 'maxReplica' not allowed"),  # a typo
    ({"kafka": {"security": "TLS"}}, "/kafka/security"),
])
def test_bad_values_fail_with_a_clear_message(helm, tmp_path, values, message):
    error = failure(helm, values, tmp_path)
    assert message in error
    assert "hunter2" not in error  # the refusal does not echo the secret
