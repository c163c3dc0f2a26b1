"""benchmarks/lora_ablate.py: a benchmark LoRA with parts scaled, or weighted per step."""
import json
import re

import numpy as np
import pytest
import torch

from tests.test_lora_seeds import _load


def _module():
    return _load("lora_ablate")


def test_scale_rules_multiply_the_up_projection_of_the_first_matching_modules():
    module = _module()
    state = {f"lora_unet_{m}.{k}": torch.ones(2, 2)
             for m in ("up_blocks_1_resnets_0_conv1", "up_blocks_1_attentions_0_proj_in", "mid_block_resnets_0_conv1")
             for k in ("lora_up.weight", "lora_down.weight", "alpha")}
    out = module.scaled(state, module.parse_rules("up_blocks_1_resnets:0;up_blocks_1:1.5"))
    assert out.keys() == state.keys()
    assert out["lora_unet_up_blocks_1_resnets_0_conv1.lora_up.weight"].sum() == 0  # first rule wins
    assert out["lora_unet_up_blocks_1_attentions_0_proj_in.lora_up.weight"][0, 0] == 1.5
    assert out["lora_unet_mid_block_resnets_0_conv1.lora_up.weight"][0, 0] == 1  # no rule: kept
    assert all(out[k][0, 0] == 1 for k in state if not k.endswith("lora_up.weight"))
    assert module.parse_rules("") == []
    with pytest.raises(ValueError, match="REGEX:SCALE"):
        module.parse_rules("up_blocks_1")


def test_a_schedule_gives_each_step_its_weight():
    module = _module()
    points = module.parse_schedule("6:1,0:1.5")
    assert points == [(0, 1.5), (6, 1.0)]
    assert [module.weight_at(points, i) for i in (0, 5, 6, 19)] == [1.5, 1.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="step 0"):
        module.parse_schedule("3:1")


@pytest.mark.slow
def test_ablation_remakes_the_benchmark_images_and_its_controls_act(tmp_path):
    from safetensors.torch import load_file, save_file

    bench, module = _load("lora"), _module()
    report = bench.main(["--batched-eval", "--steps", "3", "--n", "2", "--sample-steps", "2",
                         "--images", "4", "--out", str(tmp_path / "run"), "--grid", str(tmp_path / "g.png")])
    table = module.main([str(tmp_path / "run"), "--n", "2", "--steps", "2", "--scale", "whole=",
                         "--schedule", "constant=0:1"])
    lora = report["held_out"]["lora"]
    for row in (table["scale"]["whole"], table["schedule"]["constant"]):  # the same images again
        assert (row["ring"], row["colour"]) == (round(lora["concept"], 3), round(lora["colour"], 3))
    assert json.loads((tmp_path / "run" / "ablate.json").read_text()) == json.loads(json.dumps(table))
    # pixels: a LoRA made strong enough to show, its parts off = weight 0; a schedule acts per step
    prompts = bench.held_out_prompts(2)[0]
    state = load_file(str(tmp_path / "run" / "Lora" / "gsring.safetensors"))
    strong, off = tmp_path / "strong" / "gsring.safetensors", tmp_path / "off" / "gsring.safetensors"
    for path, scale in ((strong, 300.0), (off, 0.0)):
        path.parent.mkdir()
        save_file(module.scaled(state, [(re.compile("."), scale)]), str(path))
    emb = tmp_path / "run" / "embeddings" / "gsring.safetensors"

    def images(lora, schedule):
        points = module.parse_schedule(schedule)
        out = bench.generate_batched(prompts, lora, 2, 2.0, emb, module.weight_at(points, 0),
                                     on_step=module.weight_setter(points))
        return np.stack([np.asarray(i) for i in out]).astype(int)

    on, zero, first_only = images(strong, "0:1"), images(strong, "0:0"), images(strong, "0:1,1:0")
    assert np.array_equal(zero, images(off, "0:1"))
    assert np.abs(on - zero).mean() > 1
    assert np.abs(first_only - on).mean() > 0.1 and np.abs(first_only - zero).mean() > 0.1
