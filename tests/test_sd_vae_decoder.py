"""The decoder-only VAE recipe (engines/training/sd_vae_decoder.py) on the embedded VAE: a few
steps change the decoder and nothing else, so the UNet's latent space is kept."""
from __future__ import annotations

import torch


def test_a_few_steps_train_the_decoder_and_leave_the_encoder(tmp_path):
    from diffusers import AutoencoderKL

    from engines.diffusion.loading import ALIASES, DEFAULT_MODEL
    from engines.training.sd_data import make_dataset
    from engines.training.sd_vae_decoder import decoder_parameters, edge_loss, finetune_decoder

    vae = AutoencoderKL.from_pretrained(f"{ALIASES[DEFAULT_MODEL]}/vae", torch_dtype=torch.float32)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    images, _ = make_dataset(16, 3, "train")
    losses = []
    finetune_decoder(vae, images, steps=3, batch=4, log=losses.append)
    after = vae.state_dict()
    decoder = {n for n, _ in vae.named_parameters() if n.startswith(("decoder.", "post_quant_conv."))}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= decoder  # the encoder and quant_conv are untouched
    assert len(decoder_parameters(vae)) == len(decoder)
    assert not any(p.requires_grad for p in vae.parameters())  # left frozen for inference
    assert losses and "decoder step 2" in losses[-1]

    flat = torch.zeros(1, 3, 8, 8)
    edge = flat.clone()
    edge[..., :, 4:] = 1.0
    assert edge_loss(flat, flat) == 0 and edge_loss(flat, edge) > 0


def test_the_shipped_sharp_decoder_keeps_sd_tinys_latent_space():
    """sd-tiny's VAE is the sharper decoder: the same encoder tensors as the VAE the UNet was
    trained with (assets/sd-tiny-vae-original), a new decoder."""
    from pathlib import Path

    from safetensors.torch import load_file

    assets = Path(__file__).resolve().parents[1] / "assets"
    base = load_file(assets / "sd-tiny-vae-original" / "diffusion_pytorch_model.safetensors")
    sharp = load_file(assets / "sd-tiny" / "vae" / "diffusion_pytorch_model.safetensors")
    assert base.keys() == sharp.keys()
    same = {k for k in base if torch.equal(base[k], sharp[k])}
    assert same == {k for k in base if k.startswith(("encoder.", "quant_conv."))}
