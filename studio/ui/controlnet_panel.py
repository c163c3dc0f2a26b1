"""The ControlNet accordion of the Text to image and Inpaint tabs: a few units, each with a
control image, a preprocessor (module), a model, weight, start/end, resize mode and control
mode, and a "Preview map" button that shows the preprocessed map before generating.

    inputs = controlnet_panel.build(ctx, "txt2img")          # inside the tab's layout
    task, params = controlnet_panel.add_units(ctx, task, params, values)   # in the handler
    controlnet_panel.wire_fill(ctx, reuse_button, [ids, chosen], inputs)   # "Reuse parameters"

Thin: the map is made by engines/diffusion/control_modules.py (numpy and PIL, no torch); a
control image is stored once as an upload (studio/uploads.py) and the job refers to it by id.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import gradio as gr

from engines.diffusion.control_modes import CONTROL_MODES  # sd-webui-controlnet's (no torch)
from studio.ui.widgets import PRIVATE

UNITS = 2  # units shown; the engine and the A1111 API take up to four
FIELDS = ("enabled", "image", "module", "model", "weight", "guidance_start", "guidance_end",
          "resize_mode", "pixel_perfect", "control_mode")
RESIZE_MODES = ["Just Resize", "Crop and Resize", "Resize and Fill"]
# What a stored unit means when it leaves a field out (engines/diffusion/params.py ControlUnit).
UNIT_DEFAULTS = {"module": "none", "weight": 1.0, "guidance_start": 0.0, "guidance_end": 1.0,
                 "resize_mode": "Crop and Resize", "pixel_perfect": False,
                 "control_mode": "Balanced"}
CONTROL_INPUTS = UNITS * len(FIELDS)


def model_names(ctx) -> list[str]:
    from engines.diffusion.controlnet import find_models
    from studio.tasks.controlnet import controlnet_dirs

    return sorted(find_models(controlnet_dirs(ctx)))


def module_names() -> list[str]:
    from engines.diffusion.control_modules import MODULES

    return list(MODULES)


def _open(path, what: str):
    from studio.images import open_user_image

    try:
        return open_user_image(path, name=what)
    except ValueError as error:
        raise gr.Error(str(error)) from None


# ------------------------------------------------------------------ handlers
def preview_map(path, module: str, pixel_perfect: bool):
    """The control map the unit would use (at the image's own resolution with pixel perfect,
    else the module's default, as sd-webui-controlnet's preview does)."""
    from engines.diffusion.control_modules import preprocess

    if not path:
        raise gr.Error("Upload a control image first.")
    image = _open(path, "control image")
    try:
        return preprocess(module, image, min(image.size) if pixel_perfect else -1)
    except ValueError as error:
        raise gr.Error(str(error)) from None


def unit_params(ctx, values: Sequence[Any]) -> list[dict]:
    """The enabled units as the image tasks' `controlnet` list; each image stored once."""
    from studio.uploads import store_upload

    units = []
    for index in range(UNITS):
        unit = dict(zip(FIELDS, values[index * len(FIELDS):(index + 1) * len(FIELDS)]))
        if not unit.pop("enabled"):
            continue
        if not unit["image"]:
            raise gr.Error(f"ControlNet unit {index}: upload a control image (or disable it).")
        if not unit["model"]:
            raise gr.Error(f"ControlNet unit {index}: choose a model; put ControlNets in "
                           f"models/ControlNet.")
        unit["image"] = store_upload(ctx, _open(unit["image"], "control image"), "image")
        unit.update(weight=float(unit["weight"]), guidance_start=float(unit["guidance_start"]),
                    guidance_end=float(unit["guidance_end"]),
                    pixel_perfect=bool(unit["pixel_perfect"]))
        units.append(unit)
    return units


def add_units(ctx, task: str, params: dict, values: Sequence[Any]) -> tuple[str, dict]:
    units = unit_params(ctx, values)
    return task, (dict(params, controlnet=units) if units else params)


def _stored_image(ctx, unit: dict, index: int):
    """A stored unit's control image (a gallery item or an upload), or None with a warning when
    it is no longer kept."""
    from studio.uploads import is_upload_ref, open_upload

    try:
        if unit.get("image_id") is not None:
            return ctx.gallery.open_image(int(unit["image_id"]))
        if is_upload_ref(unit.get("image")):
            return open_upload(ctx, unit["image"])
    except (LookupError, OSError, ValueError):
        pass
    gr.Warning(f"ControlNet unit {index}: its control image is no longer stored; upload it "
               f"again.")
    return None


