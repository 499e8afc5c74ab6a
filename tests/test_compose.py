"""docker-compose.yml: no Docker engine here, so it is checked against the Compose Specification
schema and against what the code reads."""
import json

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
    worker, dashboard = services["worker"]["build"], services["dashboard"]["build"]
    assert dashboard["dockerfile_inline"] == worker["dockerfile_inline"]  # one recipe
    assert (worker["args"]["EXTRA"], dashboard["args"]["EXTRA"]) == ("stream", "dashboard")
    assert "torch" not in worker["dockerfile_inline"]
    assert services["dashboard"]["command"][0] == "dashboard" and "8501:8501" in services["dashboard"]["ports"]
    gpu = services["triton"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert "--appendonly" in services["redis"]["command"]


def test_each_image_installs_an_extra_that_pyproject_declares(compose):
    import tomllib
    from pathlib import Path
    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    worker_needs = " ".join(extras["stream"])
    assert "torch" not in worker_needs and "transformers" not in worker_needs and "streamlit" not in worker_needs
    for service in ("worker", "dashboard"):
        assert compose["services"][service]["build"]["args"]["EXTRA"] in extras


def test_compose_sets_only_variables_the_code_reads(compose):
    from dataclasses import fields
    documented = {stream.config.env_name(f) for f in fields(stream.config.Settings)}
    for service in ("worker", "dashboard"):
        used = set(compose["services"][service]["environment"])
        assert used <= documented, (service, used - documented)
