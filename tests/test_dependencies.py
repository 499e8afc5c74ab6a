"""Refused vs away, against a real redis-server with a password (the broker side is exercised by
the live tests; the embedded broker has no SASL to refuse with)."""
import subprocess
import sys

import pytest
import redis

from stream.dependency_checks import DependencyRefused, check_redis, refused
from stream.store import TrendStore
from tests.conftest import free_ports

PASSWORD = "tf-s3cret-pw"


@pytest.fixture(scope="module")
def guarded_redis(tmp_path_factory):
    """A redis-server that requires a password."""
    from stream.stack.embedded import redis_service
    port = free_ports(1)[0]
    server = redis_service(tmp_path_factory.mktemp("guarded"), port, PASSWORD, durable=False).start()
    yield port
    server.stop()


@pytest.mark.parametrize("auth", [":wrong-password@", ""])
def test_refused_credentials_stop_the_check_with_the_password_hidden(guarded_redis, auth):
    url = f"redis://{auth}127.0.0.1:{guarded_redis}/0"
    with pytest.raises(DependencyRefused) as caught:
        check_redis(lambda: TrendStore(url), url)
    message = str(caught.value)
    assert "refused this worker" in message and "wrong-password" not in message and "\n" not in message


def test_the_right_password_passes(guarded_redis):
    url = f"redis://:{PASSWORD}@127.0.0.1:{guarded_redis}/0"
    check_redis(lambda: TrendStore(url), url)


def test_redis_away_is_not_a_refusal():
    port = free_ports(1)[0]
    url = f"redis://127.0.0.1:{port}/0"
    check_redis(lambda: TrendStore(url), url)  # only logged: the worker waits for it
    with pytest.raises(redis.ConnectionError) as caught:
        TrendStore(url).ping()
    assert not refused(caught.value)


@pytest.mark.parametrize("auth", [":wrong-password@", ""])
def test_tecaflow_trends_says_one_line_and_exits_2(guarded_redis, auth, tmp_path):
    import os
    env = dict(os.environ, TECAFLOW_REDIS_URL=f"redis://{auth}127.0.0.1:{guarded_redis}/0")
    result = subprocess.run([sys.executable, "-m", "stream.cli", "trends"], env=env, capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "AuthenticationError" in result.stderr and "wrong-password" not in result.stderr


def test_tecaflow_trends_with_redis_down_says_one_line_and_exits_2(tmp_path):
    import os
    env = dict(os.environ, TECAFLOW_REDIS_URL=f"redis://:pw@127.0.0.1:{free_ports(1)[0]}/0")
    result = subprocess.run([sys.executable, "-m", "stream.cli", "trends"], env=env, capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Connection refused" in result.stderr and ":pw@" not in result.stderr


@pytest.mark.parametrize("error, stops", [
    ("SaslAuthenticationFailed", True), ("UnsupportedSaslMechanismError", True),
    ("TopicAuthorizationFailedError", True), ("KafkaConnectionError", False)])
def test_a_broker_refusal_stops_and_absence_waits(monkeypatch, error, stops):
    """The embedded broker (Tansu) closes the connection instead of answering a failed SASL
    exchange with an error, so the refusal is raised here as Apache Kafka reports it."""
    import asyncio

    import aiokafka.conn
    from aiokafka import errors

    from stream.config import Settings
    from stream.dependency_checks import check_broker

    async def refuse(*args, **kwargs):
        raise getattr(errors, error)()
    monkeypatch.setattr(aiokafka.conn, "create_conn", refuse)
    settings = Settings(broker_security="SASL_PLAINTEXT", sasl_username="u", sasl_password="sasl-s3cret")
    if stops:
        with pytest.raises(DependencyRefused) as caught:
            asyncio.run(check_broker(settings))
        assert error in str(caught.value) and "sasl-s3cret" not in str(caught.value)
    else:
        asyncio.run(check_broker(settings))


def test_a_redis_cluster_that_is_away_is_not_a_refusal():
    url = f"redis+cluster://127.0.0.1:{free_ports(1)[0]}"
    check_redis(lambda: TrendStore(url), url)  # the client fails as it is made: still only logged


def test_a_worker_batch_larger_than_the_served_model_takes_stops_the_worker_at_start():
    """Triton refuses a batch above the model's max_batch_size on every full batch, and the
    worker used to retry that forever; now it does not start, and says what to change."""
    import asyncio

    from stream.config import ConfigError
    from stream.contract import ModelContract
    from stream.startup import served_contract

    class Serving:
        def __init__(self, max_batch):
            self.max_batch = max_batch

        async def contract(self, model=None):
            return ModelContract(widths={"audio": 5, "visual": 20}, max_text_tokens=16, max_frames=50,
                                 max_batch=self.max_batch)
    with pytest.raises(ConfigError, match="TECAFLOW_BATCH_SIZE=32 is larger than the 16 segments"):
        asyncio.run(served_contract(Serving(16), 32))
    assert asyncio.run(served_contract(Serving(64), 32)).max_batch == 64
    assert asyncio.run(served_contract(Serving(0), 32)).max_batch == 0  # a model without batching limits


@pytest.mark.integration
def test_a_worker_waits_for_a_broker_that_is_away_and_starts_once_it_answers(tmp_path):
    """Faust's producer gives up on a broker that does not answer at start-up: the worker used to
    say it would wait, then exit with a KafkaConnectionError traceback. Its run directory may not
    exist yet either (Faust creates only the last level of its data directory)."""
    import time

    from stream.config import Settings, environment_with
    from stream.stack.embedded import WORKER_READY, Stack, worker_service
    from trainer.text_encoder import minilm_dir
    broker, redis_port, triton, metrics_port = free_ports(4)
    env = environment_with(run_dir=tmp_path / "not" / "made" / "yet", tokenizer=str(minilm_dir()),
                           broker_url=f"kafka://127.0.0.1:{broker}", redis_url=f"redis://127.0.0.1:{redis_port}/0",
                           triton_url=f"127.0.0.1:{triton}", metrics_port=metrics_port)
    worker = worker_service(tmp_path, env=env).start(wait=False)
    stack = Stack(Settings.from_env(env))
    started = ()
    try:
        deadline = time.monotonic() + 60
        while worker.log_text().count("the broker at") < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert worker.log_text().count("is not reachable yet") >= 3 and worker.process.poll() is None
        started = stack.up(services=("broker",))
        deadline = time.monotonic() + 120
        while WORKER_READY not in worker.log_text() and time.monotonic() < deadline:
            assert worker.process.poll() is None, worker.log_text()[-2000:]
            time.sleep(0.5)
        assert WORKER_READY in worker.log_text() and "Traceback" not in worker.log_text()
        assert "the broker is back after" in worker.log_text()
    finally:
        worker.stop()
        stack.down(services=tuple(reversed(started)))


def test_a_database_redis_does_not_have_stops_the_worker_and_the_cli_in_one_line(redis_url, capsys, monkeypatch):
    """Redis answers "DB index is out of range": the worker took it for 'away' and waited forever,
    `tecaflow trends` printed a traceback."""
    from stream import cli
    missing_db = redis_url.rsplit("/", 1)[0] + "/99"
    with pytest.raises(DependencyRefused, match="has no such database"):
        check_redis(lambda: TrendStore(missing_db), missing_db)
    monkeypatch.setenv("TECAFLOW_REDIS_URL", missing_db)
    assert cli.main(["trends"]) == 2
    assert "DB index is out of range" in capsys.readouterr().err
