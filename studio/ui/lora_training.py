""""Train a LoRA" in the image tabs: a `train_lora` job (the queue's training lane,
studio/tasks/lora_training.py) started, watched and canceled from here.

Uploaded pictures enter the gallery first (task "upload") and the job refers to them by id, so
it survives a restart and resumes from its checkpoint; it is listed in the Queue tab. The
status line carries the live loss, the image the latest grid of samples.
"""
from __future__ import annotations

from functools import partial

import gradio as gr

from studio.ui.widgets import PRIVATE, wire_cancel, follow_job


def _save_uploads(ctx, files) -> list[int]:
    from PIL import Image, UnidentifiedImageError

    ids = []
    for path in files or []:
        try:
            image = Image.open(path)
            image.load()
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"{path} is not a readable image ({error})") from None
        ids.append(ctx.gallery.add_image(image.convert("RGB"), task="upload", engine="",
                                         prompt="LoRA training image",
                                         params={"source": "LoRA training"}).id)
    return ids


# The "Advanced" accordion's trainer options, in the handler's order (task params of the same
# names; the task checks them and names a bad one).
ADVANCED = ("target", "conv_rank", "snr_gamma", "snr_floor", "lr_schedule", "background_weight",
            "warmup_steps", "ensemble")


def start_training(ctx, name, trigger, files, captions, rank, steps, lr, start_word="",
                   *advanced):
    """Yields (job id, status, samples) until the job ends; `advanced` are ADVANCED's values
    (none: the task's defaults)."""
    try:
        ids = _save_uploads(ctx, files)
    except ValueError as error:
        raise gr.Error(str(error)) from None
    lines = [line.strip() for line in (captions or "").splitlines() if line.strip()]
    params = {"name": (name or "").strip(), "trigger": (trigger or "").strip(), "image_ids": ids,
              "rank": int(rank), "steps": int(steps), "lr": float(lr)}
    if lines:
        params["captions"] = lines
    params.update(zip(ADVANCED, advanced))  # as given: a bad value gets the task's message
    if (start_word or "").strip():  # pivotal tuning from a known word (benchmarks/lora.py)
        params.update(trigger_vectors=1, trigger_init=start_word.strip())
    update = None
    try:
        for update in follow_job(ctx, "train_lora", params):
            text = (f"**{params['name']}** · job #{update.job_id} · "
                    + (update.message or update.status if update.status == "running"
                       else update.status))
            yield update.job_id, text, update.preview if update.preview is not None else gr.skip()
    except gr.Error:
        for item_id in ids:  # refused before it was queued: keep nothing
            ctx.gallery.delete(item_id)
        raise
    result = (update.result or {}).get("info") or {} if update else {}
    final = {"completed": f"Saved: use `{result.get('usage', '')}` in a prompt "
                          f"(refresh the LoRA list).",
             "canceled": "Canceled: the checkpoint is kept; start again with the same name to "
                         "resume.",
             "failed": f"⚠️ {update.error if update else ''}"}.get(
        update.status if update else "", "")
    yield None, f"**{params['name']}** · {final}", gr.skip()


def build(ctx) -> dict:
    c: dict = {}
    from studio.tasks.lora_training import RECIPES
    recipe = RECIPES["embedded"]  # the default model's; the job fills in the batch size

    with gr.Accordion("Train a LoRA", open=False, elem_id="lora-train"):
        gr.Markdown("5–30 pictures of one subject or style (more is better: 30 taught the "
                    "embedded model a new shape far more often than 16), on light and dark "
                    "backgrounds (a shape seen only on dark ones came out with a murky middle on "
                    "white), a trigger word that is not an "
                    "ordinary word, optional captions (one line per picture, in order). The "
                    "LoRA lands in `models/Lora`; use it as `<lora:name:1> trigger`. Runs as a "
                    "job on the queue's training lane; Cancel keeps a checkpoint, and starting "
                    "again with the same name resumes it. On the embedded model a few hundred "
                    "steps take minutes on a CPU.", elem_classes="gs-muted")
        with gr.Row():
            with gr.Column():
                c["name"] = gr.Textbox(label="LoRA name", placeholder="my_ring")
                c["trigger"] = gr.Textbox(label="Trigger word", placeholder="gsring")
                c["files"] = gr.File(label="Images", file_count="multiple", file_types=["image"])
                c["captions"] = gr.Textbox(label="Captions (optional, one per line)", lines=3)
                with gr.Row():
                    c["rank"] = gr.Slider(1, 64, value=8, step=1, label="Rank")
                    c["steps"] = gr.Slider(50, 3000, value=recipe["steps"], step=50, label="Steps")
                    c["lr"] = gr.Number(value=1e-3, label="Learning rate")
                c["start_word"] = gr.Textbox(
                    label="Like (optional): the nearest thing the model knows, e.g. circle",
                    info="The trigger then starts as that word and learns only the "
                         "difference, so colours, places and backgrounds still follow the "
                         "prompt. Saves the trigger as an embedding too.")
                _advanced(c, recipe)
                with gr.Row():
                    c["start"] = gr.Button("Start training", variant="primary",
                                           elem_id="lora-train-start")
                    c["cancel"] = gr.Button("Cancel", variant="stop", elem_id="lora-train-cancel")
            with gr.Column():
                c["status"] = gr.Markdown("*No training running.*", elem_id="lora-train-status")
                c["samples"] = gr.Image(label="Samples", interactive=False, height=260)
    job = gr.State(None)
    wire_cancel(ctx, c["cancel"], job)
    c["start"].click(partial(start_training, ctx),
                     [c["name"], c["trigger"], c["files"], c["captions"], c["rank"], c["steps"],
                      c["lr"], c["start_word"]] + [c[n] for n in ADVANCED],
                     [job, c["status"], c["samples"]],
                     concurrency_limit=None,
                     **PRIVATE)
    return c


