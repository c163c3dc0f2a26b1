"""benchmarks/lora_seeds.py: runs benchmarks/lora.py per recipe and seed, and tabulates."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _load(script: str):
    """benchmarks/<script>.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{script}", REPO / "benchmarks" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _module():
    return _load("lora_seeds")


def _benchmark():
    return _load("lora")


def test_ring_rate_by_colour_and_background():
    from engines.training.sd_data import Scene

    scenes = [Scene("circle", c, b, "at the top right", "large")
              for c, b in (("green", "white"), ("green", "pink"), ("orange", "white"))]
    per = _load("lora_scenes").ring_by([True, False, True], scenes)
    assert per == {"colour": {"green": 0.5, "orange": 1.0}, "background": {"white": 1.0, "pink": 0.0}}


def test_every_split_holds_out_what_it_trains_on_and_the_prompts_follow_it():
    from engines.training.sd_data import BACKGROUNDS

    bench = _load("lora_scenes")
    light = {name for name, rgb in BACKGROUNDS.items() if sum(rgb) / 3 > 150}
    assert set(bench.SPLITS) == {"dark", "mixed"}
    for name, split in bench.SPLITS.items():
        for attr in ("colour", "background", "position"):  # never trained with a ring
            assert not set(split["train"][attr]) & set(split["held_out"][attr]), (name, attr)
        _, scenes = bench.held_out_prompts(24, split=name)
        _, captions = bench.training_set(12, split=name)
        assert {s.background for s in scenes} == set(split["held_out"]["background"])
        assert {s.colour for s in scenes} <= set(split["held_out"]["colour"])
        assert all(any(f"{b} background" in c for b in split["train"]["background"]) for c in captions)
    # "dark" holds out every light background; "mixed" trains on one and holds out one
    assert set(bench.SPLITS["dark"]["held_out"]["background"]) >= light
    assert {side: bool(set(bench.SPLITS["mixed"][side]["background"]) & light)
            for side in ("train", "held_out")} == {"train": True, "held_out": True}
    assert bench.held_out_prompts(8) == bench.held_out_prompts(8, split="dark")  # the default


def test_summary_counts_seeds_that_pass_both_targets():
    rows = [{"recipe": "a", "seed": 0, "ring": 0.85, "colour": 0.90, "missed": ["3: x", "10: y"]},
            {"recipe": "a", "seed": 1, "ring": 0.90, "colour": 0.80, "missed": ["10: y"]},  # colour misses
            {"recipe": "a", "seed": 2, "ring": 0.70, "colour": 0.95,  # ring misses
             "missed": ["2: z", "3: x", "10: y"]},
            {"recipe": "b", "seed": 0, "ring": 0.80, "colour": 0.85}]  # exactly on the line
    table = _module().summary(rows)
    assert table["a"] == {"seeds": 3, "ring": 0.817, "colour": 0.883, "passing": 1,
                          "rings": [0.85, 0.9, 0.7], "colours": [0.9, 0.8, 0.95],
                          "misses": {"10: y": 3, "3: x": 2, "2: z": 1}}
    assert list(table["a"]["misses"]) == ["10: y", "3: x", "2: z"]  # most missed first
    assert table["b"]["passing"] == 1 and table["b"]["misses"] == {}


@pytest.mark.slow
def test_a_tiny_sweep_runs_the_benchmark_and_skips_finished_runs(tmp_path, capsys):
    module = _module()
    argv = ["--seeds", "0", "--workers", "1", "--out", str(tmp_path),
            "--recipe", "tiny=--steps 3 --n 2 --sample-steps 2", "--", "--images", "4"]
    table = module.main(argv)
    report = json.loads((tmp_path / "tiny-s0" / "report.json").read_text())
    assert report["args"]["steps"] == "3" and report["args"]["seed"] == "0"
    assert report["args"]["images"] == "4" and report["args"]["batched_eval"] == "True"
    assert table["tiny"]["seeds"] == 1
    assert 0 <= report["detector"]["held_out_rings_through_vae"] <= 1  # the reachable ring rate
    lora = report["held_out"]["lora"]
    assert table["tiny"]["rings"] == [round(lora["concept"], 2)]
    # the ring rate per held-out colour and per background: weighted by their prompts, the whole
    scenes = _benchmark().held_out_prompts(2)[1]
    for attr in ("colour", "background"):
        per = lora["ring_by"][attr]
        count = {v: sum(getattr(s, attr) == v for s in scenes) for v in per}
        assert sum(count.values()) == 2
        assert sum(per[v] * count[v] for v in per) / 2 == pytest.approx(lora["concept"], abs=1e-3)
    assert len(lora["missed"]) == round(2 * (1 - lora["concept"]))
    assert table["tiny"]["misses"] == {q: 1 for q in lora["missed"]}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["common"] == ["--images", "4"] and summary["runs"][0]["seed"] == 0
    # a second call finds the report and does not train again
    (tmp_path / "tiny-s0" / "log.txt").write_text("kept")
    assert module.main(argv) == table
    assert (tmp_path / "tiny-s0" / "log.txt").read_text() == "kept"
