"""Procedural captioned scenes for the tiny Stable Diffusion: one shape on a plain background.

Every image is drawn from five attributes (shape, colour, background, position, size) and its
caption names them, so a judge can check a generated image against its prompt. A fixed, seeded
set of (shape, colour, background) triples never appears in training: scores on those prompts
measure whether the model composes attributes it has only seen apart.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64  # image side in pixels
_SUPER = 4  # draw at 4x and downsample, for anti-aliased edges like a real picture

SHAPES = ("circle", "square", "triangle", "star")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (240, 215, 40), "purple": (140, 60, 190), "orange": (245, 140, 30),
    "white": (245, 245, 245), "black": (20, 20, 20),
}
BACKGROUNDS = {
    "white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128),
    "blue": (40, 80, 220), "green": (40, 170, 60), "pink": (240, 150, 190),
}
# Caption phrase -> object centre in pixels (before jitter).
POSITIONS = {
    "at the top left": (20, 20), "at the top right": (44, 20), "in the centre": (32, 32),
    "at the bottom left": (20, 44), "at the bottom right": (44, 44),
}
SIZES = {"small": 9.5, "large": 14.5}  # half-width of the shape in pixels
ATTRIBUTES = ("shape", "colour", "background", "position", "size")
CHOICES = {
    "shape": SHAPES, "colour": tuple(COLOURS), "background": tuple(BACKGROUNDS),
    "position": tuple(POSITIONS), "size": tuple(SIZES),
}
HELD_OUT_COUNT = 24
SPLIT_SEED = 1234


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    position: str
    size: str

    def caption(self, template: int = 0) -> str:
        """Template 0 is the canonical prompt used for evaluation; 1 and 2 add variety."""
        s = self
        if template == 1:
            return f"a {s.colour} {s.shape} {s.position}, {s.background} background"
        if template == 2:
            return f"{s.background} background with a {s.size} {s.colour} {s.shape} {s.position}"
        return f"a {s.size} {s.colour} {s.shape} {s.position} on a {s.background} background"

    def labels(self) -> dict[str, int]:
        return {a: CHOICES[a].index(getattr(self, a)) for a in ATTRIBUTES}


def all_triples() -> list[tuple[str, str, str]]:
    """Every (shape, colour, background) with the object visible (colour != background)."""
    return [t for t in itertools.product(SHAPES, COLOURS, BACKGROUNDS) if t[1] != t[2]]


def held_out_triples() -> set[tuple[str, str, str]]:
    """The fixed combinations kept out of all training (text encoder, VAE and UNet)."""
    triples = all_triples()
    rng = np.random.default_rng(SPLIT_SEED)
    picked = rng.choice(len(triples), size=HELD_OUT_COUNT, replace=False)
    return {triples[i] for i in sorted(picked)}


def random_scene(rng: np.random.Generator, split: str = "train") -> Scene:
    """split: "train" (never a held-out triple), "held_out" (only those) or "all"."""
    held = held_out_triples()
    if split == "train":
        pool = [t for t in all_triples() if t not in held]
    elif split == "held_out":
        pool = sorted(held)
    elif split == "all":
        pool = all_triples()
    else:
        raise ValueError(f"split must be 'train', 'held_out' or 'all', not {split!r}")
    shape, colour, bg = pool[rng.integers(len(pool))]
    position = CHOICES["position"][rng.integers(len(POSITIONS))]
    size = CHOICES["size"][rng.integers(len(SIZES))]
    return Scene(shape, colour, bg, position, size)


def _shape_points(shape: str, cx: float, cy: float, h: float) -> list[tuple[float, float]]:
    if shape == "square":
        a = 0.88 * h
        return [(cx - a, cy - a), (cx + a, cy - a), (cx + a, cy + a), (cx - a, cy + a)]
    if shape == "triangle":  # equilateral, pointing up, centred on its bounding box
        r = 1.1 * h
        return [(cx, cy - r), (cx + r * 0.98, cy + r * 0.8), (cx - r * 0.98, cy + r * 0.8)]
    if shape == "star":  # five points, inner radius 45% of outer
        pts = []
        for k in range(10):
            r = 1.2 * h if k % 2 == 0 else 0.54 * h
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + r * math.cos(ang), cy + r * math.sin(ang) + 0.1 * h))
        return pts
    raise ValueError(f"no polygon for shape {shape!r}")


def render(scene: Scene, rng: np.random.Generator | None = None) -> Image.Image:
    """Draws the scene; rng adds small jitter of position, size and colour."""
    rng = rng or np.random.default_rng(0)
    jitter = lambda c: tuple(int(np.clip(v + rng.integers(-10, 11), 0, 255)) for v in c)
    s = _SUPER
    img = Image.new("RGB", (SIZE * s, SIZE * s), jitter(BACKGROUNDS[scene.background]))
    draw = ImageDraw.Draw(img)
    cx, cy = POSITIONS[scene.position]
    cx, cy = (cx + rng.uniform(-3, 3)) * s, (cy + rng.uniform(-3, 3)) * s
    h = SIZES[scene.size] * rng.uniform(0.9, 1.1) * s
    fill = jitter(COLOURS[scene.colour])
    if scene.shape == "circle":
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)
    else:
        draw.polygon(_shape_points(scene.shape, cx, cy, h), fill=fill)
    return img.resize((SIZE, SIZE), Image.Resampling.BOX)


def make_dataset(n: int, seed: int, split: str = "train") -> tuple[np.ndarray, list[Scene]]:
    """n images (uint8, N x 64 x 64 x 3) and their scenes; image i depends only on (seed, i)."""
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    scenes = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        scene = random_scene(rng, split)
        images[i] = np.asarray(render(scene, rng))
        scenes.append(scene)
    return images, scenes


def eval_scenes(n: int, split: str, seed: int = 7) -> list[Scene]:
    """The fixed prompts the benchmark scores (seen: training triples; held_out: the rest)."""
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    return [random_scene(rng, split) for _ in range(n)]


def all_captions() -> list[str]:
    """Every caption the generator can write, for the tokenizer and the text-embedding cache."""
    out = []
    for shape, colour, bg in all_triples():
        for pos, size in itertools.product(POSITIONS, SIZES):
            sc = Scene(shape, colour, bg, pos, size)
            out.extend(sc.caption(t) for t in range(3))
    return sorted(set(out))


def cached_dataset(path, n: int, seed: int) -> tuple[np.ndarray, list[Scene]]:
    """make_dataset(n, seed, "train"), cached as .npz (runs/ is git-ignored)."""
    from pathlib import Path

    path = Path(path)
    if path.exists():
        z = np.load(path)
        if len(z["images"]) == n:
            scenes = [Scene(*[CHOICES[a][j] for a, j in zip(ATTRIBUTES, row)]) for row in z["labels"]]
            return z["images"], scenes
    images, scenes = make_dataset(n, seed, "train")
    labels = np.array([[s.labels()[a] for a in ATTRIBUTES] for s in scenes], dtype=np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, labels=labels)
    return images, scenes
