"""Train a LoRA on a few images of one concept, on diffusers + peft (the recipe of diffusers'
`train_text_to_image_lora.py`, cut down to what a studio job needs).

    result = train_lora(pipe, images, captions, LoraTrainConfig(trigger="gsring", steps=400),
                        run_dir, on_progress, cancel)
    save_kohya(result.state_dict, "models/Lora/gsring.safetensors", metadata)

1. The pipeline's UNet gets a peft LoRA adapter on its attention projections (to_q, to_k,
   to_v, to_out.0), or on these and its convolutions (`target="unet"`), and optionally the
   text encoder(s) one on theirs; everything else is frozen. The VAE latents of the images
   (and, when the text side is frozen, the captions' text states) are computed once. SD 1.x/2.x
   and SDXL (two text encoders, pooled text and size ids: engines/training/lora_text.py).
2. Each step: a batch of latents (sampled from the VAE's distribution), noise at a random
   timestep, and the model's own objective (epsilon or v-prediction, from its scheduler
   config), optionally weighted to each image's subject and by min-SNR-γ, at a constant or
   decaying rate (engines/training/lora_loss.py); AdamW on the LoRA weights only. Captions
   are dropped 10% of the time so that classifier-free guidance keeps working.
3. Every `checkpoint_every` steps the LoRA, the optimiser and the random state go to
   `run_dir/checkpoint.pt` (engines/training/lora_checkpoint.py); a run started again with the
   same run_dir and settings resumes there. Every `sample_every` steps a grid of sample images is
   reported as the progress preview, and the loss as the message.
4. The result is converted to the kohya/A1111 key layout with diffusers'
   `convert_state_dict_to_kohya` (`lora_unet_`, `lora_te_` or SDXL's `lora_te1_`/`lora_te2_`:
   what A1111 and ComfyUI load; diffusers loads it too).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from engines.base import CancelToken, ParamError, Progress, ProgressCallback, no_progress
from engines.training import lora_checkpoint, lora_ema, lora_loss, lora_text

TARGET_MODULES = {
    # every attention projection of the UNet (diffusers' LoRA example; kohya's default)
    "attention": ["to_q", "to_k", "to_v", "to_out.0"],
    # cross-attention only (Custom Diffusion's choice): the text->image mapping, nothing else
    "cross_attention": r".*attn2\.(to_q|to_k|to_v|to_out\.0)",
    # attention, feed-forward and the resnets' convolutions (kohya's LoCon "conv" layers): the
    # full-resolution levels of a UNet have no attention, so a new *shape* needs the convs
    "unet": r".*(attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\.(attn[12]\.(to_q|"
            r"to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2)))|resnets\.\d+\.(conv1|conv2|"
            r"time_emb_proj|conv_shortcut)|(down|up)samplers\.0\.conv)",
    # as "unet" but not the cross-attention's key/value projections, the only layers that read
    # the text: the words keep their meaning (colours...) and the trigger vectors carry the new one
    "unet_image": r".*(attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\.(attn1\.(to_q|"
                  r"to_k|to_v|to_out\.0)|attn2\.(to_q|to_out\.0)|ff\.net\.(0\.proj|2)))|resnets\.\d+"
                  r"\.(conv1|conv2|time_emb_proj|conv_shortcut)|(down|up)samplers\.0\.conv)",
    # the resnets' and samplers' convolutions only, no attention: the LoRA draws the shape and
    # what the word means is left to the trigger vectors
    "conv": r".*(resnets\.\d+\.(conv1|conv2|time_emb_proj|conv_shortcut)|(down|up)samplers\.0\.conv)",
}
CHECKPOINT = "checkpoint.pt"


@dataclass
class LoraTrainConfig:
    trigger: str  # the word that calls the concept up in a prompt
    rank: int = 8  # LoRA rank; alpha = rank (scale 1), written to the file as kohya's `alpha`
    steps: int = 400
    lr: float = 1e-3  # LoRA tolerates far higher rates than full fine-tuning
    batch: int = 4
    seed: int = 0
    caption_dropout: float = 0.1
    checkpoint_every: int = 50
    sample_every: int = 100  # 0 = no samples
    sample_prompts: tuple[str, ...] = ()  # default: the trigger word and two captions
    sample_steps: int = 20
    sample_guidance: float = 7.0
    resolution: int | None = None  # square side; None = the model's native size
    # DreamBooth's prior preservation: this many images the base model itself makes for the
    # captions with the trigger word taken out, trained on beside the user's images so the
    # LoRA keeps what the other words mean (colours, places...). 0 = off.
    prior_images: int = 0
    prior_prompts: tuple[str, ...] = ()  # DreamBooth's class prompts; default: the captions
    target: str = "attention"  # which UNet layers get the LoRA: a key of TARGET_MODULES
    # Pivotal tuning: also learn this many embedding vectors for the trigger word (saved as a
    # textual-inversion embedding named after it), so the trigger is a token of its own. 0 = off.
    trigger_vectors: int = 0
    trigger_lr: float = 5e-3
    trigger_init: str = ""  # the word the trigger vectors start from ("" = the trigger's own)
    # LoRA on the text encoder(s) too (same rank and rate): lets the captions' words move
    train_text_encoder: bool = False
    conv_rank: int = 0  # rank of the convolutions' LoRA (target="unet"); 0 = `rank`
    # loss weight outside each image's subject (engines/training/lora_loss.py); 1 = no mask
    background_weight: float = 1.0
    snr_gamma: float = 0.0  # min-SNR-γ timestep weighting (5 is usual); 0 = off
    snr_floor: float = 0.0  # the least min-SNR-γ weight a step keeps (lora_loss.py); 0 = plain
    stratified_timesteps: bool = False  # a batch's timesteps spread evenly (lora_loss.py)
    lr_schedule: str = "constant"  # or "cosine" / "linear" decay to 0 over `steps`
    warmup_steps: int = 0  # the rate rises linearly over these first steps (lora_loss.py)
    lora_dropout: float = 0.0  # peft's dropout on the LoRA branch while training; 0 = off
    ema_decay: float = 0.0  # save and sample an average of the weights (lora_ema.py); 0 = off
    gradient_checkpointing: bool = False  # recompute the UNet's activations: less memory, slower

    def check(self) -> None:
        if not isinstance(self.trigger, str) or not self.trigger.strip() or len(self.trigger) > 60:
            raise ParamError("trigger", f"`trigger` must be a word or short phrase, got {self.trigger!r}")
        for name, low, high in (("rank", 1, 128), ("steps", 1, 20000), ("batch", 1, 64),
                                ("checkpoint_every", 1, 100000), ("sample_every", 0, 100000),
                                ("sample_steps", 1, 100), ("prior_images", 0, 200),
                                ("trigger_vectors", 0, 16), ("conv_rank", 0, 128),
                                ("warmup_steps", 0, 20000)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ParamError(name, f"`{name}` must be a whole number in {low}..{high}, got {value!r}")
        if self.target not in TARGET_MODULES:
            raise ParamError("target", f"`target` must be one of {', '.join(TARGET_MODULES)}, "
                             f"got {self.target!r}")
        if not isinstance(self.trigger_init, str) or len(self.trigger_init) > 60:
            raise ParamError("trigger_init", f"`trigger_init` must be a word or short phrase, "
                             f"got {self.trigger_init!r}")
        if not isinstance(self.train_text_encoder, bool):
            raise ParamError("train_text_encoder", f"`train_text_encoder` must be true or false, "
                             f"got {self.train_text_encoder!r}")
        for name in ("lr", "trigger_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1e-6 <= value <= 1e-1:
                raise ParamError(name, f"`{name}` must be between 1e-6 and 0.1, got {value!r}")
        lora_loss.check(self)


@dataclass
class TrainResult:
    state_dict: dict  # kohya layout
    steps: int
    losses: list[float]
    seconds: float
    samples: Image.Image | None = None
    resumed_from: int = 0
    trigger_vectors: object = None  # n x dim tensor when pivotal tuning was on
    metadata: dict = field(default_factory=dict)


def _square(image: Image.Image, side: int) -> Image.Image:
    image = image.convert("RGB")
    s = min(image.size)
    left, top = (image.width - s) // 2, (image.height - s) // 2
    return image.crop((left, top, left + s, top + s)).resize((side, side), Image.LANCZOS)


def _prepare(pipe, images: list[Image.Image], captions: list[str], side: int):
    """Latent distributions of the images and text states of the captions (and of "")."""
    import torch

    vae, device = pipe.vae, pipe.unet.device
    pixels = torch.stack([torch.from_numpy(np.array(_square(im, side))).permute(2, 0, 1)
                          for im in images]).float().div(127.5).sub(1).to(device, vae.dtype)
    with torch.no_grad():
        dist = vae.encode(pixels).latent_dist
        texts = {caption: lora_text.encode(pipe, caption) for caption in set(captions) | {""}}
    return dist.mean, dist.std, texts


def grid(images: list[Image.Image], columns: int = 4) -> Image.Image:
    rows, (w, h) = math.ceil(len(images) / columns), images[0].size
    out = Image.new("RGB", (w * min(columns, len(images)), h * rows), "white")
    for i, image in enumerate(images):
        out.paste(image, ((i % columns) * w, (i // columns) * h))
    return out


def samples(pipe, prompts: list[str], steps: int, guidance: float, side: int,
            table: dict | None = None) -> Image.Image:
    """A grid of one image per prompt; `table` puts learned trigger vectors in (A1111's way)."""
    import torch

    kwargs = dict(num_inference_steps=steps, guidance_scale=guidance, width=side, height=side,
                  generator=[torch.Generator("cpu").manual_seed(1000 + i) for i in range(len(prompts))])
    with torch.no_grad():
        if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL: its own two encoders
            return grid(pipe(prompt=prompts, **kwargs).images)
        cond = torch.cat([lora_text.encode(pipe, p, table)[0] for p in prompts])
        uncond = lora_text.encode(pipe, "")[0].expand_as(cond)
        out = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, **kwargs).images
    return grid(out)


