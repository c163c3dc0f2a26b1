"""How well do the GAN styles work? Two numbers per style, on photos and scenes never used in
training, plus a before/after grid per style (docs/images/style_<id>.png) and the small
preview pictures the style chooser shows (assets/styles/<id>/preview.jpg).

1. Style score: a small CNN is trained here (seeded, ~1-2 min on one core) to tell five domains
   apart: photo, ink, mosaic, pixel, pointillism, from 128 px crops of the procedural training
   domains. Score = its mean probability of the style's class on the GAN's outputs, next to the
   same on the inputs (should be ~0) and on the procedural renderer's own output for the same
   input (the target domain, should be ~1).
2. Content kept: SSIM between the Sobel edge maps (after a 2 px Gaussian blur) of input and
   output (1 = same outlines). The renderer's own output is given for reference: a style that
   redraws every stroke also moves edges.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/style_quality.py [--json out.json]
        [--no-images]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Run as `python benchmarks/<x>.py`, this folder comes first on sys.path and its queue.py would
# shadow the standard library's `queue` (torch imports it): put the repo root there instead.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from engines.style.engine import EMBEDDED_STYLES_DIR, StyleEngine, StyleParams, list_styles
from engines.training import style_data

CLASSES = ("photo",) + style_data.STYLES
CROP = 128


# ---------------------------------------------------------------- the domain classifier
class DomainClassifier(nn.Module):
    def __init__(self, classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 5, 2, 2), nn.ReLU(True), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(True),
            nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(True), nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU(True))
        self.head = nn.Linear(64 * 2, classes)  # mean and max pooled: texture and its peaks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.head(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1))


def _tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 127.5 - 1).permute(2, 0, 1)


def _crops(image: Image.Image, rng: np.random.Generator, n: int) -> list[torch.Tensor]:
    return [_tensor(style_data.random_crop(image, CROP, rng)) for _ in range(n)]


def train_classifier(steps: int = 400, seed: int = 0) -> tuple[DomainClassifier, float]:
    """Train on the domains the GANs saw; report accuracy on fresh renderings (other seeds)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    pools = {"photo": style_data.content_images(n_scenes=24, seed=0)}
    for style in style_data.STYLES:
        pools[style] = style_data.style_images(style, n=48, seed=1)
    data = [(c, crop) for c, name in enumerate(CLASSES) for im in pools[name]
            for crop in _crops(im, rng, 3)]
    model = DomainClassifier()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        batch = [data[i] for i in rng.integers(0, len(data), 32)]
        x = torch.stack([t for _, t in batch])
        if rng.random() < 0.5:
            x = x.flip(-1)
        y = torch.tensor([c for c, _ in batch])
        loss = nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    # held out: new renderings (seed 77) and new scenes
    test_rng = np.random.default_rng(77)
    held = {"photo": style_data.eval_images() + [style_data.render_scene(test_rng, 192)
                                                  for _ in range(8)]}
    for style in style_data.STYLES:
        held[style] = style_data.style_images(style, n=10, seed=77)
    correct = total = 0
    with torch.no_grad():
        for c, name in enumerate(CLASSES):
            for im in held[name]:
                correct += int(probabilities(model, im).argmax() == c)
                total += 1
    return model, correct / total


