"""What a newcomer meets in the browser, against the real studio in Chromium: Enter sends a chat
message (Shift+Enter starts a new line); a Generate shows in the Gallery tab without a refresh;
a small image is drawn crisp at a sensible size; a UI Generate is a job in GET /api/queue; and a
click while a 20-job batch runs starts within one job of the click, with previews."""
from __future__ import annotations

import json
import time
import urllib.request
from datetime import datetime, timezone

import pytest

from helpers import open_tab

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def api(server, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(server.url + path, method="POST" if body else "GET",
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def jobs(server) -> list[dict]:
    return api(server, "/api/queue?limit=1000")["jobs"]


def started(job: dict) -> datetime:
    moment = datetime.fromisoformat(job["started_at"].replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def set_steps(page, steps: int) -> None:
    set_number(page, "txt2img-steps", steps)


def generate(page, prompt: str, steps: int = 4) -> None:
    open_tab(page, "Text to image")
    page.locator("#txt2img-prompt textarea").fill(prompt)
    set_steps(page, steps)
    page.locator("#txt2img-generate").click()


def test_enter_sends_and_shift_enter_starts_a_new_line(page):
    open_tab(page, "Chat")
    box = page.locator("#chat-message textarea")
    box.click()
    box.type("Say hi.")
    box.press("Shift+Enter")
    box.type("Briefly.")
    assert box.input_value() == "Say hi.\nBriefly."  # a new line, nothing sent
    assert page.locator("#chat-history [data-testid='user']").count() == 0
    box.press("Enter")
    page.locator("#chat-history [data-testid='user']").first.wait_for()
    assert "Briefly." in page.locator("#chat-history").inner_text()
    page.wait_for_function("document.querySelector('#chat-message textarea').value === ''")
    page.wait_for_function("document.querySelector('#chat-stats').innerText.includes('tok/s')",
                           timeout=120_000)


def test_generate_then_gallery_at_once_shows_it_without_refresh_and_crisp(page, studio_server):
    generate(page, "a red circle on a blue background")
    open_tab(page, "Gallery")  # at once, while the job is still running
    page.locator("#gallery-page-info").get_by_text("1 item").wait_for(timeout=120_000)
    thumb = page.locator("#gallery-grid .thumbnail-item img").first
    thumb.wait_for()
    page.wait_for_function("document.querySelector('#gallery-grid .thumbnail-item img')"
                           ".classList.contains('gs-small')")
    style = thumb.evaluate("i => [getComputedStyle(i).imageRendering, i.naturalWidth, "
                           "i.getBoundingClientRect().width]")
    assert style[0] == "pixelated" and style[1] == 64
    assert style[2] < 300  # one item is one cell of the grid, not the whole width

    # The job that made it is in the queue's API, at the interactive priority.
    [job] = [j for j in jobs(studio_server) if j["task"] == "txt2img"]
    assert job["status"] == "completed" and job["priority"] == 900 and len(job["item_ids"]) == 1

    # The Text to image preview and results draw it crisp too, at a sensible size.
    open_tab(page, "Text to image")
    result = page.locator("#txt2img-results img").first
    result.wait_for()
    # the page marks an <img> small once it has loaded and its natural size is known
    page.wait_for_function("document.querySelector('#txt2img-results img')"
                           ".classList.contains('gs-small')")
    rendering, width = result.evaluate("i => [getComputedStyle(i).imageRendering, "
                                       "i.getBoundingClientRect().width]")
    assert rendering == "pixelated" and 64 <= width <= 400


def test_a_click_during_a_batch_starts_within_one_job_with_previews(page, studio_server):
    batch = [{"task": "txt2img", "params": {"prompt": f"batch {i}", "steps": 8, "seed": i,
                                            "preview_every": 0}} for i in range(20)]
    api(studio_server, "/api/queue", {"jobs": batch})
    deadline = time.monotonic() + 120
    while not any(j["status"] == "running" for j in jobs(studio_server)):  # the batch runs
        assert time.monotonic() < deadline
        time.sleep(0.2)

    open_tab(page, "Text to image")
    page.locator("#txt2img-prompt textarea").fill("a yellow star")
    set_steps(page, 20)
    started_before = sum(1 for j in jobs(studio_server) if j["started_at"])
    page.locator("#txt2img-generate").click()
    clicked = datetime.now(timezone.utc)

    # Previews show while it runs (one every 5 steps), then the saved result.
    page.locator("#txt2img-preview img").first.wait_for(timeout=120_000)
    page.locator("#txt2img-status").get_by_text("Saved 1 image(s)").wait_for(timeout=120_000)
    listed = jobs(studio_server)
    [ui] = [j for j in listed if j["priority"] == 900]
    ui_started = started(ui)
    batch_before_ui = [j for j in listed if j["priority"] == 0 and j["started_at"]
                       and started(j) < ui_started]
    # Only the batch job running at the click (or one that started in the same instant) ran
    # before it: the click waited for at most one job.
    assert len(batch_before_ui) - started_before <= 1, (started_before, len(batch_before_ui))
    assert (ui_started - clicked).total_seconds() < 30
    assert sum(1 for j in listed if j["priority"] == 0 and j["status"] == "pending") > 5


def test_the_gallery_is_a_grid_of_cells_small_images_crisp_large_ones_smooth(browser, launch_studio,
                                                                             tmp_path):
    from PIL import Image

    from studio.db.database import Database
    from studio.gallery.store import GalleryStore

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    db = Database(data_dir / "studio.sqlite3")
    db.migrate()
    store = GalleryStore(db, data_dir)
    for side, prompt in ((1024, "large"), (64, "small")):  # newest first: small, then large
        store.add_image(Image.effect_noise((side, side), 64).convert("RGB"), task="txt2img",
                        engine="diffusion", prompt=prompt)
    db.engine.dispose()
    server = launch_studio(data_dir=data_dir)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(server.url)
    open_tab(page, "Gallery")
    page.locator("#gallery-page-info").get_by_text("2 items").wait_for()
    page.wait_for_function("[...document.querySelectorAll('#gallery-grid .thumbnail-item img')]"
                           ".filter(i => i.complete && i.naturalWidth).length === 2")
    small, large = page.locator("#gallery-grid .thumbnail-item img").evaluate_all(
        "all => all.map(i => [i.naturalWidth, getComputedStyle(i).imageRendering, "
        "Math.round(i.getBoundingClientRect().width)])")
    assert small[:2] == [64, "pixelated"] and large[:2] == [256, "auto"]  # 256: the thumbnail
    assert small[2] == large[2] < 300  # the same cell whatever the image's size
    page.close()


def test_cancel_in_the_tab_stops_the_running_job_and_saves_nothing(page, studio_server):
    open_tab(page, "Text to image")
    for side in ("width", "height"):  # 16x the work per step: 150 steps outlast the click
        set_number(page, f"txt2img-{side}", 256)
    generate(page, "a long one", steps=150)
    page.locator("#txt2img-preview img").first.wait_for(timeout=120_000)  # it is running
    page.locator("#txt2img-cancel").click()
    page.locator("#txt2img-status").get_by_text("Cancelled: nothing was saved.").wait_for(
        timeout=60_000)
    [job] = jobs(studio_server)
    assert job["status"] == "canceled" and job["item_ids"] == []
    assert job["params"]["width"] == job["params"]["height"] == 256
    assert job["progress"] < 1.0  # stopped between steps, long before the 150th
    assert api(studio_server, "/api/gallery")["total"] == 0
