import pytest

from stream.config import ConfigError, Settings


def test_defaults(monkeypatch):
    for k in list(__import__("os").environ):
        if k.startswith("TECAFLOW_"):
            monkeypatch.delenv(k)
    s = Settings.from_env()
    assert s.broker_servers() == "127.0.0.1:9092" and s.resolutions == (10, 60, 600)
    assert (s.detector.min_shift, s.detector.false_alarms_per_10k, s.detector.warmup) == (0.5, 1.0, 100)
    assert s.detector.run_length == 10000


def test_every_variable_is_read(monkeypatch):
    monkeypatch.setenv("TECAFLOW_BROKER_URL", "kafka://a:1,kafka://b:2")
    monkeypatch.setenv("TECAFLOW_BROKER_SECURITY", "sasl_ssl")
    monkeypatch.setenv("TECAFLOW_BROKER_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("TECAFLOW_RESOLUTIONS", "60,5")
    monkeypatch.setenv("TECAFLOW_ALERT_MIN_SHIFT", "0.8")
    monkeypatch.setenv("TECAFLOW_ALERT_FALSE_ALARMS_PER_10K", "0.5")
    monkeypatch.setenv("TECAFLOW_ALERT_WARMUP", "80")
    monkeypatch.setenv("TECAFLOW_WEBHOOK_QUEUE", "7")
    s = Settings.from_env()
    assert s.broker_servers() == "a:1,b:2" and s.broker_security == "SASL_SSL"
    assert s.resolutions == (5, 60) and s.webhook_queue == 7
    assert (s.detector.min_shift, s.detector.false_alarms_per_10k, s.detector.warmup) == (0.8, 0.5, 80)
    assert s.detector.run_length == 20000
    assert "hunter2" not in s.describe()


@pytest.mark.parametrize("var, value, message", [
    ("TECAFLOW_BATCH_SIZE", "many", "is not an integer"),
    ("TECAFLOW_BATCH_SIZE", "0", "must be >= 1"),
    ("TECAFLOW_BATCH_WAIT_S", "-1", r"must be in \[0.0, 10.0\]"),
    ("TECAFLOW_BROKER_SECURITY", "TLS", "use PLAINTEXT, SSL"),
    ("TECAFLOW_BROKER_SASL_MECHANISM", "GSSAPI", "SCRAM-SHA-256"),
    ("TECAFLOW_RESOLUTIONS", "ten", "comma-separated whole seconds"),
    ("TECAFLOW_EWMA_ALPHA", "1.5", r"must be in \(0, 1\]"),
    ("TECAFLOW_REDIS_URL", "localhost:6379", "must start with redis://"),
    ("TECAFLOW_REDIS_URL", "redis://:pw@host:notaport/0", "has a port that is not a number"),
    ("TECAFLOW_REDIS_URL", "redis://127.0.0.1:99999/0", "has a port that is not a number"),
    ("TECAFLOW_REDIS_URL", "redis://127.0.0.1:6379/abc", "must end in a database number"),
    ("TECAFLOW_REDIS_URL", "redis+cluster://node-1:7000/3", "a Redis Cluster has only database 0"),
    ("TECAFLOW_TIMEZONE", "Mars/Olympus", "not a known time zone"),
    ("TECAFLOW_DASHBOARD_REFRESH_S", "0.1", "must be >= 0.5"),
    ("TECAFLOW_ALERT_MIN_SHIFT", "0", r"TECAFLOW_ALERT_MIN_SHIFT=0.0 must be in \[0.05, 6.0\]"),
    ("TECAFLOW_ALERT_MIN_SHIFT", "7", r"must be in \[0.05, 6.0\]"),
    ("TECAFLOW_RESOLUTIONS", "10,60,10", "names a bucket size twice"),
    ("TECAFLOW_BATCH_WAIT_S", "inf", r"must be in \[0.0, 10.0\]"),
    ("TECAFLOW_SESSION_TIMEOUT_S", "1", "must be >= 6.0"),
    ("TECAFLOW_ALERT_FALSE_ALARMS_PER_10K", "0", r"must be in \(0, 10000\)"),
    ("TECAFLOW_ALERT_WARMUP", "3", "must be >= 10"),
    ("TECAFLOW_WEBHOOK_QUEUE", "0", "must be >= 1"),
    ("TECAFLOW_BROKER_URL", "http://broker:9092", "TECAFLOW_BROKER_URL='http://broker:9092' must be host:port"),
    ("TECAFLOW_BROKER_URL", "kafka://a:9092,kafka://b", "must be host:port, comma-separated"),
    ("TECAFLOW_BROKER_URL", "kafka://a:0", "must be host:port"),
    ("TECAFLOW_TRITON_URL", "triton", "TECAFLOW_TRITON_URL='triton' must be host:port"),
    ("TECAFLOW_PROMETHEUS_TARGETS", "worker", "must be host:port"),
    ("TECAFLOW_WEBHOOK_URL", "hooks.slack.com/services/T/B/tok3n", "must be an http:// or https:// URL"),
    ("TECAFLOW_TOPIC_SEGMENTS", "", "is not a Kafka topic name"),
    ("TECAFLOW_TOPIC_DLQ", "dead letters", "is not a Kafka topic name"),
    ("TECAFLOW_TOPIC_DLQ", "segments", "the topics must differ"),
])
def test_bad_settings_say_which_variable(monkeypatch, var, value, message):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=message):
        Settings.from_env()


