"""The studio's "Use via API" surface: one named Gradio endpoint per workbench action, with
named, typed parameters — /txt2img, /img2img, /inpaint, /outpaint, /style, /chat, /code and
/queue_add. Every internal UI handler is registered with `api_visibility="private"` instead.

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    images = client.predict(prompt="a red star", steps=20, api_name="/txt2img")
    reply = client.predict(message="Name a colour.", api_name="/chat")

Each endpoint is a plain function here; `register` gives it a hidden input component per
parameter (chosen from its type: text, number, checkbox, JSON, image file) and a hidden output.
They submit a job through the same runner as the tabs (priority API), wait for it, and return
the saved gallery files or the text. Errors reach the client as the task's message.
"""
from __future__ import annotations

import inspect
import typing
from functools import partial
from typing import Any, NewType

import gradio as gr

from studio.ui.widgets import DEFAULT_MODEL, item_for_path

ImageFile = NewType("ImageFile", str)  # a file the client uploads (gradio_client.handle_file)
Images = list[tuple[str, str]]  # (file, caption) of each saved image
CHAT_MODEL = "smollm2-135m-instruct"


def run(ctx, task: str, params: dict, priority: int | None = None) -> dict:
    """Submit through the runner, wait, and return the result; failures as gr.Error."""
    from studio.jobs.runner import API, JobCanceled, JobFailed

    if getattr(ctx, "runner", None) is None:
        raise gr.Error("This studio runs without a job runner.")
    try:
        handle = ctx.runner.submit(task, params, priority=API if priority is None else priority)
        return handle.result()
    except ValueError as error:
        raise gr.Error(str(error)) from None
    except JobFailed as error:
        raise gr.Error(error.message) from None
    except JobCanceled:
        raise gr.Error("The job was canceled; nothing was saved.") from None


def _images(ctx, result: dict) -> Images:
    items = [ctx.gallery.get(i) for i in result["item_ids"]]
    return [(str(i.file_path), f"#{i.id} seed {i.seed}") for i in items if i.file_path]


def _image_param(ctx, params: dict, name: str, path: str | None) -> None:
    """An uploaded image as a gallery reference when it is one of ours, else decoded here, once:
    the queue's check stores it (studio/uploads.py) and the job row refers to it by id."""
    if not path:
        raise gr.Error(f"`{name}` is required: upload an image file.")
    item_id = item_for_path(ctx, path)
    if item_id is not None:
        params[f"{name}_id"] = item_id
    else:
        params[name] = _open(path, name)


def _open(path: str, name: str):
    from studio.images import open_user_image

    try:
        return open_user_image(path, name=name)
    except ValueError as error:
        raise gr.Error(str(error)) from None


def _sampling(prompt, negative_prompt, steps, cfg_scale, sampler, seed, batch_size, model) -> dict:
    params = {"prompt": prompt, "negative_prompt": negative_prompt, "steps": steps,
              "guidance_scale": cfg_scale, "scheduler": sampler, "seed": seed,
              "batch_size": batch_size}
    if model and model != DEFAULT_MODEL:
        params["model"] = model
    return params


# ------------------------------------------------------------------ the endpoints
def txt2img(ctx, prompt: str, negative_prompt: str = "", steps: int = 20, cfg_scale: float = 2.0,
            sampler: str = "DPM++ 2M", width: int = 64, height: int = 64, seed: int = -1,
            batch_size: int = 1, model: str = DEFAULT_MODEL) -> Images:
    """Text to image: the saved images (files) with their item ids and seeds."""
    params = _sampling(prompt, negative_prompt, steps, cfg_scale, sampler, seed, batch_size, model)
    return _images(ctx, run(ctx, "txt2img", {**params, "width": width, "height": height}))


def img2img(ctx, image: ImageFile, prompt: str, negative_prompt: str = "", strength: float = 0.75,
            steps: int = 20, cfg_scale: float = 2.0, sampler: str = "DPM++ 2M", seed: int = -1,
            batch_size: int = 1, model: str = DEFAULT_MODEL) -> Images:
    """Image to image: repaint `image` guided by the prompt (strength 0 keeps it, 1 ignores it)."""
    params = _sampling(prompt, negative_prompt, steps, cfg_scale, sampler, seed, batch_size, model)
    params["strength"] = strength
    _image_param(ctx, params, "init_image", image)
    return _images(ctx, run(ctx, "img2img", params))


def inpaint(ctx, image: ImageFile, mask: ImageFile, prompt: str, negative_prompt: str = "",
            strength: float = 0.75, steps: int = 20, cfg_scale: float = 2.0,
            sampler: str = "DPM++ 2M", seed: int = -1, mask_blur: int = 4,
            inpainting_fill: str = "original", model: str = DEFAULT_MODEL) -> Images:
    """Inpaint: repaint the white area of `mask` (same size as `image`)."""
    params = _sampling(prompt, negative_prompt, steps, cfg_scale, sampler, seed, 1, model)
    params.update(strength=strength, mask_blur=mask_blur, inpainting_fill=inpainting_fill)
    _image_param(ctx, params, "init_image", image)
    if not mask:
        raise gr.Error("`mask` is required: upload a mask image (white = repaint).")
    params["mask"] = _open(mask, "mask")
    return _images(ctx, run(ctx, "inpaint", params))