@torch.no_grad()
def probabilities(model: DomainClassifier, image: Image.Image) -> np.ndarray:
    """Mean class probabilities over five 128 px crops (centre and corners)."""
    w, h = image.size
    if min(w, h) < CROP:
        image = image.resize((max(CROP, w), max(CROP, h)))
        w, h = image.size
    boxes = [((w - CROP) // 2, (h - CROP) // 2), (0, 0), (w - CROP, 0), (0, h - CROP),
             (w - CROP, h - CROP)]
    x = torch.stack([_tensor(image.crop((a, b, a + CROP, b + CROP))) for a, b in boxes])
    return torch.softmax(model(x), 1).mean(0).numpy()


# ---------------------------------------------------------------- content preservation
def edge_ssim(a: Image.Image, b: Image.Image, sigma: float = 2.0) -> float:
    """SSIM of Sobel edge maps after a Gaussian blur of `sigma` px: object outlines count, the
    style's own fine texture (hatching, dots, tile grout) mostly does not."""
    from skimage.filters import gaussian, sobel
    from skimage.metrics import structural_similarity

    ea = sobel(gaussian(np.asarray(a.convert("L"), np.float32) / 255, sigma))
    eb = sobel(gaussian(np.asarray(b.convert("L").resize(a.size), np.float32) / 255, sigma))
    return float(structural_similarity(ea, eb, data_range=max(ea.max(), eb.max(), 1e-6)))


# ---------------------------------------------------------------- pictures
def eval_set() -> list[tuple[str, Image.Image]]:
    rng = np.random.default_rng(4242)
    photos = list(zip(style_data.EVAL_PHOTOS, style_data.eval_images(256)))
    return photos + [(f"scene {k}", style_data.render_scene(rng, 256)) for k in range(6)]


def grid(rows: list[tuple[Image.Image, Image.Image]], title: str, strip: list[Image.Image]) -> Image.Image:
    """Input | output per row, and a strip of the style's training images at the bottom."""
    cell, pad, head = 256, 8, 28
    shown = []
    for before, after in rows:
        pair = []
        for im in (before, after):
            im = im.convert("RGB").copy()
            im.thumbnail((cell, cell))
            pair.append(im)
        shown.append(pair)
    width = 2 * cell + 3 * pad
    strip_side = (width - pad) // max(1, len(strip)) if strip else 0
    height = head + sum(p[0].height + pad for p in shown) + (strip_side + 20 if strip else 0)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 8), f"{title}: input | GAN output (photos and scene not used in training)",
              fill="black")
    y = head
    for pair in shown:
        for c, im in enumerate(pair):
            sheet.paste(im, (pad + c * (cell + pad), y))
        y += pair[0].height + pad
    if strip:
        draw.text((pad, y + 2), "training images of the style domain:", fill="black")
        for i, im in enumerate(strip):
            sheet.paste(im.convert("RGB").resize((strip_side - pad, strip_side - pad)),
                        (pad + i * strip_side, y + 18))
    return sheet


