"""Small helpers for tests (importable as `from helpers import ...`; tests/ is on pythonpath)."""
from __future__ import annotations


def open_tab(page, title: str) -> None:
    """Click a top-level studio tab by its title and wait for it to be the selected one."""
    tab = page.get_by_role("tab", name=title, exact=True)
    tab.click()
    page.wait_for_function(
        "t => [...document.querySelectorAll('[role=tab]')].some("
        "e => e.textContent.trim() === t && e.getAttribute('aria-selected') === 'true')", arg=title)


def wait_for(condition, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `condition()` until it is true; AssertionError naming `what` after `timeout` s."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def run_async(coroutine):
    """asyncio.run on a thread of its own: the main thread may already run an event loop (the
    Playwright sync API leaves one behind for the browser tests of the same session)."""
    import threading

    outcome = {}

    def run():
        import asyncio

        try:
            outcome["value"] = asyncio.run(coroutine)
        except BaseException as error:  # re-raised on the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
