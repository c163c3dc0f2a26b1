"""Turn a diffusers SD pipeline's weights into the single-file (LDM/SGM) key layout that A1111,
ComfyUI and civitai checkpoints use, so the single-file loader can be tested on the real key
layout without a downloaded checkpoint.

diffusers ships only the other direction (LDM -> diffusers); these maps are its inverse, and the
tests check them by loading the written file back through diffusers' own conversion.
"""
from __future__ import annotations

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
          ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
VAE_RESNET = [("conv_shortcut", "nin_shortcut")]
VAE_ATTENTION = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                 ("to_out.0", "proj_out")]


def _rename_inside(rest: str, pairs: list[tuple[str, str]]) -> str:
    for diffusers_name, ldm_name in pairs:
        if rest.startswith(diffusers_name + "."):
            return ldm_name + rest[len(diffusers_name):]
    return rest


def unet_key_map(keys, layers_per_block: int, num_blocks: int) -> dict[str, str]:
    """diffusers UNet2DConditionModel key -> LDM `openaimodel.UNetModel` key."""
    per_level = layers_per_block + 1  # LDM counts a level's resnets plus its down/upsampler
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    mapping = {}
    for key in keys:
        parts = key.split(".")
        module = ".".join(parts[:-1])  # these fixed modules hold only weight and bias
        if module in fixed:
            mapping[key] = f"{fixed[module]}.{parts[-1]}"
            continue
        kind, level, sub, index, rest = parts[0], int(parts[1]) if parts[1].isdigit() else None, \
            parts[2], parts[3] if len(parts) > 3 else None, ".".join(parts[4:])
        if kind == "down_blocks":
            if sub == "downsamplers":  # down_blocks.L.downsamplers.0.conv.weight
                target = f"input_blocks.{(level + 1) * per_level}.0.op.{'.'.join(parts[5:])}"
            else:
                block = 1 + level * per_level + int(index)
                slot = 0 if sub == "resnets" else 1
                inner = _rename_inside(rest, RESNET) if sub == "resnets" else rest
                target = f"input_blocks.{block}.{slot}.{inner}"
        elif kind == "up_blocks":
            if sub == "upsamplers":  # after the resnet, and after the attention if there is one
                block = level * per_level + layers_per_block
                has_attention = any(k.startswith(f"up_blocks.{level}.attentions.") for k in keys)
                target = f"output_blocks.{block}.{2 if has_attention else 1}.conv.{parts[-1]}"
            else:
                block = level * per_level + int(index)
                slot = 0 if sub == "resnets" else 1
                inner = _rename_inside(rest, RESNET) if sub == "resnets" else rest
                target = f"output_blocks.{block}.{slot}.{inner}"
        elif kind == "mid_block":  # mid_block.resnets.N.* / mid_block.attentions.0.*
            mid_rest = ".".join(parts[3:])
            if parts[1] == "resnets":
                target = f"middle_block.{2 * int(parts[2])}.{_rename_inside(mid_rest, RESNET)}"
            else:
                target = f"middle_block.1.{mid_rest}"
        else:
            raise KeyError(f"no LDM name for UNet key {key}")
        mapping[key] = target
    return mapping


def vae_key_map(keys, num_blocks: int) -> dict[str, str]:
    """diffusers AutoencoderKL key -> LDM `AutoencoderKL` key (the decoder's levels count up from
    the lowest resolution in LDM, down in diffusers)."""
    mapping = {}
    for key in keys:
        parts = key.split(".")
        if parts[0] in ("quant_conv", "post_quant_conv") or parts[1] in ("conv_in", "conv_out"):
            mapping[key] = key
            continue
        coder = parts[0]
        if parts[1] == "conv_norm_out":
            mapping[key] = f"{coder}.norm_out.{parts[-1]}"
        elif parts[1] == "mid_block":
            index, rest = int(parts[3]), ".".join(parts[4:])
            if parts[2] == "resnets":
                mapping[key] = f"{coder}.mid.block_{index + 1}.{_rename_inside(rest, VAE_RESNET)}"
            else:
                mapping[key] = f"{coder}.mid.attn_1.{_rename_inside(rest, VAE_ATTENTION)}"
        elif parts[1] in ("down_blocks", "up_blocks"):
            level = int(parts[2])
            ldm_level = level if coder == "encoder" else num_blocks - 1 - level
            ldm_group = "down" if coder == "encoder" else "up"
            if parts[3] in ("downsamplers", "upsamplers"):
                sampler = "downsample" if coder == "encoder" else "upsample"
                mapping[key] = f"{coder}.{ldm_group}.{ldm_level}.{sampler}.conv.{parts[-1]}"
            else:
                rest = _rename_inside(".".join(parts[5:]), VAE_RESNET)
                mapping[key] = f"{coder}.{ldm_group}.{ldm_level}.block.{parts[4]}.{rest}"
        else:
            raise KeyError(f"no LDM name for VAE key {key}")
    return mapping


