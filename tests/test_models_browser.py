"""The real studio in Chromium, Models tab: import a small PixArt-α folder by path (a job), see
its family and hash in the table, use it in Text to image, delete it after the confirmation."""
from __future__ import annotations

import hashlib
import re

import pytest

from helpers import open_tab

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_import_see_use_and_delete_a_model(browser, launch_studio, tmp_path):
    from family_pipelines import build_pixart

    folder = build_pixart(tmp_path / "tiny-pixart")
    weights = sorted((folder / "transformer").glob("*.safetensors"))[0]
    short_hash = hashlib.sha256(weights.read_bytes()).hexdigest()[:10]
    data_dir = tmp_path / "studio-data"
    server = launch_studio(data_dir=data_dir)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(60_000)
    page.goto(server.url)

    # 1. Import by path: a job copies it into models/Stable-diffusion/.
    open_tab(page, "Models")
    page.locator("#models-import-path textarea, #models-import-path input").first.fill(str(folder))
    page.locator("#models-import").click()
    status = page.locator("#models-status")
    # case-sensitive: the progress line before it reads "Job #1: imported (100%)"
    status.get_by_text(re.compile("Imported")).wait_for(timeout=120_000)
    assert "PixArt-α" in status.inner_text() and short_hash in status.inner_text()
    imported = data_dir / "models" / "Stable-diffusion" / "tiny-pixart"
    assert (imported / "model_index.json").is_file()

    # 2. The table lists it with its family and A1111 short hash.
    table = page.locator("#models-table")
    table.get_by_text(short_hash).first.wait_for()
    assert "PixArt-α" in table.inner_text() and "genstudio-tiny-sd" in table.inner_text()

    # 3. Text to image with it: saved to the gallery.
    open_tab(page, "Text to image")
    page.locator("#txt2img-prompt textarea").fill("a red cube")
    box = page.locator("#txt2img-model input").first
    box.fill(str(imported))
    box.press("Enter")
    # PixArt keeps its own scheduler and has no token merging: those controls are disabled.
    page.wait_for_function(
        "() => [...document.querySelectorAll('input[type=number]')].some("
        "e => (e.getAttribute('aria-label') || '').includes('Token merging') && e.disabled)")
    page.locator("#txt2img-generate").click()
    page.locator("#txt2img-status").get_by_text("Saved 1 image(s)").wait_for(timeout=180_000)

    # 4. Delete it: refused without the confirmation, done with it.
    open_tab(page, "Models")
    page.locator("#models-rescan").click()
    pick = page.locator("#models-delete-pick input").first
    page.get_by_text("Delete a model").click()
    pick.fill(str(imported))
    pick.press("Enter")
    page.locator("#models-delete").click()
    page.get_by_text("Tick “I am sure” first").first.wait_for()
    assert imported.exists()
    page.locator("#models-delete-sure input").check()
    page.locator("#models-delete").click()
    status.get_by_text("Deleted tiny-pixart").wait_for()
    assert not imported.exists()
    assert short_hash not in table.inner_text()
