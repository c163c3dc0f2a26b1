"""The real studio in Chromium: make an image, open it in the Gallery, "Make variations" through a
small Kandinsky 2.2 (prior + decoder) of the models folder; the variations are its children; the
same button under the Text to image tab's result."""
from __future__ import annotations

import pytest

from helpers import open_tab

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_variations_from_the_gallery(browser, launch_studio, tmp_path):
    from family_pipelines import build_kandinsky22

    data_dir = tmp_path / "studio-data"
    build_kandinsky22(data_dir / "models" / "Stable-diffusion" / "tiny-kandinsky")
    server = launch_studio(data_dir=data_dir)
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page.set_default_timeout(60_000)
    page.goto(server.url)

    # 1. An image with the embedded model.
    open_tab(page, "Text to image")
    page.locator("#txt2img-prompt textarea").fill("a red circle")
    page.locator("#txt2img-generate").click()
    page.locator("#txt2img-status").get_by_text("Saved 1 image(s)").wait_for(timeout=120_000)

    # 2. Open it in the Gallery and make two variations.
    open_tab(page, "Gallery")
    page.locator("#gallery-page-info").get_by_text("1 item").wait_for()
    page.locator("#gallery-grid .thumbnail-item").first.click()
    page.locator("#gallery-variations-run").wait_for()
    page.locator("#gallery-variations-count input[type=number]").fill("2")
    page.locator("#gallery-variations-count input[type=number]").press("Enter")
    page.locator("#gallery-variations-run").click()
    status = page.locator("#gallery-variations-status")
    status.get_by_text("Saved 2 variation(s) of #1").wait_for(timeout=180_000)
    assert "#2, #3" in status.inner_text()
    page.locator("#gallery-refresh").click()
    page.locator("#gallery-page-info").get_by_text("3 items").wait_for()

    # 3. The same from the Text to image tab's result: one more variation of #1.
    open_tab(page, "Text to image")
    page.locator("#txt2img-variations-count input[type=number]").fill("1")
    page.locator("#txt2img-variations-count input[type=number]").press("Enter")
    page.locator("#txt2img-variations-run").click()
    page.locator("#txt2img-variations-status").get_by_text(
        "Saved 1 variation(s) of #1: #4").wait_for(timeout=180_000)
