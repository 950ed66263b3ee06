"""Where MLflow runs go: tracking URIs resolved and checked before anything is written; and the
import direction of the tracking and report packages (they consume results, they never import
the sweep driver, Ray or, on import, MLflow)."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
import urllib.request

import pytest

from mtl.errors import ConfigError
from mtl.tracking.uri import check_tracking_uri, resolve_tracking_uri


def test_default_uri_is_sqlite_in_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_env_uri_is_honoured_and_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert resolve_tracking_uri(None) == "http://tracking.example:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///runs/m.db")
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/runs/m.db"
    assert resolve_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"  # explicit wins


@pytest.mark.parametrize("uri", ["file:///tmp/mlruns", "./mlruns", "sqlite:///:memory:"])
def test_file_store_and_memory_rejected(uri):
    with pytest.raises(ConfigError, match="sqlite:///"):
        resolve_tracking_uri(uri)


def test_check_rejects_bad_targets_without_creating_files(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    waits = []
    real = urllib.request.urlopen
    with pytest.MonkeyPatch.context() as mp:  # the probe is bounded by the given timeout
        mp.setattr(urllib.request, "urlopen", lambda url, timeout: waits.append(timeout) or real(url, timeout=timeout))
        with pytest.raises(ConfigError, match=f"http://127.0.0.1:{port} is unreachable .*mlflow server"):
            check_tracking_uri(f"http://127.0.0.1:{port}", timeout=2)
    assert waits == [2]
    with pytest.raises(ConfigError, match="does not exist"):
        check_tracking_uri(f"sqlite:///{tmp_path}/missing/mlflow.db")
    with pytest.raises(ConfigError, match="unsupported scheme"):
        check_tracking_uri("postgresql://db/mlflow")
    check_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")  # fine, and still creates nothing
    assert list(tmp_path.iterdir()) == []


def test_check_accepts_a_server_that_answers_health_and_its_api(monkeypatch):
    """/health and the API (MLflow answers an unknown experiment with its own 404)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            api = self.path.startswith("/api/2.0/mlflow/experiments/get-by-name?")
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b'{"error_code": "RESOURCE_DOES_NOT_EXIST"}' if api else b"OK")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_tracking_uri(f"http://127.0.0.1:{server.server_port}/", timeout=2)
    finally:
        server.shutdown()


@pytest.mark.slow
def test_tracking_and_report_import_neither_the_driver_nor_ray_nor_mlflow():
    """Imports run one way: mtl.tune produces results, mtl.tracking and mtl.report consume them."""
    code = ("import sys, mtl.tracking.mlflow, mtl.tracking.runlog, mtl.tracking.uri, mtl.report, mtl.report.figures; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow') or m.startswith('mtl.tune')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
