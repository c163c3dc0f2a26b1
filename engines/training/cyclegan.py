"""Unpaired CycleGAN training (Zhu et al. 2017) at small scale: content photos (domain A) to a
style (domain B) from two piles of images, no pairs needed.

Two ResNet generators (A->B, B->A), two 70x70-style PatchGAN discriminators, least-squares
adversarial loss, cycle loss, identity loss, a 50-image pool of past fakes for the
discriminators, Adam at 2e-4 held for the first half of the run and decayed linearly to zero
over the second. A checkpoint (all four networks, optimisers, schedulers, losses) is written
atomically every `checkpoint_every` iterations; `train()` resumes from it when one exists.
The shipped style is the A->B generator alone, see `style_export.export_style`.

    python -m engines.training.cyclegan --style ink --out runs/style_ink   # procedural data
"""
from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from engines.base import CancelToken, Cancelled, ParamError, Progress, ProgressCallback, no_progress
from engines.style.net import GeneratorConfig, InstanceNorm, ResnetGenerator


@dataclass
class TrainConfig:
    size: int = 128  # crop side in pixels
    iterations: int = 1200
    batch_size: int = 1  # CycleGAN's own default; per-image instance norm makes 1 work well
    ngf: int = 32  # generator width (public models: 64)
    n_blocks: int = 3  # residual blocks (public models: 9); 32/3 trains ~1 s/iteration on 1 core
    ndf: int = 32  # discriminator width
    d_layers: int = 3  # PatchGAN depth: 3 gives 70x70 patches
    lr: float = 2e-4
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5  # times lambda_cycle, as in the reference implementation
    pool_size: int = 50
    load_side: int = 256  # images are scaled so their short side is in [size, load_side]
    checkpoint_every: int = 100
    sample_every: int = 100
    threads: int = 1  # torch threads; 1 for background work on a shared CPU
    seed: int = 0

    def check(self) -> None:
        for name, low, high in (("size", 32, 512), ("iterations", 1, 200_000), ("batch_size", 1, 16),
                                ("ngf", 4, 128), ("n_blocks", 1, 12), ("ndf", 4, 128),
                                ("d_layers", 1, 5), ("threads", 1, 64)):
            value = getattr(self, name)
            if not isinstance(value, int) or not low <= value <= high:
                raise ParamError(name, f"`{name}` must be a whole number from {low} to {high}, got {value!r}")
        if self.size % 4:
            raise ParamError("size", f"`size` must be a multiple of 4, got {self.size}")


# ---------------------------------------------------------------- networks
class PatchDiscriminator(nn.Module):
    """PatchGAN: a grid of real/fake scores, one per overlapping patch (CycleGAN's NLayerD)."""

    def __init__(self, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1),
                       nn.InstanceNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def init_weights(module: nn.Module) -> None:
    """N(0, 0.02) convolutions, as in the reference implementation."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, InstanceNorm) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class ImagePool:
    """Past fakes: the discriminator sees half new, half older generator outputs (Shrivastava
    et al.), which damps oscillation."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size, self.rng, self.images = size, rng, []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image[None]
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif self.rng.random() < 0.5:
                k = self.rng.randrange(self.size)
                out.append(self.images[k].clone())
                self.images[k] = image
            else:
                out.append(image)
        return torch.cat(out)


# ---------------------------------------------------------------- data
class CropSampler:
    """Random crops with scale jitter and flips from a list of images of any size."""

    def __init__(self, images: list[Image.Image], size: int, load_side: int, seed: int) -> None:
        if not images:
            raise ValueError("no images given")
        self.size, self.rng = size, np.random.default_rng(seed)
        self.images = []
        for image in images:
            image = image.convert("RGB")
            scale = max(size, min(load_side, min(image.size))) / min(image.size)
            w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
            self.images.append(np.asarray(image.resize((w, h), Image.LANCZOS)))

    def batch(self, n: int) -> torch.Tensor:
        crops = []
        for _ in range(n):
            array = self.images[int(self.rng.integers(len(self.images)))]
            h, w = array.shape[:2]
            side = int(self.rng.integers(self.size, min(h, w, round(self.size * 1.25)) + 1))
            y, x = int(self.rng.integers(0, h - side + 1)), int(self.rng.integers(0, w - side + 1))
            crop = array[y:y + side, x:x + side]
            if self.rng.random() < 0.5:
                crop = crop[:, ::-1]
            crops.append(to_tensor(crop, self.size))
        return torch.stack(crops)


def to_tensor(array: np.ndarray, size: int | None = None) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float() / 127.5 - 1.0
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x[None], size=(size, size), mode="area")[0]
    return x