def outpaint(ctx, image: ImageFile, prompt: str, sides: list[str] = ("right",), pixels: int = 32,
             negative_prompt: str = "", steps: int = 20, cfg_scale: float = 2.0,
             sampler: str = "DPM++ 2M", seed: int = -1, model: str = DEFAULT_MODEL) -> Images:
    """Outpaint: extend `image` by `pixels` on each of `sides` (left, right, up, down)."""
    params = _sampling(prompt, negative_prompt, steps, cfg_scale, sampler, seed, 1, model)
    params.update(sides=list(sides or []), pixels=pixels, inpainting_fill="fill")
    _image_param(ctx, params, "init_image", image)
    return _images(ctx, run(ctx, "outpaint", params))


def style(ctx, image: ImageFile, style: str = "vintage", strength: float = 1.0,
          output_side: int = 0) -> Images:
    """Style transfer: restyle `image` with a GAN style id (see the Style transfer tab);
    output_side 0 keeps the input's size."""
    params: dict[str, Any] = {"style": style, "strength": strength,
                              "output_side": output_side or None}
    _image_param(ctx, params, "image", image)
    return _images(ctx, run(ctx, "style", params))


def chat(ctx, message: str, history: list[dict] = (), system_prompt: str = "",
         model: str = CHAT_MODEL, temperature: float = 0.7, max_new_tokens: int = 512,
         seed: int = -1) -> str:
    """Chat: one reply to `message` from a local language model (also saved to the gallery);
    `history`: the conversation before it, [{"role": "user" | "assistant", "content": ...}]."""
    params = {"model": model, "system_prompt": system_prompt, "temperature": temperature,
              "max_new_tokens": max_new_tokens, "seed": None if seed < 0 else seed,
              "messages": [*(history or []), {"role": "user", "content": message}]}
    return run(ctx, "chat", params).get("text") or ""


def code(ctx, description: str = "", mode: str = "write", language: str = "python",
         code: str = "", error: str = "", run_and_fix: bool = False, rounds: int = 3,
         model: str = CHAT_MODEL, max_new_tokens: int = 512, seed: int = -1) -> str:
    """Code: write (from `description`), explain or fix (`code`, `error`); with run_and_fix
    (Python) the code is run and its errors fed back for up to `rounds` rounds."""
    params = {"model": model, "mode": mode, "language": language, "run_and_fix": run_and_fix,
              "rounds": rounds, "max_new_tokens": max_new_tokens,
              "seed": None if seed < 0 else seed}
    fields = {"write": ("description",), "explain": ("code",), "fix": ("code", "error")}
    values = {"description": description, "code": code, "error": error}
    params.update({name: values[name] for name in fields.get(mode, ("description", "code"))})
    return run(ctx, "code", params).get("text") or ""


def queue_add(ctx, task: str, params: dict, priority: int = 0) -> int:
    """Queue one job of any task (txt2img, chat, style...) with its params; returns the job id
    at once (watch it in the Queue tab or GET /api/queue/{id})."""
    from studio.jobs.runner import BATCH

    if getattr(ctx, "runner", None) is None:
        raise gr.Error("This studio runs without a job runner.")
    try:
        return ctx.runner.submit(task, params or {}, priority=priority or BATCH).id
    except ValueError as error:
        raise gr.Error(str(error)) from None


ENDPOINTS = (txt2img, img2img, inpaint, outpaint, style, chat, code, queue_add)


# ------------------------------------------------------------------ registration
def _input(name: str, hint: Any, default: Any) -> gr.components.Component:
    """A hidden component that carries one parameter (its label is the parameter's name)."""
    value = None if default is inspect.Parameter.empty else default
    if hint is ImageFile:
        return gr.Image(type="filepath", label=name, visible=False)
    if hint is bool:
        return gr.Checkbox(value=value, label=name, visible=False)
    if hint in (int, float):
        return gr.Number(value=value, precision=0 if hint is int else None, label=name,
                         visible=False)
    if hint is str:
        return gr.Textbox(value=value, label=name, visible=False)
    return gr.JSON(value=list(value) if isinstance(value, tuple) else value, label=name,
                   visible=False)  # lists and dicts


def _output(hint: Any) -> gr.components.Component:
    if hint == Images:
        return gr.Gallery(label="images", visible=False)
    if hint is int:
        return gr.Number(precision=0, label="job_id", visible=False)
    return gr.Textbox(label="text", visible=False)


def register(ctx) -> None:
    """Inside the Blocks: one hidden button per endpoint, its click named after the function."""
    with gr.Group(visible=False, elem_id="gs-api"):
        for fn in ENDPOINTS:
            hints = typing.get_type_hints(fn)
            parameters = list(inspect.signature(fn).parameters.values())[1:]  # after ctx
            inputs = [_input(p.name, hints.get(p.name), p.default) for p in parameters]
            gr.Button(visible=False).click(
                partial(fn, ctx), inputs, _output(hints.get("return")), api_name=fn.__name__,
                api_description=inspect.getdoc(fn), concurrency_limit=None)
