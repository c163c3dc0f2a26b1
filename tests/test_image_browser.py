"""The real studio in Chromium: type a prompt, generate, find the image in the gallery; paint a
mask, inpaint, see the result with its parent in the gallery."""
from __future__ import annotations

import pytest

from helpers import open_tab

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def model_id(tmp_path_factory):
    from engines.diffusion.random_weights import embedded_or_random

    return embedded_or_random(tmp_path_factory.mktemp("diffusion-model"))


def panel(page):
    return page.locator("[role=tabpanel]:visible").first


def choose_model(page, scope: str, model_id: str) -> None:
    if model_id == "genstudio-tiny-sd":
        return
    box = page.locator(f"#{scope} input").first
    box.fill(model_id)
    box.press("Enter")


def run_and_wait(page, tab: str, prompt: str, model_id: str, button: str = "generate") -> None:
    """Type the prompt into the tab `tab` (its element id prefix), pick the model, press the
    run button, and wait until the tab says the image is saved and shows it."""
    page.locator(f"#{tab}-prompt textarea").fill(prompt)
    choose_model(page, f"{tab}-model", model_id)
    page.locator(f"#{tab}-{button}").click()
    page.locator(f"#{tab}-status").get_by_text("Saved 1 image(s)").wait_for(timeout=120_000)
    assert page.locator(f"#{tab}-results img").count() >= 1


def test_generate_then_inpaint_with_lineage(page, model_id):
    # 1. Text to image: prompt, Generate, the image shows and is saved.
    open_tab(page, "Text to image")
    run_and_wait(page, "txt2img", "a red circle on a blue background", model_id)

    # 2. It is in the gallery, with its prompt.
    open_tab(page, "Gallery")
    page.locator("#gallery-refresh").click()
    page.locator("#gallery-page-info").get_by_text("1 item").wait_for()
    page.locator("#gallery-grid .thumbnail-item").first.click()
    page.locator("#gallery-detail").get_by_text("a red circle on a blue background").wait_for()

    # 3. Send it to inpaint, paint a mask with the brush, inpaint.
    open_tab(page, "Text to image")
    page.get_by_role("button", name="Send to inpaint").click()
    page.wait_for_function("() => [...document.querySelectorAll('[role=tab]')].some("
                           "e => e.textContent.trim() === 'Inpaint & outpaint' && "
                           "e.getAttribute('aria-selected') === 'true')")
    editor = page.locator("#inpaint-editor")
    canvas = editor.locator("canvas").first
    canvas.wait_for()
    page.wait_for_timeout(1500)  # the background image loads into the canvas
    brush = editor.get_by_role("button", name="Brush")
    if brush.count():
        brush.first.click()
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 30, cy - 30)
    page.mouse.down()
    # few pointer events: each one redraws the editor's canvas, ~2 s apiece in software
    # rendering (steps=8 made this stroke take 80 s); the brush joins them with lines
    for dx, dy in ((30, -30), (30, 0), (-30, 0), (-30, 30), (30, 30)):
        page.mouse.move(cx + dx, cy + dy)
    page.mouse.up()
    run_and_wait(page, "inpaint", "a yellow star", model_id, button="run")

    # 4. The gallery has both, and the inpainted one names its parent.
    open_tab(page, "Gallery")
    page.locator("#gallery-refresh").click()
    page.locator("#gallery-page-info").get_by_text("2 items").wait_for()
    page.locator("#gallery-grid .thumbnail-item").first.click()  # newest first
    detail = page.locator("#gallery-detail")
    detail.get_by_text("a yellow star").wait_for()
    detail.get_by_text("(txt2img) →", exact=False).wait_for()
    detail.get_by_text("(inpaint)", exact=False).first.wait_for()
