"""The sd-webui-controlnet extension's API, as its clients use it: ControlNet units in
`alwayson_scripts.controlnet.args` of /sdapi/v1/txt2img and /img2img, and its own routes.

    GET  /controlnet/model_list    {"model_list": ["sd-tiny-canny [1a2b3c4d]", ...]}
    GET  /controlnet/module_list   {"module_list": [...], "module_detail": {name: {model_free,
                                    sliders: [{name, value, min, max, step}]}}}
    GET  /controlnet/version       {"version": 3}      GET /controlnet/settings
    POST /controlnet/detect        runs a preprocessor: {"images": [base64 PNG], "info": "Success"}

A unit dict (the extension's names): `image` or `input_image` (base64, or {"image": base64}),
`module`, `model` ("name", "name [hash]", or a part of a name: the shortest model containing it,
as the extension matches), `weight`, `resize_mode` (0/1/2 or "Just Resize", "Crop and Resize",
"Resize and Fill" and their old aliases), `guidance_start`, `guidance_end`, `processor_res`,
`threshold_a`, `threshold_b`, `pixel_perfect`, `control_mode` (0/1/2 or its names: "Balanced",
"My prompt is more important", "ControlNet is more important"), `enabled` (false: skipped),
`save_detected_map` (false: its map is not sent back). Fields the studio has no use for
(low_vram, guess_mode, hr_option...) are ignored. Units become the image tasks' `controlnet`
params (studio/tasks/controlnet.py); the A1111 router stores their images once, outside the
gallery (studio/uploads.py), and the jobs refer to them by upload id.

Detected maps: as the extension does, a txt2img / img2img response's `images` end with each
unit's control map (after all generated images, once per request; with hires fix the final
size's map, then the first pass's), unless the unit says `save_detected_map: false`, the
request `send_images: false`, or the option `control_net_no_detectmap` is true.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends

from engines.base import ParamError
from engines.diffusion.control_modes import CONTROL_MODES
from studio.api.auth import require_auth

API_VERSION = 3  # the extension's /controlnet/version
MAX_UNITS = 4
RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
RESIZE_ALIASES = {"Inner Fit (Scale to Fit)": "Crop and Resize",
                  "Outer Fit (Shrink to Fit)": "Resize and Fill",
                  "Scale to Fit (Inner Fit)": "Crop and Resize",
                  "Envelope (Outer Fit)": "Resize and Fill"}
# extension name -> the task's unit field
UNIT_NAMES = {"model": "model", "module": "module", "weight": "weight",
              "guidance_start": "guidance_start", "guidance_end": "guidance_end",
              "guidance": "guidance_end", "processor_res": "processor_res",
              "threshold_a": "threshold_a", "threshold_b": "threshold_b",
              "pixel_perfect": "pixel_perfect"}


def _dirs(ctx) -> tuple[str, ...]:
    from studio.tasks.controlnet import controlnet_dirs

    return controlnet_dirs(ctx)


def closest_model(ctx, search: Any) -> str:
    """The extension's match: exact name, "name [hash]", any case, else the shortest model whose
    name contains `search`. ParamError when nothing matches."""
    from engines.diffusion.controlnet import find_models

    names = sorted(find_models(_dirs(ctx)))
    if not isinstance(search, str) or not search.strip() or search.strip() == "None":
        raise ParamError("controlnet", f"a ControlNet unit needs a `model` (see "
                         f"/controlnet/model_list), got {search!r}")
    bare = search.split(" [")[0].strip().lower()
    for name in names:
        if name.lower() == bare:
            return name
    containing = sorted((n for n in names if bare in n.lower()), key=len)
    if not containing:
        raise ParamError("controlnet", f"unknown ControlNet model {search!r}; known: "
                         f"{', '.join(names) or 'none'}")
    return containing[0]


def _resize_mode(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return RESIZE_MODES[value] if 0 <= value < 3 else "Just Resize"  # 3: "latent upscale"
    return RESIZE_ALIASES.get(value, value)


def _control_mode(value: Any, index: int) -> str:
    """The extension's control mode from its name or its number (0, 1, 2)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(CONTROL_MODES):
        return CONTROL_MODES[value]
    if value in CONTROL_MODES:
        return value
    raise ParamError("controlnet", f"ControlNet unit {index}: unknown `control_mode` {value!r}; "
                     f"use one of {', '.join(CONTROL_MODES)} (or 0, 1, 2)")


def _unit_image(unit: dict, index: int):
    from studio.tasks.image import decode_image

    value = unit.get("image") or unit.get("input_image")
    if isinstance(value, dict):  # the extension's {"image": ..., "mask": ...} form
        value = value.get("image")
    if value is None:
        raise ParamError("controlnet", f"ControlNet unit {index}: no `image` (or `input_image`) "
                         f"given")
    try:
        return decode_image(value, "image")
    except ValueError as error:
        raise ParamError("controlnet", f"ControlNet unit {index}: {error}") from None


