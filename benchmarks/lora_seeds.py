"""The LoRA benchmark over many training seeds at once: how reliable is a recipe?

One run of benchmarks/lora.py measures one LoRA, and the training seed alone moves its ring
rate by about ±0.25 — more than most settings do. This runs benchmarks/lora.py for each recipe
(a name and its extra arguments) and each seed, `--workers` at a time, as separate processes,
and tabulates per recipe: the mean ring rate and colour accuracy over the seeds, and how many
seeds pass the target (ring ≥ 0.80 with colour ≥ 0.85). A finished run is not run again.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/lora_seeds.py --seeds 0 1 2 3 --workers 2 \\
        --recipe 'BK=--lr 2e-3 --lr-schedule cosine' --recipe 'b16=--batch 16' -- --images 20

Arguments after `--` go to every run; on a GPU machine add `--device cuda` there and raise
--workers (each run is small: many share one GPU). --deadline stops starting new runs after that
many seconds, so a time-limited machine still gives back a table of what finished.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# benchmarks/queue.py would shadow the standard library's queue that concurrent.futures needs
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

RING, COLOUR = 0.80, 0.85  # the target (#15)


def run_one(name: str, extra: list[str], seed: int, common: list[str], out: Path,
            deadline: float) -> dict | None:
    folder = out / f"{name}-s{seed}"
    report = folder / "report.json"
    if not report.exists():
        if time.time() > deadline:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, str(REPO / "benchmarks" / "lora.py"), "--batched-eval",
                   *common, *extra, "--seed", str(seed), "--out", str(folder),
                   "--grid", str(folder / "grid.png")]
        with open(folder / "log.txt", "w") as log:
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                  env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
        if done.returncode != 0 or not report.exists():
            print(f"{name} seed {seed}: failed (see {folder / 'log.txt'})", flush=True)
            return None
    data = json.loads(report.read_text())
    lora = data["held_out"]["lora"]
    row = {"recipe": name, "seed": seed, "ring": lora["concept"], "colour": lora["colour"],
           "background": lora["background"], "position": lora["position"],
           "train_seconds": data.get("train_seconds"),
           "circles_with_lora_ring_rate": data.get("circles_with_lora_ring_rate"),
           "missed": lora.get("missed", [])}
    print(f"{name} seed {seed}: ring {row['ring']:.2f} colour {row['colour']:.2f} "
          f"({row['train_seconds']} s training)", flush=True)
    return row


def summary(rows: list[dict]) -> dict[str, dict]:
    table: dict[str, dict] = {}
    for name in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == name]
        mean = lambda key: round(sum(r[key] for r in mine) / len(mine), 3)  # noqa: E731
        table[name] = {"seeds": len(mine), "ring": mean("ring"), "colour": mean("colour"),
                       "passing": sum(r["ring"] >= RING and r["colour"] >= COLOUR for r in mine),
                       "rings": [round(r["ring"], 2) for r in mine],
                       "colours": [round(r["colour"], 2) for r in mine],
                       "misses": misses(mine)}
    return table


def misses(rows: list[dict]) -> dict[str, int]:
    """Per held-out prompt ("index: prompt"), how many of the runs drew no ring for it, most
    first: a prompt no seed gets is a limit of the base model, not of one training run."""
    counts: dict[str, int] = {}
    for row in rows:
        for prompt in row.get("missed", []):
            counts[prompt] = counts.get(prompt, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], int(kv[0].split(":")[0]))))


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    common = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", action="append", default=[],
                   help="NAME=EXTRA ARGS for benchmarks/lora.py (repeatable; default: its defaults)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--deadline", type=float, default=0, help="seconds; 0 = none")
    p.add_argument("--out", type=Path, default=Path("runs/lora_seeds"))
    args = p.parse_args(argv)
    recipes = [(r.split("=", 1)[0], shlex.split(r.split("=", 1)[1]) if "=" in r else [])
               for r in args.recipe] or [("default", [])]
    deadline = time.time() + args.deadline if args.deadline else float("inf")
    # seed-major order: a run cut short by the deadline still leaves every recipe some seeds
    jobs = [(name, extra, seed) for seed in args.seeds for name, extra in recipes]
    with ThreadPoolExecutor(args.workers) as pool:
        rows = [r for r in pool.map(lambda job: run_one(*job, common, args.out, deadline), jobs)
                if r is not None]
    table = summary(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps({"common": common, "recipes": dict(recipes),
        "table": table, "runs": rows}, indent=1))
    for name, t in table.items():
        print(f"{name:>12}: ring {t['ring']:.2f} colour {t['colour']:.2f}, "
              f"{t['passing']}/{t['seeds']} seeds pass  rings {t['rings']}", flush=True)
        never = [q for q, n in t["misses"].items() if n == t["seeds"]]
        if never:
            print(f"{'':>12}  no ring on any seed: {never}", flush=True)
    return table


if __name__ == "__main__":
    main()
