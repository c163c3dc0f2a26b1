"""The "train_lora" task on the embedded model: live loss and sample previews, cancel keeps a
checkpoint that the next run resumes from, the result is a kohya-layout LoRA in models/Lora
that the engine (by tag) and plain diffusers' load_lora_weights both apply."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from engines.base import CancelToken, Cancelled, ParamError
from studio.tasks import get_task, run_task, validate_task


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def rings(n: int) -> list[Image.Image]:
    out = []
    for i in range(n):
        image = Image.new("RGB", (64, 64), (30, 30, 30))
        draw = ImageDraw.Draw(image)
        x = 18 + 5 * i
        draw.ellipse([x - 14, 18, x + 14, 46], fill=(230, 40, 40))
        draw.ellipse([x - 7, 25, x + 7, 39], fill=(30, 30, 30))
        out.append(image)
    return out


def params(ctx, **extra) -> dict:
    uploaded = [ctx.gallery.add_image(im, task="upload", engine="", prompt="ring").id
                for im in rings(3)]
    return {"name": "ringy", "trigger": "gsring", "image_ids": uploaded,
            "images": [_b64(im) for im in rings(2)], "steps": 8, "rank": 4, "batch": 2,
            "captions": [f"a red gsring {k}" for k in ("one", "two", "three")] + ["a ring", ""],
            "prior_images": 2, "trigger_vectors": 1, "ensemble": 1,
            **extra}


def test_validation_names_the_field(ctx):
    assert get_task("train_lora").lane == "training"
    good = params(ctx)
    for change, field in (({"images": []}, "images"), ({"trigger": " "}, "trigger"),
                          ({"rank": 0}, "rank"), ({"name": "../x"}, "name"),
                          ({"captions": ["a"]}, "captions"), ({"lr": 5.0}, "lr"),
                          ({"snr_gamma": -1}, "snr_gamma"), ({"lr_schedule": "step"}, "lr_schedule"),
                          ({"snr_floor": 2}, "snr_floor"),
                          ({"conv_rank": 2.5}, "conv_rank")):
        with pytest.raises(ParamError) as error:
            validate_task(ctx, "train_lora", dict(good, **change))
        assert error.value.field == field
    for bad in (1.5, -0.1, True, "0.5", None):  # the trainer's range, 0..1
        with pytest.raises(ParamError) as error:
            validate_task(ctx, "train_lora", dict(good, background_weight=bad))
        assert error.value.field == "background_weight"
        assert str(error.value) == f"`background_weight` must be a number in 0..1, got {bad!r}"
    from engines.training.lora import LoraTrainConfig
    from studio.tasks.lora_training import prepare  # the task hands the trainer's options on

    options = {"snr_gamma": 5.0, "snr_floor": 0.25, "lr_schedule": "cosine", "conv_rank": 16,
               "background_weight": 0.3}
    config = prepare(ctx, dict(good, **options)).config
    assert {k: getattr(config, k) for k in options} == options
    # left out, it is the trainer's own default (no mask)
    assert prepare(ctx, good).config.background_weight == LoraTrainConfig.background_weight == 1.0


def test_left_out_settings_follow_the_measured_recipe_on_the_embedded_model(ctx, monkeypatch):
    from studio.tasks import lora_training

    good = {k: v for k, v in params(ctx).items() if k not in ("steps", "batch", "ensemble")}
    recipe = lambda c: (c.steps, c.batch, c.snr_gamma, c.snr_floor, c.warmup_steps)  # noqa: E731
    runs = lambda p: (p.members, p.gain)  # noqa: E731
    assert runs(lora_training.prepare(ctx, good)) == (4, 1.2)  # four seeds merged (lora_ensemble)
    assert runs(lora_training.prepare(ctx, dict(good, ensemble=2))) == (2, 1.2)
    assert runs(lora_training.prepare(ctx, dict(good, ensemble=1))) == (1, 1.0)
    # the embedded model (the test studio's default): benchmarks/lora.py's run BQ
    assert recipe(lora_training.prepare(ctx, good).config) == (500, 8, 5.0, 0.25, 100)
    # what the request gives wins
    given = dict(good, steps=7, batch=2, snr_gamma=0.0, snr_floor=0.0, warmup_steps=0)
    assert recipe(lora_training.prepare(ctx, given).config) == (7, 2, 0.0, 0.0, 0)
    # the warm-up is a fifth of the run unless given
    assert lora_training.prepare(ctx, dict(good, steps=50)).config.warmup_steps == 10
    assert lora_training.prepare(ctx, good).config.gradient_checkpointing is False
    assert lora_training.prepare(ctx, good).config.sample_guidance == 2.0  # sd-tiny's own
    # any other model: the plain settings, and activations recomputed (big models, fp32)
    monkeypatch.setattr(lora_training, "DEFAULT_MODEL", "some-other-model")
    assert recipe(lora_training.prepare(ctx, good).config) == (400, 4, 0.0, 0.0, 0)
    assert lora_training.prepare(ctx, good).config.gradient_checkpointing is True
    assert lora_training.prepare(ctx, good).config.sample_guidance == 7.0  # one notion of "embedded"
    assert runs(lora_training.prepare(ctx, good)) == (1, 1.0)
    off = dict(good, gradient_checkpointing=False)
    assert lora_training.prepare(ctx, off).config.gradient_checkpointing is False


def test_an_ensemble_job_merges_its_runs_into_one_file(ctx):
    """`ensemble` 2: two runs of 2 steps, one kohya file at twice the rank, the merged LoRA's
    samples in the gallery; the engine applies it by tag."""
    from safetensors import safe_open

    job = params(ctx, name="pair", ensemble=2, steps=2, prior_images=0, trigger_vectors=0)
    seen = []
    result = run_task(ctx, "train_lora", job, lambda p: seen.append((p.step, p.total)))
    assert result.info["ensemble"] == 2 and result.info["steps"] == 4 and seen[-1] == (4, 4)
    target = ctx.config.models_dir / "Lora" / "pair.safetensors"
    with safe_open(str(target), "pt") as handle:
        assert handle.metadata()["ss_network_dim"] == "8"  # rank 4, twice
        assert handle.get_tensor("lora_unet_up_blocks_1_resnets_0_conv1.lora_down.weight").shape[0] == 8
    assert result.item_ids and (target.with_suffix(".preview.png")).exists()
    assert "2 runs merged" in target.with_suffix(".json").read_text()
    base = dict(prompt="a red gsring", steps=3, seed=1, guidance_scale=2.0)
    plain = np.asarray(run_task(ctx, "txt2img", base).images[0])
    tagged = np.asarray(run_task(ctx, "txt2img", dict(base, prompt="a red gsring <lora:pair:1>")).images[0])
    assert not np.array_equal(plain, tagged)


def test_train_cancel_resume_and_use(ctx):
    # 1. Cancel after step 3: the checkpoint stays.
    token, messages, previews = CancelToken(), [], []

    def stop_at_3(progress):
        messages.append(progress.message)
        if progress.step == 3:
            token.cancel()

    with pytest.raises(Cancelled):
        run_task(ctx, "train_lora", params(ctx), stop_at_3, token)
    run_dir = ctx.config.models_dir / "Lora" / ".runs" / "ringy"
    assert (run_dir / "checkpoint.pt").exists()
    assert "loss" in messages[-1]

    # 2. Again: it resumes at step 3, reports loss and sample grids, writes the LoRA.
    def watch(progress):
        messages.append(progress.message)
        if progress.preview is not None:
            previews.append(progress.preview)

    result = run_task(ctx, "train_lora", params(ctx), watch)
    assert result.info["resumed_from"] == 3 and result.info["steps"] == 8
    assert previews and previews[-1].width >= 64
    target = ctx.config.models_dir / "Lora" / "ringy.safetensors"
    assert target.exists() and not run_dir.exists() and result.item_ids
    assert (target.with_suffix(".json")).exists()
    assert (ctx.config.models_dir / "embeddings" / "gsring.safetensors").exists()  # pivotal tuning

    # 3. kohya/A1111 keys, and the engine applies it by tag.
    from safetensors import safe_open

    with safe_open(str(target), "pt") as handle:
        keys = list(handle.keys())
        assert handle.metadata()["modelspec.trigger_phrase"] == "gsring"
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert any(k.endswith(".lora_down.weight") for k in keys) and any(k.endswith(".alpha") for k in keys)
    base = dict(prompt="a red gsring", steps=3, seed=1, guidance_scale=2.0)
    plain = np.asarray(run_task(ctx, "txt2img", base).images[0])
    tagged = np.asarray(run_task(ctx, "txt2img", dict(base, prompt="a red gsring <lora:ringy:1>"))
                        .images[0])
    assert not np.array_equal(plain, tagged)
    with pytest.raises(ParamError, match="exists already"):
        validate_task(ctx, "train_lora", params(ctx))

    # 4. Plain diffusers loads the same file.
    import torch
    from diffusers import StableDiffusionPipeline

    from engines.diffusion.loading import ALIASES, DEFAULT_MODEL

    pipe = StableDiffusionPipeline.from_pretrained(ALIASES[DEFAULT_MODEL], safety_checker=None,
                                                   requires_safety_checker=False)
    kwargs = dict(num_inference_steps=2, guidance_scale=2.0, output_type="np")
    before = pipe("a red gsring", generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.load_lora_weights(str(target))
    after = pipe("a red gsring", generator=torch.Generator().manual_seed(0), **kwargs).images
    assert not np.allclose(before, after)


# --- The trainer's loss and schedule options (engines/training/lora_loss.py) ---------------

def _fresh_pipe(tmp_path):
    """A pipeline of its own: training puts adapters into its UNet."""
    from diffusers import StableDiffusionPipeline

    from engines.diffusion.loading import ALIASES
    from engines.diffusion.random_weights import embedded_or_random

    model = embedded_or_random(tmp_path / "model")
    pipe = StableDiffusionPipeline.from_pretrained(ALIASES.get(model, model), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_loss_options_are_checked():
    from engines.training.lora import LoraTrainConfig

    for change in ({"background_weight": 1.5}, {"background_weight": True}, {"snr_gamma": -1},
                   {"lr_schedule": "step"}, {"conv_rank": -2}, {"conv_rank": 2.5},
                   {"trigger_lr": 0.5}, {"lora_dropout": 1.0}, {"lora_dropout": "0.1"},
                   {"snr_floor": -0.1}, {"snr_floor": 1.5}, {"stratified_timesteps": 1},
                   {"gradient_checkpointing": "yes"}, {"warmup_steps": -1}, {"warmup_steps": 2.5}):
        [(field, value)] = change.items()
        with pytest.raises(ValueError, match=repr(value).replace(".", r"\.")) as error:
            LoraTrainConfig(trigger="gsring", **change).check()
        assert error.value.field == field
    LoraTrainConfig(trigger="gsring", background_weight=0.0, snr_gamma=5, lr_schedule="cosine",
                    conv_rank=16).check()


def test_subject_mask_keeps_the_hole_and_zeroes_the_background():
    from engines.training.lora_loss import latent_weights, subject_masks

    masks = subject_masks(rings(2))
    assert masks.shape == (2, 64, 64) and masks.dtype == bool
    assert masks[0, 32, 18] and masks[0, 32, 4]  # the ring's hole (background colour) is subject
    assert not masks[0, 2, 2] and not masks[0, 60, 60]
    weights = latent_weights(masks, 16, 0.25)
    assert weights.shape == (2, 1, 16, 16)
    assert weights[0, 0, 8, 4] == 1.0 and weights[0, 0, 0, 0] == 0.25 and weights[0, 0, 15, 15] == 0.25
    # a subject pixel makes its 4x4-pixel cell and the cells around it (dilation 1) count
    dot = np.zeros((1, 64, 64), bool)
    dot[0, 33, 34] = True
    weights = latent_weights(dot, 16, 0.0)[0, 0]
    assert weights.sum() == 9 and weights[7:10, 7:10].sum() == 9
    blank = subject_masks([Image.new("RGB", (64, 64), "gray")])
    assert blank.all()  # nothing stands out: no weighting rather than no loss


def test_weighted_loss_and_snr_weights():
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from engines.training.lora_loss import snr_weights, weighted_mse

    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 4, 16, 16, generator=g), torch.randn(3, 4, 16, 16, generator=g)
    assert torch.allclose(weighted_mse(pred, target), F.mse_loss(pred, target))
    assert torch.allclose(weighted_mse(pred, target, torch.ones(3, 1, 16, 16)), F.mse_loss(pred, target))
    mask = torch.zeros(3, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 1
    moved = pred.clone()
    moved[:, :, :4] += 5  # outside the mask: no effect on the loss
    assert torch.allclose(weighted_mse(pred, target, mask), weighted_mse(moved, target, mask))
    assert not torch.allclose(weighted_mse(pred, target), weighted_mse(moved, target))
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    t = torch.tensor([5, 500, 990])
    assert torch.equal(snr_weights(scheduler, t, 0.0, False), torch.ones(3))
    w = snr_weights(scheduler, t, 5.0, False)
    assert w[0] < 0.1 and w[2] == 1.0  # nearly clean steps count less, noisy ones fully
    v = snr_weights(scheduler, t, 5.0, True)  # v-prediction: the noisiest steps count less too
    assert v[2] < 0.01 and v[1] > 0.05
    floored = snr_weights(scheduler, t, 5.0, True, floor=0.25)
    assert torch.allclose(floored, 0.25 + 0.75 * v) and floored.min() >= 0.25
    assert torch.equal(snr_weights(scheduler, t, 5.0, True, floor=1.0), torch.ones(3))


def test_stratified_timesteps_cover_the_range_and_plain_ones_are_unchanged():
    import torch

    from engines.training.lora_loss import timesteps

    g = torch.Generator().manual_seed(0)
    t = timesteps(8, 1000, g, stratified=True)
    assert sorted((t // 125).tolist()) == list(range(8))  # one in each eighth, in random order
    assert t.tolist() != sorted(t.tolist())
    assert torch.equal(timesteps(8, 1000, torch.Generator().manual_seed(1)),  # the default path
                       torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(1)))


def test_lr_schedules():
    import torch

    from engines.training.lora_loss import lr_factor, set_lr

    assert [lr_factor("constant", s, 10) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    assert lr_factor("cosine", 0, 10) == 1.0 and abs(lr_factor("cosine", 5, 10) - 0.5) < 1e-9
    assert lr_factor("linear", 5, 10) == 0.5 and lr_factor("linear", 10, 10) == 0.0
    # a linear warm-up first (no step at rate 0), then the schedule over the steps left
    assert [lr_factor("constant", s, 10, 4) for s in (0, 1, 3, 4, 9)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert lr_factor("cosine", 4, 10, 4) == 1.0 and abs(lr_factor("cosine", 7, 10, 4) - 0.5) < 1e-9
    opt = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1e-3},
                             {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 5e-3}])
    set_lr(opt, "linear", 3, 4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2.5e-4, 1.25e-3])
    set_lr(opt, "linear", 0, 4)  # from the base rate, not the last one
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 5e-3])


def test_train_with_mask_snr_schedule_and_conv_rank(tmp_path):
    from safetensors.torch import save_file

    from engines.training.lora import LoraTrainConfig, train_lora

    images, captions = rings(4), ["a red gsring"] * 4
    base = dict(trigger="gsring", rank=2, steps=3, batch=2, sample_every=0, target="unet")
    plain = train_lora(_fresh_pipe(tmp_path), images, captions, LoraTrainConfig(**base),
                       tmp_path / "plain")
    cfg = LoraTrainConfig(**base, conv_rank=4, background_weight=0.0, snr_gamma=5.0,
                          snr_floor=0.25, stratified_timesteps=True, lr_schedule="cosine",
                          lora_dropout=0.2)
    tuned_pipe = _fresh_pipe(tmp_path)
    tuned = train_lora(tuned_pipe, images, captions, cfg, tmp_path / "tuned")
    dropouts = {m.p for n, m in tuned_pipe.unet.named_modules() if ".lora_dropout." in n}
    assert dropouts == {0.2}  # peft's dropout on every LoRA branch
    # same seed, same draws: the first loss differs only by the weighting
    assert all(np.isfinite(tuned.losses)) and tuned.losses[0] != plain.losses[0]
    state = tuned.state_dict
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    attn = next(k.split(".")[0] for k in state if "attn1_to_q" in k)
    assert state[f"{conv}.lora_down.weight"].shape[0] == 4 and float(state[f"{conv}.alpha"]) == 4
    assert state[f"{attn}.lora_down.weight"].shape[0] == 2 and float(state[f"{attn}.alpha"]) == 2
    assert plain.state_dict[f"{conv}.lora_down.weight"].shape[0] == 2
    # plain diffusers loads the mixed-rank file and it changes the image
    import torch

    path = tmp_path / "mixed.safetensors"
    save_file(state, str(path))
    pipe = _fresh_pipe(tmp_path)
    kwargs = dict(num_inference_steps=2, guidance_scale=2.0, output_type="np", height=64, width=64)
    before = pipe("a red gsring", generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.load_lora_weights(str(path))
    after = pipe("a red gsring", generator=torch.Generator().manual_seed(0), **kwargs).images
    assert not np.allclose(before, after)


def test_targets_that_leave_the_text_projections_alone(tmp_path):
    from engines.training.lora import TARGET_MODULES
    from engines.training.lora_text import add_lora

    def adapted(target: str) -> set[str]:
        unet = _fresh_pipe(tmp_path).unet
        add_lora(unet, 2, TARGET_MODULES[target])
        return {name for name, module in unet.named_modules() if hasattr(module, "lora_A")}

    full, image, conv = adapted("unet"), adapted("unet_image"), adapted("conv")
    text_kv = {n for n in full if ".attn2.to_k" in n or ".attn2.to_v" in n}
    assert text_kv and image == full - text_kv  # everything but the layers that read the text
    assert conv and not any("attentions" in n for n in conv) and conv < full


def test_ema_saves_the_average_and_resumes_it(tmp_path):
    """With ema_decay the file holds the averaged weights (not the last step's), and a run cut
    at step 2 and started again saves exactly what an uncut run saves."""
    import torch

    from engines.base import CancelToken, Cancelled
    from engines.training.lora import LoraTrainConfig, train_lora

    images, captions = rings(2), ["a red gsring"] * 2
    base = dict(trigger="gsring", rank=2, steps=4, batch=2, sample_every=0, target="attention",
                checkpoint_every=1, lr=1e-2)
    plain = train_lora(_fresh_pipe(tmp_path), images, captions, LoraTrainConfig(**base),
                       tmp_path / "plain").state_dict
    cfg = LoraTrainConfig(**base, ema_decay=0.9)
    whole = train_lora(_fresh_pipe(tmp_path), images, captions, cfg, tmp_path / "whole").state_dict
    assert whole.keys() == plain.keys()
    assert any(not torch.equal(whole[k], plain[k]) for k in plain)  # the average, not the last

    token = CancelToken()
    with pytest.raises(Cancelled):
        train_lora(_fresh_pipe(tmp_path), images, captions, cfg, tmp_path / "cut",
                   on_loss=lambda step, loss: token.cancel() if step == 2 else None, cancel=token)
    again = train_lora(_fresh_pipe(tmp_path), images, captions, cfg, tmp_path / "cut")
    assert again.resumed_from == 2
    assert all(torch.allclose(again.state_dict[k], whole[k], atol=1e-6) for k in whole)


def test_gradient_checkpointing_trains_the_same_lora(tmp_path):
    """Recomputing the UNet's activations in the backward pass changes memory, not the maths."""
    from engines.training.lora import LoraTrainConfig, train_lora

    images, captions = rings(4), ["a red gsring"] * 4
    base = dict(trigger="gsring", rank=2, steps=3, batch=2, sample_every=2, target="unet")
    plain = train_lora(_fresh_pipe(tmp_path), images, captions, LoraTrainConfig(**base),
                       tmp_path / "plain")
    pipe = _fresh_pipe(tmp_path)
    saved = train_lora(pipe, images, captions, LoraTrainConfig(**base, gradient_checkpointing=True),
                       tmp_path / "checkpointed")
    assert pipe.unet.is_gradient_checkpointing  # it was on (and the samples still came out)
    assert saved.samples is not None and saved.losses == pytest.approx(plain.losses, rel=1e-4)
    for key, value in plain.state_dict.items():
        assert saved.state_dict[key].allclose(value, rtol=1e-3, atol=1e-6), key


def test_one_seed_is_one_run_with_trigger_vectors(tmp_path):
    """Two runs with one seed give the same LoRA and trigger vectors bit for bit (the vectors'
    starting noise once came from the global random state, so the same settings gave another
    LoRA each time); another seed gives another start."""
    import torch

    from engines.training.lora import LoraTrainConfig, train_lora

    images, captions = rings(2), ["a red gsring"] * 2
    cfg = dict(trigger="gsring", rank=2, steps=2, batch=2, sample_every=0, target="attention",
               trigger_vectors=1, trigger_init="circle")
    runs = []
    for seed, folder in ((3, "a"), (3, "b"), (4, "c")):
        torch.manual_seed(len(runs))  # a different global random state before each run
        runs.append(train_lora(_fresh_pipe(tmp_path), images, captions,
                               LoraTrainConfig(**cfg, seed=seed), tmp_path / folder))
    first, again, other = runs
    assert first.losses == again.losses and torch.equal(first.trigger_vectors, again.trigger_vectors)
    assert all(torch.equal(first.state_dict[k], again.state_dict[k]) for k in first.state_dict)
    assert not torch.equal(first.trigger_vectors, other.trigger_vectors)


def test_one_seed_is_one_run_with_lora_dropout(tmp_path):
    """peft's dropout draws from torch's global random state: with `lora_dropout` on, two runs
    of one seed still give the same LoRA bit for bit, whatever that state was before, and a
    run cut at step 2 and started again saves what an uncut run saves."""
    import torch

    from engines.base import CancelToken, Cancelled
    from engines.training.lora import LoraTrainConfig, train_lora

    images, captions = rings(2), ["a red gsring"] * 2
    cfg = LoraTrainConfig(trigger="gsring", rank=2, steps=4, batch=2, sample_every=0,
                          target="attention", lora_dropout=0.5, seed=5, checkpoint_every=1)
    runs = []
    for folder in ("a", "b"):
        torch.manual_seed(len(runs))  # a different global random state before each run
        runs.append(train_lora(_fresh_pipe(tmp_path), images, captions, cfg, tmp_path / folder))
    first, again = runs
    assert first.losses == again.losses
    assert all(torch.equal(first.state_dict[k], again.state_dict[k]) for k in first.state_dict)

    token = CancelToken()
    with pytest.raises(Cancelled):
        train_lora(_fresh_pipe(tmp_path), images, captions, cfg, tmp_path / "cut",
                   on_loss=lambda step, loss: token.cancel() if step == 2 else None, cancel=token)
    torch.manual_seed(7)
    resumed = train_lora(_fresh_pipe(tmp_path), images, captions, cfg, tmp_path / "cut")
    assert resumed.resumed_from == 2 and resumed.losses == pytest.approx(first.losses, abs=1e-5)
    assert all(torch.allclose(resumed.state_dict[k], first.state_dict[k], atol=1e-6) for k in first.state_dict)