def _unit_args(alwayson_scripts: Any) -> list[tuple[int, dict]]:
    """(index, unit) of the enabled units in `alwayson_scripts.controlnet.args`."""
    if not alwayson_scripts:
        return []
    if not isinstance(alwayson_scripts, dict):
        raise ParamError("controlnet", "`alwayson_scripts` must be an object")
    script = next((v for k, v in alwayson_scripts.items() if k.lower() == "controlnet"), None)
    if script is None:
        return []
    args = script.get("args") if isinstance(script, dict) else None
    if not isinstance(args, list):
        raise ParamError("controlnet", "`alwayson_scripts.controlnet.args` must be a list of "
                         "unit objects")
    for index, unit in enumerate(args):
        if not isinstance(unit, dict):
            raise ParamError("controlnet", f"ControlNet unit {index} must be an object")
    return [(i, u) for i, u in enumerate(args) if u.get("enabled", True) is not False]


def controlnet_units(ctx, alwayson_scripts: Any) -> list[dict]:
    """The task's `controlnet` units (images as PIL, stored later) from a request's
    `alwayson_scripts`; [] when it has none. ParamError("controlnet", ...) otherwise."""
    units = []
    for index, unit in _unit_args(alwayson_scripts):
        out = {name: unit[key] for key, name in UNIT_NAMES.items() if unit.get(key) is not None}
        out["model"] = closest_model(ctx, unit.get("model"))
        if unit.get("resize_mode") is not None:
            out["resize_mode"] = _resize_mode(unit["resize_mode"])
        if unit.get("control_mode") is not None:
            out["control_mode"] = _control_mode(unit["control_mode"], index)
        out["image"] = _unit_image(unit, index)
        units.append(out)
    if len(units) > MAX_UNITS:
        raise ParamError("controlnet", f"at most {MAX_UNITS} enabled ControlNet units")
    return units


def detected_maps(ctx, alwayson_scripts: Any, task: str, params: dict, item_ids: list[int],
                  options: dict) -> list[str]:
    """The control maps the extension appends to a response's `images` (base64 PNGs): one per
    unit with `save_detected_map` (default true) at the results' size, then, with hires fix, at
    the first pass's; none with the option `control_net_no_detectmap`. `params`: one run's
    task params (the units' images stored as uploads)."""
    from engines.diffusion.controlnet import control_image
    from studio.tasks.controlnet import control_units
    from studio.tasks.image import encode_image

    stored = params.get("controlnet") or []
    if options.get("control_net_no_detectmap") or not stored or not item_ids:
        return []
    wanted = [u.get("save_detected_map", True) is not False
              for _, u in _unit_args(alwayson_scripts)]
    units, _ = control_units(ctx, stored)
    item = ctx.gallery.get(item_ids[0])
    sizes = [(item.width, item.height)]
    if task == "hires" and item.params.get("first_pass_width"):  # the extension: hr map first
        sizes.append((item.params["first_pass_width"], item.params["first_pass_height"]))
    return [encode_image(control_image(unit, *size)) for unit, keep in zip(units, wanted)
            if keep for size in sizes]


# ------------------------------------------------------------------ the extension's routes
def model_list(ctx) -> list[str]:
    from engines.diffusion.controlnet import find_models

    return [entry.title for _, entry in sorted(find_models(_dirs(ctx)).items())]


def module_list(alias_names: bool = False) -> dict:
    from engines.diffusion.control_modules import ALIASES, MODULES

    labels = {name: alias for alias, name in ALIASES.items()}
    names = [labels.get(n, n) if alias_names else n for n in MODULES]
    detail = {shown: {"model_free": False,
                      "sliders": [s.api_json for s in MODULES[n].sliders]}
              for shown, n in zip(names, MODULES)}
    return {"module_list": names, "module_detail": detail}


def router(ctx) -> APIRouter:
    from fastapi import HTTPException

    api = APIRouter(prefix="/controlnet", tags=["ControlNet (sd-webui-controlnet)"],
                    dependencies=[Depends(require_auth(ctx))])

    @api.get("/version")
    def version() -> dict:
        return {"version": API_VERSION}

    @api.get("/model_list")
    def models(update: bool = True) -> dict:
        """ControlNets in models/ControlNet and the embedded ones, as "name [hash]"."""
        return {"model_list": model_list(ctx)}

    @api.get("/module_list")
    def modules(alias_names: bool = False) -> dict:
        """Preprocessors that run here (none of them needs a download)."""
        return module_list(alias_names)

    @api.get("/settings")
    def settings() -> dict:
        return {"control_net_unit_count": MAX_UNITS}

    @api.post("/detect")
    def detect(controlnet_module: str = Body("none"),
               controlnet_input_images: list[str] = Body([]),
               controlnet_processor_res: int = Body(-1),
               controlnet_threshold_a: float = Body(-1),
               controlnet_threshold_b: float = Body(-1)) -> dict:
        """Run a preprocessor on images: the control maps, as base64 PNGs."""
        from engines.diffusion.control_modules import ALIASES, MODULES, preprocess
        from studio.tasks.image import decode_image, encode_image

        if ALIASES.get(controlnet_module, controlnet_module) not in MODULES:
            raise HTTPException(422, detail="Module not available")
        if not controlnet_input_images:
            raise HTTPException(422, detail="No image selected")
        images = []
        try:
            for value in controlnet_input_images:
                image = decode_image(value, "controlnet_input_images")
                images.append(encode_image(preprocess(
                    controlnet_module, image, controlnet_processor_res, controlnet_threshold_a,
                    controlnet_threshold_b)))
        except ValueError as error:
            raise HTTPException(422, detail=str(error)) from None
        return {"images": images, "info": "Success"}

    return api