@dataclass
class _Session:
    """Everything one training run holds between steps."""
    params: list
    optimizer: Any
    scheduler: Any
    g: Any  # the CPU generator every random draw comes from (saved in checkpoints)
    mean: Any  # instance latents' distributions and caption states
    std: Any
    texts: dict  # caption -> (states, pooled or None), used while the text side is frozen
    side: int
    trained: dict  # part ("unet", "text_encoder", "text_encoder_2") -> module with a LoRA
    vectors: Any = None  # pivotal tuning's trigger vectors
    table: dict | None = None
    prior: tuple | None = None  # (mean, std, captions) of the prior images
    weights: Any = None  # N x 1 x h x w loss weights of the instance latents (subject masks)
    ema: list | None = None  # the averaged weights of `trained_tensors` (ema_decay > 0)

    def trained_tensors(self) -> list:
        return self.params + ([self.vectors] if self.vectors is not None else [])


def train_lora(pipe, images: list[Image.Image], captions: list[str], cfg: LoraTrainConfig,
               run_dir: Path, on_progress: ProgressCallback = no_progress,
               cancel: CancelToken | None = None,
               on_loss: Callable[[int, float], None] | None = None) -> TrainResult:
    # 1. Check, then set up (prior images, adapters, cached latents) and resume if possible.
    cfg.check()
    cancel = cancel or CancelToken()
    sdxl = lora_text.family(pipe) == "sdxl"
    if sdxl and cfg.trigger_vectors:
        raise ParamError("trigger_vectors", "trigger vectors (pivotal tuning) are for SD 1.x/2.x "
                         "models; set `trigger_vectors` to 0 for SDXL")
    if len(images) != len(captions) or not images:
        raise ParamError("images", f"{len(images)} images but {len(captions)} captions")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    side = cfg.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    session = _setup(pipe, images, captions, cfg, side)
    checkpoint = run_dir / CHECKPOINT
    step, losses = lora_checkpoint.resume(session, checkpoint, cfg)
    resumed_from, started, preview = step, time.perf_counter(), None
    prompts = list(cfg.sample_prompts) or [cfg.trigger] + sorted(set(captions))[:3]
    while step < cfg.steps:
        cancel.raise_if_cancelled()
        # 2. One step on a random batch, at the schedule's rate for this step.
        lora_loss.set_lr(session.optimizer, cfg.lr_schedule, step, cfg.steps, cfg.warmup_steps)
        with lora_loss.dropout_draws(cfg.seed, step, cfg.lora_dropout > 0):
            losses.append(round(_step(pipe, session, cfg, captions), 5))
        if session.ema is not None:
            lora_ema.update(session.ema, session.trained_tensors(), cfg.ema_decay, step)
        step += 1
        if on_loss:
            on_loss(step, losses[-1])
        # 3. Checkpoint, samples, progress.
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            lora_checkpoint.save(checkpoint, _lora_states(session), session, step, losses, cfg)
        new_preview = None
        if cfg.sample_every and (step % cfg.sample_every == 0 or step == cfg.steps):
            _train_mode(session, False)
            with lora_ema.swapped_in(session.trained_tensors(), session.ema):
                preview = new_preview = samples(pipe, prompts, cfg.sample_steps,
                                                cfg.sample_guidance, side, session.table)
        recent = float(np.mean(losses[-20:]))
        on_progress(Progress(step, cfg.steps, f"step {step}/{cfg.steps}, loss {recent:.4f}",
                             new_preview))
    _train_mode(session, False)
    if session.ema is not None:  # what is saved is the average
        lora_ema.copy_into(session.trained_tensors(), session.ema)
    state = lora_text.to_kohya(_lora_states(session), cfg.rank, sdxl)
    vectors = None if session.vectors is None else session.vectors.detach().cpu().clone()
    return TrainResult(state, step, losses, time.perf_counter() - started, preview, resumed_from, vectors)


