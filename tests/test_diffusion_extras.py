"""Embeddings, VAE choice and LoRAs through the image task: they change the output, are
refused with clear errors, and appear in the A1111 infotext as A1111 writes them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engines.base import ParamError
from studio.gallery.pnginfo import parse_infotext
from studio.tasks import run_task, validate_task

BASE = {"prompt": "a red circle on a blue background", "steps": 3, "seed": 9,
        "guidance_scale": 2.0}


@pytest.fixture
def models(ctx):
    root = ctx.config.models_dir
    for name in ("Lora", "embeddings", "VAE"):
        (root / name).mkdir(parents=True, exist_ok=True)
    return root


def _pixels(ctx, params) -> tuple[np.ndarray, str]:
    result = run_task(ctx, "txt2img", params)
    return np.asarray(result.images[0]).astype(int), result.info["infotexts"][0]


def _text_width(ctx) -> int:
    with ctx.engines.use("diffusion") as engine:
        return engine._pipes["txt2img"].text_encoder.config.hidden_size


def test_embedding_by_file_name_changes_the_image_and_is_recorded(ctx, models):
    width = _text_width(ctx)
    g = torch.Generator().manual_seed(0)
    save_file({"emb_params": torch.randn(2, width, generator=g)},
              str(models / "embeddings" / "glowy.safetensors"))  # A1111 .safetensors
    torch.save({"string_to_param": {"*": torch.randn(1, width, generator=g)}, "name": "old",
                "step": 500}, models / "embeddings" / "old.pt")  # A1111 .pt, plain tensors
    base, _ = _pixels(ctx, BASE)
    with_glowy, text = _pixels(ctx, dict(BASE, prompt=BASE["prompt"] + ", glowy"))
    without, _ = _pixels(ctx, dict(BASE, prompt=BASE["prompt"] + ", glowz"))
    assert not np.array_equal(with_glowy, without)
    assert "glowy: " in parse_infotext(text)["TI hashes"]
    with_old, text = _pixels(ctx, dict(BASE, prompt="Old, " + BASE["prompt"]))
    assert "old: " in parse_infotext(text)["TI hashes"]
    assert np.array_equal(_pixels(ctx, BASE)[0], base)  # nothing left in the text encoder


class Payload:  # any class: unpickling it would run code from the file's author
    pass


def test_pickled_embedding_is_refused(ctx, models):
    torch.save({"string_to_param": {"*": Payload()}}, models / "embeddings" / "evil.pt")
    with pytest.raises(ParamError, match="'evil'.*could not be read safely"):
        run_task(ctx, "txt2img", dict(BASE, prompt="an evil circle"))


def test_vae_choice_changes_the_image_and_is_recorded(ctx, models):
    with ctx.engines.use("diffusion") as engine:
        state = engine._pipes["txt2img"].vae.state_dict()
    tweaked = {k: (v * 1.3 if k.startswith("decoder.conv_out") else v).contiguous()
               for k, v in state.items()}
    save_file(tweaked, str(models / "VAE" / "bright.safetensors"))
    base, _ = _pixels(ctx, BASE)
    bright, text = _pixels(ctx, dict(BASE, vae="bright.safetensors"))
    assert not np.array_equal(base, bright)
    info = parse_infotext(text)
    assert info["VAE"] == "bright.safetensors" and len(info["VAE hash"]) == 10
    own, text = _pixels(ctx, dict(BASE, vae="Automatic"))
    assert np.array_equal(own, base) and "VAE" not in parse_infotext(text)
    with pytest.raises(ParamError, match="unknown `vae` 'nope'") as error:
        validate_task(ctx, "txt2img", dict(BASE, vae="nope"))
    assert error.value.field == "vae"
    save_file({"decoder.conv_out.weight": torch.zeros(3, 3, 3, 3)},
              str(models / "VAE" / "other.safetensors"))
    with pytest.raises(ParamError, match="VAE other.safetensors does not fit"):
        run_task(ctx, "txt2img", dict(BASE, vae="other.safetensors"))


def test_lora_hashes_in_the_infotext_and_family_checked_at_validation(ctx, models):
    from lora_files import make_lora

    from engines.diffusion.lora import addnet_hash

    with ctx.engines.use("diffusion") as engine:
        pipe = engine._pipes["txt2img"]
        path = make_lora(pipe, models / "Lora" / "styles" / "inky.safetensors", "kohya")
    base, _ = _pixels(ctx, BASE)
    tagged, text = _pixels(ctx, dict(BASE, prompt=BASE["prompt"] + " <lora:inky:0.8>"))
    assert not np.array_equal(base, tagged)
    info = parse_infotext(text)
    assert info["Lora hashes"] == f"inky: {addnet_hash(path)}"
    assert "<lora:inky:0.8>" in info["Prompt"]  # the tag stays in the prompt, as in A1111
    save_file({"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight":
               torch.zeros(4, 2048)}, str(models / "Lora" / "xl_style.safetensors"))
    with pytest.raises(ParamError, match="LoRA 'xl_style' was made for SDXL"):
        validate_task(ctx, "txt2img", dict(BASE, prompt="x <lora:xl_style:1>"))
    with pytest.raises(ParamError, match="unknown LoRA 'missing'; known: inky, xl_style"):
        validate_task(ctx, "txt2img", dict(BASE, prompt="x <lora:missing:1>"))


def test_vae_in_the_original_ldm_layout_loads_exactly(ctx, tmp_path):
    """A1111's VAE files (vae-ft-mse-840000-ema-pruned.safetensors...) use the LDM key names."""
    from ldm_checkpoint import vae_key_map

    from engines.diffusion.vae import load_vae

    with ctx.engines.use("diffusion") as engine:
        own = engine._pipes["txt2img"].vae
    state = own.state_dict()
    mapping = vae_key_map(list(state), len(own.config.block_out_channels))
    ldm = {"first_stage_model." + mapping[k]: v.contiguous() for k, v in state.items()}
    assert any(k.startswith("first_stage_model.encoder.down.0.") for k in ldm)
    save_file(ldm, str(tmp_path / "ldm_vae.safetensors"))
    loaded = load_vae(tmp_path / "ldm_vae.safetensors", own)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key
