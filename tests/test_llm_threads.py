"""llama.cpp's threads: a private OpenMP runtime apart from torch's, thread counts that follow
the machine's load, and the same text whatever the count (engines/llm/threads.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from engines.llm import threads
from engines.llm.backends import llama_cpp_available

pytestmark = pytest.mark.skipif(not llama_cpp_available(), reason="llama-cpp-python not installed")


class FakeLib:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def llama_set_n_threads(self, ctx, decode: int, batch: int) -> None:
        self.calls.append((ctx, decode, batch))


def adaptive(monkeypatch, others_running: int, others_busy: float) -> tuple[threads.AdaptiveThreads, FakeLib]:
    monkeypatch.setattr(threads, "private_runtime", lambda: True)
    monkeypatch.setattr(threads, "cpu_threads", lambda: 2)
    monkeypatch.setattr(threads, "others_running_now", lambda: others_running)
    monkeypatch.delenv("GENSTUDIO_LLM_DECODE_THREADS", raising=False)
    monkeypatch.setattr(threads.OtherLoad, "since_last", lambda self, own_threads=1: (0.3, others_busy))
    lib = FakeLib()
    return threads.AdaptiveThreads(lib, "ctx", model_bytes=100 << 20), lib


def test_idle_machine_gets_every_thread_and_busy_machine_one(monkeypatch) -> None:
    chooser, lib = adaptive(monkeypatch, others_running=0, others_busy=0.1)
    assert chooser.enabled and chooser.current == (1, 2)  # a small model's busy-machine counts
    chooser.before_prompt()
    assert chooser.current == (2, 2) and lib.calls == [("ctx", 2, 2)]
    # Another process starts using a core: the next check goes back to one decode thread.
    monkeypatch.setattr(threads.OtherLoad, "since_last", lambda self, own_threads=1: (0.3, 0.9))
    chooser.tick()  # the first token opens the window
    chooser._checked = 0.0
    chooser.tick()
    # one thread for decoding and for the few-token batches of forced text alike
    assert chooser.current == (1, 1) and lib.calls[-1] == ("ctx", 1, 1)


def test_busy_at_the_start_stays_on_one_thread_until_the_cores_are_free(monkeypatch) -> None:
    chooser, lib = adaptive(monkeypatch, others_running=3, others_busy=1.5)
    chooser.before_prompt()
    chooser.tick()
    chooser._checked = 0.0
    chooser.tick()
    assert chooser.current == (1, 1) and lib.calls == [("ctx", 1, 1)]
    chooser.before_prompt()  # the next prompt on a busy machine: every thread for its batches
    assert chooser.current == (1, 2)
    chooser.tick()
    monkeypatch.setattr(threads.OtherLoad, "since_last", lambda self, own_threads=1: (0.3, 0.0))
    chooser._checked = 0.0
    chooser.tick()
    assert chooser.current == (2, 2)


def test_a_training_job_in_this_process_counts_as_load(monkeypatch) -> None:
    chooser, lib = adaptive(monkeypatch, others_running=0, others_busy=0.0)
    with threads.lane_job():
        chooser.before_prompt()
        chooser.tick()
        chooser._checked = 0.0
        chooser.tick()
        assert chooser.current == (1, 1) and lib.calls == [("ctx", 1, 1)]
    chooser.tick()
    chooser._checked = 0.0
    chooser.tick()
    assert chooser.current == (2, 2)


def test_our_own_threads_are_not_other_load() -> None:
    import threading

    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [None for _ in iter(lambda: stop.is_set(), True)])
    spinner.start()
    try:
        time.sleep(0.3)
        assert threads._own_running_threads() >= 2  # this thread and the spinner
    finally:
        stop.set()
        spinner.join()


def test_a_fixed_thread_count_turns_adapting_off(monkeypatch) -> None:
    monkeypatch.setenv("GENSTUDIO_LLM_DECODE_THREADS", "2")
    monkeypatch.setattr(threads, "private_runtime", lambda: True)
    lib = FakeLib()
    chooser = threads.AdaptiveThreads(lib, "ctx", model_bytes=100 << 20)
    chooser.before_prompt()
    chooser.tick()
    assert not chooser.enabled and chooser.current == (2, threads.cpu_threads()) and lib.calls == []


def test_other_load_sees_another_process_burn_a_core() -> None:
    load = threads.OtherLoad()
    burner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        time.sleep(1.0)
        load.since_last()
        time.sleep(1.0)
        seconds, others = load.since_last()
    finally:
        burner.wait()
    assert seconds == pytest.approx(1.0, abs=0.5)
    assert others > 0.3  # about one core, less when the machine is shared


@pytest.mark.skipif(not threads.private_runtime(), reason="no private OpenMP runtime (not Linux?)")
def test_llama_cpp_loads_its_own_openmp_runtime_and_torch_keeps_passive() -> None:
    # Order as in the studio: torch (with PASSIVE) first, then the language model.
    code = textwrap.dedent("""
        import os
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        import torch
        torch.ones(64, 64) @ torch.ones(64, 64)
        from engines.llm.engine import LLMEngine
        engine = LLMEngine()
        engine.load()
        with open("/proc/self/maps") as maps:
            runtimes = sorted({line.split()[-1].rsplit("/", 1)[-1] for line in maps if "gomp" in line})
        print(runtimes, os.environ["OMP_WAIT_POLICY"], engine._backend.threads.enabled)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == "['libgomp-llama.so.1', 'libgomp.so.1'] PASSIVE True"


def test_the_same_seed_gives_the_same_text_on_one_or_two_threads(monkeypatch) -> None:
    from engines.llm.engine import LLMEngine, LLMParams

    texts = []
    for count in ("1", "2"):
        monkeypatch.setenv("GENSTUDIO_LLM_DECODE_THREADS", count)
        engine = LLMEngine()
        engine.load()
        try:
            params = LLMParams(prompt="The lighthouse keeper opened the bottle and", max_new_tokens=24,
                               temperature=0.8, seed=42)
            texts.append(engine.generate(params).text)
        finally:
            engine.unload()
    assert texts[0] == texts[1] and texts[0].strip()


def test_a_prompt_right_after_a_reply_trusts_the_load_since_then(monkeypatch) -> None:
    chooser, lib = adaptive(monkeypatch, others_running=0, others_busy=1.5)  # idle this instant
    chooser.before_prompt()  # but others used 1.5 cores in the 0.3 s since the last reply
    assert chooser.current == (1, 2) and lib.calls == []
    monkeypatch.setattr(threads.OtherLoad, "since_last", lambda self: (30.0, 1.5))
    chooser.before_prompt()  # half a minute ago says little about now: the instant decides
    assert chooser.current == (2, 2) and lib.calls == [("ctx", 2, 2)]
