"""A1111's prompt grammar: the parser on A1111's own documented examples, chunking of long
prompts with the real CLIP tokenizer, and the effect on generation (embedded model)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.diffusion.prompt_weights import parse_prompt_attention, tokenize_prompt

CLIP = Path(__file__).resolve().parents[1] / "assets" / "sd-configs" / "clip-tokenizer"


# A1111's modules/prompt_parser.py docstring examples, verbatim results.
@pytest.mark.parametrize("text, expected", [
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [["a ", 1.0], ["house", 1.5730000000000004], [" ", 1.1], ["on", 1.0], [" a ", 1.1],
      ["hill", 0.55], [", sun, ", 1.1], ["sky", 1.4641000000000006], [".", 1.1]]),
])
def test_a1111_documented_examples(text, expected):
    assert parse_prompt_attention(text) == expected


def test_square_brackets_break_and_escapes():
    assert parse_prompt_attention("[word]") == [["word", 1 / 1.1]]
    assert parse_prompt_attention("((word))") == [["word", 1.1 * 1.1]]
    assert parse_prompt_attention("a BREAK b") == [["a", 1.0], ["BREAK", -1], ["b", 1.0]]
    assert parse_prompt_attention("(a:1.3) \\(b\\)") == [["a", 1.3], [" (b)", 1.0]]
    assert parse_prompt_attention("") == [["", 1.0]]


@pytest.fixture(scope="module")
def clip():
    """SD's CLIP tokenizer, from the vocabulary the project ships (assets/sd-configs)."""
    import json

    from transformers import CLIPTokenizer

    vocab = json.loads((CLIP / "vocab.json").read_text(encoding="utf-8"))
    lines = (CLIP / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines[1:] if line]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77,
                         bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                         unk_token="<|endoftext|>", pad_token="<|endoftext|>")


def test_long_prompts_are_chunked_by_75_not_truncated(clip):
    prompt = " ".join(["red"] * 200)
    chunks, count = tokenize_prompt(prompt, clip)
    assert count == 200 and len(chunks) == 3
    assert all(len(c.tokens) == 75 for c in chunks)
    assert sum(t == clip.convert_tokens_to_ids("red</w>") for c in chunks for t in c.tokens) == 200


def test_break_and_comma_backtrack(clip):
    chunks, _ = tokenize_prompt("a cat BREAK a dog", clip)
    assert len(chunks) == 2
    assert chunks[1].tokens[:2] == clip("a dog", add_special_tokens=False)["input_ids"]
    # 70 words, a comma, 10 more words: the chunk ends at the comma and the 10 move on
    chunks, _ = tokenize_prompt(" ".join(["red"] * 70) + ", " + " ".join(["blue"] * 10), clip)
    comma = clip.convert_tokens_to_ids(",</w>")
    assert chunks[0].tokens[70] == comma and chunks[0].tokens[71] == clip.eos_token_id
    assert chunks[1].tokens[:10] == [clip.convert_tokens_to_ids("blue</w>")] * 10


def test_weights_follow_tokens(clip):
    chunks, _ = tokenize_prompt("a (red:1.5) [cat]", clip)
    weights = dict(zip(clip.convert_ids_to_tokens(chunks[0].tokens[:3]), chunks[0].weights[:3]))
    assert weights == {"a</w>": 1.0, "red</w>": 1.5, "cat</w>": pytest.approx(1 / 1.1)}


def test_weighting_keeps_the_mean(engine):
    import torch

    from engines.diffusion.extras import encode

    pipe = engine._pipes["txt2img"]
    plain, _, _ = encode(pipe, "a red circle on a blue background", [])
    heavy, _, _ = encode(pipe, "a (red:1.6) circle on a [blue] background", [])
    assert torch.allclose(plain.mean(), heavy.mean(), atol=1e-5)
    assert not torch.allclose(plain, heavy)


@pytest.fixture(scope="module")
def engine(tiny_engine):  # tests/wiring.py
    return tiny_engine


def _image(engine, prompt, negative=""):
    from engines.diffusion.engine import Txt2ImgParams

    result = engine.generate(Txt2ImgParams(prompt=prompt, negative_prompt=negative, seed=5,
                                           steps=3, guidance_scale=2.0))
    return np.asarray(result.images[0]).astype(int), result.info


def test_plain_prompt_gives_diffusers_own_pixels(engine):
    import torch

    from engines.diffusion.loading import make_scheduler

    ours, _ = _image(engine, "a green star at the top left")
    pipe = engine._pipes["txt2img"]
    pipe.scheduler = make_scheduler(engine._scheduler_config, "DPM++ 2M")
    theirs = pipe("a green star at the top left", negative_prompt="", num_inference_steps=3,
                  guidance_scale=2.0, generator=[torch.Generator().manual_seed(5)]).images[0]
    assert np.array_equal(ours, np.asarray(theirs).astype(int))
    same, _ = _image(engine, "a green (star:1.0) at the top left")
    assert np.array_equal(ours, same)  # weight 1 is a no-op, brackets are not read as text


def test_emphasis_and_words_past_the_window_change_the_image(engine):
    window = engine._pipes["txt2img"].tokenizer.model_max_length - 2
    base, info = _image(engine, "a green star at the top left")
    assert not np.array_equal(base, _image(engine, "a (green:1.4) star at the top left")[0])
    filler = ", ".join(["a green star at the top left"] * 30)  # ~200 tokens
    long_a, info = _image(engine, filler + ", red")
    long_b, _ = _image(engine, filler + ", blue")
    assert info["prompt_tokens"] > 200 > window and not info["warnings"]
    assert not np.array_equal(long_a, long_b)  # the last word, far past the window, counts
    # a long negative prompt is chunked too, and padded to the prompt's length
    _, info = _image(engine, "a red circle", negative=filler)
    assert not info["warnings"]


def test_sdxl_uses_both_text_encoders(tmp_path):
    from small_pipelines import build_sdxl_shaped

    from engines.diffusion.engine import DiffusionEngine
    from engines.diffusion.extras import encode

    engine = DiffusionEngine(str(build_sdxl_shaped(tmp_path / "xl")), device="cpu")
    engine.load()
    pipe = engine._pipes["txt2img"]
    # this tokenizer spells words out (3 tokens for "red"): 90 tokens, 2 chunks, BREAK a third
    states, pooled, _ = encode(pipe, " ".join(["red"] * 30) + " BREAK (blue:1.2)", [])
    assert states.shape == (1, 3 * 77, 64) and pooled.shape == (1, 16)
    a, _ = _image(engine, "a (red:1.3) circle, " * 8)
    assert a.shape == (64, 64, 3)
