"""Train a LoRA on your own images: the "train_lora" queue task (engine "diffusion").

Params (a JSON-able dict; the queue stores it as is):
  name           the LoRA's file name in <data>/models/Lora (letters, digits, - and _)
  trigger        the word that calls the concept up, e.g. "gsring"
  image_ids      gallery item ids, and/or
  images         upload ids (upload:..., studio/uploads.py), base64 PNG/JPEG or data URLs;
                 5..30 images in all (ids first, then uploads). A queued job holds upload ids
                 only: JobQueue.check stores inline images once, outside the gallery, and the
                 files stay while the job is pending, running or paused (a restart resumes it)
  captions       optional, one per image in that order; the trigger word is put in front of
                 any caption that lacks it; without captions every image is captioned with it
  rank           LoRA rank, 1..128 (default 8)
  steps          optimiser steps (default 500 on the embedded model, else 400; RECIPES below)
  lr             learning rate (default 1e-3; 1e-4 suits full-size SD 1.x)
  batch          images per step (default 8 on the embedded model, else 4)
  model          the base model (default the embedded one); SD 1.x / 2.x or SDXL
  target         the UNet layers that get the LoRA: "unet" (default: attention, feed-forward
                 and the resnets' convolutions, kohya's LoCon; needed for new shapes),
                 "attention" or "cross_attention"
  train_text_encoder  a LoRA on the text encoder(s) too (default false)
  seed           default 0
  prior_images   DreamBooth's prior preservation: this many images the base model makes for
                 the captions without the trigger word, trained on beside yours (default 0)
  trigger_vectors  pivotal tuning: also learn this many embedding vectors for the trigger
                 word, saved as <data>/models/embeddings/<trigger>.safetensors (A1111 format), so
                 the trigger is a token of its own (default 0 = off; needs a one-word trigger)
  trigger_init   the word those vectors start from, e.g. the nearest thing the model knows
                 ("circle" for a ring; A1111's "initialization text"); default the trigger's own
  snr_gamma      min-SNR-γ loss weighting by timestep (0 = off; 5 is usual: on the embedded
                 benchmark more of the new shape, less faithful colours, docs/diffusion.md);
                 default 5 on the embedded model, else 0
  snr_floor      with snr_gamma: a floor under its weight, floor + (1 - floor) x weight, 0..1
                 (0 = plain min-SNR-γ; the noisiest steps, where colours are decided, keep some
                 weight); default 0.25 on the embedded model, else 0
  lr_schedule    "constant" (default), "cosine" or "linear" decay to 0 over the steps
  warmup_steps   the rate rises linearly from 0 over these first steps (diffusers' and kohya's
                 lr_warmup_steps); default a fifth of the steps on the embedded model, else 0
  conv_rank      a rank of its own for the convolutions' LoRA (target "unet"; 0 = `rank`)
  background_weight  loss weight outside each image's subject, 0..1 (default 1 = no mask; on
                 the embedded benchmark lower values hurt, docs/diffusion.md)
  gradient_checkpointing  recompute the UNet's activations in the backward pass: less memory
                 for more time (an SD 1.5-size model at 512 px, batch 1, on the CPU: 2.6 instead
                 of 3.4 GiB above the loaded weights, half as much time again per step;
                 benchmarks/lora_memory.py); default on for every model but the embedded one
  ensemble       train this many runs, seeds `seed`, `seed` + 1, ..., and merge them into one
                 LoRA (engines/training/lora_ensemble.py: on a few images one run's outcome
                 depends on its seed; the merge keeps what the runs agree on), 1..8; default 4
                 on the embedded model (4 x the time), else 1
  ensemble_gain  the merged runs' total weight, 0.5..2 (default 1.2 on the embedded model: the
                 averaging weakens what the runs do not share), with `ensemble` > 1
  overwrite      replace an existing LoRA (and trigger embedding) of that name (default false)

It runs on the "training" lane (a worker of its own, without the device lock), so generation
goes on beside it. Progress: the message carries the loss ("step 120/400, loss 0.2731"), the preview a grid of
sample images every `steps / 4` steps. Cancel stops at the next step and keeps the checkpoint;
the job started again with the same name (or the queue recovering it after a restart) resumes
from it (<data>/models/Lora/.runs/<name>/). The result lands in <data>/models/Lora/<name>.safetensors
in the kohya/A1111 key layout, with `<name>.json` (A1111's activation text) and
`<name>.preview.png` beside it, and the last sample grid in the gallery. It is usable at once:
`<lora:name:1>` in any prompt.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from engines.base import ParamError
from engines.diffusion.loading import DEFAULT_MODEL
from engines.training.lora_ensemble import check as ensemble_check
from studio.tasks import TaskResult, TaskSpec, check_fields, register
from studio.tasks.image import _gallery_image, _default_model, decode_image
from studio.uploads import is_upload_ref, open_upload

ENGINE = "diffusion"
FIELDS = ("name", "trigger", "image_ids", "images", "captions", "rank", "steps", "lr", "batch",
          "model", "seed", "overwrite", "prior_images", "trigger_vectors", "target",
          "train_text_encoder", "trigger_init", "snr_gamma", "snr_floor", "lr_schedule",
          "conv_rank", "background_weight", "gradient_checkpointing", "warmup_steps", "ensemble",
          "ensemble_gain")
MIN_IMAGES, MAX_IMAGES = 5, 30
EMBEDDED_GUIDANCE = 2.0  # the embedded model's suggested guidance (docs/sd-tiny.md)
# The settings a request leaves out. On the embedded model, the recipe benchmarks/lora.py
# measured best (run BQ, docs/diffusion.md): min-SNR-γ 5 with a 0.25 floor and the rate warmed
# up over the first fifth of the steps; with a "Like" word one run gave ring 0.72 and colour
# 0.90 over ten seeds, three of them meeting #15's target, so four runs are merged (`ensemble`,
# engines/training/lora_ensemble.py; benchmarks/lora_merge.py). Other models keep the plain
# settings and one run: batch 4 because
# training is fp32 (batch 2 of SD 1.5 at 512 px took 8.6 GiB on a GPU), and the floor and
# warm-up were measured on the embedded model only.
RECIPES = {"embedded": {"steps": 500, "batch": 8, "snr_gamma": 5.0, "snr_floor": 0.25,
                        "warmup": 0.2, "gradient_checkpointing": False, "ensemble": 4,
                        "ensemble_gain": 1.2},
           "other": {"steps": 400, "batch": 4, "snr_gamma": 0.0, "snr_floor": 0.0,
                     "warmup": 0.0, "gradient_checkpointing": True, "ensemble": 1,
                     "ensemble_gain": 1.0}}


def default_warmup(recipe: dict, steps) -> int:
    """The recipe's warm-up for a run of `steps` (0 for a bad `steps`: config.check names it)."""
    return int(recipe["warmup"] * steps) if isinstance(steps, int) else 0


