"""The Chat tab in Chromium against the real studio: send a message, watch it stream, stop it,
reload the page, find the conversation listed and open it again; restart the studio and find it
still listed; regenerate, continue, edit; bad input refused with nothing saved."""
from __future__ import annotations

import pytest
from helpers import open_tab

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BOT = "#chat-history [data-testid='bot']"


def bot_text(page) -> str:
    messages = page.locator(BOT)
    return messages.last.inner_text() if messages.count() else ""


def test_send_stream_stop_reload_lists_the_conversation(page, studio_server):
    open_tab(page, "Chat")
    page.locator("#chat-message textarea").fill("Write a very long story about a dragon and a knight, at least 1000 words.")
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
    listed = page.locator("#chat-conversations label", has_text="Write a very long story")
    listed.first.wait_for(timeout=30_000)
    listed.first.click()
    page.wait_for_function(
        "document.querySelector('#chat-history').innerText.includes('Write a very long story')",
        timeout=30_000)
    assert bot_text(page).strip()[:20] == stopped_at.strip()[:20]

    # After a restart of the studio itself, the conversation is still there.
    studio_server.restart()
    page.goto(studio_server.url)
    open_tab(page, "Chat")
    page.locator("#chat-conversations label", has_text="Write a very long story").first.wait_for(
        timeout=30_000)


def seed_shown(page) -> str:
    import re

    found = re.search(r"seed (\d+)", page.locator("#chat-stats").inner_text())
    return found.group(1) if found else ""


def wait_for_new_stats(page, before: str) -> None:
    """Until a reply with another (random) seed than `before` has finished."""
    page.wait_for_function(
        "b => { const t = document.querySelector('#chat-stats').innerText;"
        " const m = t.match(/seed (\\d+)/);"
        " return m && m[1] !== b && !t.includes('generating'); }", arg=before, timeout=120_000)


def test_regenerate_continue_and_edit_last(page):
    open_tab(page, "Chat")
    page.locator("#chat-message textarea").fill("Name one fruit.")
    page.locator("#chat-send").click()
    wait_for_new_stats(page, "")
    bots = page.locator(BOT)
    assert bots.count() == 1

    before = seed_shown(page)
    page.locator("#chat-regenerate").click()  # replaces the reply, never adds one
    wait_for_new_stats(page, before)
    assert bots.count() == 1

    before = seed_shown(page)
    page.locator("#chat-continue").click()
    wait_for_new_stats(page, before)
    assert bots.count() == 1

    page.locator("#chat-edit").click()  # the last message goes back to the box, reply removed
    page.wait_for_function(f"document.querySelectorAll(\"{BOT}\").length === 0")
    box = page.locator("#chat-message textarea")
    assert box.input_value() == "Name one fruit."
    box.fill("Name one vegetable.")
    before = seed_shown(page)
    page.locator("#chat-send").click()
    wait_for_new_stats(page, before)
    history = page.locator("#chat-history").inner_text()
    assert "Name one vegetable." in history and "Name one fruit." not in history
    page.locator("#chat-conversations label", has_text="2 msg").first.wait_for()


def test_bad_input_is_refused_with_a_message_and_nothing_saved(page):
    open_tab(page, "Chat")
    page.locator("#chat-send").click()  # empty
    page.get_by_text("The message is empty").first.wait_for()
    page.locator("#chat-message textarea").fill("x" * 100_000)
    page.locator("#chat-send").click()
    page.get_by_text("100,000 characters").first.wait_for()
    page.locator("#chat-model input").fill("no-such-model")
    page.locator("#chat-model input").press("Enter")
    page.locator("#chat-message textarea").fill("hello")
    page.locator("#chat-send").click()
    page.get_by_text("'no-such-model' is not one of this studio's models").first.wait_for()
    assert page.locator(BOT).count() == 0
    assert page.locator("#chat-conversations label").count() == 0
    assert page.locator("#chat-message textarea").input_value() == "hello"  # kept for a retry


def test_add_to_queue_lists_the_job_on_the_queue_tab(page):
    open_tab(page, "Chat")
    page.locator("#chat-queue").click()  # empty: refused, nothing queued
    page.get_by_text("The message is empty: type something to queue").first.wait_for()
    page.locator("#chat-message textarea").fill("Name a colour.")
    page.locator("#chat-queue").click()
    page.locator("#chat-notice").get_by_text("Queued job #1").wait_for()
    assert page.locator(BOT).count() == 0  # a queued reply goes to the gallery, not this chat

    open_tab(page, "Queue")
    listing = page.locator("#queue-list")
    listing.get_by_text("Name a colour.", exact=True).filter(visible=True).first.wait_for()
    assert listing.get_by_text("chat", exact=True).filter(visible=True).count() == 1
    page.locator("#queue-summary").get_by_text("1 completed").wait_for(timeout=180_000)
