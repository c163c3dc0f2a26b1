"""Inputs that used to freeze or fill the server, one function at a time: decompression bombs and
other formats are refused from the header, PNG-info parsing is linear, template expansion is
bounded in bytes and nesting."""
from __future__ import annotations

import base64
import random
import time

import pytest
from hostile_payloads import SLOW_INFOTEXT, bomb_png, image_bytes, png_with_text

from studio.gallery.pnginfo import _PAIR, MAX_PAIRS, _pairs, parse_infotext, read_png_metadata
from studio.images import open_user_image


def test_decompression_bomb_is_refused_from_the_header():
    bomb = bomb_png(20_000)
    assert len(bomb) < 200_000  # small on the wire
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"`init_image` is too large.*400000000 pixels.*limit is"):
        open_user_image(bomb, name="init_image")
    with pytest.raises(ValueError, match=r"`mask` is too large: 8000x8000 = 64,000,000 pixels"):
        open_user_image(bomb_png(8000), name="mask")  # under Pillow's own bound, over ours
    assert time.perf_counter() - started < 0.5  # nothing was decoded


def test_only_five_formats_are_opened():
    for fmt in ("PNG", "JPEG", "WEBP", "BMP", "GIF"):
        assert open_user_image(image_bytes(fmt)).size == (8, 8)
    for fmt in ("TIFF", "PPM", "ICO", "TGA", "PCX"):
        with pytest.raises(ValueError, match="not a readable image: PNG, JPEG, WEBP, BMP or GIF"):
            open_user_image(image_bytes(fmt), name="mask")
    with pytest.raises(ValueError, match="damaged or truncated"):
        open_user_image(image_bytes("PNG", 64)[:-40])
    with pytest.raises(ValueError, match="empty"):
        open_user_image(b"")


def test_tasks_decode_base64_images_through_the_check():
    from studio.tasks.image import decode_image

    with pytest.raises(ValueError, match="too large"):
        decode_image(base64.b64encode(bomb_png()).decode(), "init_image")
    with pytest.raises(ValueError, match="readable image"):
        decode_image(base64.b64encode(image_bytes("TIFF")).decode(), "init_image")


def test_png_info_of_a_one_megabyte_text_chunk_is_fast():
    data = png_with_text(SLOW_INFOTEXT)
    started = time.perf_counter()
    metadata = read_png_metadata(open_user_image(data))
    elapsed = time.perf_counter() - started
    assert metadata["parameters"] == SLOW_INFOTEXT and elapsed < 0.5, elapsed
    for text in ("a" * (1 << 20), 'ab: "' + "x" * (1 << 20), 'ab: "x, ' * 130_000, "a " * 500_000):
        started = time.perf_counter()
        parse_infotext(text)
        assert time.perf_counter() - started < 0.5


def test_linear_parser_finds_exactly_what_a1111s_expression_finds():
    rng = random.Random(7)
    alphabet = ["a", "b", "_", " ", "-", "/", ":", ",", '"', "\\", "1", "\t", "é", "Steps: ", '"a, b"']
    for _ in range(20_000):
        line = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert _pairs(line) == _PAIR.findall(line)[:MAX_PAIRS], line
    real = "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64, Lora: \"a, b: c\""
    assert _pairs(real) == _PAIR.findall(real)
    assert parse_infotext("a cat\n" + real)["Lora"] == "a, b: c"


def test_template_expansion_is_bounded_in_jobs_bytes_and_nesting(tmp_path):
    from studio.jobs import expand

    started = time.perf_counter()
    with pytest.raises(ValueError, match="1,048,576 jobs; the limit is 10,000"):
        expand.expand_jobs({}, [{"prompt": "{a|b} " * 20}])  # a million jobs, refused uncounted
    with pytest.raises(ValueError, match="nest deeper than 32"):
        expand.expand_prompts("{" * 5000 + "a" + "}" * 5000)  # was a RecursionError (500)
    with pytest.raises(ValueError, match="characters together"):  # 4,096 prompts of 3,000 chars
        expand.expand_jobs({}, [{"prompt": "x" * 3000 + " {a|b}" * 12}])
    with pytest.raises(ValueError, match="template has 300,000 characters"):
        expand.count_prompts("a" * 300_000)
    with pytest.raises(ValueError, match="outside the wildcards folder"):
        expand.expand_prompts("__../../../../etc/passwd__", tmp_path)
    assert time.perf_counter() - started < 1.0
    assert len(expand.expand_prompts("{" * 30 + "a|b" + "}" * 30)) == 2  # deep but allowed
