"""benchmarks/lora_merge.py: runs made already, merged as the train_lora job merges its
`ensemble`, are the LoRA that benchmarks/lora.py --ensemble trains the job's way, and are judged
to the same figures."""
import json

import pytest
import torch

from tests.test_lora_seeds import _load


def test_groups_are_consecutive_and_whole():
    groups = _load("lora_merge").groups
    assert groups([0, 1, 2, 3, 4, 5, 6, 7, 8], 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert groups([10, 11], 1) == [[10], [11]] and groups([1, 2], 3) == []


@pytest.mark.slow
def test_merged_runs_are_what_an_ensemble_run_trains(tmp_path):
    from safetensors.torch import load_file

    bench, merge = _load("lora"), _load("lora_merge")
    tiny = ["--batched-eval", "--steps", "3", "--n", "4", "--sample-steps", "2", "--images", "4",
            "--lr", "2e-2", "--split", "mixed", "--grid", str(tmp_path / "g.png")]
    for seed in (5, 6):
        bench.main(tiny + ["--seed", str(seed), "--out", str(tmp_path / f"T-s{seed}")])
    direct = bench.main(tiny + ["--seed", "5", "--ensemble", "2", "--ensemble-gain", "1.2",
                                "--out", str(tmp_path / "E")])
    table = merge.main([str(tmp_path / "T"), "--seeds", "5", "6", "--size", "2", "--gain", "1.2",
                        "--n", "4", "--sample-steps", "2"])
    merged = merge.merge_runs([tmp_path / "T-s5", tmp_path / "T-s6"], 1.2, tmp_path / "M")
    for part in ("Lora", "embeddings"):  # the same files, the same trigger vectors
        ours = load_file(str(merged / part / "gsring.safetensors"))
        theirs = load_file(str(tmp_path / "E" / part / "gsring.safetensors"))
        assert ours.keys() == theirs.keys()
        assert all(torch.allclose(ours[k], theirs[k], atol=1e-6) for k in ours)
    row, lora = table["rows"][0], direct["held_out"]["lora"]
    assert row["seeds"] == [5, 6] and direct["args"]["ensemble"] == "2"
    assert (row["ring"], row["colour"]) == (round(lora["concept"], 3), round(lora["colour"], 3))
    assert table["merged"] == 1 and table["passing"] == int(row["passes"])
    assert table["split"] == "mixed"  # judged on the runs' own held-out prompts
    assert json.loads((tmp_path / "T-merged-2.json").read_text())["rows"][0]["seeds"] == [5, 6]


def test_runs_of_different_splits_are_not_merged(tmp_path):
    for seed, split in ((0, "dark"), (1, "mixed")):
        (tmp_path / f"R-s{seed}").mkdir()
        (tmp_path / f"R-s{seed}" / "report.json").write_text(json.dumps({"args": {"split": split}}))
    with pytest.raises(SystemExit, match="different splits"):
        _load("lora_merge").main([str(tmp_path / "R"), "--seeds", "0", "1", "--size", "2"])