def test_dashboard_settings_and_url_redaction(monkeypatch):
    from stream.config import redact_url
    monkeypatch.setenv("TECAFLOW_TIMEZONE", "Europe/Paris")
    monkeypatch.setenv("TECAFLOW_DASHBOARD_PAGE_SIZE", "25")
    s = Settings.from_env()
    assert s.timezone == "Europe/Paris" and s.dashboard_page_size == 25
    assert redact_url("redis://:hunter2@10.0.0.1:6379/0") == "redis://:***@10.0.0.1:6379/0"
    assert redact_url("rediss://dash:hunter2@h:6380/1") == "rediss://dash:***@h:6380/1"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert "tok3n" not in redact_url("https://hooks.example/x?token=tok3n")
@pytest.mark.parametrize("url, shown", [
    ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("rediss://user:s3cret@redis.example:6380/2", "rediss://user:***@redis.example:6380/2"),
    ("redis+cluster://:s3cret@10.0.0.1:7000", "redis+cluster://:***@10.0.0.1:7000"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("https://hooks.slack.com/services/T0/B0/s3cret", "https://hooks.slack.com/***"),
    ("http://127.0.0.1:8080/hook?token=s3cret", "http://127.0.0.1:8080/***?***"),
    ("unix:///run/redis.sock?password=s3cret", "unix:///run/redis.sock?***"),
    ("127.0.0.1:9092", "127.0.0.1:9092"),
    ("user:s3cret@broker:9092", "***"),
])
def test_redact_url_hides_secrets_and_keeps_the_address(url, shown):
    from stream.config import redact_url
    assert redact_url(url) == shown


def test_describe_prints_no_credential(monkeypatch):
    monkeypatch.setenv("TECAFLOW_REDIS_URL", "redis://:redis-s3cret@127.0.0.1:6379/0")
    monkeypatch.setenv("TECAFLOW_WEBHOOK_URL", "https://hooks.slack.com/services/T0/B0/hook-s3cret")
    monkeypatch.setenv("TECAFLOW_BROKER_SASL_PASSWORD", "sasl-s3cret")
    text = Settings.from_env().describe()
    assert "s3cret" not in text
    assert "redis_url=redis://:***@127.0.0.1:6379/0" in text and "webhook_url=https://hooks.slack.com/***" in text


def test_a_bad_redis_url_is_named_without_its_password(monkeypatch):
    monkeypatch.setenv("TECAFLOW_REDIS_URL", "http://:s3cret@host:6379")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env()
    assert "s3cret" not in str(caught.value) and "redis+cluster://" in str(caught.value)


def test_every_broker_client_gets_its_tls_context_from_the_settings(tmp_path):
    import certifi

    from stream.dependency_checks import broker_client_options
    assert Settings(broker_security="PLAINTEXT").broker_ssl_context() is None
    assert "ssl_context" not in broker_client_options(Settings(broker_security="SASL_PLAINTEXT"), 5)
    bundle = Settings(broker_security="SSL", ca_file=certifi.where()).broker_ssl_context()
    assert bundle.cert_store_stats()["x509_ca"] > 0
    options = broker_client_options(Settings(broker_security="SASL_SSL", ca_file=certifi.where(), sasl_username="u"), 5)
    assert options["ssl_context"].cert_store_stats() == bundle.cert_store_stats()
    assert options["sasl_plain_username"] == "u"


@pytest.mark.parametrize("content", [None, "not a certificate"])
def test_a_ca_bundle_that_cannot_be_read_is_named(tmp_path, content):
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=f"TECAFLOW_BROKER_CA_FILE={path}: not a readable CA bundle"):
        Settings(broker_security="SSL", ca_file=str(path)).broker_ssl_context()


