"""What operators see: ports that cannot be listened on, the metrics server's address."""

from __future__ import annotations

import socket
import subprocess
import sys

import yaml

from serving_support import ENV, MODEL


def _taken_port() -> socket.socket:
    """A socket listening on a free loopback port: that port is taken while it is open."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    return blocker


def _riverbeam(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "riverbeam.cli", *args], capture_output=True, text=True, timeout=120, env=ENV, cwd=cwd)


def test_a_taken_metrics_port_stops_the_daemon_in_one_line_naming_the_port_and_its_key(tmp_path):
    blocker = _taken_port()
    port = blocker.getsockname()[1]
    config = {
        "kafka": {"bootstrap_servers": "127.0.0.1:1", "topic": "events"},  # never reached: the port fails first
        "model": MODEL, "events": {"target": "label"},
        "checkpoint": {"uri": str(tmp_path / "checkpoints")},
        "metrics": {"host": "127.0.0.1", "port": port},
    }  # fmt: skip
    (tmp_path / "consumer.yaml").write_text(yaml.safe_dump(config))
    try:
        result = _riverbeam("consume", "--config", "consumer.yaml", cwd=tmp_path)
    finally:
        blocker.close()
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("riverbeam: error:")]
    assert errors == [f"riverbeam: error: cannot listen on 127.0.0.1:{port} (metrics.port): the port is already in use; "
                      "stop what listens there or choose another port (0: any free one)"], result.stderr
    assert "Traceback" not in result.stderr


def test_a_taken_serve_port_exits_1_in_one_line_naming_the_port_and_its_key(tmp_path):
    blocker = _taken_port()
    port = blocker.getsockname()[1]
    try:
        result = _riverbeam("serve", "--checkpoint", str(tmp_path / "checkpoints"), "--port", str(port), cwd=tmp_path)
    finally:
        blocker.close()
    assert result.returncode == 1, result.stderr  # uvicorn's own exit code was 3, which the README never mentions
    errors = [line for line in result.stderr.splitlines() if line.startswith("riverbeam: error:")]
    assert errors == [f"riverbeam: error: cannot listen on 127.0.0.1:{port} (serve.port, --port): the port is already in use; "
                      "stop what listens there or choose another port (0: any free one)"], result.stderr
    assert "Traceback" not in result.stderr and "Errno" not in result.stderr


def test_the_metrics_server_listens_on_loopback_unless_told_otherwise(tmp_path):
    from core.configuration import load_config
    from online.config import ConsumeJobConfig
    from online.observability import DaemonMetrics, HealthServer

    path = tmp_path / "consumer.yaml"
    path.write_text(yaml.safe_dump({"kafka": {"bootstrap_servers": "127.0.0.1:1", "topic": "events"}, "model": MODEL,
                                    "checkpoint": {"uri": str(tmp_path / "checkpoints")}, "metrics": {"port": 0}}))
    config = load_config(path, ConsumeJobConfig, environ={})
    assert config.metrics.host == "127.0.0.1"
    server = HealthServer(DaemonMetrics(), config.metrics.host, config.metrics.port)
    try:
        assert server.server.server_address[0] == "127.0.0.1"
    finally:
        server.close()
    explicit = load_config(path, ConsumeJobConfig, environ={"RIVERBEAM__METRICS__HOST": "0.0.0.0"})
    assert explicit.metrics.host == "0.0.0.0"


def test_json_logging_follows_stderr_and_never_writes_to_a_stream_closed_since(capfd):
    """The CLI configures logging in the caller's process (the Python API, a test): a handler bound to the stderr of
    that moment wrote "--- Logging error ---" with the record on every later log once that stream was closed."""
    import io
    import logging
    import sys

    from online.observability import configure_json_logging

    root = logging.getLogger()
    kept = root.handlers[:], root.level
    before, sys.stderr = sys.stderr, io.StringIO()
    try:
        configure_json_logging()
        gone, sys.stderr = sys.stderr, before
        gone.close()
        logging.getLogger("riverbeam.test").warning("after the first stderr closed")
        err = capfd.readouterr().err
        assert "Logging error" not in err and '"msg":"after the first stderr closed"' in err
    finally:
        sys.stderr = before
        root.handlers[:], _ = kept
        root.setLevel(kept[1])