def preview(before: Image.Image, after: Image.Image, size: int = 160) -> Image.Image:
    """A square card: left half input, right half output."""
    b, a = (im.convert("RGB").resize((size, size)) for im in (before, after))
    card = b.copy()
    card.paste(a.crop((size // 2, 0, size, size)), (size // 2, 0))
    ImageDraw.Draw(card).line((size // 2, 0, size // 2, size), fill="white", width=2)
    return card


def candidate_style(spec: str):
    """STYLE=PATH -> a StyleInfo for a style folder, or for a checkpoint's A->B generator
    (copied into runs/candidates/<STYLE>-<iteration>/)."""
    from safetensors.torch import save_file

    from engines.style.engine import read_style_folder

    style_id, path = spec.split("=", 1)
    path = Path(path).resolve()
    if path.is_file():
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        folder = REPO / "runs" / "candidates" / f"{style_id}-{checkpoint['iteration']}"
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in checkpoint["G_AB"].items()},
                  str(folder / "generator.safetensors"))
        config = checkpoint["config"]
        (folder / "style.json").write_text(json.dumps({
            "name": f"{style_id} @ {checkpoint['iteration']}", "kind": "cyclegan",
            "generator": {"ngf": config["ngf"], "n_blocks": config["n_blocks"],
                          "norm_affine": False}}))
        path = folder
    style = read_style_folder(path, "user", f"user:{style_id}")
    return style


# ---------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-images", action="store_true", help="skip grids and previews")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--candidate", nargs="+", metavar="STYLE=PATH",
                        help="score these instead of the shipped styles: a style folder or a "
                             "training checkpoint.pt (its A->B generator), e.g. "
                             "pointillism=runs/style_pointillism/checkpoint.pt")
    parser.add_argument("--retrain", action="store_true",
                        help="retrain the classifier (else reuse runs/style_classifier.pt)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    cache = REPO / "runs" / "style_classifier.pt"
    if cache.exists() and not args.retrain:
        saved = torch.load(cache, weights_only=True)
        classifier, accuracy = DomainClassifier(), saved["accuracy"]
        classifier.load_state_dict(saved["model"])
        classifier.eval()
    else:
        classifier, accuracy = train_classifier()
        cache.parent.mkdir(exist_ok=True)
        torch.save({"model": classifier.state_dict(), "accuracy": accuracy}, cache)
    print(f"domain classifier: {accuracy:.0%} accuracy on held-out renderings and scenes "
          f"({time.perf_counter() - started:.0f} s)")
    images = eval_set()
    results = {"classifier_accuracy": round(accuracy, 3), "styles": {}}
    gan_styles = [s for s in list_styles() if s.kind == "gan"]
    if args.candidate:  # score training snapshots instead of the shipped styles, no pictures
        args.no_images, gan_styles = True, [candidate_style(spec) for spec in args.candidate]
    for style in gan_styles:
        engine = StyleEngine(model_id=style.model_id)
        outputs = [engine.generate(StyleParams(image=im, tile_size=1024)).image for _, im in images]
        row = {"edge_ssim_output": float(np.mean([edge_ssim(i, o) for (_, i), o in zip(images, outputs)]))}
        class_id = style.id.split(":")[-1]
        renderer = style_data.RENDERERS.get(class_id)
        if renderer is not None:
            c = CLASSES.index(class_id)
            rng = np.random.default_rng(5)
            targets = [renderer(im, rng) for _, im in images]
            row.update(
                style_score_input=float(np.mean([probabilities(classifier, i)[c] for _, i in images])),
                style_score_output=float(np.mean([probabilities(classifier, o)[c] for o in outputs])),
                style_score_renderer=float(np.mean([probabilities(classifier, t)[c] for t in targets])),
                edge_ssim_renderer=float(np.mean([edge_ssim(i, t) for (_, i), t in zip(images, targets)])))
        mean_probs = np.mean([probabilities(classifier, o) for o in outputs], 0)
        results["styles"][style.id] = {k: round(v, 3) for k, v in row.items()}
        # where the classifier puts the outputs on average, for styles it does not recognise
        results["styles"][style.id]["output_classes"] = {
            c: round(float(p), 3) for c, p in zip(CLASSES, mean_probs) if p >= 0.05}
        print(style.id, results["styles"][style.id], flush=True)
        if not args.no_images:
            strip = [Image.open(p) for p in style.thumbnails if p.name.startswith("style_")][:6]
            picked = [images[0], images[1], images[2]]
            sheet = grid([(im, outputs[images.index((n, im))]) for n, im in picked], style.name, strip)
            sheet.save(REPO / "docs" / "images" / f"style_{style.id}.png", optimize=True)
            card = preview(images[1][1], outputs[1])
            target = (style.folder / "preview.jpg") if style.source == "embedded" else (
                EMBEDDED_STYLES_DIR / "previews" / f"{style.id}.jpg")
            if style.source != "user":
                target.parent.mkdir(parents=True, exist_ok=True)
                card.save(target, quality=88)
    if not args.no_images and any(s.id == "arbitrary" for s in list_styles()):
        # the non-GAN mode's card: coffee restyled by a pointillist rendering as the painting
        engine = StyleEngine(model_id="arbitrary")
        painting = style_data.style_images("pointillism", n=1, seed=9)[0]
        out = engine.generate(StyleParams(image=images[1][1], style_image=painting)).image
        (EMBEDDED_STYLES_DIR / "previews").mkdir(parents=True, exist_ok=True)
        preview(images[1][1], out).save(EMBEDDED_STYLES_DIR / "previews" / "arbitrary.jpg", quality=88)

    print("\n| style | style score: input → GAN output (renderer) | edge SSIM: GAN output (renderer) |")
    print("|---|---|---|")
    for sid, r in results["styles"].items():
        if "style_score_output" in r:
            print(f"| {sid} | {r['style_score_input']:.2f} → **{r['style_score_output']:.2f}** "
                  f"({r['style_score_renderer']:.2f}) | **{r['edge_ssim_output']:.2f}** "
                  f"({r['edge_ssim_renderer']:.2f}) |")
        else:
            print(f"| {sid} | n/a (no class for this domain) | **{r['edge_ssim_output']:.2f}** |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
