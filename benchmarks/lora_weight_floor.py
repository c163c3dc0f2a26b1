"""benchmarks/lora.py with a floor under min-SNR-γ's per-sample weight (runs AZ, BA in
docs/diffusion.md): weight = floor + (1 - floor) x min-SNR's, so the noisiest timesteps (where
colour is decided) keep some weight while the ring still gains from the middle ones. Not a
trainer option yet; this wraps engines/training/lora_loss.snr_weights for the benchmark only.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/lora_weight_floor.py --floor 0.25 \\
        --batched-eval --images 20 --snr-gamma 5 --seed 0 --out /tmp/ba --grid /tmp/ba.png
"""
from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]


def main() -> None:
    import engines.training.lora_loss as lora_loss

    args = sys.argv[1:]
    if "--floor" not in args:
        raise SystemExit("--floor F is required (0 = plain min-SNR-γ, 1 = no weighting)")
    i = args.index("--floor")
    floor = float(args[i + 1])
    if not 0 <= floor <= 1:
        raise SystemExit(f"--floor must be within [0, 1], not {floor}")
    del args[i : i + 2]
    plain = lora_loss.snr_weights
    lora_loss.snr_weights = lambda scheduler, t, gamma, v: floor + (1 - floor) * plain(scheduler, t, gamma, v)
    sys.argv = [str(REPO / "benchmarks" / "lora.py"), *args]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
