"""The real studio in Chromium: the gallery shows seeded items, search narrows them, delete
removes one, and a reload still shows the right state."""
from __future__ import annotations

import pytest
from PIL import Image

from helpers import open_tab

pytestmark = pytest.mark.browser


def seed(data_dir):
    from studio.db.database import Database
    from studio.gallery.store import GalleryStore

    db = Database(data_dir / "studio.sqlite3")
    db.migrate()
    store = GalleryStore(db, data_dir)
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    items = {}
    for name, rgb in colours.items():
        for shape in ("circle", "square"):
            items[f"{name} {shape}"] = store.add_image(
                Image.new("RGB", (64, 64), rgb), task="txt2img", engine="diffusion",
                model="genstudio-tiny-sd", prompt=f"a {name} {shape} on a white background",
                params={"steps": 20}, seed=1)
    items["poem"] = store.add_text("Roses are red, violets are blue.", task="chat", engine="llm",
                                   model="smollm2", prompt="write a poem")
    db.engine.dispose()
    return items


def thumbnails(page):
    return page.locator("#gallery-grid .thumbnail-item")


def page_info(page):
    return page.locator("#gallery-page-info")


def test_gallery_search_delete_reload(browser, launch_studio, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    items = seed(data_dir)
    server = launch_studio(data_dir=data_dir)
    assert server.startup_seconds < 30  # the page is served before any model loads

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(30_000)
    page.goto(server.url)
    open_tab(page, "Gallery")
    page_info(page).get_by_text("7 items").wait_for()
    assert thumbnails(page).count() == 7

    # Search narrows to the three reds... then to one.
    page.locator("#gallery-search textarea, #gallery-search input").first.fill("red")
    page.locator("#gallery-refresh").click()
    page_info(page).get_by_text("3 items").wait_for()  # 2 red images + the poem ("Roses are red")
    page.locator("#gallery-search textarea, #gallery-search input").first.fill("red circle")
    page.locator("#gallery-refresh").click()
    page_info(page).get_by_text("1 item").wait_for()

    # Open it: the detail panel shows its prompt; delete it.
    thumbnails(page).first.click()
    detail = page.locator("#gallery-detail")
    detail.get_by_text("a red circle on a white background").wait_for()
    page.locator("#gallery-delete").click()
    page_info(page).get_by_text("No items match.").wait_for()
    assert not items["red circle"].file_path.exists()

    # Reload: six items remain, the deleted one stays gone.
    page.reload()
    open_tab(page, "Gallery")
    page_info(page).get_by_text("6 items").wait_for()
    page.locator("#gallery-search textarea, #gallery-search input").first.fill("circle")
    page.locator("#gallery-refresh").click()
    page_info(page).get_by_text("2 items").wait_for()
    page.close()
