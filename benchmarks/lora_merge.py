"""The LoRA benchmark for merged runs (the train_lora job's `ensemble`), from runs made already.

The studio's job trains `ensemble` runs with seeds s, s + 1, ... and merges them
(engines/training/lora_ensemble.py). Each of those runs is exactly a benchmarks/lora.py run with
that seed (the same settings, a fresh model, every draw seeded), so the runs that
benchmarks/lora_seeds.py made can be merged with the job's own `merge`, K consecutive seeds at a
time, and judged like a run (held-out prompts, ring detector, judge) without training again.
`benchmarks/lora.py --ensemble K --seed s` trains one such group the job's way, to check that
both give the same figures (tests/test_lora_merge.py does on tiny runs).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/lora_merge.py runs/lora_seeds/BQ \\
        --seeds 0 1 2 3 4 5 6 7 --size 4 --gain 1.2
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

import torch  # noqa: E402

from benchmarks.lora import generate_batched  # noqa: E402
from benchmarks.lora_scenes import TRIGGER, held_out_prompts, judged, run_split  # noqa: E402
from benchmarks.lora_seeds import COLOUR, RING  # noqa: E402


def groups(seeds: list[int], size: int) -> list[list[int]]:
    """Consecutive groups of `size` (a short last group is left out: it would be another size)."""
    return [seeds[i:i + size] for i in range(0, len(seeds) - size + 1, size)]


def merge_runs(folders: list[Path], gain: float, out: Path) -> Path:
    """The runs' LoRAs merged as the job merges them, and their trigger vectors averaged, into
    out/Lora and out/embeddings (a run folder benchmarks/lora.py's evaluation reads)."""
    from safetensors.torch import load_file, save_file

    from engines.training.lora_ensemble import average_vectors, merge

    state = merge([load_file(str(f / "Lora" / f"{TRIGGER}.safetensors")) for f in folders], gain)
    (out / "Lora").mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "Lora" / f"{TRIGGER}.safetensors"))
    embeddings = [f / "embeddings" / f"{TRIGGER}.safetensors" for f in folders]
    if all(e.exists() for e in embeddings):
        mean = average_vectors([load_file(str(e))["emb_params"] for e in embeddings])
        (out / "embeddings").mkdir(parents=True, exist_ok=True)
        save_file({"emb_params": mean.contiguous()}, str(out / "embeddings" / f"{TRIGGER}.safetensors"))
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prefix", type=Path, help="runs PREFIX-s<seed> (benchmarks/lora_seeds.py's NAME)")
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--size", type=int, default=4, help="runs per merged LoRA (the job's `ensemble`)")
    p.add_argument("--gain", type=float, default=1.2, help="their total weight (`ensemble_gain`)")
    p.add_argument("--n", type=int, default=48, help="held-out prompts")
    p.add_argument("--sample-steps", type=int, default=20, help="as benchmarks/lora.py's")
    p.add_argument("--out", type=Path, help="the table as JSON (default: PREFIX-merged-<size>.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from engines.training.sd_judge import load_judge

    def folder(seed: int) -> Path:
        return args.prefix.with_name(f"{args.prefix.name}-s{seed}")

    # the runs' own held-out prompts (benchmarks/lora.py --split)
    splits = {run_split(folder(s)) for s in args.seeds}
    if len(splits) != 1:
        raise SystemExit(f"the runs were trained on different splits: {sorted(splits)}")
    split = splits.pop()
    judge, (prompts, scenes), rows = load_judge(), held_out_prompts(args.n, split=split), []
    for group in groups(args.seeds, args.size):
        folders = [folder(s) for s in group]
        members = [json.loads((f / "report.json").read_text())["held_out"]["lora"] for f in folders]
        with tempfile.TemporaryDirectory() as tmp:
            run = merge_runs(folders, args.gain, Path(tmp))
            images = generate_batched(prompts, run / "Lora" / f"{TRIGGER}.safetensors", args.sample_steps, 2.0,
                                      run / "embeddings" / f"{TRIGGER}.safetensors")
        row = {"seeds": group, **judged(images, scenes, judge),
               "members": [[round(m["concept"], 2), round(m["colour"], 2)] for m in members]}
        row["passes"] = row["ring"] >= RING and row["colour"] >= COLOUR
        rows.append(row)
        print(f"seeds {group}: ring {row['ring']:.2f} colour {row['colour']:.2f} "
              f"(runs: {row['members']})", flush=True)
    table = {"size": args.size, "gain": args.gain, "n": args.n, "split": split, "rows": rows,
             "passing": sum(r["passes"] for r in rows), "merged": len(rows),
             "ring": round(sum(r["ring"] for r in rows) / max(1, len(rows)), 3),
             "colour": round(sum(r["colour"] for r in rows) / max(1, len(rows)), 3)}
    print(f"{table['passing']}/{table['merged']} merged LoRAs pass; ring {table['ring']:.2f} "
          f"colour {table['colour']:.2f}", flush=True)
    out = args.out or args.prefix.with_name(f"{args.prefix.name}-merged-{args.size}.json")
    out.write_text(json.dumps(table, indent=1))
    return table


if __name__ == "__main__":
    main()
