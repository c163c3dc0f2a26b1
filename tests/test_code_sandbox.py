"""Run & fix sandbox against attacks: a fork bomb, children that escape with setsid(), an output
flood, reading the studio's secrets; and the switch that keeps code execution off by default."""
from __future__ import annotations

import os
import resource
import socket
import time
from pathlib import Path

import pytest

from studio.code_runner import (OUTPUT_LIMIT, CodeExecutionDisabled, RunLimits, check_code_execution,
                                run_python)
from studio.config import StudioConfig
from studio.sandbox_launcher import landlock_abi


def processes_running(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line mentions `marker`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(name))
    return found


def assert_all_gone(marker: str) -> None:
    deadline = time.monotonic() + 3
    while processes_running(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_running(marker) == []


def test_fork_bomb_is_capped_and_killed():
    code = ("import os, time\nprint(os.getcwd(), flush=True)\n"
            "while True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.01)\n")
    started = time.monotonic()
    result = run_python(code, RunLimits(timeout_s=2, processes=16))
    assert result.timed_out and not result.ok and time.monotonic() - started < 10
    assert_all_gone(result.stdout.splitlines()[0])


def test_process_count_is_limited():
    code = ("import os, time\nprint(os.getcwd(), flush=True)\nmade = 0\n"
            "for _ in range(300):\n    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
            "    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n    made += 1\nprint(made)\n")
    result = run_python(code, RunLimits(timeout_s=10, processes=16))
    folder, made = result.stdout.splitlines()[0], int(result.stdout.splitlines()[1])
    assert result.ok and 0 < made <= 16 + 4  # a little slack: other tasks of the user may end meanwhile
    assert_all_gone(folder)  # the sleeping children did not outlive the run


@pytest.mark.parametrize("main_waits", [True, False], ids=["timeout", "main-exits"])
def test_children_that_call_setsid_are_killed(main_waits):
    code = ("import os, time\nprint(os.getcwd(), flush=True)\npid = os.fork()\nif pid == 0:\n"
            "    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n    os._exit(0)\n"
            "os.waitpid(pid, 0)\n" + ("time.sleep(60)\n" if main_waits else ""))
    result = run_python(code, RunLimits(timeout_s=1.5))
    assert result.timed_out == main_waits
    assert_all_gone(result.stdout.splitlines()[0])


def test_output_flood_stays_out_of_memory():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    # 1 MB writes, forever: gigabytes unless the reader stops it.
    result = run_python("import os\nblock = b'x' * (1 << 20)\nwhile True: os.write(1, block)\n",
                        RunLimits(timeout_s=20, output_mb=8))
    assert result.output_exceeded and not result.ok and not result.timed_out
    assert time.monotonic() - started < 10 and len(result.stdout) <= OUTPUT_LIMIT
    assert "output limit" in result.error_text()
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 50


def test_no_studio_environment_or_files(tmp_path, monkeypatch):
    monkeypatch.setenv("GENSTUDIO_AUTH", "admin:hunter2")
    secret = tmp_path / "studio.sqlite3"
    secret.write_text("rows")
    secret.chmod(0o600)
    result = run_python(f"import os\nprint(dict(os.environ))\nprint(open({str(secret)!r}).read())\n")
    assert "hunter2" not in result.stdout and "GENSTUDIO_AUTH" not in result.stdout
    if os.geteuid() == 0 or landlock_abi() >= 1:  # nobody, or Landlock: the studio's files are closed
        assert not result.ok and "PermissionError" in result.stderr
    else:  # same user, old kernel: documented as unprotected (README Security, code_runner docstring)
        assert result.ok and "rows" in result.stdout


@pytest.mark.skipif(landlock_abi() < 1, reason="the kernel has no Landlock")
def test_landlock_closes_world_readable_files_and_the_studios_environment(tmp_path):
    readme = Path(__file__).resolve().parent.parent / "README.md"  # world-readable, outside the sandbox
    code = (f"import os\nfor p in [{str(readme)!r}, '/proc/{os.getpid()}/environ', '/etc/hostname']:\n"
            "    try:\n        open(p).read(1)\n        print('open', p)\n"
            "    except OSError:\n        print('closed', p)\n"
            "open('own.txt', 'w').write('x')\nprint(open('own.txt').read())\n")
    result = run_python(code)
    assert result.ok, result.stderr
    assert f"closed {readme}" in result.stdout and f"closed /proc/{os.getpid()}/environ" in result.stdout
    assert "open /etc/hostname" in result.stdout and result.stdout.endswith("x\n")


@pytest.mark.skipif(os.geteuid() != 0 and landlock_abi() < 4, reason="needs root or Landlock ABI 4")
def test_no_tcp_from_the_sandbox():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        result = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n")
    assert not result.ok and ("OSError" in result.stderr or "Error" in result.stderr)


def test_code_execution_is_off_unless_switched_on():
    with pytest.raises(CodeExecutionDisabled, match="--allow-code-execution"):
        check_code_execution(StudioConfig())
    check_code_execution(StudioConfig(allow_code_execution=True))  # loopback: the local user
    with pytest.raises(CodeExecutionDisabled, match="login"):
        check_code_execution(StudioConfig(allow_code_execution=True, host="0.0.0.0"))
    with pytest.raises(CodeExecutionDisabled, match="login"):
        check_code_execution(StudioConfig(allow_code_execution=True, share=True))
    check_code_execution(StudioConfig(allow_code_execution=True, host="0.0.0.0", auth=(("a", "b"),)))


def test_run_and_fix_task_is_refused_without_the_switch(ctx):
    from dataclasses import replace

    from studio.tasks import get_task

    closed = replace(ctx, config=replace(ctx.config, allow_code_execution=False))
    params = {"mode": "write", "description": "print 1", "run_and_fix": True}
    with pytest.raises(ValueError, match="--allow-code-execution") as error:
        get_task("code").validate(closed, params)
    assert error.value.field == "run_and_fix"
    get_task("code").validate(closed, {"mode": "write", "description": "print 1"})  # no run: fine
