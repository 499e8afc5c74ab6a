"""docker-compose.yml: no Docker engine here, so it is checked against the Compose Specification
schema and against what the code reads."""
import json
import re

import jsonschema
import pytest
import yaml

import stream.config
from tests.conftest import SHARED

SCHEMA = SHARED / "schemas" / "compose-spec.json"


@pytest.fixture(scope="module")
def compose():
    from pathlib import Path
    return yaml.safe_load((Path(__file__).resolve().parents[1] / "docker-compose.yml").read_text())


@pytest.mark.skipif(not SCHEMA.is_file(), reason=f"{SCHEMA} is absent")
def test_compose_file_is_valid_against_the_compose_spec(compose):
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator(schema).validate(compose)


def test_compose_runs_the_whole_system(compose):
    services = compose["services"]
    assert {"kafka", "redis", "triton", "worker", "prometheus", "dashboard"} <= set(services)
    assert services["dashboard"]["build"] == services["worker"]["build"]
    assert services["dashboard"]["command"][0] == "dashboard" and "8501:8501" in services["dashboard"]["ports"]
    gpu = services["triton"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert "--appendonly" in services["redis"]["command"]


def test_compose_sets_only_variables_the_code_reads(compose):
    documented = set(re.findall(r"TECAFLOW_[A-Z_]+", stream.config.__doc__))
    for service in ("worker", "dashboard"):
        used = set(compose["services"][service]["environment"])
        assert used <= documented, (service, used - documented)
