"""Upscaling engine (spandrel): `engine.py` (UpscaleEngine: load, tiled run, resize to target),
`params.py` (frozen, validated UpscaleParams), `catalog.py` (names: Lanczos / Nearest, the
embedded Real-ESRGAN networks under assets/upscalers, user files in A1111's model folders),
`tiling.py` (overlapping tiles blended with a feathered mask, so large images show no seams).

Empty on purpose: importing a submodule (e.g. `params`, `catalog`) must not import torch."""
