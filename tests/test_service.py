"""stream/stack/service.py: start, health, pid file, log, stop — with real processes."""
import sys

import pytest

from stream.stack.service import Service, ServiceError, port_open
from tests.conftest import free_ports

SERVE = [sys.executable, "-c", "import http.server, sys; print('serving', flush=True); "
         "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), http.server.BaseHTTPRequestHandler).serve_forever()"]


@pytest.mark.integration  # it serves HTTP on a port
def test_a_service_starts_healthy_leaves_a_pid_file_and_stops(tmp_path):
    port = free_ports(1)[0]
    service = Service("web", [*SERVE, str(port)], tmp_path, health=lambda: port_open(port)).start()
    assert port_open(port) and int((tmp_path / "web.pid").read_text()) == service.process.pid
    # another process finds it by its pid file and stops it
    other = Service("web", [], tmp_path)
    assert other.running() and other.stop()
    assert not port_open(port) and not (tmp_path / "web.pid").exists()
    assert "serving" in (tmp_path / "web.log").read_text()
    assert not other.stop()  # nothing left to stop


def test_a_service_that_exits_is_reported_with_its_log(tmp_path):
    service = Service("broken", [sys.executable, "-c", "print('bad config line 3'); raise SystemExit(4)"], tmp_path,
                      health=lambda: False)
    with pytest.raises(ServiceError, match="exited with code 4(.|\n)*bad config line 3"):
        service.start()


def test_a_service_that_never_gets_healthy_is_stopped(tmp_path):
    service = Service("slow", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path, health=lambda: False,
                      start_timeout=1)
    with pytest.raises(ServiceError, match="did not become healthy within 1s"):
        service.start()
    assert service.process.poll() is not None and not (tmp_path / "slow.pid").exists()


def test_a_reason_to_give_up_ends_the_wait(tmp_path):
    service = Service("model", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path, health=lambda: False,
                      failed=lambda: "version 1: not an onnx graph", start_timeout=60)
    with pytest.raises(ServiceError, match="model failed: version 1: not an onnx graph"):
        service.start()
    assert service.process.poll() is not None


def test_secrets_reach_the_service_on_stdin_not_its_command_line(tmp_path):
    service = Service("echo", [sys.executable, "-c", "import sys; print(sys.stdin.read().upper())"], tmp_path,
                      stdin="requirepass s3cret").start()
    service.process.wait(10)
    assert "REQUIREPASS S3CRET" in service.log_path.read_text() and "s3cret" not in " ".join(service.command)
