"""The real studio in Chromium: upload a photo on the Style transfer tab, apply an embedded GAN
style, see the before/after slider, find the result in the gallery with its parent, and send it
back from the gallery to be restyled (the gallery item becomes the parent)."""
from __future__ import annotations

import pytest
from PIL import Image

from helpers import open_tab

pytestmark = pytest.mark.browser


def embedded_style():
    from engines.style.engine import list_styles

    embedded = [s for s in list_styles() if s.source == "embedded"]
    if not embedded:
        pytest.skip("no embedded styles under assets/styles")
    return embedded[0]


def test_upload_apply_embedded_style_and_find_it_in_gallery(browser, launch_studio, tmp_path):
    style = embedded_style()
    photo = tmp_path / "photo.png"
    skimage_photo = Image.open(__import__("engines.training.style_data", fromlist=["x"])
                               .skimage_data_dir() / "coffee.png").convert("RGB")
    skimage_photo.resize((160, 120)).save(photo)
    server = launch_studio()

    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(60_000)
    page.goto(server.url)
    open_tab(page, "Style transfer")

    # 1. Upload the photo.
    page.locator("#style-input input[type=file]").set_input_files(str(photo))
    page.locator("#style-input img").first.wait_for()

    # 2. Choose the embedded style in the dropdown.
    page.locator("#style-choice input").click()
    page.get_by_role("option", name=f"{style.name} [embedded]").click()
    page.locator("#style-about").get_by_text(style.name).first.wait_for()

    # 3. Apply: the before/after slider shows two images and the status names the items.
    page.locator("#style-apply").click()
    status = page.locator("#style-status")
    status.get_by_text("Saved to the gallery as").wait_for(timeout=120_000)
    assert page.locator("#style-result img").count() >= 2
    text = status.inner_text()
    result_id = int(text.split("#")[1].split()[0])
    parent_id = int(text.split("parent #")[1].split(")")[0])

    # 4. The gallery lists both; the result's details show its lineage from the upload.
    open_tab(page, "Gallery")
    page.locator("#gallery-page-info").get_by_text("2 items").wait_for()
    page.locator("#gallery-grid .thumbnail-item").first.click()  # newest first: the result
    detail = page.locator("#gallery-detail")
    detail.get_by_text(f"#{result_id}").first.wait_for()
    detail.get_by_text(f"#{parent_id} (upload) → #{result_id} (style)").wait_for()

    # 5. Send the result back to the style tab: restyling it again makes it the new parent.
    page.get_by_role("button", name="Send to style transfer").click()
    page.locator("#style-input img").first.wait_for()
    page.locator("#style-apply").click()
    status.get_by_text(f"(parent #{result_id})").wait_for(timeout=120_000)
    page.close()
