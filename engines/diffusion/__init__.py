"""Text-to-image engine (diffusers): `engine.py` runs pipelines; `params.py` holds the frozen,
validated parameters; `loading.py` finds and builds pipelines (folders, hub ids, single files via
`single_file.py`); `masks.py` inpaint/outpaint arithmetic; `speed.py` and `openvino.py` speed
options; `clip_score.py` best-of-N ranking; `random_weights.py` random-weight folders for tests.

Empty on purpose: importing a submodule (e.g. `params`) must not import torch."""
