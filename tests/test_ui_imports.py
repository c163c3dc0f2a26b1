"""The UI tabs stay thin: importing every one of them does not import torch (the brief's rule;
engines load torch lazily, so a tab file that imports it would slow every start-up)."""
import subprocess
import sys


def test_ui_modules_do_not_import_torch():
    code = ("import importlib, pkgutil, sys, studio.ui\n"
            "names = [m.name for m in pkgutil.iter_modules(studio.ui.__path__)]\n"
            "for name in names: importlib.import_module('studio.ui.' + name)\n"
            "print(len(names), sorted(m for m in ('torch', 'diffusers', 'transformers') "
            "if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    count, loaded = done.stdout.strip().split(" ", 1)
    assert int(count) >= 8 and loaded == "[]", done.stdout
