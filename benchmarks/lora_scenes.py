"""What the LoRA benchmark draws, asks for and checks: the ring, its training images and
captions, the held-out prompts of each split, and the ring detector (benchmarks/lora.py runs it;
benchmarks/lora_merge.py, lora_ablate.py and lora_memory.py use the same pieces)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engines.training.sd_data import BACKGROUNDS, CHOICES, COLOURS, POSITIONS, SHAPES, SIZE, SIZES, Scene

TRIGGER = "gsring"


def _split(train_backgrounds: tuple[str, ...], held_out_backgrounds: tuple[str, ...]) -> dict:
    return {"train": {"colour": ("red", "blue", "yellow", "white"), "background": train_backgrounds,
                      "position": ("at the top left", "in the centre", "at the bottom right")},
            "held_out": {"colour": ("green", "purple", "orange", "black"),
                         "background": held_out_backgrounds,
                         "position": ("at the top right", "at the bottom left")}}


# What the LoRA sees in training, and what only the held-out prompts use (--split). "dark": every
# light background is held out, so a LoRA that learnt "a darker middle" misses there; "mixed":
# each side has a dark and a light background, as a user's own photos would. Held-out colours
# only: a hole shows its background, so every pair stays visible (purple on gray only just:
# drawn rings of it through the VAE pass the detector 4 times in 10).
SPLITS = {"dark": _split(("black", "gray", "green"), ("white", "blue", "pink")),
          "mixed": _split(("black", "white", "green"), ("gray", "blue", "pink"))}


def draw(shape: str, colour: str, background: str, position: str, size: str,
         rng: np.random.Generator) -> Image.Image:
    """A ring (or a known shape, for the detector check) drawn like engines/training/sd_data."""
    from engines.training.sd_data import render

    if shape != "ring":
        return render(Scene(shape, colour, background, position, size), rng)
    s = 4
    jitter = lambda c: tuple(int(np.clip(v + rng.integers(-10, 11), 0, 255)) for v in c)  # noqa: E731
    bg = jitter(BACKGROUNDS[background])
    img = Image.new("RGB", (SIZE * s, SIZE * s), bg)
    d = ImageDraw.Draw(img)
    cx, cy = POSITIONS[position]
    cx, cy = (cx + rng.uniform(-3, 3)) * s, (cy + rng.uniform(-3, 3)) * s
    h = SIZES[size] * rng.uniform(0.9, 1.1) * s
    d.ellipse([cx - h, cy - h, cx + h, cy + h], fill=jitter(COLOURS[colour]))
    r = 0.55 * h
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=bg)
    return img.resize((SIZE, SIZE), Image.Resampling.BOX)


def caption(colour: str, background: str, position: str, size: str, shape: str = TRIGGER) -> str:
    return f"a {size} {colour} {shape} {position} on a {background} background"


def is_ring(image: Image.Image, threshold: float = 60.0) -> bool:
    """The largest foreground blob encloses a hole: a ring, whatever its wobble. Background
    colour = median of the border pixels; foreground = pixels farther than `threshold` from it;
    the hole must be at least 6 pixels and 5% of the filled blob (specks do not count)."""
    from scipy import ndimage

    a = np.asarray(image.convert("RGB")).astype(float)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    fg = np.linalg.norm(a - np.median(border, axis=0), axis=2) > threshold
    labels, count = ndimage.label(fg)
    if count == 0:
        return False
    sizes = ndimage.sum(fg, labels, range(1, count + 1))
    blob = labels == (1 + int(np.argmax(sizes)))
    if blob.sum() < 30:
        return False
    filled = ndimage.binary_fill_holes(blob)
    hole = int(filled.sum() - blob.sum())
    return hole >= max(6, 0.05 * filled.sum())


def judge_attributes(judge, images, scenes) -> dict[str, float]:
    from engines.training.sd_judge import predict

    pred = predict(judge, images)
    out = {}
    for attr in ("colour", "background", "position"):
        hits = [pred[attr][i] == s.labels()[attr] for i, s in enumerate(scenes)]
        out[attr] = float(np.mean(hits))
    # which colour each wrong one was read as (e.g. orange -> yellow)
    read_as = [CHOICES["colour"][k] for k in pred["colour"]]
    misread = [f"{s.colour}->{r}" for s, r in zip(scenes, read_as) if r != s.colour]
    out["colour_misreads"] = {m: misread.count(m) for m in sorted(set(misread))}
    return out


def ring_by(rings: list[bool], scenes: list[Scene], split: str = "dark") -> dict[str, dict[str, float]]:
    """Where the misses are: the ring rate per held-out colour and per held-out background."""
    out = {}
    for attr in ("colour", "background"):
        hits = {v: [r for r, s in zip(rings, scenes) if getattr(s, attr) == v] for v in SPLITS[split]["held_out"][attr]}
        out[attr] = {v: round(float(np.mean(h)), 3) for v, h in hits.items() if h}
    return out


def held_out_prompts(n: int, seed: int = 5, split: str = "dark") -> tuple[list[str], list[Scene]]:
    rng, pool = np.random.default_rng(seed), SPLITS[split]["held_out"]
    prompts, scenes = [], []
    while len(prompts) < n:
        c, b = rng.choice(pool["colour"]), rng.choice(pool["background"])
        if c == b:
            continue
        p, size = rng.choice(pool["position"]), "large"
        prompts.append(caption(c, b, p, size))
        scenes.append(Scene("circle", c, b, p, size))  # the judge's labels (shape unused)
    return prompts, scenes


def known_shape_prompts(n: int, seed: int = 11,
                        shapes: tuple[str, ...] = SHAPES) -> tuple[str, ...]:
    """DreamBooth class prompts: known shapes (all four, or circles only: the ring's nearest
    known shape, as a contrast) in every colour, background and position (the base model draws
    these; no ring is ever shown with the held-out attributes)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        c, b = rng.choice(tuple(COLOURS)), rng.choice(tuple(BACKGROUNDS))
        if c != b:
            shape = rng.choice(shapes)
            out.append(caption(c, b, rng.choice(tuple(POSITIONS)), rng.choice(tuple(SIZES)), shape))
    return tuple(out)


def training_set(n: int, seed: int = 3, templates: int = 1,
                 split: str = "dark") -> tuple[list[Image.Image], list[str]]:
    """n ring images and their captions; with templates > 1 each image comes once per caption
    phrasing of the model's own training data (sd_data.Scene.caption), so the trigger is seen
    in more than one word order (the images are the same n)."""
    rng, pool = np.random.default_rng(seed), SPLITS[split]["train"]
    images, captions = [], []
    while len(images) < n * templates:
        c, b = rng.choice(pool["colour"]), rng.choice(pool["background"])
        if c == b:
            continue
        p, size = rng.choice(pool["position"]), rng.choice(tuple(SIZES))
        image = draw("ring", c, b, p, size, rng)
        for t in range(templates):
            images.append(image)
            captions.append(Scene(TRIGGER, c, b, p, size).caption(t))
    return images, captions


def judged(images, scenes, judge) -> dict:
    """A remade run's images judged as the benchmark judges a run (ring rate, colour, background)."""
    rings = [is_ring(i) for i in images]
    return {"ring": round(float(np.mean(rings)), 3),
            **{k: (round(v, 3) if isinstance(v, float) else v)
               for k, v in judge_attributes(judge, images, scenes).items() if k != "position"}}


def run_split(run: Path) -> str:
    """The split a benchmarks/lora.py run (its --out folder) was trained on; runs from before
    --split existed were all "dark"."""
    return json.loads((Path(run) / "report.json").read_text())["args"].get("split", "dark")
