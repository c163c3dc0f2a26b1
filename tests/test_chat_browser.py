"""The Chat tab in Chromium against the real studio: send a message, watch it stream, stop it,
reload the page, find the conversation listed and open it again."""
from __future__ import annotations

import pytest
from helpers import open_tab

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BOT = "#chat-history [data-testid='bot']"


def bot_text(page) -> str:
    messages = page.locator(BOT)
    return messages.last.inner_text() if messages.count() else ""


def test_send_stream_stop_reload_lists_the_conversation(page):
    open_tab(page, "Chat")
    page.locator("#chat-message textarea").fill("Count from 1 to 1000, separated by commas.")
    page.locator("#chat-send").click()

    # It streams: the reply appears, then grows while it is still being written.
    page.wait_for_function(f"document.querySelectorAll(\"{BOT}\").length > 0 && "
                           f"[...document.querySelectorAll(\"{BOT}\")].pop().innerText.length > 3",
                           timeout=180_000)
    first = len(bot_text(page))
    page.wait_for_function(f"[...document.querySelectorAll(\"{BOT}\")].pop().innerText.length > {first}",
                           timeout=30_000)
    page.locator("#chat-stop").click()
    page.wait_for_function("document.querySelector('#chat-stats').innerText.includes('stopped')",
                           timeout=30_000)
    stopped_at = bot_text(page)
    assert stopped_at.strip()
    page.wait_for_timeout(1000)
    assert bot_text(page) == stopped_at  # nothing arrives after Stop

    # After a reload the conversation is listed, and opening it shows the messages.
    page.reload()
    open_tab(page, "Chat")
    listed = page.locator("#chat-conversations label", has_text="Count from 1 to 1000")
    listed.first.wait_for(timeout=30_000)
    listed.first.click()
    page.wait_for_function(
        "document.querySelector('#chat-history').innerText.includes('Count from 1 to 1000')",
        timeout=30_000)
    assert bot_text(page).strip()[:20] == stopped_at.strip()[:20]