def open_clip_state_dict(text_encoder_state: dict, prefix: str) -> dict:
    """A transformers CLIP text tower in OpenCLIP's layout (SD 2.x, SDXL's second encoder):
    fused q/k/v `in_proj`, `resblocks`, `c_fc`/`c_proj`, a bare `text_projection` matrix."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    import torch

    table = DIFFUSERS_TO_LDM_MAPPING["openclip"]
    state = {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
             for k, v in text_encoder_state.items()}
    out = {}
    for key, value in state.items():
        if key in table["layers"]:
            ldm = table["layers"][key]
            out[prefix + ldm] = value.T if ldm == "text_projection" else value
        elif key.startswith("text_model.encoder.layers."):
            layer, rest = key[len("text_model.encoder.layers."):].split(".", 1)
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                if rest.startswith("self_attn.q_proj."):  # fuse q, k, v once, at q
                    kind = rest.rsplit(".", 1)[1]
                    fused = torch.cat([state[f"text_model.encoder.layers.{layer}.self_attn."
                                             f"{p}_proj.{kind}"] for p in "qkv"])
                    out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}"] = fused
                continue
            for diffusers_name, ldm_name in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                                             ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"),
                                             ("self_attn.out_proj", "attn.out_proj")):
                rest = rest.replace(diffusers_name, ldm_name)
            out[f"{prefix}transformer.resblocks.{layer}.{rest}"] = value
        elif not key.endswith("position_ids"):
            raise KeyError(f"no OpenCLIP name for text-encoder key {key}")
    return out


def _clip_l(text_encoder_state: dict, prefix: str) -> dict:
    # transformers 5 dropped the `text_model.` level from CLIPTextModel's keys; files keep it
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v
            for k, v in text_encoder_state.items()}


def ldm_state_dict(parts, family: str = "v1", dtype=None) -> dict:
    """The single-file (LDM/SGM) state dict of a pipeline's parts (`unet`, `vae`,
    `text_encoder`, and for SDXL `text_encoder_2`) for family "v1", "v2" or "xl_base"."""
    unet = parts.unet.state_dict()
    vae = parts.vae.state_dict()
    out = {}
    unet_map = unet_key_map(list(unet), parts.unet.config.layers_per_block,
                            len(parts.unet.config.block_out_channels))
    for key, value in unet.items():
        out[UNET_PREFIX + unet_map[key]] = value
    vae_map = vae_key_map(list(vae), len(parts.vae.config.block_out_channels))
    for key, value in vae.items():
        if ".mid_block.attentions." in key and key.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's VAE attention uses 1x1 convolutions
        out[VAE_PREFIX + vae_map[key]] = value
    text = parts.text_encoder.state_dict()
    if family == "v1":
        out.update(_clip_l(text, CLIP_PREFIX))
    elif family == "v2":
        out.update(open_clip_state_dict(text, "cond_stage_model.model."))
    elif family == "xl_base":
        out.update(_clip_l(text, "conditioner.embedders.0.transformer."))
        out.update(open_clip_state_dict(parts.text_encoder_2.state_dict(),
                                        "conditioner.embedders.1.model."))
    else:
        raise ValueError(f"unknown `family` {family!r}")
    return {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in out.items()}


def family_parts(family: str, device: str = "meta", dtype=None):
    """A family's components built from the shipped configs (assets/sd-configs): on the meta
    device (real shapes and names, no memory; SDXL would need 10 GB) or with random weights."""
    from types import SimpleNamespace

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from engines.diffusion.single_file import config_folder

    folder = config_folder(family)
    parts = SimpleNamespace()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype or previous)  # fp16 lets a random SDXL fit beside its file
    try:
        with torch.device(device):
            parts.unet = UNet2DConditionModel.from_config(
                UNet2DConditionModel.load_config(folder / "unet"))
            parts.vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
            for name in ("text_encoder", "text_encoder_2"):
                if (folder / name).exists():
                    cls = CLIPTextModelWithProjection if name.endswith("2") else CLIPTextModel
                    setattr(parts, name, cls(CLIPTextConfig.from_pretrained(folder / name)))
    finally:
        torch.set_default_dtype(previous)
    return parts