def test_a_ca_bundle_without_tls_is_refused_rather_than_ignored():
    with pytest.raises(ConfigError, match="TECAFLOW_BROKER_CA_FILE is set but TECAFLOW_BROKER_SECURITY=PLAINTEXT"):
        Settings(broker_security="PLAINTEXT", ca_file="/etc/ssl/ca.pem")


def test_well_formed_addresses_pass(monkeypatch):
    monkeypatch.setenv("TECAFLOW_BROKER_URL", "kafka://kafka-0.kafka:9092, kafka://[::1]:9093,10.0.0.7:9094")
    monkeypatch.setenv("TECAFLOW_TRITON_URL", "triton:8001")
    monkeypatch.setenv("TECAFLOW_PROMETHEUS_TARGETS", "worker-1:9108,worker-2:9108")
    monkeypatch.setenv("TECAFLOW_WEBHOOK_URL", "https://hooks.slack.com/services/T0/B0/x")
    monkeypatch.setenv("TECAFLOW_TOPIC_DLQ", "tecaflow.segments_dlq-v2")
    s = Settings.from_env()
    assert s.broker_servers() == "kafka-0.kafka:9092,[::1]:9093,10.0.0.7:9094"


def test_a_rejected_webhook_url_keeps_its_token_hidden(monkeypatch):
    monkeypatch.setenv("TECAFLOW_WEBHOOK_URL", "ftp://hooks.example.com/services/T0/B0/tok3n")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env()
    assert "tok3n" not in str(caught.value)


def test_a_misspelled_variable_is_named_with_the_nearest_setting():
    unknown = Settings.unknown_variables({"TECAFLOW_BATCH_SIZ": "5", "TECAFLOW_BATCH_SIZE": "8", "HOME": "/root",
                                          "TECAFLOW_NOTHING_LIKE_IT": "1"})
    assert unknown == ["TECAFLOW_BATCH_SIZ (did you mean TECAFLOW_BATCH_SIZE?)", "TECAFLOW_NOTHING_LIKE_IT"]


def test_settings_print_as_the_variables_that_set_them(monkeypatch):
    monkeypatch.setenv("TECAFLOW_REDIS_URL", "redis://:s3cret@10.0.0.1:6379/0")
    lines = Settings.from_env().variables()
    assert "TECAFLOW_REDIS_URL=redis://:***@10.0.0.1:6379/0" in lines and "TECAFLOW_BATCH_SIZE=32" in lines
    assert not any("s3cret" in line for line in lines)
