"""engines/training/lora_ensemble.py: LoRA runs of several seeds merged into one kohya file."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.base import CancelToken, Cancelled, ParamError
from tests.test_lora_training import _fresh_pipe, rings


def _delta(state: dict, module: str) -> torch.Tensor:
    down, up = state[f"{module}.lora_down.weight"], state[f"{module}.lora_up.weight"]
    alpha = float(state[f"{module}.alpha"])
    return (up.flatten(1) @ down.flatten(1)) * alpha / down.shape[0]


def test_merge_adds_the_members_changes_at_their_share():
    from engines.training.lora_ensemble import merge

    g = torch.Generator().manual_seed(0)

    def member(alpha: float, conv: bool = True) -> dict:
        state = {"lora_unet_a.lora_down.weight": torch.randn(4, 6, generator=g),
                 "lora_unet_a.lora_up.weight": torch.randn(5, 4, generator=g),
                 "lora_unet_a.alpha": torch.tensor(alpha)}
        if conv:  # a convolution: down 3x3, up 1x1
            state.update({"lora_unet_c.lora_down.weight": torch.randn(4, 3, 3, 3, generator=g),
                          "lora_unet_c.lora_up.weight": torch.randn(2, 4, 1, 1, generator=g),
                          "lora_unet_c.alpha": torch.tensor(4.0)})
        return state

    one, two = member(4.0), member(2.0, conv=False)  # another alpha; a module only one has
    merged = merge([one, two], gain=1.2)
    assert merged["lora_unet_a.lora_down.weight"].shape == (8, 6)
    assert float(merged["lora_unet_a.alpha"]) == 8.0 and float(merged["lora_unet_c.alpha"]) == 4.0
    expected = 0.6 * (_delta(one, "lora_unet_a") + _delta(two, "lora_unet_a"))
    assert torch.allclose(_delta(merged, "lora_unet_a"), expected, atol=1e-5)
    assert torch.allclose(_delta(merged, "lora_unet_c"), 0.6 * _delta(one, "lora_unet_c"), atol=1e-5)
    assert merged["lora_unet_c.lora_up.weight"].shape == (2, 4, 1, 1)


def test_settings_are_checked_by_name():
    from engines.training.lora_ensemble import check

    check(4, 1.2)
    for members, gain, field in ((0, 1.0, "ensemble"), (9, 1.0, "ensemble"), (2.0, 1.0, "ensemble"),
                                 (True, 1.0, "ensemble"), (2, 3.0, "ensemble_gain"),
                                 (2, "1", "ensemble_gain")):
        with pytest.raises(ParamError) as error:
            check(members, gain)
        assert error.value.field == field


def test_a_merged_file_loads_in_diffusers_as_the_sum_of_its_members(tmp_path):
    """Two copies of one LoRA merged at gain 1 give that LoRA's pixels (alpha = stacked rank)."""
    from diffusers import StableDiffusionPipeline

    from engines.diffusion.loading import ALIASES, DEFAULT_MODEL
    from engines.training.lora import LoraTrainConfig, train_lora
    from engines.training.lora_ensemble import merge

    cfg = LoraTrainConfig(trigger="gsring", rank=2, steps=2, batch=2, sample_every=0, lr=5e-2)
    state = train_lora(_fresh_pipe(tmp_path), rings(2), ["a red gsring"] * 2, cfg, tmp_path / "r").state_dict

    def pixels(lora: dict | None) -> np.ndarray:
        pipe = StableDiffusionPipeline.from_pretrained(ALIASES[DEFAULT_MODEL], safety_checker=None,
                                                       requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        if lora is not None:
            pipe.load_lora_weights(dict(lora))
        return pipe("a red gsring", num_inference_steps=2, guidance_scale=2.0, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images

    single, doubled, base = pixels(state), pixels(merge([state, state], 1.0)), pixels(None)
    assert np.abs(single - base).max() > 1e-3  # the LoRA changes the image ...
    assert np.allclose(single, doubled, atol=1e-4)  # ... and the merge is that same change


def test_members_train_with_their_own_seeds_and_an_ensemble_resumes(tmp_path):
    from engines.training.lora import LoraTrainConfig, train_lora
    from engines.training.lora_ensemble import RESULT, merge, train_ensemble

    images, captions = rings(2), ["a red gsring"] * 2
    cfg = LoraTrainConfig(trigger="gsring", rank=2, steps=2, batch=2, sample_every=0, seed=7,
                          target="attention", trigger_vectors=1, trigger_init="circle",
                          checkpoint_every=1)
    load = lambda: _fresh_pipe(tmp_path)  # noqa: E731
    seen = []
    whole = train_ensemble(load, images, captions, cfg, 2, 1.2, tmp_path / "whole",
                           lambda p: seen.append((p.step, p.total, p.message)))
    alone = [train_lora(load(), images, captions, LoraTrainConfig(**{**cfg.__dict__, "seed": s}),
                        tmp_path / f"s{s}") for s in (7, 8)]
    expected = merge([r.state_dict for r in alone], 1.2)
    assert whole.state_dict.keys() == expected.keys()
    assert all(torch.equal(whole.state_dict[k], expected[k]) for k in expected)
    assert torch.equal(whole.trigger_vectors, (alone[0].trigger_vectors + alone[1].trigger_vectors) / 2)
    assert whole.steps == 4 and whole.resumed_from == 0 and whole.metadata == {"members": 2, "gain": 1.2}
    assert [s[:2] for s in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)] and seen[2][2].startswith("run 2/2")

    # Cut in the second member's first step: the first member's result stays, and the
    # ensemble started again trains only what was left, ending where the uncut one did.
    token = CancelToken()
    stop = lambda p: token.cancel() if p.step == 3 else None  # noqa: E731
    with pytest.raises(Cancelled):
        train_ensemble(load, images, captions, cfg, 2, 1.2, tmp_path / "cut", stop, token)
    assert (tmp_path / "cut" / "member-0" / RESULT).exists()
    assert not (tmp_path / "cut" / "member-1" / RESULT).exists()
    again = train_ensemble(load, images, captions, cfg, 2, 1.2, tmp_path / "cut")
    assert again.resumed_from == 3 and again.losses == pytest.approx(whole.losses, abs=1e-5)
    assert all(torch.allclose(again.state_dict[k], expected[k], atol=1e-6) for k in expected)

    # Started again with other settings, a finished member is not taken: it trains anew.
    other = LoraTrainConfig(**{**cfg.__dict__, "lr": 2e-3})
    changed = train_ensemble(load, images, captions, other, 2, 1.2, tmp_path / "cut")
    assert changed.resumed_from == 0 and changed.losses != again.losses

    # One member: train_lora itself, in run_dir.
    single = train_ensemble(load, images, captions, cfg, 1, 1.0, tmp_path / "one")
    assert all(torch.equal(single.state_dict[k], alone[0].state_dict[k]) for k in alone[0].state_dict)
