"""The UNet on OpenVINO, for CPUs: an opt-in speed option (GENSTUDIO_OPENVINO=f32 or bf16).

Why: on this machine's AVX-512 CPU, PyTorch's own bf16 path is slower than fp32 (notes), while
OpenVINO's CPU plugin runs the same UNet in bf16 at about half the fp32 time, and in fp32 a
little faster than PyTorch with outputs equal to 1e-5. Measured per UNet call (SD 1.5
architecture, CFG batch 2, 2 cores): 512 px 9.6 s PyTorch, 8.5 s OpenVINO f32, 4.4 s OpenVINO
bf16; see docs/diffusion.md for per-image figures.

How: the UNet is traced once (on the first call, at a small latent size) and converted with
dynamic batch, height, width and prompt length (SDXL's pooled text embeddings and size ids are
two more inputs), then compiled for the CPU. `enable_openvino` swaps the module's `forward` for
one that calls the compiled model, and falls back to PyTorch for anything the traced graph does
not cover: ControlNet residuals and other extra inputs, latent sizes that need the UNet's
odd-size upsampling path, token merging and the step cache (both hook PyTorch modules), and
LoRAs (loaded into the PyTorch modules for one generation).
"""
from __future__ import annotations

import threading
import time
import warnings

from engines.base import EngineError

PRECISIONS = ("f32", "bf16")


class OpenVINOUNet:
    """The compiled UNet, converted on first use."""

    def __init__(self, unet, torch_forward, precision: str, threads: int) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown OpenVINO `precision` {precision!r}; known: "
                             f"{', '.join(PRECISIONS)}")
        self.unet, self.precision, self.threads = unet, precision, threads
        self.torch_forward = torch_forward  # the UNet's own forward, for tracing
        self.compiled = None
        self.convert_seconds: float | None = None
        self.calls = 0  # UNet calls OpenVINO answered (the rest went to PyTorch)
        self._lock = threading.Lock()
        # The UNet halves the latent this many times; other sizes take an odd-size path that
        # tracing cannot keep dynamic.
        self.multiple = 2 ** (len(unet.config.block_out_channels) - 1)
        # SDXL conditions on pooled text embeddings and 6 size/crop ids as well
        self.text_time = unet.config.addition_embed_type == "text_time"

    def _convert(self, dtype) -> None:
        import openvino as ov
        import torch

        config = self.unet.config
        unet, torch_forward = self.unet, self.torch_forward

        class Traced(torch.nn.Module):  # positional inputs only, for the tracer
            def __init__(self) -> None:
                super().__init__()
                self.unet = unet  # registers the weights with the traced module

            def forward(self, sample, timestep, encoder_hidden_states, *text_time):
                # the original forward: the patched one would call back into this runner
                added = dict(zip(("text_embeds", "time_ids"), text_time)) or None
                return torch_forward(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                                     added_cond_kwargs=added, return_dict=False)[0]

        started = time.perf_counter()
        side = 2 * self.multiple  # small: tracing runs the model once at this size
        example = (torch.zeros(2, config.in_channels, side, side, dtype=dtype),
                   torch.tensor([500.0, 500.0]),
                   torch.zeros(2, 77, config.cross_attention_dim, dtype=dtype))
        shapes = [ov.PartialShape([-1, config.in_channels, -1, -1]), ov.PartialShape([-1]),
                  ov.PartialShape([-1, -1, config.cross_attention_dim])]
        if self.text_time:
            pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
            example += (torch.zeros(2, pooled, dtype=dtype), torch.zeros(2, 6, dtype=dtype))
            shapes += [ov.PartialShape([-1, pooled]), ov.PartialShape([-1, 6])]
        with torch.no_grad(), warnings.catch_warnings():
            # the tracer warns at every shape-dependent `if` in diffusers' UNet; `covers` keeps
            # calls to the sizes those branches were traced for
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            model = ov.convert_model(Traced().eval(), example_input=example, input=shapes)
        # The hint must be explicit: OpenVINO picks bf16 by itself on CPUs that have it.
        self.compiled = ov.Core().compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": self.precision, "INFERENCE_NUM_THREADS": self.threads})
        self.convert_seconds = round(time.perf_counter() - started, 1)

    def covers(self, sample, encoder_hidden_states, kwargs: dict) -> bool:
        """Whether this call is one the traced graph computes as PyTorch would."""
        added = kwargs.get("added_cond_kwargs")
        if self.text_time != bool(added) or (added and set(added) != {"text_embeds", "time_ids"}):
            return False
        extras = ("timestep_cond", "cross_attention_kwargs",
                  "down_block_additional_residuals", "mid_block_additional_residual",
                  "down_intrablock_additional_residuals", "class_labels", "attention_mask",
                  "encoder_attention_mask")
        if any(kwargs.get(name) is not None for name in extras):
            return False
        if getattr(self.unet, "peft_config", None):  # a LoRA is loaded: the traced graph lacks it
            return False
        if sample.device.type != "cpu" or encoder_hidden_states is None:
            return False
        if sample.shape[-1] % self.multiple or sample.shape[-2] % self.multiple:
            return False
        tome = getattr(self.unet, "_genstudio_tome", None)
        cache = getattr(self.unet, "_genstudio_step_cache", None)
        return not (tome and tome["ratio"] > 0) and not (cache and cache.interval > 1)

    def __call__(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None):
        import torch

        with self._lock:
            if self.compiled is None:
                self._convert(sample.dtype)
        steps = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1)
        steps = steps.expand(sample.shape[0]).contiguous()
        inputs = [sample.float().numpy(), steps.numpy(), encoder_hidden_states.float().numpy()]
        if added_cond_kwargs:
            inputs += [added_cond_kwargs[k].float().numpy() for k in ("text_embeds", "time_ids")]
        output = self.compiled(inputs)[0]
        self.calls += 1
        return torch.from_numpy(output.copy()).to(sample.dtype)


def enable_openvino(unet, precision: str, threads: int) -> OpenVINOUNet:
    """Route this UNet's calls through OpenVINO where it covers them (see module docstring)."""
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    try:
        import openvino  # noqa: F401
    except ImportError as error:
        raise EngineError("GENSTUDIO_OPENVINO needs the `openvino` package "
                          "(pip install openvino)") from error
    torch_forward = unet.forward
    runner = OpenVINOUNet(unet, torch_forward, precision, threads)

    def forward(sample, timestep, encoder_hidden_states=None, *args, return_dict=True, **kwargs):
        if args or not runner.covers(sample, encoder_hidden_states, kwargs):
            return torch_forward(sample, timestep, encoder_hidden_states, *args,
                                 return_dict=return_dict, **kwargs)
        output = runner(sample, timestep, encoder_hidden_states, kwargs.get("added_cond_kwargs"))
        return UNet2DConditionOutput(sample=output) if return_dict else (output,)

    unet.forward = forward
    unet._genstudio_openvino = runner
    return runner
