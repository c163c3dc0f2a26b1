"""ControlNet units in the image tasks' params (txt2img, img2img, inpaint, and the hires fix's
first pass): JSON-able dicts in, the engine's ControlUnits out, and the infotext lines.

    "controlnet": [{"model": "sd-tiny-canny", "image_id": 12, "module": "canny",
                    "weight": 1.0, "guidance_start": 0.0, "guidance_end": 1.0,
                    "resize_mode": "Crop and Resize", "processor_res": -1,
                    "threshold_a": -1, "threshold_b": -1, "pixel_perfect": false,
                    "control_mode": "Balanced"}]

  model          a ControlNet from <data>/models/ControlNet (folder or .safetensors name, "name
                 [hash]" accepted) or an embedded one (assets/controlnet)
  image_id|image the control image: a gallery item id, an upload id "upload:<sha256>"
                 (studio/uploads.py: the queue and the A1111 API store an inline image so), or
                 a base64 PNG/JPEG or data URL
  module         preprocessor: none (a ready map), canny, invert, scribble_xdog, lineart_standard
  the rest       as sd-webui-controlnet means them (engines/diffusion/params.py ControlUnit)

The infotext records each unit as the extension does:
  ControlNet 0: "Module: canny, Model: sd-tiny-canny [1a2b3c4d], Weight: 1.0, Resize Mode: ..."
"""
from __future__ import annotations

from typing import Any

from engines.base import ParamError

UNIT_FIELDS = ("model", "module", "weight", "guidance_start", "guidance_end", "resize_mode",
               "processor_res", "threshold_a", "threshold_b", "pixel_perfect", "control_mode")
# The extension's infotext fields, in its order (internal_controlnet/args.py infotext_fields).
INFOTEXT_FIELDS = ("module", "model", "weight", "resize_mode", "processor_res", "threshold_a",
                   "threshold_b", "guidance_start", "guidance_end", "pixel_perfect",
                   "control_mode")


def _unit_error(index: int, error: ValueError) -> ParamError:
    return ParamError("controlnet", f"ControlNet unit {index}: {error}")


def control_units(ctx, raw: Any) -> tuple[tuple, list[dict]]:
    """(engine ControlUnits, what the gallery stores) from a request's `controlnet` list;
    ParamError("controlnet", ...) naming the unit and its field otherwise. No weights load."""
    from engines.diffusion.params import ControlUnit
    from studio.tasks.image import _resolve_image
    from studio.uploads import is_upload_ref

    if raw is None:
        return (), []
    if not isinstance(raw, (list, tuple)):
        raise ParamError("controlnet", f"`controlnet` must be a list of units, got "
                         f"{type(raw).__name__}")
    units, stored = [], []
    for index, unit in enumerate(raw):
        if not isinstance(unit, dict):
            raise ParamError("controlnet", f"ControlNet unit {index} must be an object, got "
                             f"{type(unit).__name__}")
        unknown = sorted(set(unit) - set(UNIT_FIELDS) - {"image", "image_id"})
        if unknown:
            raise ParamError("controlnet", f"ControlNet unit {index}: unknown field(s) "
                             f"{', '.join(unknown)}; known: {', '.join(UNIT_FIELDS)}, "
                             f"image_id, image")
        try:
            image, image_id = _resolve_image(ctx, unit, "image")
            if image is None:
                raise ParamError("image", "a control image is required (`image_id` or `image`)")
            fields = {k: unit[k] for k in UNIT_FIELDS if unit.get(k) is not None}
            if "model" not in fields:
                raise ParamError("model", "`model` is required (see /controlnet/model_list)")
            units.append(ControlUnit(image=image, **fields))
        except ValueError as error:
            raise _unit_error(index, error) from None
        if image_id is not None:
            fields["image_id"] = image_id
        elif is_upload_ref(unit.get("image")):  # stored outside the gallery (studio/uploads.py)
            fields["image"] = unit["image"]
        stored.append(fields)
    return tuple(units), stored


def controlnet_dirs(ctx) -> tuple[str, ...]:
    """A1111's folder for ControlNets under <data>/models (the embedded ones are always seen)."""
    from studio.tasks.image import model_folders

    return model_folders(ctx, "ControlNet")


def check_units_fit(units, folders, model_dims: dict | None, model_name: str) -> None:
    """A ControlNet for another model family is refused before the job runs (headers only)."""
    from engines.diffusion.controlnet import check_fits, resolve

    if not units or not model_dims:
        return
    for index, unit in enumerate(units):
        try:
            check_fits(resolve(unit.model, folders), model_dims, model_name)
        except ValueError as error:
            raise _unit_error(index, error) from None


def infotext_settings(units, engine_info: dict) -> dict[str, str]:
    """{"ControlNet 0": "Module: canny, Model: name [hash], ..."} as the extension writes it."""
    from engines.diffusion.control_modules import get_module

    records = engine_info.get("controlnet") or []
    settings = {}
    for index, unit in enumerate(units):
        module = get_module(unit.module)
        values = {f: getattr(unit, f) for f in INFOTEXT_FIELDS}
        values["module"] = module.name
        if index < len(records):
            values["model"] = records[index]["model"]  # "name [hash]", as the model list shows
        for field, slider in (("processor_res", module.resolution),
                              ("threshold_a", module.threshold_a),
                              ("threshold_b", module.threshold_b)):
            if slider and values[field] == -1:  # the extension writes the default it used
                values[field] = slider.value
        text = ", ".join(f"{' '.join(w.capitalize() for w in f.split('_'))}: {values[f]}"
                         for f in INFOTEXT_FIELDS)
        settings[f"ControlNet {index}"] = text
    return settings