@dataclass
class Prepared:
    name: str
    images: list[Image.Image]
    captions: list[str]
    config: Any  # engines.training.lora.LoraTrainConfig
    model: str
    target: Path
    overwrite: bool
    members: int = 1  # runs merged into the file (engines/training/lora_ensemble.py)
    gain: float = 1.0


def lora_dir(ctx) -> Path:
    return Path(ctx.config.models_dir) / "Lora"


def prepare(ctx, params: dict) -> Prepared:
    """Check and convert a request; raises ParamError naming the field. Loads no weights."""
    from engines.training.lora import LoraTrainConfig

    check_fields("train_lora", params, FIELDS)
    name = params.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", name):
        raise ParamError("name", f"`name` must be letters, digits, - or _ (a file name), got {name!r}")
    images = _images(ctx, params)
    model = params.get("model") or _default_model(ctx)
    if not isinstance(model, str):
        raise ParamError("model", f"`model` must be a model name, got {model!r}")
    embedded = model == DEFAULT_MODEL  # the recipe and the sample guidance were measured on it
    recipe = RECIPES["embedded" if embedded else "other"]
    trigger, steps = params.get("trigger"), params.get("steps", recipe["steps"])
    config = LoraTrainConfig(
        trigger=trigger.strip() if isinstance(trigger, str) else trigger,
        rank=params.get("rank", 8), steps=steps,
        lr=params.get("lr", 1e-3), batch=params.get("batch", recipe["batch"]),
        seed=params.get("seed", 0),
        prior_images=params.get("prior_images", 0),
        trigger_vectors=params.get("trigger_vectors", 0), target=params.get("target", "unet"),
        train_text_encoder=params.get("train_text_encoder", False),
        trigger_init=params.get("trigger_init", ""),
        snr_gamma=params.get("snr_gamma", recipe["snr_gamma"]),
        snr_floor=params.get("snr_floor", recipe["snr_floor"]),
        lr_schedule=params.get("lr_schedule", "constant"), conv_rank=params.get("conv_rank", 0),
        warmup_steps=params.get("warmup_steps", default_warmup(recipe, steps)),
        background_weight=params.get("background_weight", LoraTrainConfig.background_weight),
        gradient_checkpointing=params.get("gradient_checkpointing",
                                          recipe["gradient_checkpointing"]))
    config.check()  # the trainer's ranges, a ParamError naming the field, before anything runs
    members = params.get("ensemble", recipe["ensemble"])
    gain = params.get("ensemble_gain", recipe["ensemble_gain"] if members != 1 else 1.0)
    ensemble_check(members, gain)
    captions = _captions(params.get("captions"), len(images), config.trigger)
    _check_family(model)
    config.sample_every = max(1, config.steps // 4)
    config.checkpoint_every = max(1, min(50, config.steps // 10))
    config.sample_prompts = (config.trigger,) + tuple(sorted(set(captions)))[:3]
    config.sample_guidance = EMBEDDED_GUIDANCE if embedded else 7.0
    overwrite = params.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise ParamError("overwrite", f"`overwrite` must be true or false, got {overwrite!r}")
    target = lora_dir(ctx) / f"{name}.safetensors"
    if target.exists() and not overwrite:
        raise ParamError("name", f"a LoRA named {name!r} exists already; pick another `name` "
                         f"or set `overwrite`")
    if config.trigger_vectors:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", config.trigger):
            raise ParamError("trigger", f"`trigger` must be one word (letters, digits, - or _) "
                             f"to be saved as an embedding, got {config.trigger!r}")
        embedding = embedding_path(ctx, config.trigger)
        if embedding.exists() and not overwrite:
            raise ParamError("trigger", f"an embedding named {config.trigger!r} exists already; "
                             f"pick another `trigger` or set `overwrite`")
    return Prepared(name, images, captions, config, model, target, overwrite, members, gain)


def _check_family(model: str) -> None:
    """Refuse a diffusers folder of another family before the job is queued (a single file's
    family is read when it loads; engines.training.lora_text refuses it then)."""
    from engines.diffusion.loading import resolve_model

    try:
        source = resolve_model(model)
        index = json.loads((Path(source.location) / "model_index.json").read_text())
    except Exception:
        return  # not a readable folder: the loader reports the model itself
    name = index.get("_class_name")
    if name not in ("StableDiffusionPipeline", "StableDiffusionXLPipeline"):
        raise ParamError("model", f"LoRA training supports SD 1.x/2.x and SDXL base models; "
                         f"{Path(source.location).name} is a {name} model")


def embedding_path(ctx, trigger: str) -> Path:
    return Path(ctx.config.models_dir) / "embeddings" / f"{trigger}.safetensors"


def _images(ctx, params: dict) -> list[Image.Image]:
    ids, uploads = params.get("image_ids") or [], params.get("images") or []
    if not isinstance(ids, list) or not isinstance(uploads, list):
        raise ParamError("images", "`image_ids` and `images` must be lists")
    count = len(ids) + len(uploads)
    if not MIN_IMAGES <= count <= MAX_IMAGES:
        raise ParamError("images", f"training needs {MIN_IMAGES}..{MAX_IMAGES} images, got {count}")
    images = [_gallery_image(ctx, item_id, "image_ids") for item_id in ids]
    images += [open_upload(ctx, value, "images") if is_upload_ref(value)
               else decode_image(value, "images") for value in uploads]
    return [image.convert("RGB") for image in images]


def _captions(captions: Any, count: int, trigger: str) -> list[str]:
    if captions is None:
        return [trigger] * count
    if not isinstance(captions, list) or len(captions) != count or not all(
            isinstance(c, str) and len(c) <= 1000 for c in captions):
        raise ParamError("captions", f"`captions` must be a list of {count} texts, one per image")
    pattern = re.compile(rf"(?<!\w){re.escape(trigger)}(?!\w)", re.I)
    return [c.strip() if pattern.search(c) else f"{trigger}, {c.strip()}".rstrip(", ")
            for c in captions]


def validate(ctx, params: dict) -> None:
    prepare(ctx, params)


def run(ctx, params: dict, on_progress, cancel) -> TaskResult:
    from engines.diffusion.loading import RuntimeOptions, load_pipeline, resolve_model
    from engines.training.lora import save_kohya
    from engines.training.lora_ensemble import train_ensemble

    # 1. Check everything, then load a training copy of the model (the engine's stays as is).
    p = prepare(ctx, params)
    started = time.perf_counter()
    source = resolve_model(p.model)
    load = lambda: load_pipeline(source, ctx.engines.device, RuntimeOptions(half_precision=False))  # noqa: E731
    first = [load()]  # loaded before training: a model that does not load fails fast
    sdxl = getattr(first[0], "text_encoder_2", None) is not None
    run_dir = lora_dir(ctx) / ".runs" / p.name
    # 2. Train, each of the ensemble's runs on a copy of its own (an adapter stays in the model
    # it was put in); resumes from run_dir's checkpoints, Cancelled keeps them.
    result = train_ensemble(lambda: first.pop() if first else load(), p.images, p.captions,
                            p.config, p.members, p.gain, run_dir, on_progress, cancel)
    # 3. The LoRA file with kohya's metadata, A1111's sidecar and a preview, then the gallery.
    tags: dict[str, int] = {}
    for caption in p.captions:
        for tag in (t.strip() for t in caption.split(",")):
            tags[tag] = tags.get(tag, 0) + 1
    metadata = {"ss_output_name": p.name, "ss_network_module": "networks.lora",
                "ss_network_dim": p.config.rank * p.members,
                "ss_network_alpha": p.config.rank * p.members,
                "ss_base_model_version": "sdxl_base_v1-0" if sdxl else "sd_v1",
                "ss_num_train_images": len(p.images),
                "ss_steps": result.steps, "ss_learning_rate": p.config.lr,
                "ss_sd_model_name": Path(p.model).name,
                "ss_tag_frequency": json.dumps({p.name: tags}),
                "modelspec.trigger_phrase": p.config.trigger,
                "genstudio_ensemble": json.dumps({"runs": p.members, "gain": p.gain})}
    save_kohya(result.state_dict, p.target, metadata)
    if result.trigger_vectors is not None:  # A1111's embedding format, named by the trigger
        save_kohya({"emb_params": result.trigger_vectors.contiguous()},
                   embedding_path(ctx, p.config.trigger), {"trigger": p.config.trigger})
    p.target.with_suffix(".json").write_text(json.dumps(
        {"activation text": p.config.trigger, "preferred weight": 1,
         "description": f"Trained in GenStudio on {len(p.images)} images, {result.steps} steps"
                        + (f" ({p.members} runs merged)" if p.members > 1 else "")},
        indent=1))
    items = []
    if result.samples is not None:
        result.samples.save(p.target.with_suffix(".preview.png"))
        items = [ctx.gallery.add_image(
            result.samples, task="train_lora", engine=ENGINE, model=p.model,
            prompt=f"LoRA {p.name} ({p.config.trigger}): samples", params={
                "name": p.name, "trigger": p.config.trigger, "rank": p.config.rank,
                "steps": result.steps, "lr": p.config.lr, "images": len(p.images),
                "ensemble": p.members, "ensemble_gain": p.gain},
            duration_s=round(time.perf_counter() - started, 3))]
    shutil.rmtree(run_dir, ignore_errors=True)  # finished: the checkpoint is done with
    info = {"lora": p.name, "path": str(p.target), "trigger": p.config.trigger,
            "steps": result.steps, "resumed_from": result.resumed_from, "ensemble": p.members,
            "final_loss": round(sum(result.losses[-20:]) / max(1, len(result.losses[-20:])), 5),
            "seconds": round(time.perf_counter() - started, 1),
            "usage": f"<lora:{p.name}:1> {p.config.trigger}"}
    return TaskResult(item_ids=[i.id for i in items], images=[result.samples] if items else [],
                      text=None, info=info)


# The "training" lane: a worker of its own, without the device lock, so generation goes on.
register(TaskSpec("train_lora", ENGINE, validate, run,
                  "Train a LoRA on 5-30 of your own images (lands in models/Lora)",
                  lane="training"))
