"""Small helpers for tests (importable as `from helpers import ...`; tests/ is on pythonpath)."""
from __future__ import annotations


def open_tab(page, title: str) -> None:
    """Click a top-level studio tab by its title and wait for it to be the selected one."""
    tab = page.get_by_role("tab", name=title, exact=True)
    tab.click()
    page.wait_for_function(
        "t => [...document.querySelectorAll('[role=tab]')].some("
        "e => e.textContent.trim() === t && e.getAttribute('aria-selected') === 'true')", arg=title)
