"""The Prometheus alerting rules: valid (promtool check), right on synthetic series (promtool
test, cases in stream/prometheus/rules_test.yml), and loaded by both Prometheus configurations."""
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from stream.config import Settings
from stream.stack.embedded import ALERT_RULES, Stack

RULES_DIR = ALERT_RULES.parent
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def promtool():
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: it comes with the Debian package prometheus (make setup)")
    return path


def run(*cmd, cwd=RULES_DIR):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_rules_are_valid(promtool):
    result = run(promtool, "check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    names = {r["alert"] for g in yaml.safe_load(ALERT_RULES.read_text())["groups"] for r in g["rules"]}
    assert {"TecaflowWorkerDown", "TecaflowDependencyDown", "TecaflowDeadLetterRateHigh", "TecaflowLatencyHigh",
            "TecaflowConsumerLagGrowing", "TecaflowNothingScored"} <= names


def test_rules_fire_on_synthetic_series(promtool):
    result = run(promtool, "test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_test_catches_a_broken_rule(promtool, tmp_path):
    """The rule tests can fail: a DLQ threshold of 50% misses the 20% case they expect to fire."""
    (tmp_path / "rules.yml").write_text(ALERT_RULES.read_text().replace("> 0.05", "> 0.5"))
    shutil.copy(RULES_DIR / "rules_test.yml", tmp_path)
    result = run(promtool, "test", "rules", "rules_test.yml", cwd=tmp_path)
    assert result.returncode != 0 and "TecaflowDeadLetterRateHigh" in result.stdout + result.stderr


def test_embedded_prometheus_config_loads_the_rules(promtool, tmp_path, monkeypatch):
    monkeypatch.setenv("TECAFLOW_RUN_DIR", str(tmp_path))
    config = Stack(Settings.from_env(), tmp_path).prometheus_config()
    result = run(promtool, "check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_compose_prometheus_loads_the_rules():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    config = yaml.safe_load(compose["configs"]["prometheus"]["content"])
    mounted = {c["target"]: compose["configs"][c["source"]] for c in compose["services"]["prometheus"]["configs"]}
    assert config["rule_files"] == ["/etc/prometheus/rules.yml"]
    assert (ROOT / mounted["/etc/prometheus/rules.yml"]["file"]).resolve() == ALERT_RULES


def test_the_demo_has_prometheus_scrape_its_one_worker_only(tmp_path, monkeypatch):
    """The default targets are a worker's port and the next (two workers); the demo runs one, and
    TecaflowWorkerDown fired for the other in every demo."""
    from stream.stack.demo import demo_settings
    monkeypatch.setenv("TECAFLOW_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("TECAFLOW_METRICS_PORT", "9300")
    config = yaml.safe_load(Stack(demo_settings(Settings.from_env()), tmp_path).prometheus_config().read_text())
    targets = [t for job in config["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    assert "127.0.0.1:9300" in targets and "127.0.0.1:9301" not in targets
    monkeypatch.setenv("TECAFLOW_PROMETHEUS_TARGETS", "10.0.0.1:9108,10.0.0.2:9108")  # as told, when told
    config = yaml.safe_load(Stack(demo_settings(Settings.from_env()), tmp_path).prometheus_config().read_text())
    assert {"10.0.0.1:9108", "10.0.0.2:9108"} <= {t for job in config["scrape_configs"]
                                                  for sc in job.get("static_configs", []) for t in sc["targets"]}
