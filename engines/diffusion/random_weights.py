"""Random-weight Stable Diffusion folders, built offline, for tests and the benchmark.

`build_random_sd(folder, "tiny")` writes a diffusers folder of a few MB that runs every pipeline
in seconds (diffusers' own tests use the same trick); `"sd15"` writes the SD 1.5 architecture
(UNet 860M, VAE 84M, CLIP ViT-L/14 text encoder 123M) from its public config, for speed
measurements only. The tokenizer is byte-level (no merges): enough to feed the text encoder.
"""
from __future__ import annotations

import json
from pathlib import Path

ARCHITECTURES = {
    "tiny": dict(
        unet=dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                  block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                  attention_head_dim=4, norm_num_groups=8),
        vae=dict(block_out_channels=(16, 32, 32), in_channels=3, out_channels=3,
                 down_block_types=("DownEncoderBlock2D",) * 3,
                 up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4,
                 layers_per_block=1, norm_num_groups=8, sample_size=64),
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=77, projection_dim=32),
    ),
    "sd15": dict(  # runwayml/stable-diffusion-v1-5 configs
        unet=dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                  block_out_channels=(320, 640, 1280, 1280),
                  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                  cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32),
        vae=dict(block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3,
                 down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4,
                 layers_per_block=2, norm_num_groups=32, sample_size=512,
                 scaling_factor=0.18215),
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
                  hidden_act="quick_gelu"),
    ),
}


def _byte_chars() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values (what CLIP's BPE works on)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in _byte_chars():
        for piece in (ch, ch + "</w>"):
            vocab.setdefault(piece, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77,
                              bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                              pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return CLIPTokenizer.from_pretrained(folder)


def build_random_sd(folder: str | Path, architecture: str = "tiny", seed: int = 0) -> Path:
    """Write a StableDiffusionPipeline folder with random weights; returns the folder."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    folder = Path(folder)
    spec = ARCHITECTURES[architecture]
    torch.manual_seed(seed)
    tokenizer = _tokenizer(folder / "tokenizer")
    unet = UNet2DConditionModel(**spec["unet"])
    vae = AutoencoderKL(**spec["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=max(len(tokenizer), 49408)
                                                if architecture == "sd15" else len(tokenizer),
                                                bos_token_id=tokenizer.bos_token_id,
                                                eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id,
                                                **spec["text"]))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, steps_offset=1, clip_sample=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def embedded_or_random(cache_dir: str | Path) -> str:
    """The model id tests should use: the embedded model when it is present, else a random tiny
    folder built (once) under cache_dir."""
    from engines.diffusion.loading import ALIASES, DEFAULT_MODEL

    if (ALIASES[DEFAULT_MODEL] / "model_index.json").exists():
        return DEFAULT_MODEL
    folder = Path(cache_dir) / "random-tiny-sd"
    if not (folder / "model_index.json").exists():
        build_random_sd(folder, "tiny")
    return str(folder)
