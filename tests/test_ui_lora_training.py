"""The "Train a LoRA" accordion's Advanced options (studio/ui/lora_training.py): closed, defaults
equal to the task's and the trainer's, wired to Start, and what the tab sends is what the
`train_lora` job gets; a bad value is the task's message naming the field, and keeps nothing."""
from __future__ import annotations

import gradio as gr
import pytest

from test_lora_training import rings


def _files(tmp_path, n: int = 5) -> list[str]:
    paths = []
    for i, image in enumerate(rings(n)):
        image.save(tmp_path / f"ring{i}.png")
        paths.append(str(tmp_path / f"ring{i}.png"))
    return paths


def test_advanced_is_closed_with_the_trainers_defaults_and_wired(ctx):
    from engines.training.lora import LoraTrainConfig
    from engines.training.lora_loss import SCHEDULES
    from studio.ui import lora_training

    with gr.Blocks() as demo:
        c = lora_training.build(ctx)
    advanced = next(b for b in demo.blocks.values()
                    if getattr(b, "elem_id", None) == "lora-train-advanced")
    assert advanced.open is False
    assert c["target"].value == "unet"  # the task's default (studio/tasks/lora_training.py)
    assert c["conv_rank"].value == LoraTrainConfig.conv_rank == 0
    # min-SNR and steps: the task's recipe for the embedded model (studio/tasks/lora_training.py)
    assert (c["snr_gamma"].value, c["snr_floor"].value, c["steps"].value) == (5.0, 0.25, 500)
    assert c["warmup_steps"].value == 100
    assert c["ensemble"].value == 4 and (c["ensemble"].minimum, c["ensemble"].maximum) == (1, 8)
    assert (c["snr_floor"].minimum, c["snr_floor"].maximum) == (0, 1)  # lora_loss's range
    assert c["lr_schedule"].value == LoraTrainConfig.lr_schedule == "constant"
    assert [choice[1] for choice in c["lr_schedule"].choices] == list(SCHEDULES)
    assert c["background_weight"].value == LoraTrainConfig.background_weight == 1.0
    assert (c["background_weight"].minimum, c["background_weight"].maximum) == (0, 1)  # lora_loss
    assert all(c[name].info for name in lora_training.ADVANCED)
    start = next(d for d in demo.config["dependencies"] if d["targets"][0][0] == c["start"]._id)
    advanced_ids = [c[name]._id for name in lora_training.ADVANCED]
    assert start["inputs"][-len(advanced_ids):] == advanced_ids


@pytest.mark.slow
def test_the_tabs_advanced_options_reach_the_job(studio, tmp_path, monkeypatch):
    from engines.training import lora
    from studio.ui.lora_training import ADVANCED, start_training

    seen = []  # the config the trainer itself is given (the task imports train_lora per run)
    train = lora.train_lora
    monkeypatch.setattr(lora, "train_lora", lambda pipe, images, captions, cfg, *rest:
                        seen.append(cfg) or train(pipe, images, captions, cfg, *rest))
    updates = list(start_training(studio, "ui-rings", "gsring", _files(tmp_path), "", 4, 2, 1e-3,
                                  "", "unet", 2, 5.0, 0.25, "cosine", 0.5, 1, 1))
    job_id = updates[0][0]
    assert "Saved: use `<lora:ui-rings:1> gsring`" in updates[-1][1]
    job = studio.queue.get(job_id)
    assert job.status == "completed"
    sent = {"target": "unet", "conv_rank": 2, "snr_gamma": 5.0, "snr_floor": 0.25,
            "lr_schedule": "cosine", "background_weight": 0.5, "warmup_steps": 1}
    assert {k: job.params[k] for k in ADVANCED} == dict(sent, ensemble=1)
    assert [{k: getattr(cfg, k) for k in sent} for cfg in seen] == [sent]  # one run, as sent


@pytest.mark.parametrize("advanced, message", [
    (("unet", 0, 500.0, 0.0, "constant", 1.0), "`snr_gamma` must be a number in 0..100, got 500.0"),
    (("unet", 0, None, 0.0, "constant", 1.0), "`snr_gamma` must be a number in 0..100, got None"),
    (("unet", 0, 0.0, 0.0, "step", 1.0), "`lr_schedule` must be one of constant, cosine, linear"),
    (("unet", 200, 0.0, 0.0, "constant", 1.0), "`conv_rank` must be a whole number in 0..128"),
    (("everything", 0, 0.0, 0.0, "constant", 1.0), "`target` must be one of"),
    (("unet", 0, 5.0, 1.5, "constant", 1.0), "`snr_floor` must be a number in 0..1, got 1.5"),
    (("unet", 0, 0.0, 0.0, "constant", 1.5), "`background_weight` must be a number in 0..1, got 1.5"),
    (("unet", 0, 0.0, 0.0, "constant", None), "`background_weight` must be a number in 0..1, got None"),
    (("unet", 0, 0.0, 0.0, "constant", 1.0, -5), "`warmup_steps` must be a whole number in 0..20000, got -5"),
    (("unet", 0, 0.0, 0.0, "constant", 1.0, 0, 9), "`ensemble` must be a whole number in 1..8, got 9"),
])
def test_a_bad_advanced_value_is_the_tasks_message_and_keeps_nothing(studio, tmp_path, advanced,
                                                                     message):
    from studio.ui.lora_training import start_training

    with pytest.raises(gr.Error) as refused:
        next(start_training(studio, "ui-rings", "gsring", _files(tmp_path), "", 4, 2, 1e-3, "",
                            *advanced))
    assert message in str(refused.value)
    assert studio.gallery.query().total == 0 and studio.queue.list() == []
