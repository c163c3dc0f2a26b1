"""LoRA files built from a pipeline's own module names, for tests: the kohya/A1111 key layout
and the diffusers/peft one, with random low-rank weights strong enough to change an image."""
from __future__ import annotations

from pathlib import Path

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def lora_modules(pipe, text: bool = True) -> dict[str, object]:
    """{"unet.<path>" | "text_encoder.<path>" | "text_encoder_2.<path>": nn.Linear} for the
    usual LoRA targets."""
    import torch

    found = {}
    parts = [("unet", pipe.unet, UNET_TARGETS)]
    if text:
        parts.append(("text_encoder", pipe.text_encoder, TEXT_TARGETS))
        if getattr(pipe, "text_encoder_2", None) is not None:
            parts.append(("text_encoder_2", pipe.text_encoder_2, TEXT_TARGETS))
    for prefix, model, targets in parts:
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.endswith(targets):
                found[f"{prefix}.{name}"] = module
    return found


def make_lora(pipe, path: Path, layout: str, rank: int = 4, scale: float = 0.5, seed: int = 0,
              text: bool = True) -> Path:
    """Write a LoRA for `pipe` in layout "kohya" or "diffusers"; returns the path."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    xl = getattr(pipe, "text_encoder_2", None) is not None
    modules = lora_modules(pipe, text)
    sgm = _sgm_names(pipe, modules) if xl else {}
    for key, module in modules.items():
        down = torch.randn(rank, module.in_features, generator=g) * scale / module.in_features ** 0.5
        up = torch.randn(module.out_features, rank, generator=g) * scale
        prefix, name = key.split(".", 1)
        if layout == "kohya":  # SD 1.x: diffusers UNet names; SDXL: the sgm UNet's names
            te = {"text_encoder": "lora_te1_" if xl else "lora_te_", "text_encoder_2": "lora_te2_"}
            name = sgm.get(name, name)
            base = ("lora_unet_" if prefix == "unet" else te[prefix]) + name.replace(".", "_")
            tensors[f"{base}.lora_down.weight"] = down
            tensors[f"{base}.lora_up.weight"] = up
            tensors[f"{base}.alpha"] = torch.tensor(float(rank))
        else:
            tensors[f"{key}.lora_A.weight"] = down
            tensors[f"{key}.lora_B.weight"] = up
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"ss_output_name": path.stem})
    return path


def _sgm_names(pipe, modules: dict) -> dict[str, str]:
    """diffusers UNet module path -> the sgm/LDM path kohya uses for SDXL LoRAs."""
    from ldm_checkpoint import unet_key_map

    keys = list(pipe.unet.state_dict())
    mapping = unet_key_map(keys, pipe.unet.config.layers_per_block,
                           len(pipe.unet.config.block_out_channels))
    return {key[:-len(".weight")]: value[:-len(".weight")] for key, value in mapping.items()
            if key.endswith(".weight") and f"unet.{key[:-len('.weight')]}" in modules}
