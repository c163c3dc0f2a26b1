"""Load a random-weight single-file checkpoint of a family through the engine, offline.

tests/test_single_file.py does this for SD 1.x and 2.x on every run; SDXL needs ~20 GB of RAM
(19.6 GB peak, 97 s on the 2-core machine), so it is checked with this script instead:

    OMP_WAIT_POLICY=PASSIVE python scripts/check_single_file.py xl_base

It builds the family's parts from assets/sd-configs with random fp16 weights, writes them as one
`.safetensors` file in the A1111/SGM key layout, loads that file through DiffusionEngine with
the hub switched off, checks every UNet, VAE and text-encoder weight arrived unchanged, and
generates one 64x64 image in 2 steps.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["HF_HUB_OFFLINE"] = "1"
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]


def fingerprint(tensor) -> tuple:
    """Shape-free identity of a tensor's values as fp16: sum, and the first and last values."""
    flat = tensor.detach().half().float().flatten()
    return (round(float(flat.double().sum()), 2), flat[:8].tolist(), flat[-8:].tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("family", choices=["v1", "v2", "xl_base"])
    args = parser.parse_args()

    import torch
    from safetensors.torch import save_file

    from engines.diffusion.engine import DiffusionEngine
    from engines.diffusion.params import Txt2ImgParams
    from engines.diffusion.single_file import checkpoint_family
    from ldm_checkpoint import family_parts, ldm_state_dict

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        # 1. Random weights, written as one single-file checkpoint.
        torch.manual_seed(0)
        parts = family_parts(args.family, device="cpu", dtype=torch.float16)
        names = [n for n in ("unet", "vae", "text_encoder", "text_encoder_2") if hasattr(parts, n)]
        # fingerprints, not copies: a second copy of SDXL would not fit in RAM
        expected = {n: {k: fingerprint(v) for k, v in getattr(parts, n).state_dict().items()}
                    for n in names}
        checkpoint = Path(scratch) / f"random-{args.family}.safetensors"
        save_file(ldm_state_dict(parts, args.family), str(checkpoint))
        del parts
        print(f"wrote {checkpoint.stat().st_size / 2**30:.2f} GiB in "
              f"{time.perf_counter() - started:.0f} s")

        # 2. Load it through the engine, offline, and compare every weight.
        assert checkpoint_family(checkpoint) == args.family
        engine = DiffusionEngine(str(checkpoint), device="cpu")
        engine.load()
        pipe = engine._pipes["txt2img"]
        for name in names:
            loaded = getattr(pipe, name).state_dict()
            want = {k.removeprefix("text_model."): v for k, v in expected[name].items()
                    if not k.endswith("position_ids")}
            got = {k.removeprefix("text_model."): v for k, v in loaded.items()
                   if not k.endswith("position_ids")}
            assert set(got) == set(want), f"{name}: {sorted(set(got) ^ set(want))[:5]}"
            for key, value in want.items():
                assert fingerprint(got[key]) == value, (name, key)
            print(f"{name}: {len(want)} tensors match")
        print(f"loaded in {time.perf_counter() - started:.0f} s (total so far)")

        # 3. Generate.
        result = engine.generate(Txt2ImgParams(prompt="a red circle", steps=2, width=64,
                                               height=64, seed=1, guidance_scale=3.0))
        assert result.images[0].size == (64, 64)
        print(f"generated {result.images[0].size} with {result.info['model']} "
              f"(hash {result.info['model_hash']}) in {time.perf_counter() - started:.0f} s total")


if __name__ == "__main__":
    main()
