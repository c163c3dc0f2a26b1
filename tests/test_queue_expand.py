"""Prompt expansion ({a|b}, __wildcards__, prompt matrix) and uploaded prompt files."""
from __future__ import annotations

import pytest

from studio.jobs.expand import (count_jobs, count_prompts, expand_jobs, expand_prompts,
                                parse_prompt_file)


@pytest.fixture
def wildcards(tmp_path):
    folder = tmp_path / "wildcards"
    (folder / "colors").mkdir(parents=True)
    (folder / "animal.txt").write_text("# animals\ncat\n\ndog\n{small|big} bird\n")
    (folder / "colors" / "warm.txt").write_text("red\norange\n")
    (folder / "loop.txt").write_text("a __loop__\n")
    return folder


def test_alternatives_nesting_and_escapes():
    assert expand_prompts("a {red|green|blue} car") == ["a red car", "a green car", "a blue car"]
    assert expand_prompts("{a|b}{1|2}") == ["a1", "a2", "b1", "b2"]
    assert expand_prompts("a {big {red|blue}|small} box") == ["a big red box", "a big blue box",
                                                              "a small box"]
    assert expand_prompts("a car{| at night}") == ["a car", "a car at night"]
    assert expand_prompts(r"literal \{x\|y\} and a|bar") == ["literal {x|y} and a|bar"]
    assert count_prompts("{a|b} {c|d|e} {f|g}") == 12


def test_wildcards(wildcards):
    prompts = expand_prompts("a __colors/warm__ __animal__", wildcards)
    assert prompts == ["a red cat", "a red dog", "a red small bird", "a red big bird",
                       "a orange cat", "a orange dog", "a orange small bird", "a orange big bird"]
    with pytest.raises(ValueError, match="no wildcard file for __fish__.*known: animal, colors/warm, loop"):
        expand_prompts("__fish__", wildcards)
    with pytest.raises(ValueError, match="uses itself"):
        expand_prompts("__loop__", wildcards)
    with pytest.raises(ValueError, match="outside the wildcards folder"):
        expand_prompts("__../secret__", wildcards)


def test_prompt_matrix():
    assert expand_prompts("a house|oil painting|at night", matrix=True) == [
        "a house", "a house, at night", "a house, oil painting", "a house, oil painting, at night"]
    assert count_prompts("a {cat|dog}|{red|blue}|sketch", matrix=True) == 2 * 3 * 2


def test_cap_counts_without_expanding():
    huge = "{a|b|c|d|e|f|g|h|i|j}" * 7  # ten million
    assert count_prompts(huge) == 10_000_000
    with pytest.raises(ValueError, match="this makes 10,000,000 prompts; the limit is 10,000"):
        expand_prompts(huge)
    with pytest.raises(ValueError, match="no closing"):
        count_prompts("a {red|blue car")
    with pytest.raises(ValueError, match="unbalanced"):
        count_prompts("a red} car")


def test_text_file_with_options():
    rows = parse_prompt_file(
        "# my prompts\na red car\n\na {cat|dog} --steps 12 --seed 5 --negative_prompt \"blurry, dark\"\n"
        "--prompt \"a boat\" --cfg_scale 6.5 --tiling true\n")
    assert rows == [{"prompt": "a red car"},
                    {"prompt": "a {cat|dog}", "steps": 12, "seed": 5, "negative_prompt": "blurry, dark"},
                    {"prompt": "a boat", "guidance_scale": 6.5, "tiling": True}]
    assert count_jobs(rows) == 4
    jobs = expand_jobs({"steps": 4, "width": 64}, rows)
    assert [j["prompt"] for j in jobs] == ["a red car", "a cat", "a dog", "a boat"]
    assert jobs[1] == {"steps": 12, "width": 64, "seed": 5, "negative_prompt": "blurry, dark",
                       "prompt": "a cat"}
    with pytest.raises(ValueError, match="line 2: option --steps needs a value"):
        parse_prompt_file("ok\nbad --steps\n")
    with pytest.raises(ValueError, match="no prompts"):
        parse_prompt_file("\n# nothing\n")


def test_csv_file():
    rows = parse_prompt_file("prompt,steps,negative_prompt\n\"a cat, sitting\",10,\nsunset,,dark\n",
                             "batch.csv")
    assert rows == [{"prompt": "a cat, sitting", "steps": 10}, {"prompt": "sunset", "negative_prompt": "dark"}]
    with pytest.raises(ValueError, match="needs a `prompt` column"):
        parse_prompt_file("text,steps\na,1\n", "x.csv")


def test_expansion_cap_applies_to_whole_file():
    rows = [{"prompt": "{a|b|c|d|e|f|g|h|i|j}{a|b|c|d|e|f|g|h|i|j}{a|b|c|d|e|f|g|h|i|j}"}] * 11
    assert count_jobs(rows) == 11_000
    with pytest.raises(ValueError, match="this makes 11,000 jobs; the limit is 10,000"):
        expand_jobs({}, rows)
