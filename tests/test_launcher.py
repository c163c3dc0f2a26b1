"""launch.py: auth rules, port choice, and the API auth shared with the UI."""
from __future__ import annotations

import base64
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import importlib.util

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("launch", REPO / "launch.py")
launch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(launch)

from studio.api.auth import check_authorization


def run_launch(*args):
    return subprocess.run([sys.executable, str(REPO / "launch.py"), *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO)


@pytest.mark.parametrize("args", [("--host", "0.0.0.0"), ("--share",)])
def test_public_serving_without_auth_is_refused(args, tmp_path):
    result = run_launch(*args, "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "without a login" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_auth_parsing(tmp_path):
    auth_file = tmp_path / "auth.txt"
    auth_file.write_text("# logins\nann:one, two: three\n\n  # eve's is below\ncid:drei:ä\n", encoding="utf-8")
    assert launch.parse_auth(["dee:four"], str(auth_file), "env:five\nfay:six") == (
        ("dee", "four"), ("env", "five"), ("fay", "six"), ("ann", "one, two: three"), ("cid", "drei:ä"))
    with pytest.raises(SystemExit, match="user:password"):
        launch.parse_auth(["nocolon"], None)
    auth_file.write_text("ann:one\nsecret-password-without-user\nbob:\n")
    with pytest.raises(SystemExit) as error:
        launch.parse_auth([], str(auth_file))
    assert str(error.value) == f"--auth-file {auth_file} line 2: expected user:password"  # no echo
    auth_file.write_text("bob:\n")
    with pytest.raises(SystemExit, match="line 1: user 'bob' has no password"):
        launch.parse_auth([], str(auth_file))


def test_password_from_the_environment_serves_beyond_loopback(tmp_path):
    args = launch.parse_args(["--host", "0.0.0.0", "--allow-code-execution", "--allowed-host", "studio.lan"])
    assert args.allow_code_execution and args.allowed_host == ["studio.lan"]
    assert launch.parse_auth(args.auth, args.auth_file, "ann:pässword") == (("ann", "pässword"),)


def test_openvino_flag():
    assert launch.parse_args(["--openvino", "bf16"]).openvino == "bf16"
    assert launch.parse_args([]).openvino is None
    with pytest.raises(SystemExit):
        launch.parse_args(["--openvino", "int4"])


def test_next_free_port_when_taken():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert launch.free_port("127.0.0.1", port) > port


def test_loopback_detection():
    assert launch.is_loopback("127.0.0.1") and launch.is_loopback("localhost")
    assert not launch.is_loopback("0.0.0.0") and not launch.is_loopback("192.168.1.2")


def test_api_auth_header_rules():
    pairs = (("ann", "secret"),)
    basic = "Basic " + base64.b64encode(b"ann:secret").decode()
    assert check_authorization((), None)
    assert check_authorization(pairs, basic)
    assert check_authorization(pairs, "Bearer secret")
    assert check_authorization(pairs, "Bearer ann:secret")
    assert not check_authorization(pairs, None)
    assert not check_authorization(pairs, "Bearer wrong")
    assert not check_authorization(pairs, "Basic " + base64.b64encode(b"bob:secret").decode())
    assert not check_authorization(pairs, "Basic !!notbase64")


def test_studio_serves_fast_and_protects_apis(launch_studio):
    import requests

    server = launch_studio(args=("--auth", "ann:secret"))
    assert server.startup_seconds < 20, server.log()
    assert requests.get(server.url + "/api/gallery", timeout=10).status_code == 401
    ok = requests.get(server.url + "/api/gallery", auth=("ann", "secret"), timeout=10)
    assert ok.status_code == 200 and ok.json()["total"] == 0
    # Nothing heavy was imported to serve the page: no model is loaded before it is used.
    assert "Traceback" not in server.log()
