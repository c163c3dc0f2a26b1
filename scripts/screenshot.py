"""Screenshots for README, taken from the real studio in Chromium:

    .venv/bin/python scripts/screenshot.py [--out docs/images]

Starts the studio on a fresh temporary data dir, generates real outputs through the UI (text to
image on the embedded model, a chat reply), and saves studio.png (text to image), chat.png and
gallery.png.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import CHROMIUM, CHROMIUM_ARGS, free_port  # noqa: E402
from helpers import open_tab  # noqa: E402

PROMPT = "a large yellow star at the top left on a blue background"


def start_studio(data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = (data_dir.parent / "studio.log").open("w")
    process = subprocess.Popen([sys.executable, str(REPO / "launch.py"), "--port", str(port),
                                "--data-dir", str(data_dir), "--offline"], cwd=REPO,
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url, timeout=2)
            return process, url
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("the studio did not start; see " + str(data_dir.parent / "studio.log"))


def shoot(page, path: Path) -> None:
    page.wait_for_timeout(800)  # let transitions settle
    page.screenshot(path=str(path), full_page=False)
    print("wrote", path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="genstudio-shot-")) / "data"
    data_dir.mkdir()
    process, url = start_studio(data_dir)
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.set_default_timeout(180_000)
            page.goto(url)

            # Text to image: four images on the embedded model.
            open_tab(page, "Text to image")
            page.locator("#txt2img-prompt textarea").fill(PROMPT)
            page.locator("#txt2img-seed input").fill("1")
            batch = page.locator("#txt2img-batch-size input[type=number]")
            batch.fill("4")
            batch.press("Enter")
            page.locator("#txt2img-generate").click()
            page.locator("#txt2img-results img").first.wait_for()
            shoot(page, args.out / "studio.png")

            # Chat: one streamed reply from the embedded language model.
            open_tab(page, "Chat")
            page.locator("#chat-message textarea").fill("Give me three names for a red cat.")
            page.locator("#chat-send").click()
            page.locator("#chat-history .bot, #chat-history [data-testid=bot]").first.wait_for()
            page.wait_for_timeout(6000)
            shoot(page, args.out / "chat.png")

            # Gallery with what was just made, one item opened.
            open_tab(page, "Gallery")
            page.locator("#gallery-grid .thumbnail-item").first.wait_for()
            page.locator("#gallery-grid .thumbnail-item").first.click()
            page.locator("#gallery-detail").wait_for()
            shoot(page, args.out / "gallery.png")
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
