"""Data for the embedded ControlNet: procedural scenes, their canny maps, and captions that
sometimes disagree with the map.

The control map is the studio's own "canny" preprocessor (engines/diffusion/control_maps.py,
A1111's default thresholds 100 / 200), so the model sees at training time exactly what a user's
canny unit gives it. The map carries the shape and where it is; colour and background are not in
it (a colour edge looks like any other), so they must come from the prompt.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from engines.diffusion.control_maps import canny

from .sd_data import POSITIONS, SHAPES, Scene, make_dataset, random_scene, render

# How a training caption relates to its control map (probabilities, summing to 1). The paper
# drops 50% of prompts so the ControlNet learns to read the map alone; here part of that half
# is a caption that names ANOTHER shape and position, so the map wins over a contradicting
# prompt, not only over a missing one. Colour and background always stay (the map lacks them).
CAPTION_MODES = {"faithful": 0.2, "conflict": 0.45, "no_layout": 0.25, "empty": 0.1}


def control_map(image: Image.Image) -> Image.Image:
    """The control image a "canny" unit makes from a picture (white edges on black, RGB)."""
    return canny(image, 100, 200)


def conflicting(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same colour, background and size, but another shape AND another position."""
    shape = rng.choice([s for s in SHAPES if s != scene.shape])
    position = rng.choice([p for p in POSITIONS if p != scene.position])
    return replace(scene, shape=str(shape), position=str(position))


def no_layout_caption(scene: Scene, template: int) -> str:
    """A caption without shape and position words (only words the tokenizer knows)."""
    s = scene
    if template == 1:
        return f"{s.background} background with a {s.size} {s.colour}"
    return f"a {s.size} {s.colour} on a {s.background} background"


def training_caption(scene: Scene, rng: np.random.Generator) -> str:
    """One caption for a training image, drawn by CAPTION_MODES."""
    mode = rng.choice(list(CAPTION_MODES), p=list(CAPTION_MODES.values()))
    template = int(rng.integers(3))
    if mode == "faithful":
        return scene.caption(template)
    if mode == "conflict":
        return conflicting(scene, rng).caption(template)
    if mode == "no_layout":
        return no_layout_caption(scene, template % 2)
    return ""


def make_control_dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[Scene]]:
    """n training scenes (held-out triples excluded): images, their canny maps (one channel,
    uint8) and scenes."""
    images, scenes = make_dataset(n, seed, "train")
    maps = np.stack([np.asarray(control_map(Image.fromarray(im)))[..., 0] for im in images])
    return images, maps, scenes


@dataclass(frozen=True)
class FollowCase:
    """One benchmark case: the map shows `control`; the prompt is `prompt.caption()`."""
    control: Scene
    prompt: Scene
    image: Image.Image  # the control map
    picture: Image.Image  # the drawing the map was made from (a reference, not an input)


def follow_cases(n: int, split: str, agree: bool, seed: int = 5) -> list[FollowCase]:
    """n fixed cases. split "held_out" uses only (shape, colour, background) triples that no
    model saw; "train" is for checkpoint selection. agree=False: the prompt names another shape
    and another position than the map shows."""
    cases = []
    for i in range(n):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
        scene = random_scene(rng, split)
        prompt = scene if agree else conflicting(scene, rng)
        picture = render(scene, rng)
        cases.append(FollowCase(scene, prompt, control_map(picture), picture))
    return cases
