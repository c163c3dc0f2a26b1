"""The real studio in Chromium: on the Upscale / Extras tab, upload a photo, upscale it 2x with
the embedded compact Real-ESRGAN, see the before/after slider and the result in the gallery as a
child of the upload."""
from __future__ import annotations

import pytest
from PIL import Image

from helpers import open_tab

pytestmark = pytest.mark.browser


def test_upload_upscale_and_find_the_child_in_the_gallery(browser, launch_studio, tmp_path):
    from skimage import data

    photo = tmp_path / "photo.png"
    Image.fromarray(data.coffee()).resize((60, 40)).save(photo)
    server = launch_studio()
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(60_000)
    page.goto(server.url)
    open_tab(page, "Upscale / Extras")

    # 1. Upload; the default upscaler is the fast embedded one, scale 2.
    page.locator("#upscale-input input[type=file]").set_input_files(str(photo))
    page.locator("#upscale-input img").first.wait_for()
    assert page.locator("#upscale-upscaler input").input_value() == "R-ESRGAN AnimeVideo"

    # 2. Upscale: the status names the result, its size and its parent (the saved upload).
    page.locator("#upscale-run").click()
    status = page.locator("#upscale-status")
    status.get_by_text("Saved 1 image(s)").wait_for(timeout=120_000)
    text = status.inner_text()
    assert "120×80" in text
    result_id = int(text.split("#")[1].split()[0])
    parent_id = int(text.split("parent #")[1].split(")")[0])
    assert page.locator("#upscale-result img").count() >= 2

    # 3. The gallery shows the lineage upload -> upscale.
    open_tab(page, "Gallery")
    page.locator("#gallery-page-info").get_by_text("2 items").wait_for()
    page.locator("#gallery-grid .thumbnail-item").first.click()
    page.locator("#gallery-detail").get_by_text(
        f"#{parent_id} (upload) → #{result_id} (upscale)").wait_for()