def to_image(x: torch.Tensor) -> Image.Image:
    array = ((x.detach().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array)


# ---------------------------------------------------------------- training
@dataclass
class TrainState:
    iteration: int = 0
    seconds: float = 0.0
    losses: dict[str, list[float]] = field(default_factory=dict)  # name -> mean per log window


LOSS_NAMES = ("G_gan", "G_cycle", "G_identity", "D_A", "D_B")


class CycleGAN:
    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        g = GeneratorConfig(ngf=config.ngf, n_blocks=config.n_blocks)
        self.G_AB, self.G_BA = ResnetGenerator(g), ResnetGenerator(g)
        self.D_A = PatchDiscriminator(config.ndf, config.d_layers)
        self.D_B = PatchDiscriminator(config.ndf, config.d_layers)
        for net in (self.G_AB, self.G_BA, self.D_A, self.D_B):
            init_weights(net)
        betas = (0.5, 0.999)
        self.opt_G = torch.optim.Adam([*self.G_AB.parameters(), *self.G_BA.parameters()],
                                      lr=config.lr, betas=betas)
        self.opt_D = torch.optim.Adam([*self.D_A.parameters(), *self.D_B.parameters()],
                                      lr=config.lr, betas=betas)
        # constant for the first half, then linearly to zero (the reference "linear" policy)
        half = config.iterations // 2
        decay = lambda it: 1.0 - max(0, it - half) / max(1, config.iterations - half)
        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, decay)
        self.sched_D = torch.optim.lr_scheduler.LambdaLR(self.opt_D, decay)
        rng = random.Random(config.seed)
        self.pool_A, self.pool_B = ImagePool(config.pool_size, rng), ImagePool(config.pool_size, rng)

    def step(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, float]:
        c = self.config
        mse, l1 = F.mse_loss, F.l1_loss
        # 1. generators: fool both discriminators, reconstruct through the cycle, leave
        #    images that are already in the target domain alone (identity)
        for d in (self.D_A, self.D_B):
            d.requires_grad_(False)
        fake_B, fake_A = self.G_AB(real_A), self.G_BA(real_B)
        pred_B, pred_A = self.D_B(fake_B), self.D_A(fake_A)
        gan = mse(pred_B, torch.ones_like(pred_B)) + mse(pred_A, torch.ones_like(pred_A))
        cycle = l1(self.G_BA(fake_B), real_A) + l1(self.G_AB(fake_A), real_B)
        identity = l1(self.G_AB(real_B), real_B) + l1(self.G_BA(real_A), real_A)
        loss_G = gan + c.lambda_cycle * cycle + c.lambda_cycle * c.lambda_identity * identity
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        self.opt_G.step()

        # 2. discriminators: real -> 1, pooled fakes -> 0, halved as in the paper
        for d in (self.D_A, self.D_B):
            d.requires_grad_(True)
        losses = {}
        for name, d, real, pool, fake in (("D_A", self.D_A, real_A, self.pool_A, fake_A),
                                          ("D_B", self.D_B, real_B, self.pool_B, fake_B)):
            pred_real, pred_fake = d(real), d(pool.query(fake))
            losses[name] = 0.5 * (mse(pred_real, torch.ones_like(pred_real))
                                  + mse(pred_fake, torch.zeros_like(pred_fake)))
        self.opt_D.zero_grad(set_to_none=True)
        (losses["D_A"] + losses["D_B"]).backward()
        self.opt_D.step()
        self.sched_G.step()
        self.sched_D.step()
        return {"G_gan": gan.item(), "G_cycle": cycle.item(), "G_identity": identity.item(),
                "D_A": losses["D_A"].item(), "D_B": losses["D_B"].item()}

    # --- checkpoints: tensors, numbers and lists only, so weights_only=True can read them
    def state_dict(self, state: TrainState) -> dict:
        return {"config": asdict(self.config), "iteration": state.iteration,
                "seconds": state.seconds, "losses": state.losses,
                **{name: getattr(self, name).state_dict() for name in
                   ("G_AB", "G_BA", "D_A", "D_B", "opt_G", "opt_D", "sched_G", "sched_D")}}

    def load_state_dict(self, checkpoint: dict) -> TrainState:
        for name in ("G_AB", "G_BA", "D_A", "D_B", "opt_G", "opt_D", "sched_G", "sched_D"):
            getattr(self, name).load_state_dict(checkpoint[name])
        return TrainState(checkpoint["iteration"], checkpoint["seconds"], checkpoint["losses"])