def item_units(ctx, item_id) -> list:
    """The panel's values (`FIELDS` per unit) from a gallery item's stored ControlNet units: each
    unit filled and enabled, the others disabled; gr.skip() where the item says nothing usable
    (no such item, a model or module not here any more)."""
    from engines.diffusion.control_modules import ALIASES, MODULES

    try:
        item = ctx.gallery.get(int(item_id))
    except (LookupError, TypeError, ValueError):
        return [gr.skip()] * CONTROL_INPUTS  # the tab's own handler says so
    stored = [u for u in (item.params or {}).get("controlnet") or [] if isinstance(u, dict)]
    if len(stored) > UNITS:
        gr.Warning(f"Item #{item.id} used {len(stored)} ControlNet units; the panel shows the "
                   f"first {UNITS}.")
    models = model_names(ctx)
    values: list = []
    for index in range(UNITS):
        if index >= len(stored):
            values += [False] + [gr.skip()] * (len(FIELDS) - 1)
            continue
        unit = dict(UNIT_DEFAULTS, **stored[index])
        module = ALIASES.get(unit["module"], unit["module"])
        model = str(unit.get("model", "")).split(" [")[0]
        if model not in models:
            gr.Warning(f"ControlNet unit {index}: model {model!r} is not in models/ControlNet.")
        filled = {"enabled": True, "image": _stored_image(ctx, unit, index),
                  "module": module if module in MODULES else gr.skip(),
                  "model": model if model in models else gr.skip()}
        values += [filled[f] if f in filled else unit[f] for f in FIELDS]
    return values


def wire_fill(ctx, button, inputs: list, units: list) -> None:
    """`button` fills the panel (`units`, build()'s inputs) from a gallery item: `inputs` are
    the results strip's [ids, chosen] ("Reuse parameters") or [a gallery id] ("Open")."""
    def fill(*values):
        from studio.ui.widgets import selected_item

        item_id = selected_item(*values) if len(values) == 2 else values[0]
        return item_units(ctx, item_id)

    button.click(fill, inputs, units, **PRIVATE)


def split(values: Sequence[Any]) -> tuple[tuple, tuple]:
    """(the tab's own values, the panel's) from one handler's inputs (the panel's come last)."""
    values = tuple(values)
    return values[:-CONTROL_INPUTS], values[-CONTROL_INPUTS:]


# ------------------------------------------------------------------ layout
def _unit(ctx, prefix: str, index: int, names: list[str]) -> list[gr.components.Component]:
    c: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=1, min_width=180):
            c["enabled"] = gr.Checkbox(label="Enable", value=False,
                                       elem_id=f"{prefix}-cn{index}-enabled")
            c["image"] = gr.Image(type="filepath", label="Control image", height=180,
                                  sources=["upload", "clipboard"],
                                  elem_id=f"{prefix}-cn{index}-image")
        with gr.Column(scale=1, min_width=180):
            preview = gr.Image(label="Control map", height=180, interactive=False,
                               elem_id=f"{prefix}-cn{index}-map")
            show = gr.Button("Preview map", size="sm", elem_id=f"{prefix}-cn{index}-preview")
    with gr.Row():
        c["module"] = gr.Dropdown(module_names(), value="canny", label="Preprocessor")
        default = next((n for n in names if "canny" in n), names[0] if names else None)
        c["model"] = gr.Dropdown(names, value=default, label="Model",
                                 elem_id=f"{prefix}-cn{index}-model")
    with gr.Row():  # A1111's names: weight, and the fraction of the steps the unit acts in
        for name, label, top, value in (("weight", "Control weight", 2, 1),
                                        ("guidance_start", "Starting step", 1, 0),
                                        ("guidance_end", "Ending step", 1, 1)):
            c[name] = gr.Slider(0, top, value=value, step=0.05, label=label)
    with gr.Row():
        c["resize_mode"] = gr.Radio(RESIZE_MODES, value="Crop and Resize", label="Resize mode")
        c["pixel_perfect"] = gr.Checkbox(label="Pixel perfect (preprocess at the image size)",
                                         value=True)
    c["control_mode"] = gr.Radio(list(CONTROL_MODES), value="Balanced", label="Control mode",
                                 elem_id=f"{prefix}-cn{index}-control-mode")
    show.click(preview_map, [c["image"], c["module"], c["pixel_perfect"]], preview, **PRIVATE)
    c["image"].upload(lambda _: True, c["image"], c["enabled"], **PRIVATE)  # an upload enables
    return [c[f] for f in FIELDS]


def build(ctx, prefix: str) -> list[gr.components.Component]:
    """The accordion (inside the caller's layout); returns the inputs, in `FIELDS` order per
    unit, for the caller's handler to pass to `add_units`."""
    names = model_names(ctx)
    inputs: list[gr.components.Component] = []
    with gr.Accordion(f"ControlNet ({len(names)} models)", open=False,
                      elem_id=f"{prefix}-controlnet"):
        gr.Markdown("Steer the layout with an edge map, scribble or sketch. Models: "
                    "`models/ControlNet` (diffusers folders or `.safetensors`) and the embedded "
                    "ones.", elem_classes="gs-muted")
        for index in range(UNITS):
            with gr.Tab(f"Unit {index}"):
                inputs += _unit(ctx, prefix, index, names)
    return inputs