def _advanced(c: dict, recipe: dict) -> None:
    """The closed "Advanced" accordion: ADVANCED's controls at the task's defaults (`recipe`,
    the embedded model's) and the trainer's (LoraTrainConfig)."""
    from engines.training.lora import LoraTrainConfig  # no torch at import
    from engines.training.lora_loss import SCHEDULES
    from studio.tasks.lora_training import default_warmup

    with gr.Accordion("Advanced", open=False, elem_id="lora-train-advanced"):
        # defaults: the task's (target, recipe) and the trainer's (LoraTrainConfig);
        # the targets the task documents (the trainer's others are experiments)
        c["target"] = gr.Dropdown(
            ["unet", "attention", "cross_attention"], value="unet", label="Layers",
            elem_id="lora-train-target",
            info="unet: attention, feed-forward and convolutions (a new shape "
                 "needs the convolutions); attention or cross_attention: only "
                 "those projections.")
        c["conv_rank"] = gr.Slider(
            0, 128, value=LoraTrainConfig.conv_rank, step=1, precision=0,
            label="Convolution rank", elem_id="lora-train-conv-rank",
            info="A rank of its own for the convolutions' LoRA (0 = Rank).")
        c["snr_gamma"] = gr.Number(
            value=recipe["snr_gamma"], label="Min-SNR γ",
            elem_id="lora-train-snr-gamma",
            info="Weights the loss by timestep so nearly clean steps count less "
                 "(0 = off, 5 usual): more of a new shape, less faithful colours.")
        c["snr_floor"] = gr.Slider(
            0, 1, value=recipe["snr_floor"], step=0.05, label="Min-SNR floor",
            elem_id="lora-train-snr-floor",
            info="With Min-SNR γ: the least weight a timestep keeps (0 = plain "
                 "min-SNR). Gives the noisiest steps, where colours are decided, "
                 "some weight back.")
        c["lr_schedule"] = gr.Dropdown(
            list(SCHEDULES), value=LoraTrainConfig.lr_schedule,
            label="Learning-rate schedule", elem_id="lora-train-lr-schedule",
            info="constant, or a cosine / linear decay to 0 over the steps.")
        c["warmup_steps"] = gr.Slider(
            0, 1000, value=default_warmup(recipe, recipe["steps"]), step=10, precision=0,
            label="Warm-up steps", elem_id="lora-train-warmup",
            info="The rate rises from 0 over these first steps (diffusers' and kohya's "
                 "lr_warmup_steps; a fifth of them on the embedded model, docs/diffusion.md).")
        c["background_weight"] = gr.Slider(
            0, 1, value=LoraTrainConfig.background_weight, step=0.05,
            label="Background weight", elem_id="lora-train-background-weight",
            info="Loss weight outside each image's subject (the pixels that differ "
                 "from the border colour; 1 = off). Lower hurt on the embedded "
                 "benchmark.")
        c["ensemble"] = gr.Slider(
            1, 8, value=recipe["ensemble"], step=1, precision=0, label="Runs merged",
            elem_id="lora-train-ensemble",
            info="Trains this many runs from different seeds and merges them into one LoRA: on "
                 "a few images one run's result depends on its seed (4 on the embedded model, "
                 "4 x the time; docs/diffusion.md).")