def save_checkpoint(model: CycleGAN, state: TrainState, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(state), tmp)
    tmp.replace(path)  # atomic: a crash mid-write leaves the previous checkpoint intact


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def train(config: TrainConfig, style_images: list[Image.Image], content_images: list[Image.Image],
          out_dir: Path, on_progress: ProgressCallback = no_progress,
          cancel: CancelToken | None = None, max_seconds: float | None = None,
          log: Callable[[str], None] | None = None,
          on_losses: Callable[[int, dict[str, float]], None] | None = None,
          ) -> tuple[CycleGAN, TrainState]:
    """Train (or resume) in out_dir: checkpoint.pt, samples/*.png, losses.json.

    Raises Cancelled after writing a checkpoint when `cancel` is set, so the run can resume.
    `max_seconds` stops early (with a checkpoint) for time-boxed background runs."""
    config.check()
    cancel = cancel or CancelToken()
    out_dir = Path(out_dir)
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    model = CycleGAN(config)
    state = TrainState(losses={name: [] for name in LOSS_NAMES})
    checkpoint_path = out_dir / "checkpoint.pt"
    if checkpoint_path.exists():
        state = model.load_state_dict(load_checkpoint(checkpoint_path))
        if log:
            log(f"resumed at iteration {state.iteration}")
    # data order depends on the resume point so a resumed run does not replay the same crops
    content = CropSampler(content_images, config.size, config.load_side, config.seed + state.iteration)
    style = CropSampler(style_images, config.size, config.load_side, config.seed + 7 + state.iteration)
    # fixed preview crops from four content images spread over the list (photos and scenes)
    picks = [content_images[int(i)] for i in np.linspace(0, len(content_images) - 1, 4)]
    fixed = torch.cat([CropSampler([image], config.size, config.load_side, 12345).batch(1)
                       for image in picks])

    window: dict[str, list[float]] = {name: [] for name in LOSS_NAMES}
    started, start_seconds = time.perf_counter(), state.seconds

    def checkpoint() -> None:
        state.seconds = start_seconds + time.perf_counter() - started
        save_checkpoint(model, state, checkpoint_path)
        (out_dir / "losses.json").write_text(json.dumps(
            {"iteration": state.iteration, "seconds": round(state.seconds, 1),
             "log_every": config.sample_every, "losses": state.losses}))

    while state.iteration < config.iterations:
        if cancel.cancelled:
            checkpoint()
            raise Cancelled()
        losses = model.step(content.batch(config.batch_size), style.batch(config.batch_size))
        state.iteration += 1
        for name, value in losses.items():
            window[name].append(value)
        if on_losses:
            on_losses(state.iteration, losses)
        preview = None
        if state.iteration % config.sample_every == 0 or state.iteration == config.iterations:
            for name in LOSS_NAMES:
                state.losses[name].append(round(float(np.mean(window[name])), 4))
                window[name] = []
            preview = sample_grid(model.G_AB, fixed)
            preview.save(out_dir / "samples" / f"{state.iteration:06d}.png")
            if log:
                elapsed = start_seconds + time.perf_counter() - started
                log(f"it {state.iteration} {elapsed:.0f}s " + " ".join(
                    f"{k}={v[-1]:.3f}" for k, v in state.losses.items()))
        if state.iteration % config.checkpoint_every == 0 or state.iteration == config.iterations:
            checkpoint()
        on_progress(Progress(state.iteration, config.iterations,
                             " ".join(f"{k} {v:.3f}" for k, v in losses.items()), preview))
        if max_seconds is not None and time.perf_counter() - started > max_seconds:
            checkpoint()
            break
    return model, state


@torch.no_grad()
def sample_grid(generator: nn.Module, content: torch.Tensor) -> Image.Image:
    """Top row the fixed content crops, bottom row the generator's outputs."""
    generator.eval()
    fake = generator(content)
    generator.train()
    size = content.shape[-1]
    grid = Image.new("RGB", (size * len(content), size * 2))
    for i in range(len(content)):
        grid.paste(to_image(content[i]), (i * size, 0))
        grid.paste(to_image(fake[i]), (i * size, size))
    return grid


# ---------------------------------------------------------------- export
# ---------------------------------------------------------------- command line
def main() -> None:
    from engines.training import style_data

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--style", required=True, choices=style_data.STYLES)
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, samples)")
    parser.add_argument("--export", type=Path, help="style folder to write when done")
    parser.add_argument("--iterations", type=int, default=TrainConfig.iterations)
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=TrainConfig.size, help="crop side (px)")
    parser.add_argument("--lambda-cycle", type=float, default=TrainConfig.lambda_cycle)
    parser.add_argument("--lambda-identity", type=float, default=TrainConfig.lambda_identity)
    parser.add_argument("--style-images", type=int, default=48,
                        help="procedural renderings in the style domain")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    args = parser.parse_args()

    config = TrainConfig(iterations=args.iterations, threads=args.threads, size=args.size,
                         lambda_cycle=args.lambda_cycle, lambda_identity=args.lambda_identity,
                         seed=args.seed)
    styles = style_data.style_images(args.style, n=args.style_images)
    contents = style_data.content_images()
    log_file = (args.out / "train.log")
    args.out.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        with log_file.open("a") as f:
            f.write(time.strftime("%H:%M:%S ") + line + "\n")

    log(f"style {args.style}: {len(styles)} style, {len(contents)} content images; {config}")
    model, state = train(config, styles, contents, args.out, log=log,
                         max_seconds=None if args.max_minutes is None else args.max_minutes * 60)
    log(f"stopped at iteration {state.iteration} after {state.seconds:.0f}s")
    if args.export:
        from engines.training.style_export import export_style

        export_style(model, state, args.export, args.style.capitalize(),
                     style_data.DESCRIPTIONS[args.style], styles, contents,
                     extra={"data": "engines/training/style_data.py (procedural, offline)"})
        log(f"exported to {args.export}")


if __name__ == "__main__":
    main()
