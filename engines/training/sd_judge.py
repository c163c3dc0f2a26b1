"""The judge: a small CNN that reads shape, colour, background, position and size off an image.

It is the measuring instrument of the prompt-adherence benchmark (GenEval-style: one attribute
classifier, per-attribute accuracy), and selects UNet checkpoints during training, because the
diffusion loss does not show whether prompts are followed. It is trained on every combination
(held-out ones too: it measures, it does not generate) with blur, noise and colour augmentation
so that soft, noisy generated images are still read fairly.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from engines.training.optim import update
from .sd_data import ATTRIBUTES, CHOICES, make_dataset

# The judge trained by `train_judge` (seed 0, 1,500 steps) ships here, so the benchmark and the
# tests measure with the same instrument on a fresh clone without 10-20 minutes of training.
SHIPPED_JUDGE = Path(__file__).resolve().parents[2] / "assets" / "sd-tiny-judge" / "judge.safetensors"


class Judge(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        layers, c_in = [], 3
        for c_out in (w, 2 * w, 4 * w, 4 * w):  # 64 -> 32 -> 16 -> 8 -> 4
            layers += [nn.Conv2d(c_in, c_out, 3, 2, 1), nn.GroupNorm(8, c_out), nn.SiLU(),
                       nn.Conv2d(c_out, c_out, 3, 1, 1), nn.SiLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        # Flatten, not pool: position must survive to the heads.
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 16, 256), nn.SiLU())
        self.heads = nn.ModuleDict({a: nn.Linear(256, len(CHOICES[a])) for a in ATTRIBUTES})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: N x 3 x 64 x 64 in [-1, 1]; returns logits per attribute."""
        h = self.trunk(self.features(x))
        return {a: head(h) for a, head in self.heads.items()}


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = 3
    k = torch.exp(-(torch.arange(-r, r + 1).float() ** 2) / (2 * sigma**2))
    k = (k / k.sum()).to(x)
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Degrade like a small diffusion model does: blur, low resolution, noise, colour drift."""
    n = x.shape[0]
    out = []
    for i in range(n):
        xi = x[i : i + 1]
        u = torch.rand(4, generator=g)
        if u[0] < 0.5:
            xi = _blur(xi, 0.3 + 1.5 * float(torch.rand(1, generator=g)))
        if u[1] < 0.25:  # through 16 or 32 px and back, like a VAE's bottleneck
            s = 16 if u[1] < 0.1 else 32
            xi = F.interpolate(F.interpolate(xi, size=s, mode="area"), size=64, mode="bilinear")
        if u[2] < 0.5:
            xi = xi + 0.08 * float(torch.rand(1, generator=g)) * torch.randn(xi.shape, generator=g)
        if u[3] < 0.5:  # per-channel gain and offset
            xi = xi * (1 + 0.1 * torch.randn(1, 3, 1, 1, generator=g)) + 0.08 * torch.randn(1, 3, 1, 1, generator=g)
        out.append(xi)
    return torch.cat(out).clamp(-1, 1)


def train_judge(path: Path, steps: int = 1500, batch: int = 64, seed: int = 0, log=print) -> Judge:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    images, scenes = make_dataset(16000, seed=991, split="all")
    x_all = to_tensor(images)
    y_all = {a: torch.tensor([s.labels()[a] for s in scenes]) for a in ATTRIBUTES}
    model = Judge()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(len(x_all), (batch,), generator=g)
        logits = model(augment(x_all[idx], g))
        loss = sum(F.cross_entropy(logits[a], y_all[a][idx]) for a in ATTRIBUTES)
        update(opt, sched, loss)
        if step % 100 == 0 or step == steps - 1:
            log(f"judge step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s")
    save_judge(model, path)
    return model.eval()


def save_judge(model: Judge, path: Path) -> None:
    """safetensors for a `.safetensors` path (the shipped judge), torch's format otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        torch.save(model.state_dict(), path)


def load_judge(path: Path = SHIPPED_JUDGE, train_if_missing: bool = True, log=print) -> Judge:
    """The judge at `path` (default: the shipped one); trains it (10-20 min on 1 thread) when
    absent and `train_if_missing`."""
    path = Path(path)
    if not path.exists():
        if not train_if_missing:
            raise FileNotFoundError(f"no judge at {path}")
        return train_judge(path, log=log)
    model = Judge()
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(path)))
    else:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


@torch.no_grad()
def judge_logits(judge: Judge, images: list) -> dict[str, torch.Tensor]:
    """PIL images (resized to 64 px) -> the judge's logits per attribute."""
    arr = np.stack([np.asarray(im.convert("RGB").resize((64, 64))) for im in images])
    return judge(to_tensor(arr))


def predict(judge: Judge, images: list) -> dict[str, np.ndarray]:
    """PIL images (resized to 64 px) -> predicted class index per attribute."""
    logits = judge_logits(judge, images)
    return {a: logits[a].argmax(1).numpy() for a in ATTRIBUTES}


@torch.no_grad()
def accuracy(judge: Judge, images: list, scenes: list) -> dict[str, float]:
    """Per-attribute accuracy plus "all4": shape, colour, background and position all right."""
    pred = predict(judge, images)
    hits = {a: np.array([pred[a][i] == s.labels()[a] for i, s in enumerate(scenes)]) for a in ATTRIBUTES}
    out = {a: float(h.mean()) for a, h in hits.items()}
    out["all4"] = float((hits["shape"] & hits["colour"] & hits["background"] & hits["position"]).mean())
    return out
