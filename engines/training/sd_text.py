"""Stage 1 of the tiny SD recipe: a BPE tokenizer and a CLIP pair trained contrastively.

The text encoder learns to tell captions apart by matching them with images (a small CNN image
encoder, kept as the CLIP scorer) before the UNet sees it; it is then frozen, so the UNet
training spends every step on denoising. The probe in the shared notes measured 99.7% caption
retrieval on seen and 95% on held-out combinations after ~150 s of this.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engines.diffusion.clip_score import ImageEncoder, ImageEncoderConfig, TextProjection, save_scorer
from engines.training.optim import update
from .sd_data import all_captions

MAX_LENGTH = 32  # tokens; the longest caption is ~15, and short sequences keep cross-attention cheap
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _byte_chars() -> list[str]:
    """The 256 characters CLIP's byte-level BPE maps bytes to (GPT-2's bytes_to_unicode)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def train_tokenizer(out_dir: Path, vocab_size: int = 600):
    """Trains BPE on every caption and saves it as a CLIPTokenizer (the format SD pipelines load)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS],
                                  end_of_word_suffix="</w>", show_progress=False)
    tok.train_from_iterator(all_captions() * 2, trainer)
    vocab = dict(sorted(tok.get_vocab().items(), key=lambda kv: kv[1]))
    # The trainer only adds "x</w>" for characters it saw word-final: add every byte character
    # in both forms so that any prompt tokenizes without unknowns.
    for ch in _byte_chars():
        for piece in (ch, ch + "</w>"):
            vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if not isinstance(m, str) else tuple(m.split(" ")) for m in _merges(tok)]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH,
                              bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return CLIPTokenizer.from_pretrained(out_dir)


def _merges(tok) -> list:
    import json

    return json.loads(tok.to_str())["model"]["merges"]


def build_text_encoder(tokenizer, hidden: int = 128, layers: int = 3):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=hidden,
    )
    return CLIPTextModel(config)


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", truncation=True, max_length=MAX_LENGTH,
                     return_tensors="pt").input_ids


def train_clip(out_dir: Path, images: np.ndarray, scenes: list, steps: int = 1500, batch: int = 128,
               seed: int = 0, log=print):
    """Trains tokenizer, text encoder and image encoder; saves tokenizer/, text_encoder/ and
    clip_scorer/ under out_dir. images/scenes: the training set (no held-out combinations)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    tokenizer = train_tokenizer(out_dir / "tokenizer")
    text_encoder = build_text_encoder(tokenizer)
    hidden = text_encoder.config.hidden_size
    image_encoder = ImageEncoder(ImageEncoderConfig(embed_dim=hidden))
    text_proj = TextProjection(hidden, hidden)
    logit_scale = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
    params = [*text_encoder.parameters(), *image_encoder.parameters(), *text_proj.parameters(), logit_scale]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    # The 32 px image encoder input is made once; images are in [-1, 1].
    x_all = F.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1, size=32, mode="area")
    keys = np.array([hash((s.shape, s.colour, s.background, s.position, s.size)) for s in scenes])
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(len(scenes), (batch,), generator=g).numpy()
        templates = torch.randint(3, (batch,), generator=g).tolist()
        caps = [scenes[i].caption(t) for i, t in zip(idx, templates)]
        t = F.normalize(text_proj(text_encoder(tokenize(tokenizer, caps)).pooler_output), dim=-1)
        v = F.normalize(image_encoder(x_all[idx]), dim=-1)
        logits = logit_scale.exp().clamp(max=100) * v @ t.T
        # Two images of the same scene are both right answers: soft targets over equal scenes.
        same = torch.from_numpy(keys[idx][:, None] == keys[idx][None, :]).float()
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                      + torch.sum(-target * F.log_softmax(logits.T, 1), 1).mean())
        update(opt, sched, loss)
        if step % 100 == 0 or step == steps - 1:
            log(f"clip step {step} loss {loss.item():.4f} scale {logit_scale.exp().item():.1f} {time.time() - t0:.0f}s")
    text_encoder.save_pretrained(out_dir / "text_encoder", safe_serialization=True)
    save_scorer(out_dir, image_encoder, text_proj, float(logit_scale.detach().exp()))
    return tokenizer, text_encoder
