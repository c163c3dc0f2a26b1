"""The Code tab in Chromium against the real studio: write Python from a description with
run & fix on; the code appears in the highlighted box and every round is shown."""
from __future__ import annotations

import pytest
from helpers import open_tab

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def studio_server(launch_studio):  # run & fix is off unless the studio is started with the switch
    return launch_studio(args=("--allow-code-execution",))


def test_write_with_run_and_fix_shows_code_and_rounds(page):
    open_tab(page, "Code")
    page.locator("#code-description textarea").fill("Print the sum of 2 and 3.")
    page.locator("#code-run-fix input[type=checkbox]").check()
    page.locator("#code-generate").click()
    page.wait_for_function("document.querySelector('#code-rounds').innerText.includes('Round 1')",
                           timeout=180_000)
    page.wait_for_function("document.querySelector('#code-status').innerText.includes('gallery item')",
                           timeout=180_000)
    code = page.locator("#code-output .cm-content").inner_text()
    assert code.strip()
    rounds = page.locator("#code-rounds").inner_text()
    assert "Round 1" in rounds and ("ran in" in rounds or "exit status" in rounds or "timed out" in rounds)


def test_switching_modes_shows_the_right_inputs(page):
    open_tab(page, "Code")
    page.get_by_role("radio", name="complete", exact=True).check()
    page.locator("#code-prefix").wait_for(state="visible")
    assert page.locator("#code-suffix").is_visible() and not page.locator("#code-description").is_visible()
    page.get_by_role("radio", name="fix", exact=True).check()
    page.locator("#code-error").wait_for(state="visible")
    page.locator("#code-input").wait_for(state="visible")
