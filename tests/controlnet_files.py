"""ControlNets for tests, with random weights in real layouts: a diffusers folder made from a
UNet (diffusers' `ControlNetModel.from_unet`), and the public SD 1.5 single-file layout
(lllyasviel's `control_model.` keys) written from a diffusers ControlNet, so the loader is tested
on the key layout real files have without downloading one."""
from __future__ import annotations

from pathlib import Path

from ldm_checkpoint import unet_key_map

LDM_PREFIX = "control_model."


def controlnet_from_unet(unet, seed: int = 0, scale: float = 0.05, **kwargs):
    """A ControlNet shaped like `unet` whose zero convolutions are not zero (a fresh one would
    leave the output unchanged), so it visibly steers a generation."""
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, **kwargs)
    for module in (controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
        for parameter in module.parameters():
            torch.nn.init.normal_(parameter, std=scale)
    # The hint encoder at He scale (diffusers' default init nearly ignores the image) and its
    # last convolution not zero, so the control image itself moves the residuals.
    for conv in controlnet.controlnet_cond_embedding.modules():
        if isinstance(conv, torch.nn.Conv2d):
            fan_in = conv.weight[0].numel()
            torch.nn.init.normal_(conv.weight, std=(2 / fan_in) ** 0.5)
    return controlnet


def ldm_controlnet_state_dict(controlnet) -> dict:
    """diffusers ControlNetModel keys -> the ControlNet 1.0/1.1 single-file keys."""
    state = controlnet.state_dict()
    shared = [k for k in state if not k.startswith("controlnet_")]
    mapping = unet_key_map(shared, controlnet.config.layers_per_block,
                           len(controlnet.config.block_out_channels))
    blocks = len(controlnet.controlnet_cond_embedding.blocks)
    for key in state:
        parts = key.split(".")
        if key.startswith("controlnet_cond_embedding.conv_in."):
            mapping[key] = f"input_hint_block.0.{parts[-1]}"
        elif key.startswith("controlnet_cond_embedding.blocks."):
            mapping[key] = f"input_hint_block.{2 * (int(parts[2]) + 1)}.{parts[-1]}"
        elif key.startswith("controlnet_cond_embedding.conv_out."):
            mapping[key] = f"input_hint_block.{2 * (blocks + 1)}.{parts[-1]}"
        elif key.startswith("controlnet_down_blocks."):
            mapping[key] = f"zero_convs.{parts[1]}.0.{parts[-1]}"
        elif key.startswith("controlnet_mid_block."):
            mapping[key] = f"middle_block_out.0.{parts[-1]}"
    return {LDM_PREFIX + mapping[k]: v.contiguous() for k, v in state.items()}


def write_ldm_controlnet(controlnet, path: Path, dtype=None) -> Path:
    from safetensors.torch import save_file

    state = ldm_controlnet_state_dict(controlnet)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def build_sd15_pipeline_128(folder: Path) -> Path:
    """small_pipelines' SD 1.5-shaped pipeline with a 4-level VAE (latents 1/8 of the image, as
    SD 1.5), so an SD 1.5-layout ControlNet's hint encoder lands on its latent grid."""
    import torch
    from diffusers import AutoencoderKL

    from small_pipelines import build_sd15_shaped

    build_sd15_shaped(folder)
    torch.manual_seed(1)
    vae = AutoencoderKL(block_out_channels=(16, 32, 32, 32), in_channels=3, out_channels=3,
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4,
                        layers_per_block=1, norm_num_groups=8, sample_size=128)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    return folder
