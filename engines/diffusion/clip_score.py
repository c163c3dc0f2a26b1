"""Image-text match scores from the small CLIP pair shipped with the embedded model.

The text side is the Stable Diffusion folder's own tokenizer and text encoder (pooled output);
the image side is a small CNN in `<folder>/clip_scorer/`, trained contrastively with that text
encoder (engines/training/sd_text.py). Both project into one space; the score is the cosine
similarity of the two embeddings, so higher means a better match. Self-contained: no Gradio.

    scorer = ClipScorer.from_folder("assets/sd-tiny")
    scorer.score([image], ["a small red star at the top left on a blue background"])
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

SCORER_DIR = "clip_scorer"


@dataclass
class ImageEncoderConfig:
    image_size: int = 32  # inputs are resized to this; 32 px keeps training cheap
    width: int = 32
    embed_dim: int = 128  # the shared space; equals the text projection's output


class ImageEncoder(nn.Module):
    def __init__(self, config: ImageEncoderConfig):
        super().__init__()
        self.config = config
        w, layers, c_in = config.width, [], 3
        for c_out in (w, 2 * w, 2 * w):  # 32 -> 16 -> 8 -> 4
            layers += [nn.Conv2d(c_in, c_out, 3, 2, 1), nn.GroupNorm(8, c_out), nn.SiLU(),
                       nn.Conv2d(c_out, c_out, 3, 1, 1), nn.SiLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        side = config.image_size // 8
        self.proj = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, 256), nn.SiLU(),
                                  nn.Linear(256, config.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: N x 3 x H x W in [-1, 1] -> N x embed_dim (not normalised)."""
        s = self.config.image_size
        if x.shape[-1] != s or x.shape[-2] != s:
            x = F.interpolate(x, size=(s, s), mode="area")
        return self.proj(self.features(x))


class TextProjection(nn.Module):
    """Pooled text-encoder output -> shared space."""

    def __init__(self, hidden: int, embed_dim: int):
        super().__init__()
        self.linear = nn.Linear(hidden, embed_dim, bias=False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(pooled)


def save_scorer(folder: Path, image_encoder: ImageEncoder, text_proj: TextProjection, logit_scale: float):
    from safetensors.torch import save_file

    out = Path(folder) / SCORER_DIR
    out.mkdir(parents=True, exist_ok=True)
    cfg = asdict(image_encoder.config) | {"text_hidden": text_proj.linear.in_features,
                                          "logit_scale": logit_scale}
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tensors = {f"image.{k}": v.contiguous() for k, v in image_encoder.state_dict().items()}
    tensors |= {f"text_proj.{k}": v.contiguous() for k, v in text_proj.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"))


class ClipScorer:
    def __init__(self, tokenizer, text_encoder, image_encoder: ImageEncoder, text_proj: TextProjection):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.eval()
        self.image_encoder = image_encoder.eval()
        self.text_proj = text_proj.eval()

    @classmethod
    def from_folder(cls, path: str | Path) -> "ClipScorer":
        from safetensors.torch import load_file
        from transformers import CLIPTextModel, CLIPTokenizer

        path = Path(path)
        scorer_dir = path / SCORER_DIR
        if not (scorer_dir / "config.json").exists():
            raise FileNotFoundError(f"no CLIP scorer in {path} (expected {scorer_dir}/config.json)")
        cfg = json.loads((scorer_dir / "config.json").read_text())
        image_encoder = ImageEncoder(ImageEncoderConfig(cfg["image_size"], cfg["width"], cfg["embed_dim"]))
        text_proj = TextProjection(cfg["text_hidden"], cfg["embed_dim"])
        tensors = load_file(str(scorer_dir / "model.safetensors"))
        image_encoder.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("image.")})
        text_proj.load_state_dict({k[10:]: v for k, v in tensors.items() if k.startswith("text_proj.")})
        tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder")
        return cls(tokenizer, text_encoder, image_encoder, text_proj)

    @torch.no_grad()
    def embed_text(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
        pooled = self.text_encoder(ids).pooler_output
        return F.normalize(self.text_proj(pooled), dim=-1)

    @torch.no_grad()
    def embed_images(self, images: list) -> torch.Tensor:
        # 64 px with box filtering, as in training; the encoder area-resizes the rest of the way.
        arr = np.stack([np.asarray(im.convert("RGB").resize((64, 64), resample=4)) for im in images])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1
        return F.normalize(self.image_encoder(x), dim=-1)

    def score(self, images: list, prompts: list[str]) -> list[float]:
        """Cosine similarity of each image with its prompt (pairs, not all-against-all)."""
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts; pass one prompt per image")
        if not images:
            return []
        sims = (self.embed_images(images) * self.embed_text(prompts)).sum(-1)
        return [float(v) for v in sims]