def _lora_states(session: _Session) -> dict[str, dict]:
    return {part: lora_text.lora_state(module) for part, module in session.trained.items()}


def _train_mode(session: _Session, on: bool) -> None:
    for module in session.trained.values():
        module.train(on)


def _setup(pipe, images, captions, cfg: LoraTrainConfig, side: int) -> _Session:
    """Frozen model, its own prior images, the LoRA adapters, cached latents and caption states,
    optional trigger vectors, the optimiser."""
    import torch
    from diffusers import DDPMScheduler

    encoders = lora_text.text_encoders(pipe)
    for module in (pipe.unet, pipe.vae, *encoders.values()):
        module.requires_grad_(False)
    if cfg.gradient_checkpointing:  # acts only while gradients are on: sampling is unaffected
        pipe.unet.enable_gradient_checkpointing()
    sources = list(cfg.prior_prompts) or [without_trigger(c, cfg.trigger) for c in captions]
    prior_captions = [sources[i % len(sources)] for i in range(cfg.prior_images)]
    prior_images = _prior_images(pipe, prior_captions, cfg, side) if prior_captions else []
    trained, target = {"unet": pipe.unet}, TARGET_MODULES[cfg.target]
    with torch.random.fork_rng(devices=[]):  # the adapters' random start follows `seed`
        torch.manual_seed(cfg.seed)
        lora_text.add_lora(pipe.unet, cfg.rank, target,
                           lora_text.conv_ranks(pipe.unet, target, cfg.conv_rank), cfg.lora_dropout)
        if cfg.train_text_encoder:
            for part, encoder in encoders.items():
                lora_text.add_lora(encoder, cfg.rank, lora_text.TEXT_TARGETS, None, cfg.lora_dropout)
                trained[part] = encoder
    params = [p for module in trained.values() for p in module.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    mean, std, texts = _prepare(pipe, images, captions, side)
    prior = None
    if prior_images:
        prior_mean, prior_std, prior_texts = _prepare(pipe, prior_images, prior_captions, side)
        texts.update(prior_texts)
        prior = (prior_mean, prior_std, prior_captions)
    vectors, table = (lora_text.trigger_table(pipe, cfg.trigger, cfg.trigger_vectors,
                                              cfg.trigger_init, cfg.seed)
                      if cfg.trigger_vectors else (None, None))
    groups = [{"params": params, "lr": cfg.lr, "base_lr": cfg.lr}]
    if vectors is not None:
        groups.append({"params": [vectors], "lr": cfg.trigger_lr, "base_lr": cfg.trigger_lr,
                       "weight_decay": 0.0})
    weights = (lora_loss.latent_weights(lora_loss.subject_masks([_square(im, side) for im in images]),
                                        mean.shape[-1], cfg.background_weight)
               if cfg.background_weight != 1.0 else None)
    session = _Session(params, torch.optim.AdamW(groups, weight_decay=1e-2),
                       DDPMScheduler.from_config(pipe.scheduler.config),
                       torch.Generator("cpu").manual_seed(cfg.seed), mean, std, texts, side,
                       trained, vectors, table, prior, weights)
    session.ema = lora_ema.start(session.trained_tensors()) if cfg.ema_decay else None
    return session


def _condition(pipe, s: _Session, batch: list[str]) -> dict:
    """The UNet's conditioning for these captions: cached while the text side is frozen,
    encoded afresh (with gradients) when text LoRA or trigger vectors train."""
    import torch

    fresh = s.table is not None or len(s.trained) > 1
    encoded = [lora_text.encode(pipe, c, s.table) if fresh else s.texts[c] for c in batch]
    states = torch.cat([e[0] for e in encoded])
    pooled = torch.cat([e[1] for e in encoded]) if encoded[0][1] is not None else None
    return lora_text.unet_kwargs(pipe, states, pooled, s.side)


def _step(pipe, session: _Session, cfg: LoraTrainConfig, captions: list[str]) -> float:
    """One optimiser step: instance latents (and as many prior ones, DreamBooth), noise at
    random timesteps, the model's own objective; returns the loss."""
    import torch

    s, g, unet, device = session, session.g, pipe.unet, pipe.unet.device
    scale = pipe.vae.config.scaling_factor
    _train_mode(s, True)
    idx = torch.randint(len(s.mean), (cfg.batch,), generator=g)
    x0 = (s.mean[idx] + s.std[idx] * torch.randn(s.mean[idx].shape, generator=g).to(device)) * scale
    drop = torch.rand(cfg.batch, generator=g) < cfg.caption_dropout
    batch = ["" if d else captions[i] for i, d in zip(idx.tolist(), drop.tolist())]
    if s.prior:
        prior_mean, prior_std, prior_captions = s.prior
        pidx = torch.randint(len(prior_mean), (cfg.batch,), generator=g)
        px0 = prior_mean[pidx] + prior_std[pidx] * torch.randn(prior_mean[pidx].shape, generator=g).to(device)
        x0 = torch.cat([x0, px0 * scale])
        batch += [prior_captions[i] for i in pidx.tolist()]
    noise = torch.randn(x0.shape, generator=g).to(device)
    t = lora_loss.timesteps(len(x0), s.scheduler.config.num_train_timesteps, g,
                            cfg.stratified_timesteps).to(device)
    noisy = s.scheduler.add_noise(x0, noise, t)
    v_prediction = s.scheduler.config.prediction_type == "v_prediction"
    target = s.scheduler.get_velocity(x0, noise, t) if v_prediction else noise
    pred = unet(noisy.to(unet.dtype), t, **_condition(pipe, s, batch)).sample
    pixel_weights = None
    if s.weights is not None:  # subject masks on the instance images, prior ones unweighted
        pixel_weights = torch.ones(len(x0), 1, *x0.shape[2:])
        pixel_weights[:cfg.batch] = s.weights[idx]
    sample_weights = lora_loss.snr_weights(s.scheduler, t, cfg.snr_gamma, v_prediction,
                                            cfg.snr_floor)
    loss = lora_loss.weighted_mse(pred, target, pixel_weights, sample_weights)
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(s.params, 1.0)
    s.optimizer.step()
    return loss.item()


def without_trigger(caption: str, trigger: str) -> str:
    """The caption with the trigger word taken out (what the base model is asked for)."""
    import re

    text = re.sub(rf"(?<!\w){re.escape(trigger)}(?!\w)", " ", caption, flags=re.I)
    return re.sub(r"\s+", " ", re.sub(r"\s*,\s*(,\s*)+", ", ", text)).strip(" ,")


def _prior_images(pipe, prompts: list[str], cfg: LoraTrainConfig, side: int) -> list[Image.Image]:
    """The base model's own images for these prompts (seeded, so a resumed run gets the same)."""
    import torch

    images = []
    for i, prompt in enumerate(prompts):
        generator = torch.Generator("cpu").manual_seed(cfg.seed * 100003 + i)
        with torch.no_grad():
            images += pipe(prompt, num_inference_steps=cfg.sample_steps,
                           guidance_scale=cfg.sample_guidance, width=side, height=side,
                           generator=generator).images
    return images


def save_kohya(state: dict, path: Path, metadata: dict[str, str]) -> Path:
    """Write the LoRA atomically (a half-written file is never listed)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata={k: str(v) for k, v in metadata.items()})
    tmp.replace(path)
    return path
