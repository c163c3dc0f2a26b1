"""`./run.sh` opens the studio in the user's browser (launch.py --autolaunch), only where a
graphical browser can show it; --no-browser wins. No real browser is started: a recording one
is registered with Python's webbrowser module."""
from __future__ import annotations

import webbrowser
from pathlib import Path

import pytest

import launch
from studio import browser


class Recorder(webbrowser.BaseBrowser):
    opened: list[str] = []

    def open(self, url, new=0, autoraise=True):
        Recorder.opened.append(url)
        return True


@pytest.fixture
def recorder(monkeypatch):
    Recorder.opened = []
    monkeypatch.setattr(webbrowser, "get", lambda using=None: Recorder("recorder"))
    monkeypatch.setattr(browser.sys, "platform", "linux")
    return Recorder


@pytest.mark.parametrize("flags,opens", [((), False), (("--autolaunch",), True),
                                          (("--autolaunch", "--no-browser"), False)])
def test_launch_flags_decide_whether_the_studio_opens(flags, opens, monkeypatch, tmp_path):
    import studio.app

    served = []
    monkeypatch.setattr(studio.app, "serve", served.append)
    launch.main(["--data-dir", str(tmp_path), "--port", "7860", *flags])
    assert served[0].open_browser is opens


def test_run_sh_asks_for_the_browser():
    run_sh = Path(__file__).resolve().parent.parent / "run.sh"
    assert 'launch.py --autolaunch "$@"' in run_sh.read_text()


def test_opens_a_new_tab_where_there_is_a_display(recorder, monkeypatch):
    monkeypatch.setenv("DISPLAY", ":0")
    assert browser.open_studio("http://127.0.0.1:7860/")
    assert recorder.opened == ["http://127.0.0.1:7860/"]


def test_never_on_a_headless_machine_nor_in_a_console_browser(recorder, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert not browser.open_studio("http://127.0.0.1:7860/")
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    monkeypatch.setattr(webbrowser, "get", lambda using=None: Recorder("lynx"))
    assert not browser.open_studio("http://127.0.0.1:7860/")
    assert recorder.opened == []
