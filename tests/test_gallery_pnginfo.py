"""A1111 infotext: exact layout, quoting, and parsing back."""
from PIL import Image

from studio.gallery.pnginfo import format_infotext, parse_infotext, png_bytes_with_metadata, read_png_metadata


def test_exact_a1111_layout():
    text = format_infotext("a cat", "dog", {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7,
                                            "Seed": 1, "Size": "512x512", "Model hash": "abc123",
                                            "Model": "tiny", "Skipped": None})
    assert text == ("a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, CFG scale: 7, "
                    "Seed: 1, Size: 512x512, Model hash: abc123, Model: tiny")


def test_round_trip_with_quoting_and_multiline_prompt():
    settings = {"Steps": 30, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 5.5,
                "Seed": 42, "Size": "64x48", "Model": "a, model: with commas"}
    text = format_infotext("line one\nline two, with comma", "neg one\nneg two", settings)
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "line one\nline two, with comma"
    assert parsed["Negative prompt"] == "neg one\nneg two"
    assert parsed["Model"] == "a, model: with commas"
    assert parsed["Schedule type"] == "Karras" and parsed["Steps"] == "30"
    assert (parsed["Size-1"], parsed["Size-2"]) == ("64", "48")


def test_prompt_only_text_is_all_prompt():
    assert parse_infotext("just a prompt")["Prompt"] == "just a prompt"


def test_png_carries_both_chunks():
    data = png_bytes_with_metadata(Image.new("RGB", (8, 8)), "p\nSteps: 1, Seed: 2, Size: 8x8", {"a": 1})
    meta = read_png_metadata(data)
    assert meta["parameters"].startswith("p\n") and meta["genstudio"] == {"a": 1}
    assert meta["parsed"]["Seed"] == "2"
