"""The real studio in Chromium: upload a three-line prompt file on the Queue tab, watch the three
jobs finish (real txt2img on the embedded tiny model, or a random tiny one while the embedded
model is absent), find the three images in the Gallery tab, and follow a finished job's link to
its gallery item ("Open in gallery" opens the item's detail)."""
from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from helpers import open_tab

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PROMPTS = ["a red circle", "a green square --seed 7", "a blue triangle on the sea"]


def test_prompt_file_jobs_finish_and_land_in_the_gallery(page, studio_server, tmp_path):
    from engines.diffusion.random_weights import embedded_or_random

    expect.set_options(timeout=30_000)  # a loaded 2-core machine answers in seconds, not ms
    model = embedded_or_random(tmp_path / "models")
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("\n".join(PROMPTS) + "\n")

    open_tab(page, "Queue")
    expect(page.locator("#queue-task input")).to_have_value("txt2img")
    page.locator("#queue-params textarea").fill(json.dumps(
        {"steps": 2, "width": 64, "height": 64, "model": model, "preview_every": 0}))
    page.locator("#queue-file input[type=file]").set_input_files(str(prompt_file))
    page.locator("#queue-count").get_by_text("making 3 jobs").wait_for()
    page.locator("#queue-add-file").click()

    summary = page.locator("#queue-summary")
    summary.get_by_text("3 completed").wait_for(timeout=240_000)
    listing = page.locator("#queue-list")
    for prompt in ("a red circle", "a green square", "a blue triangle on the sea"):
        listing.get_by_text(prompt, exact=True).filter(visible=True).first.wait_for()
    assert "failed" not in summary.inner_text()

    # The finished job links to its gallery item: select it, its output shows.
    listing.get_by_text("a red circle", exact=True).filter(visible=True).first.click()
    page.locator("#queue-outputs img").first.wait_for()

    open_tab(page, "Gallery")
    page.locator("#gallery-page-info").get_by_text("3 items").wait_for()
    page.locator("#gallery-search textarea, #gallery-search input").first.fill("triangle")
    page.locator("#gallery-refresh").click()
    page.locator("#gallery-page-info").get_by_text("1 item").wait_for()

    # "Open in gallery" from a finished job opens its item's detail in the Gallery tab.
    jobs = page.request.get(f"{studio_server.url}/api/queue").json()["jobs"]
    item_of = {job["label"]: job["item_ids"][0] for job in jobs}
    red = item_of["a red circle"]
    open_tab(page, "Queue")
    listing.get_by_text("a red circle", exact=True).filter(visible=True).first.click()
    expect(page.locator("#queue-output-pick input")).to_have_value(
        f"#{red} image: a red circle", timeout=10_000)
    page.locator("#queue-outputs img").first.wait_for()
    page.locator("#queue-open-gallery").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('[role=tab]')].some("
        "e => e.textContent.trim() === 'Gallery' && e.getAttribute('aria-selected') === 'true')")
    detail = page.locator("#gallery-detail")
    expect(detail).to_contain_text(f"#{red} · image · txt2img")
    expect(detail).to_contain_text("a red circle")

    # Open another item by number, then the same job's link again: the detail follows the link.
    green = item_of["a green square"]
    page.get_by_label("Open item #").fill(str(green))
    page.get_by_role("button", name="Open", exact=True).click()
    expect(detail).to_contain_text(f"#{green} · image · txt2img")
    open_tab(page, "Queue")
    page.locator("#queue-open-gallery").click()
    expect(detail).to_contain_text(f"#{red} · image · txt2img")
