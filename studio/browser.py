"""Open the studio in the user's web browser once it serves (`./run.sh` does; `--no-browser`
turns it off), as Fooocus and A1111's `--autolaunch` do — but only where a graphical browser can
show it: never a console browser taking over the terminal, never on a headless server."""
from __future__ import annotations

import os
import sys
import webbrowser

CONSOLE_BROWSERS = {"www-browser", "links", "elinks", "lynx", "w3m"}


def has_display() -> bool:
    """macOS and Windows always have one; elsewhere X11 or Wayland must be running."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_studio(url: str) -> bool:
    """Open `url` in a new tab of the user's browser; False when there is none to open."""
    if not has_display():
        return False
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return False
    if getattr(browser, "name", "") in CONSOLE_BROWSERS:
        return False
    try:
        return bool(browser.open_new_tab(url))
    except OSError:
        return False
