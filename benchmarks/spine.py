"""What the one runner costs: click-to-first-step and request-to-first-token latency, before
(the old per-caller path: a thread of its own calling the task or the engine directly) and after
(`ctx.runner.submit` -> a job on the persistent queue -> the worker -> the handle's updates),
side by side in one run, interleaved, on the embedded models with warm engines.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/spine.py              # 10 runs per side
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/spine.py --runs 20 --json out.json

  click -> first step   txt2img on the embedded 64 px model (20 steps): from the call until the
                        caller holds the first step's progress (the old tab thread got it from a
                        callback; now it comes through the LiveBoard to the handle)
  request -> 1st token  chat on the embedded SmolLM2-135M: from the call until the caller holds
                        the first text (the old OpenAI path streamed from the engine in a thread)
Target: after - before within 10 ms.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported
REPO = Path(__file__).resolve().parent.parent
# benchmarks/queue.py would shadow the standard library's `queue`: the repo root goes first instead.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

import argparse  # noqa: E402
import json  # noqa: E402
import queue as queue_module  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from engines.base import CancelToken  # noqa: E402
from studio.jobs.runner import API, INTERACTIVE  # noqa: E402

IMAGE = {"prompt": "a small red star at the top left on a blue background", "steps": 20,
         "guidance_scale": 2.0, "width": 64, "height": 64, "seed": 1}
CHAT = {"messages": [{"role": "user", "content": "Say hello in one short sentence."}],
        "max_new_tokens": 8, "seed": 1, "temperature": 0.0}


# ------------------------------------------------------------------ before: own threads
def image_before(ctx) -> float:
    """The old tab: validate, a thread running the task, the first progress event."""
    from studio.tasks import run_task, validate_task

    started = time.perf_counter()
    validate_task(ctx, "txt2img", IMAGE)
    events: queue_module.Queue = queue_module.Queue()
    cancel = CancelToken()
    thread = threading.Thread(target=lambda: _swallow(run_task, ctx, "txt2img", IMAGE,
                                                      events.put, cancel))
    thread.start()
    events.get()
    first = time.perf_counter() - started
    cancel.cancel()  # only the latency is measured; nothing is saved
    thread.join()
    return first


def chat_before(ctx) -> float:
    """The old OpenAI path (LiveGeneration): a thread streaming from the engine."""
    from studio.tasks.text import llm_params

    started = time.perf_counter()
    model, params = llm_params(CHAT)
    chunks: queue_module.Queue = queue_module.Queue()
    cancel = CancelToken()

    def stream():
        with ctx.engines.use("llm", model) as engine:
            engine.prepare(params)
            for chunk in engine.stream(params, cancel):
                chunks.put(chunk)
        chunks.put(None)

    thread = threading.Thread(target=stream)
    thread.start()
    chunks.get()
    first = time.perf_counter() - started
    cancel.cancel()
    thread.join()
    return first


# ------------------------------------------------------------------ after: the runner
def image_after(ctx) -> float:
    started = time.perf_counter()
    handle = ctx.runner.submit("txt2img", IMAGE, priority=INTERACTIVE)
    updates = handle.updates(cancel_on_exit=True)
    next(u for u in updates if u.status == "running" and u.step >= 1)
    first = time.perf_counter() - started
    updates.close()  # cancels: only the latency is measured
    handle.wait(30)
    return first


def chat_after(ctx) -> float:
    started = time.perf_counter()
    handle = ctx.runner.submit("chat", CHAT, priority=API)
    updates = handle.updates(cancel_on_exit=True)
    next(u for u in updates if u.text or u.finished)
    first = time.perf_counter() - started
    updates.close()
    handle.wait(30)
    return first


def _swallow(function, *args):
    try:
        function(*args)
    except Exception:  # the cancel after the first step
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from studio.app import build_context
    from studio.config import StudioConfig

    with tempfile.TemporaryDirectory() as tmp:
        ctx = build_context(StudioConfig(data_dir=Path(tmp), device="cpu", offline=True))
        ctx.queue.start_worker()
        pairs = {"click -> first step (txt2img)": (image_before, image_after),
                 "request -> first token (chat)": (chat_before, chat_after)}
        results = {}
        for name, (before, after) in pairs.items():
            before(ctx), after(ctx)  # warm: load the model, import the task modules
            times: dict[str, list[float]] = {"before": [], "after": []}
            for _ in range(args.runs):  # interleaved, so machine load hits both sides alike
                times["before"].append(before(ctx))
                times["after"].append(after(ctx))
            results[name] = {side: round(statistics.median(v) * 1000, 1) for side, v in times.items()}
            results[name]["difference_ms"] = round(results[name]["after"] - results[name]["before"], 1)
        ctx.queue.stop()
    print(f"{'path':32} {'before ms':>10} {'after ms':>10} {'diff ms':>8}   (medians of {args.runs})")
    for name, row in results.items():
        print(f"{name:32} {row['before']:>10} {row['after']:>10} {row['difference_ms']:>8}")
    if args.json:
        args.json.write_text(json.dumps({"runs": args.runs, "results": results}, indent=2))


if __name__ == "__main__":
    main()
